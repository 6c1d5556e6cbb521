"""The durable spool: exactly-once by id, size and age policy, dead letters, crashes."""

from __future__ import annotations

import signal
import sqlite3
import subprocess
import sys
import threading
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from exporter.events import Emitter, Event, EventKind, _spool_db
from exporter.events.spool import SCHEMA_VERSION, WAL_AUTOCHECKPOINT_PAGES, Spool, SpoolError

T0 = datetime(2024, 5, 1, tzinfo=UTC)


def event(i: int, kind: EventKind = EventKind.VERIFICATION, **extra: object) -> Event:
    return Event(kind=kind, time=T0 + timedelta(seconds=i), repository="repo", **extra)  # type: ignore[arg-type]


class Clock:
    def __init__(self) -> None:
        self.now = 1_700_000_000.0

    def __call__(self) -> float:
        return self.now


def test_wal_and_full_sync(spool: Spool) -> None:
    conn = sqlite3.connect(spool.path)
    try:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    finally:
        conn.close()
    assert spool._db().execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL
    assert isinstance(spool, Emitter)


def test_checkpoints_are_spaced_for_acknowledged_batches(spool: Spool) -> None:
    """A batch's acknowledgement dirties ~1000 pages: the WAL is checkpointed after
    WAL_AUTOCHECKPOINT_PAGES, not after SQLite's default of 1000 (nearly every batch)."""
    pages = spool._db().execute("PRAGMA wal_autocheckpoint").fetchone()[0]
    assert pages == WAL_AUTOCHECKPOINT_PAGES > 1000


def test_counting_reads_the_seq_index_not_the_documents(spool: Spool) -> None:
    """len() (the events_spooled metric, every scrape) counts a small index, not the table
    whose leaves hold the documents (1 GB for a backlog of 1,000,000 events)."""
    plan = spool._db().execute("EXPLAIN QUERY PLAN SELECT COUNT(*) FROM events").fetchall()
    assert "USING COVERING INDEX events_seq" in str(plan)


def test_duplicates_are_ignored_even_after_ack(spool: Spool) -> None:
    assert spool.put(event(1)) is True
    assert spool.put(event(1)) is False
    spool.emit(event(1))
    assert len(spool) == 1
    assert spool.ack(spool.peek(10)) == 1
    spool.emit(event(1))  # a late duplicate of a delivered event
    assert len(spool) == 0
    assert spool.produced() == {"verification": 1}


def test_peek_is_oldest_first_and_ack_removes(spool: Spool, tmp_path: Path) -> None:
    events = [event(i) for i in range(10)]
    for e in events:
        spool.emit(e)
    batch = spool.peek(4)
    assert [b.event_id for b in batch] == [e.event_id for e in events[:4]]
    assert batch[0].document == events[0].to_document()
    assert spool.peek(4) == batch  # peeking does not consume
    spool.ack(iter(batch))
    spool.close()
    with Spool(tmp_path / "spool.sqlite") as reopened:
        assert [b.event_id for b in reopened.peek(100)] == [e.event_id for e in events[4:]]
        assert reopened.size_bytes == spool.size_bytes > 0


def test_size_policy_drops_oldest_first_and_counts(tmp_path: Path) -> None:
    probe = Spool(tmp_path / "probe.sqlite")
    probe.emit(event(0))
    one = probe.size_bytes
    probe.close()
    with Spool(tmp_path / "spool.sqlite", max_bytes=one * 5 + one // 2) as spool:
        for i in range(8):
            spool.emit(event(i))
        kept = [b.document["time"] for b in spool.peek(100)]
        assert len(kept) == 5
        assert kept == [event(i).to_document()["time"] for i in range(3, 8)]  # newest kept
        assert spool.dropped() == {"spool_full": 3}
        assert spool.size_bytes <= spool.max_bytes
        assert spool.produced() == {"verification": 8}


def test_age_policy_drops_too_old_and_counts(tmp_path: Path) -> None:
    clock = Clock()
    with Spool(tmp_path / "spool.sqlite", max_age=3600, clock=clock) as spool:
        spool.emit(event(1))
        spool.emit(event(2))
        clock.now += 1800
        spool.emit(event(3))
        clock.now += 1801
        assert spool.enforce_limits() == 2
        assert [b.event_id for b in spool.peek(10)] == [event(3).event_id]
        assert spool.dropped() == {"too_old": 2}
        families = {f.name: f for f in spool.metrics()}
        dropped = families["tuf_exporter_events_dropped"].samples
        assert {s.labels["cause"]: s.value for s in dropped} == {
            "too_old": 2, "spool_full": 0, "rejected": 0, "spool_error": 0}


def test_dead_letters_are_kept_counted_inspectable_and_requeueable(spool: Spool) -> None:
    spool.emit(event(1))
    spool.emit(event(2))
    assert spool.dead_letter(spool.peek(1)[0], '{"type":"mapper_parsing_exception"}', 400)
    assert [b.event_id for b in spool.peek(10)] == [event(2).event_id]
    letters = spool.dead_letters()
    assert len(letters) == 1
    assert letters[0].event_id == event(1).event_id
    assert letters[0].status == 400 and "mapper_parsing_exception" in letters[0].error
    assert letters[0].document == event(1).to_document()
    assert spool.dropped() == {"rejected": 1}
    spool.emit(event(1))  # a dead-lettered event is not spooled again by a re-emit
    assert len(spool) == 1
    assert spool.requeue_dead_letters() == 1
    assert len(spool) == 2 and spool.dead_letters() == []


def test_concurrent_emitters(spool: Spool) -> None:
    def produce(worker: int) -> None:
        for i in range(50):
            spool.emit(event(worker * 1000 + i))
            spool.emit(event(i))  # shared events: duplicates across threads

    threads = [threading.Thread(target=produce, args=(w,)) for w in range(1, 9)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(spool) == 8 * 50 + 50
    assert spool.dropped() == {}


def test_emit_never_raises(spool: Spool, caplog: pytest.LogCaptureFixture) -> None:
    spool.close()
    spool.emit(event(1))
    assert spool.dropped() == {"spool_error": 1}
    assert "could not spool" in caplog.text


def test_corrupt_spool_is_moved_aside_and_a_new_one_started(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "spool.sqlite"
    path.write_bytes(b"this is not a database" * 400)
    with Spool(path) as spool:
        assert spool.corrupt_recoveries == 1
        spool.emit(event(1))
        assert len(spool) == 1
    aside = list(tmp_path.glob("spool.sqlite.corrupt-*"))
    assert len(aside) == 1 and aside[0].read_bytes().startswith(b"this is not")
    assert "EVENT SPOOL CORRUPT" in caplog.text


def test_an_error_that_is_not_corruption_keeps_the_spool_and_its_events(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Only SQLite's own word for a damaged file (SQLITE_CORRUPT, SQLITE_NOTADB) moves the
    spool aside: a ProgrammingError (a bug of ours) must not throw spooled events away."""
    path = tmp_path / "spool.sqlite"
    with Spool(path) as spool:
        assert spool.emit(event(1))

        def bug(*args: object) -> bool:
            raise sqlite3.ProgrammingError("a bug of ours")

        monkeypatch.setattr(spool, "_insert_at_once", bug)
        assert not spool.emit(event(2))
        monkeypatch.undo()
        assert spool.corrupt_recoveries == 0
        assert len(spool) == 1
    assert not list(tmp_path.glob("spool.sqlite.corrupt-*"))


_WRITER = """
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path
from exporter.events import Event, EventKind
from exporter.events import Spool

spool = Spool(Path(sys.argv[1]))
t0 = datetime(2024, 5, 1, tzinfo=UTC)
i = 0
while True:
    e = Event(kind=EventKind.ANOMALY, time=t0 + timedelta(seconds=i), repository="r",
              details={"pad": "x" * 500})
    spool.emit(e)
    print(e.event_id, flush=True)
    i += 1
"""


def test_sigkill_while_writing_loses_nothing_acknowledged(tmp_path: Path) -> None:
    script = tmp_path / "writer.py"
    script.write_text(_WRITER)
    path = tmp_path / "spool.sqlite"
    child = subprocess.Popen(
        [sys.executable, str(script), str(path)], stdout=subprocess.PIPE, text=True
    )
    acknowledged: list[str] = []
    try:
        assert child.stdout is not None
        deadline = time.monotonic() + 30
        while len(acknowledged) < 200 and time.monotonic() < deadline:
            line = child.stdout.readline()
            if not line:
                break
            acknowledged.append(line.strip())
        child.send_signal(signal.SIGKILL)
        child.wait(10)
        # lines printed after the last one we read may also be durable; read the rest too
        acknowledged.extend(line.strip() for line in child.stdout.read().splitlines())
    finally:
        if child.poll() is None:
            child.kill()
            child.wait(10)
        if child.stdout is not None:
            child.stdout.close()
    assert len(acknowledged) >= 200
    with Spool(path) as spool:
        assert spool.corrupt_recoveries == 0
        stored = [b.event_id for b in spool.peek(100_000)]
        assert len(stored) == len(set(stored))  # nothing doubled
        assert set(acknowledged) <= set(stored)  # nothing acknowledged lost
        assert len(stored) - len(acknowledged) <= 1  # at most the one in flight
        assert spool._db().execute("PRAGMA integrity_check").fetchone()[0] == "ok"


def test_many_threads_share_commits_and_store_each_event_once(tmp_path: Path) -> None:
    path = tmp_path / "spool.sqlite"
    spool = Spool(path)
    # one transaction per group: an autocommit INSERT outside BEGIN ... COMMIT, or a COMMIT
    commits: list[str] = []
    open_transaction = [False]
    # the statements of a trigger (events_once) are traced with the text of the statement
    # that fired them, and the text holds the spool time, so one insert is one distinct text
    inserts: set[str] = set()

    def trace(sql: str) -> None:
        statement = sql.strip().upper()
        if statement.startswith("BEGIN"):
            open_transaction[0] = True
        elif statement == "COMMIT":
            open_transaction[0] = False
            commits.append(sql)
        elif statement == "ROLLBACK":
            open_transaction[0] = False
        elif statement.startswith("INSERT") and not open_transaction[0] and sql not in inserts:
            inserts.add(sql)
            commits.append(sql)

    spool._db().set_trace_callback(trace)
    workers, per_worker = 16, 60
    start = threading.Barrier(workers)

    def produce(worker: int) -> None:
        start.wait()
        for i in range(per_worker):
            spool.emit(event(worker * 1000 + i))
            spool.emit(event(i))  # the same events from every thread: stored once

    threads = [threading.Thread(target=produce, args=(w,)) for w in range(1, workers + 1)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    emits = 2 * workers * per_worker
    assert 0 < len(commits) < emits / 2  # producers shared commits (one fsync for many)
    assert spool.produced() == {"verification": workers * per_worker + per_worker}
    assert spool.dropped() == {}
    assert spool.backlog == len(spool) == workers * per_worker + per_worker
    spool.close()
    expected = {
        event(w * 1000 + i).event_id for w in range(1, workers + 1) for i in range(per_worker)
    }
    expected |= {event(i).event_id for i in range(per_worker)}
    with Spool(path) as reopened:  # what every emit returned after is on disk
        stored = [b.event_id for b in reopened.peek(100_000)]
    assert len(stored) == len(set(stored)) and set(stored) == expected


def _refuse_anomalies(spool: Spool) -> None:
    spool._db().execute(
        "CREATE TRIGGER refuse BEFORE INSERT ON events WHEN NEW.kind = 'anomaly' "
        "BEGIN SELECT RAISE(ABORT, 'refused'); END"
    )


def test_emit_many_is_atomic(spool: Spool, caplog: pytest.LogCaptureFixture) -> None:
    batch = [event(1), event(2), event(3, EventKind.ANOMALY)]
    _refuse_anomalies(spool)
    spool.emit_many(batch)  # the third insert fails: the first two are rolled back with it
    assert len(spool) == 0 and spool.backlog == 0 and spool.size_bytes == 0
    assert spool.produced() == {}
    assert spool.dropped() == {"spool_error": 3}
    assert "could not spool 3 event(s)" in caplog.text
    spool._db().execute("DROP TRIGGER refuse")
    assert spool.put_many([*batch, event(1)]) == [True, True, True, False]
    assert [b.event_id for b in spool.peek(10)] == [e.event_id for e in batch]
    assert spool.produced() == {"verification": 2, "anomaly": 1}
    assert spool.put_many([]) == []


def test_one_failing_producer_does_not_fail_the_others_in_its_group(spool: Spool) -> None:
    _refuse_anomalies(spool)
    start = threading.Barrier(8)

    def produce(worker: int) -> None:
        start.wait()
        for i in range(40):
            bad = worker % 2 == 0
            spool.emit_many(
                [event(worker * 1000 + i), event(worker * 1000 + i, EventKind.ANOMALY)]
                if bad
                else [event(worker * 1000 + i)]
            )

    threads = [threading.Thread(target=produce, args=(w,)) for w in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    stored = {b.event_id for b in spool.peek(10_000)}
    assert stored == {event(w * 1000 + i).event_id for w in (1, 3, 5, 7) for i in range(40)}
    assert spool.dropped() == {"spool_error": 4 * 40 * 2}
    assert spool.backlog == len(spool) == 160


def test_age_policy_drops_the_too_old_prefix_in_spool_order(tmp_path: Path) -> None:
    clock = Clock()
    with Spool(tmp_path / "spool.sqlite", max_age=3600, clock=clock) as spool:
        spool.emit(event(1))
        clock.now += 10
        spool.emit(event(2))
        clock.now -= 20  # the wall clock stepped back: event 3 is spooled "before" event 2
        spool.emit(event(3))
        clock.now += 10 + 3600 + 5  # 1 and 3 are too old, 2 is not
        assert spool.enforce_limits() == 1  # stops at the first young event, 2
        assert [b.event_id for b in spool.peek(10)] == [event(2).event_id, event(3).event_id]
        assert spool.size_bytes == sum(len(event(i).to_json()) for i in (2, 3))
        clock.now += 10
        assert spool.enforce_limits() == 2
        assert len(spool) == 0 and spool.backlog == 0 and spool.size_bytes == 0
        assert spool.dropped() == {"too_old": 3}


def test_a_spool_with_the_old_schema_keeps_working(tmp_path: Path) -> None:
    path = tmp_path / "spool.sqlite"
    conn = sqlite3.connect(path)
    conn.executescript(
        "PRAGMA journal_mode=WAL;"
        "CREATE TABLE events (seq INTEGER PRIMARY KEY AUTOINCREMENT, event_id TEXT NOT NULL "
        "UNIQUE, kind TEXT NOT NULL, spooled_at REAL NOT NULL, size INTEGER NOT NULL, "
        "document TEXT NOT NULL);"
        "CREATE INDEX events_spooled_at ON events (spooled_at);"
    )
    old = event(1)
    conn.execute(
        "INSERT INTO events (event_id, kind, spooled_at, size, document) VALUES (?,?,?,?,?)",
        (old.event_id, "verification", time.time(), len(old.to_json()), old.to_json()),
    )
    conn.commit()
    conn.close()
    with Spool(path) as spool:
        assert spool.put(event(1)) is False  # already spooled
        assert spool.put(event(2)) is True
        assert [b.document for b in spool.peek(10)] == [event(1).to_document(),
                                                          event(2).to_document()]
        assert spool.ack(spool.peek(1)) == 1
        assert spool.put(event(1)) is False  # acknowledged
        assert spool.enforce_limits() == 0 and len(spool) == 1


def test_one_statement_insert_skips_ids_already_acked_or_dead_lettered(spool: Spool) -> None:
    for i in range(3):
        assert spool.put(event(i)) is True
    first, second, _third = spool.peek(3)
    assert spool.ack([first]) == 1
    assert spool.dead_letter(second, "mapping", 400)
    assert [spool.put(event(i)) for i in range(4)] == [False, False, False, True]
    assert spool.put_many([event(i) for i in range(5)]) == [False, False, False, False, True]
    assert spool.backlog == len(spool) == 3
    assert spool.size_bytes == sum(len(event(i).to_json()) for i in (2, 3, 4))
    assert spool.produced() == {"verification": 5}


#: The spool's layout before versions were recorded (schema 1: main up to session 4), as
#: that code created it; the migration test builds a file with it.
_SCHEMA_1 = """
CREATE TABLE IF NOT EXISTS events (
    seq INTEGER PRIMARY KEY,
    event_id TEXT NOT NULL UNIQUE,
    kind TEXT NOT NULL,
    spooled_at REAL NOT NULL,
    size INTEGER NOT NULL,
    document TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS acked (
    event_id TEXT PRIMARY KEY,
    acked_at REAL NOT NULL
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS acked_at ON acked (acked_at);
CREATE TABLE IF NOT EXISTS dead_letters (
    event_id TEXT PRIMARY KEY,
    kind TEXT NOT NULL,
    failed_at REAL NOT NULL,
    status INTEGER,
    error TEXT NOT NULL,
    document TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS dead_letters_failed_at ON dead_letters (failed_at);
"""


def _schema_1_spool(path: Path, now: float) -> None:
    """A spool as schema 1 left it: events 0-9 spooled (seqs with gaps: 1-9 were acknowledged
    and reused), event 20 acknowledged, event 21 dead-lettered."""
    conn = sqlite3.connect(path)
    conn.executescript("PRAGMA journal_mode=WAL;" + _SCHEMA_1)
    for i in range(10):
        e = event(i)
        conn.execute(
            "INSERT INTO events (seq, event_id, kind, spooled_at, size, document) "
            "VALUES (?,?,?,?,?,?)",
            (10 + 3 * i, e.event_id, "verification", now - 100 + i, len(e.to_json()), e.to_json()),
        )
    conn.execute("INSERT INTO acked VALUES (?, ?)", (event(20).event_id, now - 50))
    conn.execute(
        "INSERT INTO dead_letters VALUES (?,?,?,?,?,?)",
        (event(21).event_id, "verification", now - 40, 400, "mapping", event(21).to_json()),
    )
    conn.commit()
    conn.close()


def test_a_spool_of_schema_1_is_migrated_and_drains_without_loss(tmp_path: Path) -> None:
    clock = Clock()
    path = tmp_path / "spool.sqlite"
    _schema_1_spool(path, clock.now)
    with Spool(path, max_age=3600, clock=clock) as spool:
        conn = spool._db()
        assert conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION == 2
        tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master")}
        assert "acked" not in tables and "events_v1" not in tables
        # nothing keyed by the id: the one index of events is in seq order (for COUNT)
        assert [r[1] for r in conn.execute("PRAGMA index_list(events)")] == ["events_seq"]
        assert "USING COVERING INDEX events_seq" in str(
            conn.execute("EXPLAIN QUERY PLAN SELECT COUNT(*) FROM events").fetchall())
        assert spool.backlog == len(spool) == 10
        assert spool.size_bytes == sum(len(event(i).to_json()) for i in range(10))
        batch = spool.peek(100)
        assert [(b.seq, b.document) for b in batch] == [
            (10 + 3 * i, event(i).to_document()) for i in range(10)]
        # every id schema 1 knew stays known: spooled, acknowledged, dead-lettered
        assert [spool.put(event(i)) for i in (3, 20, 21, 30)] == [False, False, False, True]
        assert spool.ack(batch) == 10
        assert [b.event_id for b in spool.peek(100)] == [event(30).event_id]
        assert [d.event_id for d in spool.dead_letters()] == [event(21).event_id]
        assert spool.requeue_dead_letters() == 1
        assert [b.event_id for b in spool.peek(100)] == [event(30).event_id, event(21).event_id]
        # an acknowledged id is remembered as long as schema 1 did (max_age after its ack)
        clock.now += 3600 - 51
        spool.enforce_limits()
        assert spool.put(event(20)) is False
    with Spool(path, max_age=3600, clock=clock) as reopened:  # migrated once, kept
        assert [b.event_id for b in reopened.peek(100)] == [event(30).event_id,
                                                            event(21).event_id]


def test_a_failed_migration_leaves_the_old_spool_as_it_was(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "spool.sqlite"
    _schema_1_spool(path, time.time())
    steps = _spool_db._MIGRATE_FROM_1
    monkeypatch.setattr(_spool_db, "_MIGRATE_FROM_1", (*steps, "INSERT INTO full_disk VALUES (1)"))
    with pytest.raises(SpoolError, match=r"cannot open the event spool .*full_disk"):
        Spool(path)
    conn = sqlite3.connect(path)
    try:
        assert conn.execute("PRAGMA user_version").fetchone()[0] == 0
        assert conn.execute("SELECT COUNT(*) FROM events").fetchone()[0] == 10
        assert conn.execute("SELECT COUNT(*) FROM acked").fetchone()[0] == 1
    finally:
        conn.close()
    monkeypatch.undo()
    with Spool(path) as spool:  # the next start migrates it
        assert len(spool) == 10 and spool.put(event(20)) is False
    assert not list(tmp_path.glob("spool.sqlite.corrupt-*"))


def test_a_spool_from_a_newer_exporter_is_refused_and_kept(tmp_path: Path) -> None:
    path = tmp_path / "spool.sqlite"
    with Spool(path) as spool:
        spool.emit(event(1))
        spool._db().execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    with pytest.raises(SpoolError, match="newer tuf-exporter"):
        Spool(path)
    assert path.exists() and not list(tmp_path.glob("spool.sqlite.corrupt-*"))


def test_acknowledging_by_seq_never_removes_an_event_spooled_since(tmp_path: Path) -> None:
    """A batch in flight to the sink while the age policy dropped its events (the whole
    spool): an event spooled meanwhile must not take a seq of the batch, or the batch's
    acknowledgement would delete it unshipped."""
    clock = Clock()
    with Spool(tmp_path / "spool.sqlite", max_age=3600, clock=clock) as spool:
        for i in range(3):
            spool.emit(event(i))
        batch = spool.peek(10)
        clock.now += 3601
        assert spool.enforce_limits() == 3 and len(spool) == 0
        spool.emit(event(5))
        assert spool.ack(batch) == 0
        assert [b.event_id for b in spool.peek(10)] == [event(5).event_id]
