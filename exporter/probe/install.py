"""``tuf-exporter clients install``: put a shipped external client (an adapter speaking
tuf-conformance's client CLI, see :mod:`exporter.probe.external`) in a directory of its own,
ready to run, and say the ``command:`` to configure.

* ``python-tuf==X.Y.Z``: a virtual environment in ``DIR`` (the running interpreter's ``venv``)
  with that release of python-tuf (and, by default, ``securesystemslib[crypto]``: without
  ``cryptography`` python-tuf verifies only ed25519 keys), the python-tuf adapter copied to
  ``DIR/python_tuf_client.py``; the install is checked by importing ``tuf.ngclient`` there and
  comparing ``tuf.__version__``.
* ``tuf-js``: the tuf-js adapter's folder (``tuf-client.mjs``, ``package.json``,
  ``package-lock.json``) copied to ``DIR`` and its dependencies installed with ``npm ci``
  (exactly the lock file's versions).

pip and npm are run as child processes with the exporter's environment (their indexes, proxies
and certificates as configured for them); what they print goes to stderr. Errors raise
:class:`InstallError` with what failed and the tail of its output.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from exporter.adapters import PYTHON_TUF_CLIENT as PYTHON_TUF_ADAPTER
from exporter.adapters import TUF_JS_CLIENT
from exporter.adapters import TUF_JS_DIR as TUF_JS_ADAPTER_DIR

#: What a tuf-js install copies: the adapter, its package.json and lock file.
TUF_JS_FILES = (TUF_JS_CLIENT.name, "package.json", "package-lock.json")

#: What pip installs beside ``tuf==X.Y.Z`` unless told otherwise (``--also``).
DEFAULT_ALSO: tuple[str, ...] = ("securesystemslib[crypto]",)
_RELEASE = re.compile(r"python-tuf==(\d+(?:\.\d+){1,2}(?:(?:a|b|rc)\d+)?)")


class InstallError(RuntimeError):
    """An install step failed; the message says which, and the tail of its output."""


@dataclass(frozen=True)
class Installed:
    """An installed client: the ``command`` to configure and what was installed."""

    command: tuple[str, ...]
    description: str

    def config_line(self) -> str:
        """``command: [...]`` as YAML (a flow list of JSON strings, which YAML reads)."""
        return "command: [" + ", ".join(json.dumps(part) for part in self.command) + "]"


def parse_spec(spec: str) -> tuple[str, str | None]:
    """``python-tuf==X.Y.Z`` -> ("python-tuf", "X.Y.Z"); ``tuf-js`` -> ("tuf-js", None).
    ValueError for anything else."""
    if spec == "tuf-js":
        return "tuf-js", None
    match = _RELEASE.fullmatch(spec)
    if match is None:
        raise ValueError(f"expected python-tuf==X.Y.Z or tuf-js, got {spec!r}")
    return "python-tuf", match.group(1)


def _run(argv: Sequence[str], what: str, cwd: Path | None = None) -> str:
    """Run an install step; its stdout (stderr passed through). InstallError on failure."""
    try:
        done = subprocess.run(  # noqa: S603 - fixed programs, argv without a shell
            list(argv), cwd=cwd, capture_output=True, text=True, check=False,
        )
    except OSError as exc:
        raise InstallError(f"{what}: cannot run {argv[0]}: {exc}") from None
    sys.stderr.write(done.stderr[-20000:])
    if done.returncode != 0:
        tail = (done.stderr or done.stdout).strip()[-2000:]
        raise InstallError(f"{what} failed (exit status {done.returncode}): {tail}")
    return done.stdout


def _empty_target(directory: Path) -> None:
    if directory.exists() and any(directory.iterdir()):
        raise InstallError(f"{directory} exists and is not empty: choose a new directory")
    directory.mkdir(parents=True, exist_ok=True)


def install_python_tuf(version: str, directory: Path, also: Sequence[str] = DEFAULT_ALSO,
                       adapter: Path = PYTHON_TUF_ADAPTER) -> Installed:
    """A virtual environment in ``directory`` with ``tuf==version`` and ``also``, and the
    adapter beside it. InstallError when a step fails or the environment's tuf is another
    release."""
    if not adapter.is_file():
        raise InstallError(f"the python-tuf adapter is missing: {adapter}")
    directory = directory.resolve()
    _empty_target(directory)
    venv = directory / "venv"
    _run([sys.executable, "-m", "venv", str(venv)], "creating the virtual environment")
    python = venv / "bin" / "python"
    _run([str(python), "-m", "pip", "install", "--quiet", f"tuf=={version}", *also],
         f"pip install tuf=={version}")
    found = _run([str(python), "-c", "import tuf, tuf.ngclient; print(tuf.__version__)"],
                 "importing tuf.ngclient in the new environment").strip()
    if found != version:
        raise InstallError(f"the new environment has tuf {found}, not {version}")
    script = directory / adapter.name
    shutil.copyfile(adapter, script)
    return Installed((str(python), str(script)), f"python-tuf {version} in {venv}")


def install_tuf_js(directory: Path, npm: str = "npm", source: Path = TUF_JS_ADAPTER_DIR
                   ) -> Installed:
    """The tuf-js adapter in ``directory`` with its locked dependencies (``npm ci``)."""
    missing = [name for name in TUF_JS_FILES if not (source / name).is_file()]
    if missing:
        raise InstallError(f"the tuf-js adapter is missing {', '.join(missing)} in {source}")
    directory = directory.resolve()
    _empty_target(directory)
    for name in TUF_JS_FILES:
        shutil.copyfile(source / name, directory / name)
    _run([npm, "ci", "--no-audit", "--no-fund"], "npm ci", cwd=directory)
    node = shutil.which("node") or "node"
    return Installed((node, str(directory / "tuf-client.mjs")), f"tuf-js in {directory}")
