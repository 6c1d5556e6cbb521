"""The durable spool: every event goes to SQLite first, the shipper takes it from there.

Durability guarantee
    The spool is an SQLite database in WAL mode with ``synchronous=FULL``. :meth:`Spool.emit`
    commits (and so fsyncs the WAL) before it returns: an event whose ``emit`` returned survives
    SIGKILL of the process and a crash or power loss of the machine. An event leaves the spool
    only when the sink accepted it (:meth:`Spool.ack`), when the sink rejected it for good (it
    moves to the dead-letter table, :meth:`Spool.dead_letter`), or by the size and age policy
    below, and every one of those is counted.

Exactly once
    Rows are keyed by the event's content-derived id, inserted with ``INSERT OR IGNORE``: the
    same event emitted twice is stored once. Ids of acknowledged and dead-lettered events are
    remembered for ``max_age`` so a late duplicate is not shipped again either.

Size and age policy
    The spool's size is the total byte length of the spooled documents. When an insert would
    take it over ``max_bytes`` the oldest events are dropped first, counted as
    ``dropped{cause="spool_full"}``. Events spooled more than ``max_age`` seconds ago are
    dropped, counted as ``dropped{cause="too_old"}``: oldest first in spool order, stopping at
    the first younger event (so after the wall clock stepped back an old event can outlive
    ``max_age`` until the events spooled before it expire). Both are logged as warnings.

Corruption
    A spool file SQLite finds damaged or not a database is renamed aside
    (``spool.sqlite.corrupt-<UTC time>``, with its ``-wal`` and ``-shm``), an error is logged
    and counted, and a new spool is started: the exporter keeps running and the old file is
    kept for inspection. The test and the name are the history store's
    (:mod:`exporter.sqlite_files`); any other error (a full disk, a bug of ours) keeps the file.

Group commit
    Concurrent producers share transactions: each :meth:`Spool.emit` queues its event and
    waits; the first waiting producer becomes the leader, writes everything queued in one
    transaction and commits it (one fsync for all), then wakes the others. A lone producer
    commits its own event at once, without a thread hand-off. :meth:`Spool.emit_many` spools
    several events atomically in one transaction (all or none). Each producer's events are
    written in a savepoint of the shared transaction, so one producer's failure does not fail
    the others'. Nothing returns before the commit that holds its events.

One process uses a spool at a time. Within it, one write connection is shared under a lock;
reads for the shipper (:meth:`Spool.peek`, ``len``, dead letters) use a second connection with a
lock of their own, so shipping never waits for a producer's commit and the other way round
(WAL lets a reader and a writer work at the same time). JSON is parsed outside every lock,
and only when a caller asks for a dict: the shipper ships the stored text as it is.
"""

from __future__ import annotations

import json
import logging
import sqlite3
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import cached_property
from pathlib import Path
from typing import Any, TypeVar

from prometheus_client.core import Metric

from exporter import catalogue
from exporter.config.model import Events
from exporter.events.model import Event
from exporter.probe.results import ErrorCause, StoreError
from exporter.sqlite_files import connect, is_corruption, move_aside, open_database

log = logging.getLogger(__name__)

T = TypeVar("T")

#: File name of the spool inside the state directory.
SPOOL_FILE = "spool.sqlite"

#: WAL pages (4 KiB each) after which a commit checkpoints the spool (SQLite's default is
#: 1000). Acknowledging a batch of 500 events dirties about 1000 pages (both indexes keyed by
#: the random event id), so with the default a checkpoint ran after nearly every batch and
#: wrote the same index pages to the database file again and again. Acknowledging 100,000
#: spooled events in batches of 500 took 47 ms a batch with 1000 pages, 34 ms with 4000 and
#: 28 ms with 10000 (COMMIT alone 36 ms -> 17 ms). The WAL file grows to about 40 MB between
#: checkpoints; durability is unchanged (every commit still fsyncs the WAL, synchronous=FULL).
WAL_AUTOCHECKPOINT_PAGES = 10000

#: Longest error text kept with a dead letter.
MAX_ERROR_CHARS = 4000

_SCHEMA = """
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


#: Rows of one group-commit statement at most (5 bound parameters each).
_GROUP_ROWS = 1000


def _group_insert(rows: int) -> str:
    """One statement inserting ``rows`` events unless their id is spooled, acknowledged or
    dead-lettered already (or earlier in the same statement); returns the ids inserted."""
    values = ", ".join(["(?, ?, ?, ?, ?)"] * rows)  # placeholders only, never data
    return "".join((
        "INSERT OR IGNORE INTO events (event_id, kind, spooled_at, size, document) "
        "SELECT column1, column2, column3, column4, column5 FROM (VALUES ", values, ") AS v "
        "WHERE NOT EXISTS (SELECT 1 FROM acked WHERE event_id = v.column1) "
        "AND NOT EXISTS (SELECT 1 FROM dead_letters WHERE event_id = v.column1) "
        "RETURNING event_id",
    ))


#: Insert one event unless its id is spooled, acknowledged or dead-lettered already.
_INSERT_ONE = _group_insert(1)

#: Why an event can be dropped (``cause`` label of tuf_exporter_events_dropped_total).
DROP_CAUSES = ("spool_full", "too_old", "rejected", "spool_error")


class SpoolError(StoreError):
    """The spool cannot be used (the database cannot be opened or written)."""

    cause = ErrorCause.SPOOL


@dataclass(frozen=True)
class _Row:
    """An event prepared for insertion: its canonical JSON document and byte size."""

    event_id: str
    kind: str
    size: int
    document: str

    @classmethod
    def of(cls, event: Event) -> _Row:
        document = event.to_json()
        size = len(document) if document.isascii() else len(document.encode("utf-8"))
        return cls(event.event_id, str(event.kind), size, document)


class _Request:
    """One producer's events waiting for a group commit, and what became of them."""

    __slots__ = ("done", "drops", "error", "new", "produced", "rows", "spooled_at")

    def __init__(self, rows: list[_Row], spooled_at: float) -> None:
        self.rows = rows
        self.spooled_at = spooled_at
        self.done = False
        self.error: BaseException | None = None
        self.new: list[bool] = []
        self.produced: Counter[str] = Counter()
        self.drops: list[tuple[str, int, str]] = []

    def reset(self) -> None:
        self.new = []
        self.produced = Counter()
        self.drops = []


@dataclass(frozen=True)
class SpooledEvent:
    """An event waiting in the spool, as the shipper sees it: ``text`` is the stored canonical
    JSON (what sinks can ship verbatim), ``document`` the parsed dict (parsed on first use)."""

    seq: int
    event_id: str
    kind: str
    spooled_at: float
    text: str

    @cached_property
    def document(self) -> dict[str, Any]:
        """The document as a dict (parsed from :attr:`text` once)."""
        parsed: dict[str, Any] = json.loads(self.text)
        return parsed


@dataclass(frozen=True)
class DeadLetter:
    """A document the sink rejected for good, kept with the sink's error."""

    event_id: str
    kind: str
    failed_at: float
    status: int | None
    error: str
    document: dict[str, Any]


class Spool:
    """The durable event spool; also the :class:`~exporter.events.model.Emitter` producers call."""

    def __init__(
        self,
        path: Path,
        *,
        max_bytes: int = Events.spool_max_bytes,
        max_age: float = Events.spool_max_age,
        dead_letter_max: int = 10_000,
        busy_timeout: float = 5.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.path = path
        self.max_bytes = max_bytes
        self.max_age = max_age
        self.dead_letter_max = dead_letter_max
        self.busy_timeout = busy_timeout
        self.clock = clock
        #: guards the write connection, ``_bytes`` and ``_count``
        self._lock = threading.RLock()
        #: guards the read connection (taken after ``_lock`` when both are needed)
        self._read_lock = threading.Lock()
        #: guards the counters and the listeners
        self._stats_lock = threading.Lock()
        #: guards the group-commit queue and leadership
        self._commit = threading.Condition(threading.Lock())
        self._queue: list[_Request] = []
        self._leader = False
        self._listeners: list[Callable[[], None]] = []
        self._next_enforce = 0.0
        self._produced: Counter[str] = Counter()
        self._dropped: Counter[str] = Counter()
        self.corrupt_recoveries = 0
        self._generation = 0
        self._bytes = 0
        self._count = 0
        self._conn: sqlite3.Connection | None = None
        self._reader: sqlite3.Connection | None = None
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self._lock:
            self._open()

    @classmethod
    def from_settings(cls, state_dir: Path, settings: Events, **kwargs: Any) -> Spool:
        """The spool ``<state_dir>/spool.sqlite`` with the configured limits."""
        return cls(
            state_dir / SPOOL_FILE,
            max_bytes=settings.spool_max_bytes,
            max_age=settings.spool_max_age,
            **kwargs,
        )

    # -- connection and recovery ---------------------------------------------------------------

    def _open(self) -> None:
        try:
            self._connect()
        except sqlite3.DatabaseError as exc:
            if not is_corruption(exc):
                raise SpoolError(f"cannot open the event spool {self.path}: {exc}") from exc
            self._recover(exc)

    def _connect(self) -> None:
        conn = open_database(self.path, _SCHEMA, self.busy_timeout)
        try:
            conn.execute(f"PRAGMA wal_autocheckpoint = {WAL_AUTOCHECKPOINT_PAGES:d}")
            total, count = conn.execute(
                "SELECT COALESCE(SUM(size), 0), COUNT(*) FROM events"
            ).fetchone()
            reader = connect(self.path, self.busy_timeout)
        except BaseException:
            conn.close()
            raise
        try:
            reader.execute("PRAGMA query_only=1")
        except BaseException:
            reader.close()
            conn.close()
            raise
        self._conn = conn
        with self._read_lock:
            self._reader = reader
        self._bytes = int(total)
        self._count = int(count)

    def _recover(self, exc: BaseException) -> None:
        """Rename the unreadable spool aside, log loudly, count it and start a new one."""
        self._close_reader()
        if self._conn is not None:
            with suppress(sqlite3.Error):
                self._conn.close()
            self._conn = None
        self._generation += 1
        aside = move_aside(self.path, datetime.now(UTC))
        self.corrupt_recoveries += 1
        log.error(
            "EVENT SPOOL CORRUPT: %s is not a readable SQLite database (%s); moved it to %s "
            "and started a new, empty spool. Events still in the old file were not shipped.",
            self.path,
            exc,
            aside,
        )
        try:
            self._connect()
        except sqlite3.DatabaseError as again:
            raise SpoolError(f"cannot create a new event spool {self.path}: {again}") from again

    def _close_reader(self) -> None:
        with self._read_lock:
            if self._reader is not None:
                with suppress(sqlite3.Error):
                    self._reader.close()
                self._reader = None

    def _db(self) -> sqlite3.Connection:
        if self._conn is None:
            raise SpoolError("the event spool is closed")
        return self._conn

    def _read(self, action: Callable[[sqlite3.Connection], T]) -> T:
        """Run ``action`` on the read connection under its own lock (not the write lock);
        on corruption recover once (under the write lock) and retry."""
        for attempt in (1, 2):
            generation = self._generation
            try:
                with self._read_lock:
                    if self._reader is None:
                        raise SpoolError("the event spool is closed")
                    return action(self._reader)
            except sqlite3.DatabaseError as exc:
                if attempt == 2 or not is_corruption(exc):
                    raise
                with self._lock:
                    if self._generation == generation:  # nobody recovered meanwhile
                        self._recover(exc)
        raise AssertionError("unreachable")

    def _guarded(self, action: Callable[[sqlite3.Connection], T]) -> T:
        """Run ``action`` under the lock; on corruption recover once and retry."""
        with self._lock:
            try:
                return action(self._db())
            except sqlite3.DatabaseError as exc:
                if not is_corruption(exc):
                    raise
                self._recover(exc)
                return action(self._db())

    @contextmanager
    def _transaction(self, conn: sqlite3.Connection) -> Iterator[sqlite3.Connection]:
        conn.execute("BEGIN IMMEDIATE")
        try:
            yield conn
        except BaseException:
            conn.execute("ROLLBACK")
            total, count = conn.execute(
                "SELECT COALESCE(SUM(size), 0), COUNT(*) FROM events"
            ).fetchone()
            self._bytes, self._count = int(total), int(count)
            raise
        conn.execute("COMMIT")

    def close(self) -> None:
        """Close the database (a checkpoint folds the WAL back into the main file)."""
        with self._lock:
            self._close_reader()
            if self._conn is not None:
                with suppress(sqlite3.Error):
                    self._conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
                self._conn.close()
                self._conn = None

    def __enter__(self) -> Spool:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- producing -----------------------------------------------------------------------------

    def emit(self, event: Event) -> bool:
        """Spool ``event`` durably; never raises (a failure is logged and counted). False
        when it failed."""
        try:
            self.put(event)
        except Exception as exc:  # noqa: BLE001 - emit never raises into the prober
            with self._stats_lock:
                self._dropped["spool_error"] += 1
            log.error("could not spool %s event %s: %s", event.kind, event.event_id, exc)
            return False
        return True

    def emit_many(self, events: Iterable[Event]) -> bool:
        """Spool ``events`` durably and atomically, in one transaction (all or none); never
        raises (a failure is logged and counted for every event). False when it failed."""
        batch = list(events)
        try:
            self.put_many(batch)
        except Exception as exc:  # noqa: BLE001 - emit never raises into the prober
            with self._stats_lock:
                self._dropped["spool_error"] += len(batch)
            log.error("could not spool %d event(s): %s", len(batch), exc)
            return False
        return True

    def put(self, event: Event) -> bool:
        """Spool ``event``; True when it was new, False for a duplicate. Raises on failure."""
        return self._submit([_Row.of(event)])[0]

    def put_many(self, events: Iterable[Event]) -> list[bool]:
        """Spool ``events`` in one transaction, all or none; for each, True when it was new.
        Raises on failure (then none was spooled)."""
        rows = [_Row.of(event) for event in events]
        return self._submit(rows) if rows else []

    def _submit(self, rows: list[_Row]) -> list[bool]:
        """Queue ``rows`` for the next group commit and return once it is committed.

        The first producer to find no commit in progress leads: it takes everything queued
        and commits it in one transaction, then wakes the others. A producer whose rows were
        not in that commit (it queued while it ran) leads the next one.
        """
        request = _Request(rows, self.clock())
        with self._commit:
            self._queue.append(request)
            while self._leader and not request.done:
                self._commit.wait()
            if not request.done:
                self._leader = True
                group, self._queue = self._queue, []
        if not request.done:
            try:
                self._commit_group(group)
            finally:
                with self._commit:
                    self._leader = False
                    for member in group:
                        if not member.done:  # only when _commit_group itself broke
                            member.error = member.error or SpoolError("the commit was aborted")
                            member.done = True
                    self._commit.notify_all()
        if request.error is not None:
            raise request.error
        return request.new

    def _commit_group(self, group: list[_Request]) -> None:
        """Write every request of ``group`` in one transaction (each in a savepoint when
        there are several) and commit; then publish the outcomes (under ``_commit``)."""

        def write(conn: sqlite3.Connection) -> None:
            if self._insert_at_once(conn, group):
                return
            with self._transaction(conn):
                if len(group) == 1:
                    group[0].reset()
                    group[0].error = None
                    self._insert(conn, group[0])
                    return
                for request in group:
                    request.reset()
                    request.error = None
                    before = (self._bytes, self._count)
                    conn.execute("SAVEPOINT producer")
                    try:
                        self._insert(conn, request)
                    except sqlite3.Error as exc:
                        if is_corruption(exc):
                            raise
                        conn.execute("ROLLBACK TO producer")
                        conn.execute("RELEASE producer")
                        self._bytes, self._count = before
                        request.reset()
                        request.error = exc
                    else:
                        conn.execute("RELEASE producer")

        try:
            self._guarded(write)
        except Exception as exc:  # noqa: BLE001 - handed to every producer of the group
            with self._commit:
                for request in group:
                    request.reset()
                    request.error = exc
                    request.done = True
            return
        spooled = False
        with self._stats_lock:
            for request in group:
                self._produced.update(request.produced)
                for cause, count, _why in request.drops:
                    self._dropped[cause] += count
                spooled = spooled or any(request.new)
        for request in group:
            for _cause, count, why in request.drops:
                log.warning("event spool dropped %d event(s), oldest first: %s", count, why)
        with self._commit:
            for request in group:
                request.done = True
        if spooled:
            self._notify()

    def _insert_at_once(self, conn: sqlite3.Connection, group: list[_Request]) -> bool:
        """The common case, every event of the group fits with room to spare: one statement
        in autocommit mode, its own transaction, committed (and the WAL fsynced,
        synchronous=FULL) before it returns. One statement, not one per event and savepoint:
        each SQLite call gives up the GIL, and getting it back from busy producer threads is
        what a group commit would otherwise spend its time on. False (nothing written) when
        the group needs the general path: room to make, too many rows, or an error."""
        rows = [(request, row) for request in group for row in request.rows]
        size = sum(row.size for _, row in rows)
        if not rows or len(rows) > _GROUP_ROWS or self._bytes + size > self.max_bytes:
            return False
        params = [value for request, row in rows for value in
                  (row.event_id, row.kind, request.spooled_at, row.size, row.document)]
        try:
            inserted = {r[0] for r in conn.execute(_group_insert(len(rows)), params).fetchall()}
        except sqlite3.Error as exc:
            if is_corruption(exc):
                raise
            return False  # the statement is atomic: nothing was written; take the general path
        seen: set[str] = set()
        for request in group:
            request.reset()
            request.error = None
            for row in request.rows:
                new = row.event_id in inserted and row.event_id not in seen
                seen.add(row.event_id)
                request.new.append(new)
                if new:
                    request.produced[row.kind] += 1
                    self._bytes += row.size
                    self._count += 1
        return True

    def _fits(self, row: _Row) -> bool:
        """True when ``row`` fits in the spool without dropping anything."""
        return self._bytes + row.size <= self.max_bytes

    def _insert(self, conn: sqlite3.Connection, request: _Request) -> None:
        """Insert the rows of ``request`` (inside a transaction); outcomes go to ``request``."""
        for row in request.rows:
            if self._fits(row):
                # one statement: nothing returned when the id is spooled, acked or
                # dead-lettered already
                inserted = conn.execute(
                    _INSERT_ONE,
                    (row.event_id, row.kind, request.spooled_at, row.size, row.document),
                ).fetchall()
                request.new.append(bool(inserted))
                if inserted:
                    request.produced[row.kind] += 1
                    self._bytes += row.size
                    self._count += 1
                continue
            if self._known(conn, row.event_id):
                request.new.append(False)
                continue
            request.new.append(True)
            request.produced[row.kind] += 1
            if row.size > self.max_bytes:
                request.drops.append(("spool_full", 1, "an event larger than spool_max_bytes"))
                continue
            dropped = self._make_room(conn, row.size)
            if dropped:
                request.drops.append(("spool_full", dropped, "the spool reached spool_max_bytes"))
            conn.execute(
                "INSERT INTO events (event_id, kind, spooled_at, size, document) "
                "VALUES (?, ?, ?, ?, ?)",
                (row.event_id, row.kind, request.spooled_at, row.size, row.document),
            )
            self._bytes += row.size
            self._count += 1

    @staticmethod
    def _known(conn: sqlite3.Connection, event_id: str) -> bool:
        row = conn.execute(
            "SELECT EXISTS (SELECT 1 FROM events WHERE event_id = ?)"
            " OR EXISTS (SELECT 1 FROM acked WHERE event_id = ?)"
            " OR EXISTS (SELECT 1 FROM dead_letters WHERE event_id = ?)",
            (event_id, event_id, event_id),
        ).fetchone()
        return bool(row[0])

    def _make_room(self, conn: sqlite3.Connection, size: int) -> int:
        """Drop the oldest events until ``size`` more bytes fit (inside a transaction);
        returns how many were dropped."""
        dropped = 0
        while self._bytes + size > self.max_bytes:
            rows = conn.execute("SELECT seq, size FROM events ORDER BY seq LIMIT 256").fetchall()
            if not rows:
                self._bytes = 0
                self._count = 0
                break
            for seq, row_size in rows:
                conn.execute("DELETE FROM events WHERE seq = ?", (seq,))
                self._bytes -= int(row_size)
                self._count -= 1
                dropped += 1
                if self._bytes + size <= self.max_bytes:
                    break
        return dropped

    def _drop_count(self, cause: str, count: int, why: str) -> None:
        with self._stats_lock:
            self._dropped[cause] += count
        log.warning("event spool dropped %d event(s), oldest first: %s", count, why)

    # -- shipping ------------------------------------------------------------------------------

    def add_listener(self, listener: Callable[[], None]) -> None:
        """Call ``listener()`` (quickly, without arguments) after each commit that spooled new
        events; it runs on the producer's thread, so it should only look at :attr:`backlog`
        and perhaps wake someone, never touch the database."""
        with self._stats_lock:
            self._listeners.append(listener)

    @property
    def backlog(self) -> int:
        """How many events are spooled, from memory (no SQL): cheap enough to check after
        every commit."""
        return self._count

    def _notify(self) -> None:
        with self._stats_lock:
            listeners = list(self._listeners)
        for listener in listeners:
            try:
                listener()
            except Exception:
                log.exception("event spool listener failed")

    def peek(self, n: int, *, after: int = 0) -> list[SpooledEvent]:
        """The ``n`` oldest events (those with a ``seq`` above ``after``: past a batch still
        being acknowledged), oldest first; the age policy is applied at most once a second
        first."""
        now = time.monotonic()
        if now >= self._next_enforce:
            self._next_enforce = now + 1.0
            self.enforce_limits()

        def select(conn: sqlite3.Connection) -> list[Any]:
            return conn.execute(
                "SELECT seq, event_id, kind, spooled_at, document FROM events WHERE seq > ? "
                "ORDER BY seq LIMIT ?",
                (after, n),
            ).fetchall()

        rows = self._read(select)  # the read connection: producers are not held up
        return [SpooledEvent(*r) for r in rows]

    def ack(self, event_ids: Iterable[str]) -> int:
        """Remove delivered events; returns how many were still spooled."""
        ids = list(dict.fromkeys(event_ids))
        now = self.clock()

        def delete(conn: sqlite3.Connection) -> int:
            removed = 0
            freed = 0
            with self._transaction(conn):
                for start in range(0, len(ids), 500):
                    chunk = ids[start : start + 500]
                    marks = ",".join("?" * len(chunk))
                    # one statement deletes and tells the sizes freed (no SELECT first)
                    sizes = conn.execute(
                        f"DELETE FROM events WHERE event_id IN ({marks}) "  # noqa: S608
                        "RETURNING size",
                        chunk,
                    ).fetchall()
                    conn.executemany(
                        "INSERT OR IGNORE INTO acked (event_id, acked_at) VALUES (?, ?)",
                        [(event_id, now) for event_id in chunk],
                    )
                    freed += sum(int(size) for (size,) in sizes)
                    removed += len(sizes)
            self._bytes -= freed
            self._count -= removed
            return removed

        return self._guarded(delete) if ids else 0

    def dead_letter(self, event_id: str, error: str, status: int | None = None) -> bool:
        """Set a rejected event aside with the sink's error; counted as dropped{rejected}."""
        now = self.clock()

        def move(conn: sqlite3.Connection) -> bool:
            with self._transaction(conn):
                row = conn.execute(
                    "SELECT kind, size, document FROM events WHERE event_id = ?", (event_id,)
                ).fetchone()
                if row is None:
                    return False
                conn.execute(
                    "INSERT OR REPLACE INTO dead_letters "
                    "(event_id, kind, failed_at, status, error, document) VALUES (?,?,?,?,?,?)",
                    (event_id, row[0], now, status, error[:MAX_ERROR_CHARS], row[2]),
                )
                conn.execute("DELETE FROM events WHERE event_id = ?", (event_id,))
                self._bytes -= int(row[1])
                self._count -= 1
                return True

        moved = self._guarded(move)
        if moved:
            with self._stats_lock:
                self._dropped["rejected"] += 1
            log.warning(
                "the event sink rejected event %s (status %s); kept as a dead letter: %s",
                event_id,
                status,
                error[:500],
            )
        return moved

    def dead_letters(self, limit: int = 100) -> list[DeadLetter]:
        """The most recent dead letters, newest first, for inspection."""

        def select(conn: sqlite3.Connection) -> list[Any]:
            return conn.execute(
                "SELECT event_id, kind, failed_at, status, error, document FROM dead_letters "
                "ORDER BY failed_at DESC LIMIT ?",
                (limit,),
            ).fetchall()

        rows = self._read(select)
        return [DeadLetter(r[0], r[1], r[2], r[3], r[4], json.loads(r[5])) for r in rows]

    def requeue_dead_letters(self, event_ids: Iterable[str] | None = None) -> int:
        """Put dead letters (all, or those in ``event_ids``) back in the spool, e.g. after a
        mapping fix; returns how many were requeued."""
        wanted = None if event_ids is None else set(event_ids)
        now = self.clock()

        def requeue(conn: sqlite3.Connection) -> int:
            moved = 0
            with self._transaction(conn):
                rows = conn.execute(
                    "SELECT event_id, kind, document FROM dead_letters ORDER BY failed_at"
                ).fetchall()
                for event_id, kind, document in rows:
                    if wanted is not None and event_id not in wanted:
                        continue
                    size = len(document.encode("utf-8"))
                    conn.execute("DELETE FROM dead_letters WHERE event_id = ?", (event_id,))
                    inserted = conn.execute(
                        "INSERT OR IGNORE INTO events (event_id, kind, spooled_at, size, "
                        "document) VALUES (?, ?, ?, ?, ?)",
                        (event_id, kind, now, size, document),
                    ).rowcount
                    if inserted:
                        self._bytes += size
                        self._count += 1
                    moved += 1
            return moved

        moved = self._guarded(requeue)
        if moved:
            self._notify()
        return moved

    def enforce_limits(self) -> int:
        """Apply the age policy (and trim old ack and dead-letter records); returns the number
        of events dropped as too old."""
        cutoff = self.clock() - self.max_age

        def prune(conn: sqlite3.Connection) -> int:
            with self._transaction(conn):
                # the too-old events are a prefix of the spool order (no index on spooled_at,
                # which every insert would have to maintain): find the first young one
                young = conn.execute(
                    "SELECT seq FROM events WHERE spooled_at >= ? ORDER BY seq LIMIT 1",
                    (cutoff,),
                ).fetchone()
                where, args = ("WHERE seq < ?", (young[0],)) if young else ("", ())
                freed, count = conn.execute(
                    f"SELECT COALESCE(SUM(size), 0), COUNT(*) FROM events {where}",  # noqa: S608
                    args,
                ).fetchone()
                if count:
                    conn.execute(f"DELETE FROM events {where}", args)  # noqa: S608
                    self._bytes -= int(freed)
                    self._count -= int(count)
                conn.execute("DELETE FROM acked WHERE acked_at < ?", (cutoff,))
                conn.execute("DELETE FROM dead_letters WHERE failed_at < ?", (cutoff,))
                conn.execute(
                    "DELETE FROM dead_letters WHERE event_id IN (SELECT event_id FROM "
                    "dead_letters ORDER BY failed_at DESC LIMIT -1 OFFSET ?)",
                    (self.dead_letter_max,),
                )
                return int(count)

        dropped = self._guarded(prune)
        if dropped:
            self._drop_count("too_old", dropped, "events older than spool_max_age")
        return dropped

    # -- introspection -------------------------------------------------------------------------

    def __len__(self) -> int:
        return self._read(
            lambda conn: int(conn.execute("SELECT COUNT(*) FROM events").fetchone()[0])
        )

    @property
    def size_bytes(self) -> int:
        """Total byte length of the spooled documents (what ``max_bytes`` bounds)."""
        return self._bytes

    def produced(self) -> dict[str, int]:
        """Events newly spooled since start, by kind."""
        with self._stats_lock:
            return dict(self._produced)

    def dropped(self) -> dict[str, int]:
        """Events dropped since start, by cause (spool_full, too_old, rejected, spool_error)."""
        with self._stats_lock:
            return dict(self._dropped)

    def metrics(self) -> list[Metric]:
        """events_total{kind}, events_spooled and events_dropped_total{cause} families."""
        produced = catalogue.family("tuf_exporter_events_total")
        for kind, count in sorted(self.produced().items()):
            produced.add_metric([kind], count)
        spooled = catalogue.family("tuf_exporter_events_spooled")
        try:
            spooled.add_metric([], len(self))
        except (sqlite3.Error, SpoolError) as exc:
            log.error("cannot count the spooled events: %s", exc)
        dropped = catalogue.family("tuf_exporter_events_dropped_total")
        # known causes start at 0, so the first drop is an increase Prometheus can see
        counts = {**dict.fromkeys(DROP_CAUSES, 0), **self.dropped()}
        for cause, count in sorted(counts.items()):
            dropped.add_metric([cause], count)
        return [produced, spooled, dropped]
