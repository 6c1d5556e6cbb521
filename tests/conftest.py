"""Shared fixtures: a simulated repository with a delegation and a mirror served on loopback, a
spool, a frozen clock, a fake OpenSearch and a test PKI (helpers themselves live in ``support``)."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import datetime, timezone, tzinfo
from pathlib import Path
from types import SimpleNamespace

import pytest
from support import (  # noqa: F401 - re-exported for tests written before support/ existed
    CANARIES,
    REAL,
    ROOT,
    SHARED,
    Clock,
    Sim,
    free_port,
    hash_bins,
    poll,
    serve,
    stop_process,
)
from support.opensearch_fake import FakeOpenSearch
from support.pki import PKI, make_pki
from support.process import Exporter

from exporter.events.spool import Spool
from exporter.simulator import SimulatedRepository, SimulatorServer


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


@pytest.fixture
def spool(tmp_path: Path) -> Iterator[Spool]:
    """A durable spool in a temporary directory, closed afterwards."""
    s = Spool(tmp_path / "spool.sqlite")
    try:
        yield s
    finally:
        s.close()


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


@pytest.fixture
def fake() -> Iterator[FakeOpenSearch]:
    """A fake OpenSearch on loopback (``tests/support/opensearch_fake.py``), stopped afterwards."""
    server = FakeOpenSearch().start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def pki(tmp_path_factory: pytest.TempPathFactory) -> PKI:
    """A CA, server and client certificates (``support.pki``), made once per session."""
    return make_pki(tmp_path_factory.mktemp("pki"))


@pytest.fixture
def exporters() -> Iterator[list[Exporter]]:
    """``tuf-exporter`` subprocesses started by a test; every one is stopped afterwards."""
    started: list[Exporter] = []
    try:
        yield started
    finally:
        for exporter in started:
            exporter.stop()
