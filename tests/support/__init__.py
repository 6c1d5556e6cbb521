"""Helpers shared by the tests: a simulated repository served on loopback, polling with a
deadline, a virtual clock, processes and ports. Fixtures built on them live in ``conftest.py``;
tests import helpers from here, never from ``conftest`` or from another test module."""

from __future__ import annotations

import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from tuf.api.metadata import Targets

from exporter.adapters import TUF_JS_CLIENT, TUF_JS_DIR
from exporter.config.model import Endpoint, Mode, Repository
from exporter.simulator import SimulatedRepository, SimulatorServer

# ../shared from the project's root; from a git worktree (/work/wt/<name>) one level further up.
#: The project's root (the folder holding pyproject.toml).
ROOT = Path(__file__).resolve().parents[2]
SHARED = next((parent / "shared" for parent in ROOT.parents
               if (parent / "shared" / "fixtures").is_dir()),
              ROOT.parent / "shared")
REAL = SHARED / "fixtures" / "real"

CANARIES = ("files/a.txt", "team/b.txt")


@dataclass
class Sim:
    """A running simulated repository and a Repository configuration pointing at it."""

    repo: SimulatedRepository
    server: SimulatorServer
    trusted_root: Path
    state_dir: Path

    def config(self, **changes: Any) -> Repository:
        mirrors = tuple(
            Endpoint(name, *self.server.endpoint_urls(name))
            for name in self.server.endpoints
            if name != "primary"
        )
        base = Repository(
            name="sim",
            trusted_root=self.trusted_root,
            primary=Endpoint("primary", *self.server.endpoint_urls("primary")),
            mirrors=mirrors,
            interval=60.0,
            timeout=5.0,
            connect_timeout=1.0,
            read_timeout=1.0,
            mode=Mode.WARM,
            canary_targets=CANARIES,
        )
        return replace(base, **changes)


def serve(repo: SimulatedRepository, tmp_path: Path) -> Iterator[Sim]:
    """Publish ``repo``, write its trusted root and serve it on loopback until closed."""
    repo.publish()
    root = repo.write_trusted_root(tmp_path / "root.json")
    server = SimulatorServer(repo).start()
    try:
        yield Sim(repo, server, root, tmp_path / "state")
    finally:
        server.stop()


def hash_bins(tmp_path: Path, count: int, *, succinct: bool, targets: int,
              **delegation: Any) -> Iterator[Sim]:
    """A served repository with ``count`` hash-bin delegations holding ``targets`` targets."""
    repo = SimulatedRepository()
    names = repo.delegate_hash_bins(count, succinct=succinct, **delegation)
    assert len(names) == count
    for i in range(targets):
        repo.add_target(f"bins/file-{i}.txt", f"content {i}\n".encode())
    yield from serve(repo, tmp_path)


def tuf_js_unavailable() -> str | None:
    """Why the shipped tuf-js adapter cannot run on this machine (no ``node`` on PATH, or its
    ``node_modules`` not installed), as a skip reason; None when it can."""
    if shutil.which("node") is None:
        return "node is not installed: the tuf-js adapter needs Node.js 20.17+ and npm"
    if not (TUF_JS_DIR / "node_modules" / "tuf-js" / "package.json").is_file():
        return (f"tuf-js adapter not installed: run `npm ci --prefix {TUF_JS_DIR}` "
                "(scripts/test does)")
    return None


def tuf_js_argv() -> list[str]:
    """``[node, TUF_JS_CLIENT]``, absolute paths; skips the test when
    :func:`tuf_js_unavailable` says why it cannot run."""
    reason = tuf_js_unavailable()
    node = shutil.which("node")
    if reason is not None or node is None:
        pytest.skip(reason or "node is not installed")
    return [node, str(TUF_JS_CLIENT)]


def poll(check: Callable[[], Any], timeout: float = 10.0, interval: float = 0.05) -> Any:
    """Call ``check`` until it returns something truthy or the deadline passes."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout} s (last value {value!r})")
        time.sleep(interval)


class Clock:
    """A wall clock for python-tuf, the prober and the simulator that moves only when told.

    python-tuf takes its reference time from ``datetime.now`` when an updater is built
    (``TrustedMetadataSet.reference_time``); the prober stamps and checks expiry with
    ``datetime.now``; the simulator signs expiry relative to its ``utcnow``. All of them read
    this clock while the ``clock`` fixture is active, so a test makes metadata expire by
    :meth:`advance` instead of waiting, and two probes between advances see the same instant.
    """

    def __init__(self) -> None:
        self.now = datetime.now(UTC).replace(microsecond=0)

    def advance(self, seconds: float) -> None:
        self.now += timedelta(seconds=seconds)


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now (bound then released)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def stop_process(proc: subprocess.Popen[bytes], timeout: float = 15.0) -> None:
    """Stop a child process the way an init system does: SIGTERM, then SIGKILL after
    ``timeout`` seconds; returns once it has exited."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


#: Samples of a scrape by name: (labels, value) pairs.
Samples = dict[str, list[tuple[dict[str, str], float]]]


def scrape(service: Any) -> Samples:
    """What a scrape of ``service``'s registry returns, by sample name (no HTTP)."""
    from prometheus_client import generate_latest
    from prometheus_client.parser import text_string_to_metric_families

    out: Samples = {}
    for fam in text_string_to_metric_families(generate_latest(service.registry).decode()):
        for sample in fam.samples:
            out.setdefault(sample.name, []).append((sample.labels, sample.value))
    return out


def value(samples: Samples, name: str, **labels: str) -> float | None:
    """The value of the first sample ``name`` whose labels include ``labels``, or None."""
    for got, v in samples.get(name, []):
        if all(got.get(k) == want for k, want in labels.items()):
            return v
    return None


def counting_verifications(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The role names ``Targets.get_verification_result`` is called for from now on, python-tuf's
    ``verify_delegate`` and the inspector's counts alike (the list fills as they run)."""
    calls: list[str] = []
    real = Targets.get_verification_result

    def counted(self: Targets, delegated_role: str, payload: bytes, signatures: Any) -> Any:
        calls.append(delegated_role)
        return real(self, delegated_role, payload, signatures)

    monkeypatch.setattr(Targets, "get_verification_result", counted)
    return calls
