"""Fault injection: SIGKILL at every commit point of a finding's way to OpenSearch, and SIGKILLs
while OpenSearch is down or answers 429/500. Each asserts that every counted finding is
shipped exactly once and that nothing spooled is lost or stored twice.

The exporter runs in a child process (``serve`` as the service runs it) against the simulated
repository and the fake OpenSearch of the parent; the child kills itself with SIGKILL at a
named point by wrapping the method that ends at (or begins after) that commit.
"""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from support import Sim, poll
from support.opensearch_fake import FakeOpenSearch

from exporter.events import parse_time
from exporter.history import Finding, FindingKind

#: The repository's probe ``interval`` and ``timeout`` (seconds) in the exporter's configuration.
INTERVAL = 0.3
TIMEOUT = 3.0
#: Seconds within which a version published is a counted finding: the probe running at the
#: publish ends within ``TIMEOUT`` (it may have fetched the old timestamp), the next one starts
#: within ``INTERVAL`` and ends within ``TIMEOUT``; times 5 for a loaded machine (the suite runs
#: on two shared cores, the exporter may be scheduled late).
FINDING_WITHIN = 5 * (INTERVAL + 2 * TIMEOUT)
#: Seconds for a (re)started exporter to run its first probes: the start of a Python process
#: (4-7 s measured at a load of 20 on two cores) plus the first probes, which are due within
#: ``first_run_within`` (0.1 s) and end within ``TIMEOUT``.
STARTED_WITHIN = 30.0

_CHILD = r'''
import os, signal, sys, time
from pathlib import Path

point = os.environ.get("CRASH_AT", "")
spooled_log = os.open(os.environ["SPOOLED_LOG"], os.O_WRONLY | os.O_APPEND | os.O_CREAT)

from exporter.history import store as history_store
from exporter.history import HistoryStore
from exporter.serve import Service
from exporter.events import Backoff, Shipper
from exporter.events import Spool


def crash(name):
    os.write(2, f"CRASH at {name}\n".encode())
    os.kill(os.getpid(), signal.SIGKILL)


# every event whose spooling returned is recorded (O_APPEND write: in the kernel at once)
put_many, put = Spool.put_many, Spool.put
finding_ids = set()


def recording_put_many(self, events):
    events = list(events)
    new = put_many(self, events)
    finding_ids.update(e.event_id for e in events)
    os.write(spooled_log, "".join(e.event_id + "\n" for e in events).encode())
    return new


def recording_put(self, event):
    new = put(self, event)
    os.write(spooled_log, (event.event_id + "\n").encode())
    return new


Spool.put_many, Spool.put = recording_put_many, recording_put

init = Shipper.__init__


def fast_init(self, *args, **kwargs):
    kwargs.setdefault("backoff", Backoff(initial=0.05, maximum=0.3))
    init(self, *args, **kwargs)


Shipper.__init__ = fast_init

if point == "before_history_commit":  # inside the finding's transaction
    insert_outbox = history_store.insert_outbox

    def insert_then_crash(*args):
        insert_outbox(*args)
        crash(point)

    history_store.insert_outbox = insert_then_crash
elif point == "history_committed":  # the finding and its event committed, nothing spooled
    observe = HistoryStore.observe

    def observe_then_crash(self, *args, **kwargs):
        findings = observe(self, *args, **kwargs)
        if findings:
            crash(point)
        return findings

    HistoryStore.observe = observe_then_crash
elif point in ("spool_committed", "outbox_deleted"):
    delivered = HistoryStore._outbox_delivered

    def delivered_and_crash(self, seqs):
        if point == "spool_committed":
            crash(point)
        delivered(self, seqs)
        crash(point)

    HistoryStore._outbox_delivered = delivered_and_crash
elif point in ("sink_accepted", "acked"):  # a batch with finding events reached OpenSearch
    ack = Spool.ack

    def ack_and_crash(self, delivered):
        delivered = list(delivered)
        mine = finding_ids.intersection(item.event_id for item in delivered)
        if mine and point == "sink_accepted":
            crash(point)
        acked = ack(self, delivered)
        if mine:
            crash(point)
        return acked

    Spool.ack = ack_and_crash

service = Service(Path(sys.argv[1]), first_run_within=0.1)
service.start()
while True:
    time.sleep(1)
'''


class Exporter:
    """The exporter in a child process, started again after each death."""

    def __init__(self, tmp_path: Path, sim: Sim, fake: FakeOpenSearch) -> None:
        self.script = tmp_path / "child.py"
        self.script.write_text(_CHILD)
        self.state = tmp_path / "state"
        self.spooled_log = tmp_path / "spooled.log"
        self.log = tmp_path / "exporter.log"
        self.config = tmp_path / "config.yml"
        primary = sim.server.endpoint_urls("primary")
        mirror = sim.server.endpoint_urls("mirror1")
        self.config.write_text(yaml.safe_dump({
            "state_dir": str(self.state),
            "jitter": 0,
            "opensearch": {"hosts": [fake.url], "index_prefix": "tuf-events",
                           "batch_size": 5, "batch_interval": "100ms"},
            "repositories": [{
                "name": "sim", "metadata_url": primary[0], "targets_url": primary[1],
                "trusted_root": str(sim.trusted_root), "interval": INTERVAL, "timeout": TIMEOUT,
                "mirrors": [{"name": "mirror1", "metadata_url": mirror[0],
                             "targets_url": mirror[1]}],
            }],
        }))
        self.child: subprocess.Popen[bytes] | None = None

    def start(self, crash_at: str = "") -> None:
        env = {**os.environ, "CRASH_AT": crash_at, "SPOOLED_LOG": str(self.spooled_log)}
        self.log.write_text("")
        with self.log.open("w") as log:  # a file, not a pipe nobody reads: logging never blocks
            self.child = subprocess.Popen(
                [sys.executable, str(self.script), str(self.config)], env=env,
                stdout=subprocess.DEVNULL, stderr=log)

    def wait_crashed(self, timeout: float = 30.0) -> str:
        assert self.child is not None
        try:
            self.child.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            raise AssertionError("the exporter did not reach its crash point") from None
        err = self.log.read_text()
        assert self.child.returncode == -signal.SIGKILL, err[-2000:]
        return err

    def kill(self) -> None:
        if self.child is not None and self.child.poll() is None:
            self.child.send_signal(signal.SIGKILL)
            self.child.wait(timeout=10)
        self.child = None

    # -- what the state directory holds ------------------------------------------------------

    def _query(self, name: str, sql: str, params: tuple[Any, ...] = ()) -> list[Any]:
        path = self.state / name
        if not path.exists():
            return []
        conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=10)
        try:
            return conn.execute(sql, params).fetchall()
        except sqlite3.OperationalError as exc:
            if "no such table" in str(exc):
                return []
            raise
        finally:
            conn.close()

    def findings(self) -> list[Finding]:
        """Every finding the history counted (its findings log), oldest first."""
        findings = []
        for (body,) in self._query("history.sqlite", "SELECT body FROM findings ORDER BY id"):
            data = json.loads(body)
            findings.append(Finding(
                kind=FindingKind(data["kind"]), repository=data["repository"],
                endpoint=data["endpoint"], role=data["role"],
                time=parse_time(data["time"]), message=data["message"],
                versions=data["versions"], hashes=data["hashes"],
                keyids=tuple(data["keyids"]), details=data["details"]))
        return findings

    def counted_findings(self) -> list[str]:
        """Event ids of every finding the history counted."""
        return [finding.to_event().event_id for finding in self.findings()]

    def new_version_counted(self, role: str, version: int) -> bool:
        """Whether the history counted the ``new_version`` finding of ``role`` ``version``."""
        return any(f.kind is FindingKind.NEW_VERSION and f.role == role
                   and f.versions.get("current") == version for f in self.findings())

    def serving(self, role: str) -> dict[str, int]:
        """Endpoint -> the version of ``role`` the history records it serving now: the
        baseline a version is judged new against (``current``)."""
        return dict(self._query(
            "history.sqlite", "SELECT endpoint, version FROM current WHERE role = ?", (role,)))

    def outbox(self) -> set[str]:
        return {r[0] for r in self._query("history.sqlite", "SELECT event_id FROM outbox")}

    def spooled(self) -> set[str]:
        return {r[0] for r in self._query("spool.sqlite", "SELECT event_id FROM events")}

    def ever_spooled(self) -> set[str]:
        if not self.spooled_log.exists():
            return set()
        return set(self.spooled_log.read_text().split())



@pytest.fixture
def exporter(tmp_path: Path, sim: Sim, fake: FakeOpenSearch) -> Iterator[Exporter]:
    running = Exporter(tmp_path, sim, fake)
    try:
        yield running
    finally:
        running.kill()


def _finding_documents(fake: FakeOpenSearch) -> dict[str, dict[str, Any]]:
    with fake._lock:
        # verdicts (a probe's, a client view's change) are spooled directly, not findings
        return {i: d for (_index, i), d in fake.documents.items()
                if d["kind"] not in ("verification", "client_view")}


def _assert_exactly_once(exporter: Exporter, fake: FakeOpenSearch) -> None:
    """Run the exporter until the outbox and the spool are empty and every counted finding is
    in OpenSearch; then check exactly once."""
    exporter.start()

    def settled() -> bool:
        counted = set(exporter.counted_findings())
        return (bool(counted) and counted <= fake.ids() and not exporter.outbox()
                and not exporter.spooled())

    poll(settled, timeout=30)
    exporter.kill()
    counted = exporter.counted_findings()
    assert len(counted) == len(set(counted)), "a finding was counted twice"
    assert set(_finding_documents(fake)) == set(counted), "finding events == counted findings"
    assert exporter.ever_spooled() <= fake.ids(), "an event that was spooled got lost"
    with fake._lock:
        assert all(n == 1 for n in fake.created.values()), "an event was stored twice"


def _wait(exporter: Exporter, check: Callable[[], bool], timeout: float, what: str) -> None:
    """Poll ``check`` until it is true; after ``timeout`` seconds fail with ``what``, what the
    history holds and the exporter's log."""
    try:
        poll(check, timeout=timeout)
    except AssertionError:
        raise AssertionError(
            f"{what} within {timeout:.1f} s; the history records timestamp versions "
            f"{exporter.serving('timestamp')} and counted "
            f"{[(str(f.kind), f.endpoint, f.role, f.versions) for f in exporter.findings()]}; "
            f"exporter log:\n{exporter.log.read_text()[-3000:]}") from None


def _publish_until_crashed(exporter: Exporter, sim: Sim) -> str:
    """New versions every 0.5 s (findings) until the exporter reached its crash point."""
    deadline = time.monotonic() + 30
    assert exporter.child is not None
    while exporter.child.poll() is None and time.monotonic() < deadline:
        sim.repo.publish()
        time.sleep(0.5)
    return exporter.wait_crashed(timeout=5)


@pytest.mark.parametrize("point", ["before_history_commit", "history_committed",
                                   "spool_committed", "outbox_deleted", "sink_accepted", "acked"])
def test_sigkill_at_each_commit_point_ships_every_counted_finding_once(
    exporter: Exporter, fake: FakeOpenSearch, sim: Sim, point: str
) -> None:
    exporter.start(crash_at=point)
    err = _publish_until_crashed(exporter, sim)
    assert f"CRASH at {point}" in err
    counted = set(exporter.counted_findings())
    outbox, spooled = exporter.outbox(), exporter.spooled()
    # the crash left the state the point names (so the test covers that window)
    if point == "history_committed":
        assert outbox and outbox <= counted and not outbox & spooled
    elif point == "spool_committed":
        assert outbox and outbox <= spooled
    elif point == "sink_accepted":
        assert spooled & set(_finding_documents(fake))
    _assert_exactly_once(exporter, fake)


def test_sigkills_while_opensearch_is_down_or_flapping_lose_and_double_nothing(
    exporter: Exporter, fake: FakeOpenSearch, sim: Sim
) -> None:
    faults = [
        lambda: fake.fail_next(3, 429),
        lambda: fake.fail_next(3, 500),
        lambda: fake.fail_items(4, 429),
        lambda: fake.fail_items(4, 503),
        fake.down,
    ]
    endpoints = {"primary", "mirror1"}
    for round_, fault in enumerate(faults):
        exporter.start()
        spooled = len(exporter.ever_spooled())
        served = sim.repo.latest.versions["timestamp"]
        # It runs (it spooled an event), and the history holds, for every endpoint, the version
        # served now: the publish below is then a new version to it. An event spooled is not
        # enough: the first one may be a client view's (new_client_interval), which records no
        # version, or a probe's verification, spooled before the history records the result;
        # were the first version the history records the one published below, it would be the
        # baseline (the first version seen is no finding) and no finding would ever come.
        baseline = dict.fromkeys(endpoints, served)
        _wait(exporter, lambda n=spooled, b=baseline: len(exporter.ever_spooled()) > n
              and exporter.serving("timestamp") == b,
              STARTED_WITHIN, f"the history did not record {baseline} as the timestamp served")
        fault()
        version = sim.repo.publish().versions["timestamp"]
        _wait(exporter, lambda v=version: exporter.new_version_counted("timestamp", v),
              FINDING_WITHIN, f"timestamp v{version} was not counted as a new version")
        time.sleep(0.1 * round_)  # SIGKILL wherever it is then, with the fault still on
        exporter.kill()
        if fault == faults[-1]:
            fake.up()
    _assert_exactly_once(exporter, fake)
