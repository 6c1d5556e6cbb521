"""The shipped external-client adapters (exporter/adapters): the tuf-conformance client CLI on
tuf-js and on python-tuf, against simulated repositories served on loopback.

The python-tuf adapter runs under this interpreter (the python-tuf 7 the project depends on);
the tuf-js adapter runs under ``node`` with the tuf-js pinned in its lock file, installed by
``npm ci --prefix exporter/adapters/tuf-js`` (scripts/test does it). The divergence tests build
repository states tuf-js 5 rejects and python-tuf 7 accepts, and the reverse (docs/clients.md).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import tuf
from support import Sim, serve, tuf_js_argv

from exporter.adapters import PYTHON_TUF_CLIENT
from exporter.simulator import TIMESTAMP, SimulatedRepository

RUN_TIMEOUT = 60.0  # seconds one adapter command may take before the test fails


def _python_tuf_argv() -> list[str]:
    return [sys.executable, str(PYTHON_TUF_CLIENT)]


ADAPTERS: dict[str, Callable[[], list[str]]] = {
    "tuf-js": tuf_js_argv,
    "python-tuf": _python_tuf_argv,
}


@dataclass
class Client:
    """One adapter with its own metadata and target directories, speaking CLIENT-CLI.md."""

    argv: list[str]
    metadata_dir: Path
    target_dir: Path
    metadata_url: str
    target_url: str

    def run(self, *args: str) -> subprocess.CompletedProcess[str]:
        # A minimal environment: nothing of the test runner's leaks into the client.
        env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin")}
        return subprocess.run([*self.argv, *args], capture_output=True, text=True,
                              timeout=RUN_TIMEOUT, env=env, check=False)

    def init(self, trusted_root: Path) -> subprocess.CompletedProcess[str]:
        return self.run("--metadata-dir", str(self.metadata_dir), "init", str(trusted_root))

    def refresh(self) -> subprocess.CompletedProcess[str]:
        return self.run("--metadata-dir", str(self.metadata_dir),
                        "--metadata-url", self.metadata_url, "refresh")

    def download(self, *targets: str) -> subprocess.CompletedProcess[str]:
        names = [arg for target in targets for arg in ("--target-name", target)]
        return self.run("--metadata-dir", str(self.metadata_dir),
                        "--metadata-url", self.metadata_url, *names,
                        "--target-base-url", self.target_url,
                        "--target-dir", str(self.target_dir), "download")

    def downloaded(self) -> dict[str, bytes]:
        """Files in the target directory by name (the adapters URL-encode target paths)."""
        return {p.name: p.read_bytes() for p in self.target_dir.iterdir() if p.is_file()}


def _client(name: str, sim: Sim, tmp_path: Path) -> Client:
    metadata_url, target_url = sim.server.endpoint_urls("primary")
    return Client(ADAPTERS[name](), tmp_path / name / "metadata", tmp_path / name / "targets",
                  metadata_url, target_url)


def _ok(result: subprocess.CompletedProcess[str]) -> None:
    assert result.returncode == 0, f"exit {result.returncode}\n{result.stdout}\n{result.stderr}"


def _failed(result: subprocess.CompletedProcess[str], reason: str) -> None:
    assert result.returncode == 1, f"exit {result.returncode}\n{result.stdout}\n{result.stderr}"
    assert reason in result.stderr, result.stderr


@pytest.mark.parametrize("adapter", sorted(ADAPTERS))
def test_healthy_repository(adapter: str, sim: Sim, tmp_path: Path) -> None:
    """init makes no request; refresh stores the top-level roles under unversioned names;
    download verifies and stores the targets (a delegated one too) and does not fetch an
    unchanged target twice."""
    client = _client(adapter, sim, tmp_path)
    _ok(client.init(sim.trusted_root))
    assert (client.metadata_dir / "root.json").read_bytes() == sim.trusted_root.read_bytes()
    assert sim.server.request_count("primary") == 0

    _ok(client.refresh())
    stored = {p.name for p in client.metadata_dir.iterdir() if p.is_file()}
    assert {"root.json", "timestamp.json", "snapshot.json", "targets.json"} <= stored

    _ok(client.download("files/a.txt", "team/b.txt"))
    assert sorted(client.downloaded().values()) == [b"hello from a\n", b"hello from b\n"]
    assert (client.metadata_dir / "team.json").is_file()

    def target_requests() -> int:
        return sum(n for name, n in sim.server.requests("primary").items()
                   if name.startswith("targets/"))

    fetched = target_requests()
    assert fetched == 2
    _ok(client.download("files/a.txt", "team/b.txt"))
    assert target_requests() == fetched


@pytest.mark.parametrize("adapter", sorted(ADAPTERS))
def test_failures_exit_1(adapter: str, sim: Sim, tmp_path: Path) -> None:
    """Every failure is exit status 1 with the reason on stderr: bad usage, a target the
    repository does not have (the targets before it are kept), expired metadata."""
    client = _client(adapter, sim, tmp_path)
    _failed(client.run("--metadata-dir", str(client.metadata_dir), "frobnicate"), "frobnicate")
    _failed(client.run("--metadata-dir", str(client.metadata_dir), "refresh"), "metadata-url")
    _ok(client.init(sim.trusted_root))

    _failed(client.download("files/a.txt", "files/missing.txt"), "files/missing.txt")
    assert list(client.downloaded().values()) == [b"hello from a\n"]

    sim.server.inject("expired-timestamp")
    _failed(client.refresh(), "expired")


# ------------------------------------------------------------------------ divergence


@pytest.fixture
def kms_timestamp(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[Sim]:
    """A served repository whose timestamp key was rotated (root v2) to a key with the
    signing scheme ``request.param`` (the simulator's ``rotate_keys(scheme=...)``); clients
    start from root v1."""
    repo = SimulatedRepository()
    repo.add_target("files/a.txt", b"hello from a\n")
    repo.publish()
    repo.rotate_keys(TIMESTAMP, add=1, remove=1, scheme=request.param)
    assert [key.scheme for key in repo.root_keys(TIMESTAMP)] == [request.param]
    yield from serve(repo, tmp_path)


@pytest.mark.parametrize("kms_timestamp", ["rsa-pkcs1v15-sha256", "ecdsa-sha2-nistp384"],
                         indirect=True)
def test_tuf_js_rejects_timestamp_key_python_tuf_accepts(kms_timestamp: Sim,
                                                        tmp_path: Path) -> None:
    """Divergence: a timestamp role signed with an RSA PKCS#1 v1.5 / SHA-256 key (what cloud
    KMS RSA signing keys give) or an ECDSA P-384 / SHA-384 key. python-tuf 7 (securesystemslib)
    verifies both; tuf-js 5 supports RSA only with rsassa-pss-sha256 and verifies ECDSA with
    the default SHA-256 digest, so it counts 0 valid signatures and refuses the repository."""
    sim = kms_timestamp
    python_tuf = _client("python-tuf", sim, tmp_path)
    tuf_js = _client("tuf-js", sim, tmp_path)
    for client in (python_tuf, tuf_js):
        _ok(client.init(sim.trusted_root))

    _ok(python_tuf.refresh())
    _ok(python_tuf.download("files/a.txt"))
    assert list(python_tuf.downloaded().values()) == [b"hello from a\n"]

    _failed(tuf_js.refresh(), "timestamp was signed by 0/1 keys")
    # tuf-js did take the new root (its keys are ed25519) but trusts no timestamp.
    assert json.loads((tuf_js.metadata_dir / "root.json").read_bytes())["signed"]["version"] == 2
    assert not (tuf_js.metadata_dir / "timestamp.json").exists()
    _failed(tuf_js.download("files/a.txt"), "timestamp was signed by 0/1 keys")
    assert not tuf_js.target_dir.exists() or tuf_js.downloaded() == {}


@pytest.fixture
def diamond(tmp_path: Path) -> Iterator[Sim]:
    """A served repository where role ``release`` is delegated twice: by ``parent-a`` (for
    ``team-a/*``, with release's own key) and by ``parent-b`` (for ``team-b/*``, with
    parent-b's key, which never signs release). Both targets are in release: only the first
    is authorized."""
    repo = SimulatedRepository()
    repo.delegate("parent-a", ["team-a/*"])
    repo.delegate("parent-b", ["team-b/*"])
    repo.delegate("release", ["team-a/*"], delegator="parent-a")
    repo.delegate_also("release", "parent-b", keyids=repo.keyids("parent-b"), threshold=1,
                       paths=["team-b/*"])
    repo.add_target("team-a/app.txt", b"authorized through parent-a\n", role="release")
    repo.add_target("team-b/app.txt", b"not authorized through parent-b\n", role="release")
    yield from serve(repo, tmp_path)


def test_tuf_js_trusts_role_cached_through_another_delegator(diamond: Sim,
                                                             tmp_path: Path) -> None:
    """Divergence the other way: in one run, tuf-js 5 reuses ``release`` verified through
    parent-a when the lookup of ``team-b/app.txt`` reaches it through parent-b, and downloads
    a target parent-b's keys never signed. python-tuf 7.0.1 verifies the role against each
    delegator (tuf-conformance test_cached_role_is_verified_against_current_delegator) and
    refuses. Each on its own, the team-b target is refused by both."""
    if tuple(int(part) for part in tuf.__version__.split(".")[:3]) < (7, 0, 1):
        pytest.skip(f"python-tuf {tuf.__version__} shares the bug (fixed in 7.0.1)")
    python_tuf = _client("python-tuf", diamond, tmp_path)
    tuf_js = _client("tuf-js", diamond, tmp_path)
    both = ("team-a/app.txt", "team-b/app.txt")
    for client in (python_tuf, tuf_js):
        _ok(client.init(diamond.trusted_root))

    _failed(python_tuf.download(*both), "release was signed by 0/1 keys")
    assert list(python_tuf.downloaded().values()) == [b"authorized through parent-a\n"]

    _ok(tuf_js.download(*both))
    assert sorted(tuf_js.downloaded().values()) == [b"authorized through parent-a\n",
                                                    b"not authorized through parent-b\n"]

    for client in (python_tuf, tuf_js):
        shutil.rmtree(client.target_dir)
        _failed(client.download("team-b/app.txt"), "release was signed by 0/1 keys")
        assert client.downloaded() == {}
