"""The root.json files a configuration names, checked once at load: python-tuf must accept each.

A repository's ``trusted_root`` and each of its ``bootstrap_roots`` (the roots clients in the
field start from, issue 16) go through the one check, :func:`load_trusted_root`: a root
python-tuf cannot start from is a configuration error naming the file (:class:`TrustedRootError`),
raised by ``check-config``, at start and on reload, never mid-probe.
"""

from __future__ import annotations

import tempfile
from collections.abc import Iterable
from pathlib import Path

from tuf.api.metadata import Metadata, Root
from tuf.ngclient import Updater

from exporter.probe.classify import describe, host_fault


class TrustedRootError(ValueError):
    """A configured root.json (trusted or bootstrap root) cannot be used by python-tuf."""


def load_trusted_root(path: Path, tmp_dir: Path | None = None) -> bytes:
    """Read the root.json at ``path`` and check that python-tuf accepts it as a starting point.

    python-tuf refuses some real roots (sigstore's roots 1 to 3 use fractional-second expiry
    times, root 4 raw-hex keys): this says so clearly instead of failing mid-probe. python-tuf
    writes the root into a client directory: a temporary one in ``tmp_dir`` (None:
    ``tempfile``'s default, which the service points below ``state_dir``), removed at once.
    Returns the file's bytes; raises :class:`TrustedRootError` naming ``path``, or the
    ``OSError`` of a fault of this host (no space or descriptor for the scratch copy).
    """
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise TrustedRootError(f"cannot read trusted root {path}: {exc.strerror or exc}") from None
    with tempfile.TemporaryDirectory(prefix="tuf-exporter-root-", dir=tmp_dir) as tmp:
        try:
            # The constructor verifies the root against its own keys; it makes no request.
            Updater(tmp, "http://127.0.0.1.invalid/", bootstrap=data)
        except Exception as exc:
            if host_fault(exc) is not None:
                raise  # no space or descriptor for the scratch copy: ours, not the root's
            raise TrustedRootError(
                f"python-tuf cannot use {path} as a trusted root: {describe(exc)}"
            ) from None
    return data


def load_bootstrap_roots(paths: Iterable[Path], tmp_dir: Path | None = None) -> dict[int, bytes]:
    """Root version -> bytes of each bootstrap root, each checked by :func:`load_trusted_root`.

    The version (which names the view ``bootstrap-root-v<N>``) is read from the root python-tuf
    has just accepted. Two files of the same version would be one view twice: a
    :class:`TrustedRootError` naming both files.
    """
    roots: dict[int, bytes] = {}
    seen: dict[int, Path] = {}
    for path in paths:
        data = load_trusted_root(path, tmp_dir)
        version = Metadata[Root].from_bytes(data).signed.version
        if version in seen:
            raise TrustedRootError(
                f"bootstrap roots {seen[version]} and {path} are both root version {version}"
                " (each version is one client view)"
            )
        seen[version] = path
        roots[version] = data
    return roots
