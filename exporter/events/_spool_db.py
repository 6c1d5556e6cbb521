"""The spool's SQLite side: schema and statements, rows, the two connections and recovery.

:class:`_SpoolConnection` is the base of :class:`exporter.events.spool.Spool`: it owns the write
and read connections, the locks and counters every part of the spool shares, and the rename
aside of a corrupt file. See :mod:`exporter.events.spool` for the guarantees.
"""

from __future__ import annotations

import logging
import sqlite3
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TypeVar

from exporter.config import Events
from exporter.events.model import Event
from exporter.probe import ErrorCause, StoreError
from exporter.sqlite_files import connect, is_corruption, move_aside, open_database

log = logging.getLogger("exporter.events.spool")  # the spool logs as one, whatever module

T = TypeVar("T")

#: File name of the spool inside the state directory.
SPOOL_FILE = "spool.sqlite"

#: WAL pages (4 KiB each) after which a commit checkpoints the spool (SQLite's default is
#: 1000). With schema 1, acknowledging a batch of 500 events dirtied about 1000 pages (two
#: indexes keyed by the random event id) and a checkpoint after nearly every batch wrote the
#: same index pages again and again (47 ms a batch with 1000 pages, 28 ms with 10000). Since
#: schema 2 a batch frees a run of consecutive rows (about 150 pages); spacing checkpoints
#: still saves rewriting the pages an emit touches. The WAL file grows to about 40 MB between
#: checkpoints; durability is unchanged (every commit still fsyncs the WAL, synchronous=FULL).
WAL_AUTOCHECKPOINT_PAGES = 10000

#: Longest error text kept with a dead letter.
MAX_ERROR_CHARS = 4000

#: The layout of the spool file, recorded in its header (``PRAGMA user_version``). Files
#: written before versions were recorded read 0: version 1 (``events`` with a unique
#: ``event_id``, delivered ids in ``acked``) or its first draft (no ``acked`` and no
#: ``dead_letters`` yet). Version 2 keeps every id in ``known_ids`` and nothing keyed by the
#: id in ``events``: acknowledging a batch deletes consecutive rows, not entries scattered
#: over two indexes keyed by a SHA-256 (issue #18, the backlog drain).
SCHEMA_VERSION = 2

#: The ids the spool has taken, with the time each was first spooled: an insert into
#: ``events`` whose id is here is ignored (the trigger), else the id is added. Only
#: :meth:`~exporter.events.spool.Spool.enforce_limits` forgets ids (``2 * max_age`` after
#: they were spooled) and a requeued dead letter is spooled anew.
_KNOWN_IDS = (
    "CREATE TABLE known_ids ("
    " event_id TEXT PRIMARY KEY, spooled_at REAL NOT NULL) WITHOUT ROWID",
    "CREATE INDEX known_ids_spooled_at ON known_ids (spooled_at)",
)

#: ``seq`` is AUTOINCREMENT: a seq is never reused, so it names one event for the life of
#: the file and acknowledging by seq can never remove an event spooled since.
_EVENTS = (
    "CREATE TABLE events ("
    " seq INTEGER PRIMARY KEY AUTOINCREMENT, event_id TEXT NOT NULL, kind TEXT NOT NULL,"
    " spooled_at REAL NOT NULL, size INTEGER NOT NULL, document TEXT NOT NULL)"
)

#: The smallest b-tree holding every event, which SQLite counts for ``COUNT(*)`` (``len``,
#: the events_spooled metric at each scrape) instead of the table, whose leaves hold the
#: documents (about 1 GB for 1,000,000 events: 0.6 s a count at 100,000 events, against
#: 30 ms for this index). In seq order: an insert appends, an acknowledgement deletes
#: consecutive entries.
_EVENTS_SEQ = "CREATE INDEX events_seq ON events (seq)"

#: Every insert into ``events`` (the group commit, a single event, a requeued dead letter)
#: goes through this rule: a known id is skipped (not an error; ``RETURNING`` leaves it
#: out), a new one becomes known, in the same statement.
_ONCE = (
    "CREATE TRIGGER events_once BEFORE INSERT ON events BEGIN"
    " SELECT RAISE(IGNORE) WHERE EXISTS"
    " (SELECT 1 FROM known_ids WHERE event_id = NEW.event_id);"
    " INSERT INTO known_ids (event_id, spooled_at) VALUES (NEW.event_id, NEW.spooled_at);"
    " END"
)

_DEAD_LETTERS = (
    "CREATE TABLE IF NOT EXISTS dead_letters ("
    " event_id TEXT PRIMARY KEY, kind TEXT NOT NULL, failed_at REAL NOT NULL,"
    " status INTEGER, error TEXT NOT NULL, document TEXT NOT NULL)",
    "CREATE INDEX IF NOT EXISTS dead_letters_failed_at ON dead_letters (failed_at)",
)

#: A new spool file.
_CREATE = (_EVENTS, _EVENTS_SEQ, *_KNOWN_IDS, _ONCE, *_DEAD_LETTERS)

#: A spool of version 1 (or its draft) to version 2, in one transaction: every id it knows
#: (spooled, acknowledged, dead-lettered) goes to ``known_ids`` (an acknowledged id with its
#: acknowledgement time, so it is remembered at least as long as version 1 did), the events
#: are copied in spool order with their seqs, and ``acked`` goes.
_MIGRATE_FROM_1 = (
    "CREATE TABLE IF NOT EXISTS acked (event_id TEXT PRIMARY KEY, acked_at REAL NOT NULL)"
    " WITHOUT ROWID",
    *_DEAD_LETTERS,
    *_KNOWN_IDS,
    "INSERT OR IGNORE INTO known_ids (event_id, spooled_at)"
    " SELECT event_id, spooled_at FROM events",
    "INSERT OR IGNORE INTO known_ids (event_id, spooled_at) SELECT event_id, acked_at FROM acked",
    "INSERT OR IGNORE INTO known_ids (event_id, spooled_at)"
    " SELECT event_id, failed_at FROM dead_letters",
    "ALTER TABLE events RENAME TO events_v1",
    _EVENTS,
    "INSERT INTO events (seq, event_id, kind, spooled_at, size, document)"
    " SELECT seq, event_id, kind, spooled_at, size, document FROM events_v1 ORDER BY seq",
    "DROP TABLE events_v1",
    "DROP TABLE acked",
    _EVENTS_SEQ,
    _ONCE,
)


def _prepare(conn: sqlite3.Connection, path: Path) -> None:
    """Create the schema in a new file, or migrate an older one to :data:`SCHEMA_VERSION`
    (one transaction: a failure leaves the file as it was). Raises :class:`SpoolError` for
    a file written by a newer tuf-exporter, ``sqlite3.Error`` when the migration fails."""
    version = int(conn.execute("PRAGMA user_version").fetchone()[0])
    if version == SCHEMA_VERSION:
        return
    if version > SCHEMA_VERSION:
        raise SpoolError(
            f"the event spool {path} has schema version {version}, written by a newer "
            f"tuf-exporter (this one knows {SCHEMA_VERSION}); upgrade, or move the file aside"
        )
    conn.execute("BEGIN IMMEDIATE")
    try:
        old = conn.execute(
            "SELECT COUNT(*) FROM sqlite_master WHERE type = 'table' AND name = 'events'"
        ).fetchone()[0]
        if old:
            log.info("migrating the event spool %s to schema version %d", path, SCHEMA_VERSION)
        for statement in _MIGRATE_FROM_1 if old else _CREATE:
            conn.execute(statement)
        conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION:d}")
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    conn.execute("COMMIT")
    if old:
        # the copy went through the WAL: fold it back and give its space back now
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")


#: Rows of one group-commit statement at most (5 bound parameters each).
_GROUP_ROWS = 1000


def _group_insert(rows: int) -> str:
    """One statement inserting ``rows`` events unless their id is known already (spooled,
    acknowledged, dead-lettered or earlier in the same statement: the ``events_once``
    trigger); returns the ids inserted."""
    values = ", ".join(["(?, ?, ?, ?, ?)"] * rows)  # placeholders only, never data
    return "".join((
        "INSERT INTO events (event_id, kind, spooled_at, size, document) VALUES ", values,
        " RETURNING event_id",
    ))


#: Insert one event unless its id is known already.
_INSERT_ONE = _group_insert(1)



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



class _SpoolConnection:
    """The spool's connections, locks and counters (see :class:`~exporter.events.spool.Spool`)."""

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

    # -- connection and recovery ---------------------------------------------------------------

    def _open(self) -> None:
        try:
            self._connect()
        except sqlite3.DatabaseError as exc:
            if not is_corruption(exc):
                raise SpoolError(f"cannot open the event spool {self.path}: {exc}") from exc
            self._recover(exc)

    def _connect(self) -> None:
        conn = open_database(self.path, "", self.busy_timeout)
        try:
            _prepare(conn, self.path)
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
