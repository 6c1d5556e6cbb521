"""Shared fixtures: a simulated repository with a delegation and a mirror, served on loopback."""

from __future__ import annotations

import signal
import socket
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta, timezone, tzinfo
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from opensearch_fake import FakeOpenSearch

from exporter.config import Endpoint, Mode, Repository
from exporter.events import Spool
from exporter.simulator import SimulatedRepository, SimulatorServer

# ../shared from the project's root; from a git worktree (/work/wt/<name>) one level further up.
SHARED = next((parent / "shared" for parent in Path(__file__).resolve().parents[1:]
               if (parent / "shared" / "fixtures").is_dir()),
              Path(__file__).resolve().parents[2] / "shared")
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


@pytest.fixture
def sim(tmp_path: Path) -> Iterator[Sim]:
    repo = SimulatedRepository()
    repo.add_target("files/a.txt", b"hello from a\n")
    repo.delegate("team", ["team/*"])
    repo.add_target("team/b.txt", b"hello from b\n", role="team")
    repo.publish()
    root = repo.write_trusted_root(tmp_path / "root.json")
    server = SimulatorServer(repo).start()
    try:
        server.add_mirror("mirror1")
        yield Sim(repo, server, root, tmp_path / "state")
    finally:
        server.stop()


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


@pytest.fixture
def spool(tmp_path: Path) -> Iterator[Spool]:
    """A durable spool in a temporary directory, closed afterwards."""
    s = Spool(tmp_path / "spool.sqlite")
    try:
        yield s
    finally:
        s.close()


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


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> Clock:
    """Freeze the wall clock of python-tuf, the prober and the simulator (see :class:`Clock`)."""
    from tuf.ngclient._internal import trusted_metadata_set

    from exporter.probe import prober
    from exporter.simulator import faults, repository

    virtual = Clock()

    class Frozen(datetime):
        @classmethod
        def now(cls, tz: tzinfo | None = None) -> datetime:  # type: ignore[override]
            return virtual.now if tz is None else virtual.now.astimezone(tz)

    monkeypatch.setattr(trusted_metadata_set, "datetime",
                        SimpleNamespace(datetime=Frozen, timezone=timezone))
    monkeypatch.setattr(prober, "datetime", Frozen)
    monkeypatch.setattr(repository, "utcnow", lambda: virtual.now)
    monkeypatch.setattr(faults, "utcnow", lambda: virtual.now)
    return virtual


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


@pytest.fixture
def fake() -> Iterator[FakeOpenSearch]:
    """A fake OpenSearch on loopback (``tests/opensearch_fake.py``), stopped afterwards."""
    server = FakeOpenSearch().start()
    try:
        yield server
    finally:
        server.stop()
