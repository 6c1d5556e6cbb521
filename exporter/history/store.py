"""SQLite persistence of the history store: schema, integrity check, corruption recovery, retention.

The database lives at ``<state_dir>/history.sqlite`` in WAL mode with ``synchronous=FULL``: a
committed observation survives a crash or ``kill -9`` of the exporter and a power loss of the
machine (the findings it counted and their events in the ``outbox`` table go together; the
event spool is as durable, so an event drained from the outbox into the spool is never lost
by the outbox's commit being undone). Every observation is written in one ``BEGIN IMMEDIATE``
transaction, so a reader never sees half an observation.

Detection (what the rows *mean*) lives in :mod:`exporter.history._observation`; this module only
knows tables, rows and SQL. Times are stored as Unix seconds (REAL). It is longer than most
modules because it is the one place for every statement of the history database, next to the
schema they depend on.
"""

from __future__ import annotations

import json
import logging
import sqlite3
import threading
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

from exporter.probe import ErrorCause, StoreError
from exporter.sqlite_files import connect, is_corruption, move_aside, open_database

log = logging.getLogger(__name__)

#: File name of the history database inside the state directory.
FILENAME = "history.sqlite"
#: Version of the table layout below; stored in ``meta``.
SCHEMA_VERSION = 1
#: Versions kept per (repository, endpoint, role) whatever their age (learned cadence needs them).
KEEP_NEWEST = 24

OnCorrupt = Literal["raise", "rename"]


_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
-- Every (version, content hash) an endpoint served for a role.
CREATE TABLE IF NOT EXISTS versions (
    repository TEXT NOT NULL, endpoint TEXT NOT NULL, role TEXT NOT NULL,
    version INTEGER NOT NULL, sha256 TEXT NOT NULL,
    first_seen REAL NOT NULL, last_seen REAL NOT NULL, expires REAL NOT NULL,
    signed_by TEXT NOT NULL,
    PRIMARY KEY (repository, endpoint, role, version, sha256)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS versions_by_role ON versions (repository, role, version);
-- What each endpoint serves now, and the highest version it ever served (detection state).
CREATE TABLE IF NOT EXISTS current (
    repository TEXT NOT NULL, endpoint TEXT NOT NULL, role TEXT NOT NULL,
    version INTEGER NOT NULL, sha256 TEXT NOT NULL, since REAL NOT NULL,
    last_seen REAL NOT NULL, max_version INTEGER NOT NULL,
    PRIMARY KEY (repository, endpoint, role)
) WITHOUT ROWID;
-- Root versions of a repository, with the keys and threshold of every role.
CREATE TABLE IF NOT EXISTS roots (
    repository TEXT NOT NULL, version INTEGER NOT NULL, sha256 TEXT NOT NULL,
    first_seen REAL NOT NULL, endpoint TEXT NOT NULL, role_keys TEXT,
    PRIMARY KEY (repository, version)
) WITHOUT ROWID;
-- "Reported once" markers of findings that are not transitions of the state above.
CREATE TABLE IF NOT EXISTS flags (
    repository TEXT NOT NULL, key TEXT NOT NULL, first_seen REAL NOT NULL,
    last_seen REAL NOT NULL,
    PRIMARY KEY (repository, key)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS counters (
    metric TEXT NOT NULL, repository TEXT NOT NULL, endpoint TEXT NOT NULL,
    label TEXT NOT NULL, value REAL NOT NULL,
    PRIMARY KEY (metric, repository, endpoint, label)
) WITHOUT ROWID;
-- Mirrors currently behind the primary, since when (the mirror_lag_started finding).
CREATE TABLE IF NOT EXISTS lag (
    repository TEXT NOT NULL, endpoint TEXT NOT NULL, since REAL NOT NULL,
    PRIMARY KEY (repository, endpoint)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS findings (
    id INTEGER PRIMARY KEY AUTOINCREMENT, time REAL NOT NULL, repository TEXT NOT NULL,
    endpoint TEXT NOT NULL, kind TEXT NOT NULL, body TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS findings_by_time ON findings (repository, time);
-- The event of each finding, written in the finding's transaction and deleted once the event
-- spool committed it (HistoryStore.drain_outbox): a counted finding is always shipped.
CREATE TABLE IF NOT EXISTS outbox (
    seq INTEGER PRIMARY KEY AUTOINCREMENT, event_id TEXT NOT NULL UNIQUE,
    document TEXT NOT NULL
);
"""


class HistoryError(StoreError):
    """The history store cannot be used (other than corruption)."""

    cause = ErrorCause.HISTORY


class HistoryCorruptError(HistoryError):
    """The history database file is damaged or is not a SQLite database.

    The message names the file and the recovery. ``path`` is the file, ``detail`` what SQLite
    reported.
    """

    def __init__(self, path: Path, detail: str) -> None:
        self.path = path
        self.detail = detail
        super().__init__(
            f"history store {path} is corrupt ({detail}). Recovery: stop the exporter and move "
            f"the file aside together with its -wal and -shm files (or delete them), or open the "
            f"store with on_corrupt='rename', which renames it to "
            f"{path.name}.corrupt-<UTC time> and starts a fresh history. A fresh history loses "
            f"the version history, root key history and counters (Prometheus handles the counter "
            f"reset); the next probe of each endpoint becomes the new baseline and raises no "
            f"alarms."
        )


class HistoryRecoveredError(HistoryCorruptError):
    """Corruption found while running, already recovered from: the damaged file was moved to
    ``aside`` and a fresh history started; the operation that found it was not recorded.

    A fault of this host, never of a repository (count it as the exporter's own error).
    """

    def __init__(self, path: Path, detail: str, aside: Path) -> None:
        self.aside = aside
        super().__init__(path, detail)
        self.args = (
            f"history store {path} was found corrupt while running ({detail}); it was moved "
            f"to {aside} and a fresh history started (version history, root key history and "
            f"counters start over; the next probe of each endpoint is the new baseline)",
        )

    def __str__(self) -> str:
        return str(self.args[0])


def from_ts(seconds: float) -> datetime:
    """Aware UTC datetime of Unix seconds."""
    return datetime.fromtimestamp(seconds, UTC)


# ---------------------------------------------------------------------------------------------
# Rows


@dataclass(frozen=True)
class CurrentRow:
    """What one endpoint serves now for a role (the ``current`` table)."""

    repository: str
    endpoint: str
    role: str
    version: int
    sha256: str
    since: float  #: first-seen time of ``version`` on this endpoint
    last_seen: float
    max_version: int


@dataclass(frozen=True)
class RootRow:
    """One root version of a repository (the ``roots`` table)."""

    version: int
    sha256: str
    first_seen: float
    endpoint: str
    role_keys: Mapping[str, tuple[tuple[str, ...], int]] | None


@dataclass(frozen=True)
class CounterRow:
    """One persisted counter value."""

    metric: str
    repository: str
    endpoint: str
    label: str
    value: float


# ---------------------------------------------------------------------------------------------
# Opening


#: Seconds a connection waits for a lock held by the other one.
_BUSY_TIMEOUT = 30.0


def _prepare(path: Path) -> sqlite3.Connection:
    """The write connection (see :func:`exporter.sqlite_files.open_database`), with the
    schema version checked; may raise corruption."""
    conn = open_database(path, _SCHEMA, _BUSY_TIMEOUT)
    try:
        row = conn.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
        if row is None:
            conn.execute(
                "INSERT INTO meta (key, value) VALUES ('schema_version', ?)", (SCHEMA_VERSION,)
            )
        elif int(row[0]) > SCHEMA_VERSION:
            raise HistoryError(
                f"history store {path} has schema version {row[0]}, written by a newer "
                f"tuf-exporter (this one knows {SCHEMA_VERSION}); upgrade, or move the file aside"
            )
    except BaseException:
        conn.close()
        raise
    return conn


class Database:
    """The SQLite file: one writer connection and one reader connection, each with a lock.

    WAL mode lets the reader run while the writer holds a transaction, so query methods never
    wait for an observation being written.
    """

    def __init__(self, path: Path, writer: sqlite3.Connection, reader: sqlite3.Connection) -> None:
        self.path = path
        self._writer = writer
        self._reader = reader
        self._write_lock = threading.Lock()
        self._read_lock = threading.Lock()

    @classmethod
    def open(cls, path: Path, on_corrupt: OnCorrupt = "raise") -> Database:
        """Open (creating if needed) the database at ``path``; see ``HistoryStore.open``."""
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            writer = _prepare(path)
        except sqlite3.DatabaseError as exc:
            if not is_corruption(exc):
                raise HistoryError(f"history store {path}: {exc}") from exc
            if on_corrupt != "rename":
                raise HistoryCorruptError(path, str(exc)) from exc
            return cls.start_over(path, str(exc))[0]
        reader = connect(path, _BUSY_TIMEOUT)
        return cls(path, writer, reader)

    @classmethod
    def start_over(cls, path: Path, detail: str) -> tuple[Database, Path]:
        """Move the damaged file at ``path`` aside (:func:`exporter.sqlite_files.move_aside`),
        log it as an ERROR and open a fresh database in its place; return it and where the old
        file went.

        The caller closes any connection to the damaged file first.
        """
        aside = move_aside(path, datetime.now(UTC))
        log.error(
            "HISTORY STORE CORRUPT: %s (%s). Moved it to %s and started a fresh history: "
            "version history, root key history and counters start over; the next probe of "
            "each endpoint is the new baseline.",
            path,
            detail,
            aside,
        )
        writer = _prepare(path)
        return cls(path, writer, connect(path, _BUSY_TIMEOUT)), aside

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """One atomic write transaction (``BEGIN IMMEDIATE``), serialized across threads.

        Any error rolls the whole transaction back. Corruption found while running raises
        :class:`HistoryCorruptError` (``HistoryStore`` recovers from it, see
        :meth:`HistoryStore._recover <exporter.history.recorder.HistoryStore>`).
        """
        with self._write_lock, self._corruption_is_reported():
            conn = self._writer
            conn.execute("BEGIN IMMEDIATE")
            try:
                yield conn
            except BaseException:
                with suppress(sqlite3.Error):
                    if conn.in_transaction:
                        conn.execute("ROLLBACK")
                raise
            conn.execute("COMMIT")

    @contextmanager
    def reading(self) -> Iterator[sqlite3.Connection]:
        """The reader connection (sees the last committed state), serialized across threads."""
        with self._read_lock, self._corruption_is_reported():
            yield self._reader

    @contextmanager
    def _corruption_is_reported(self) -> Iterator[None]:
        try:
            yield
        except sqlite3.DatabaseError as exc:
            if is_corruption(exc):
                raise HistoryCorruptError(self.path, str(exc)) from exc
            raise

    def close(self) -> None:
        """Checkpoint the WAL and close both connections."""
        with self._write_lock, self._read_lock:
            self._reader.close()
            try:
                self._writer.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            finally:
                self._writer.close()

    def abandon(self) -> None:
        """Close both connections without writing anything (the file is damaged)."""
        with self._write_lock, self._read_lock:
            for conn in (self._reader, self._writer):
                with suppress(sqlite3.Error):
                    if conn.in_transaction:
                        conn.execute("ROLLBACK")
                with suppress(sqlite3.Error):
                    conn.close()


# ---------------------------------------------------------------------------------------------
# Versions and current state
#
# python-tuf accepts any positive integer as a version; SQLite integers are 64-bit signed.
# A version up to 2**63 - 1 is stored as an INTEGER (as always), a larger one as the text
# ``<number of digits, 5 wide>:<digits>`` (:func:`version_key`). SQLite orders every INTEGER
# before every TEXT, compares TEXT bytewise and leaves such text alone in an INTEGER column
# (it is not a number literal), so ``=``, ``<``, ``>``, ``ORDER BY`` and ``MAX`` keep the
# numeric order across both forms, and existing databases need no migration.

#: The largest version stored as an SQLite INTEGER.
INT64_MAX = 2**63 - 1


def version_key(version: int) -> int | str:
    """A version as the history database stores and compares it (see above)."""
    if version <= INT64_MAX:
        return version
    digits = str(version)
    return f"{len(digits):05d}:{digits}"


def version_of(stored: int | str) -> int:
    """The version a stored value (:func:`version_key`) stands for."""
    if isinstance(stored, int):
        return stored
    return int(stored.partition(":")[2])

#
# Queries by (repository, role, version) name their index: without statistics (no ANALYZE)
# SQLite prefers the primary key's ``repository`` prefix, a scan of every version row of
# every endpoint of the repository.


def repo_current(conn: sqlite3.Connection, repo: str) -> list[CurrentRow]:
    """The ``current`` rows of every endpoint and role of the repository."""
    rows = conn.execute(
        "SELECT repository, endpoint, role, version, sha256, since, last_seen, max_version "
        "FROM current WHERE repository = ?",
        (repo,),
    ).fetchall()
    return [CurrentRow(r[0], r[1], r[2], version_of(r[3]), r[4], r[5], r[6], version_of(r[7]))
            for r in rows]


def put_current(conn: sqlite3.Connection, row: CurrentRow) -> None:
    """Insert or replace the ``current`` row of (repository, endpoint, role)."""
    conn.execute(
        "INSERT OR REPLACE INTO current "
        "(repository, endpoint, role, version, sha256, since, last_seen, max_version) "
        "VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
        (
            row.repository,
            row.endpoint,
            row.role,
            version_key(row.version),
            row.sha256,
            row.since,
            row.last_seen,
            version_key(row.max_version),
        ),
    )


def touch_last_seen(conn: sqlite3.Connection, rows: Iterable[CurrentRow]) -> None:
    """Move the last-seen time of ``current`` rows, and of their ``versions`` rows, forward.

    Used to write last-seen times kept in memory while an endpoint served the same content
    (see ``HistoryStore``): one statement per table for all the rows.
    """
    params = [(r.last_seen, r.repository, r.endpoint, r.role, version_key(r.version), r.sha256)
              for r in rows]
    conn.executemany(
        "UPDATE current SET last_seen = MAX(last_seen, ?) WHERE repository = ? "
        "AND endpoint = ? AND role = ? AND version = ? AND sha256 = ?",
        params,
    )
    conn.executemany(
        "UPDATE versions SET last_seen = MAX(last_seen, ?) WHERE repository = ? "
        "AND endpoint = ? AND role = ? AND version = ? AND sha256 = ?",
        params,
    )


def hashes_of(conn: sqlite3.Connection, repo: str, role: str, version: int) -> dict[str, float]:
    """Content hashes the repository's endpoints served for (role, version) -> first seen."""
    rows = conn.execute(
        "SELECT sha256, MIN(first_seen) FROM versions INDEXED BY versions_by_role "
        "WHERE repository = ? AND role = ? AND version = ? GROUP BY sha256",
        (repo, role, version_key(version)),
    )
    return {r[0]: float(r[1]) for r in rows}


def endpoints_by_hash(
    conn: sqlite3.Connection, repo: str, role: str, version: int
) -> dict[str, list[str]]:
    """Content hashes the repository's endpoints served for (role, version) -> endpoints."""
    out: dict[str, list[str]] = {}
    for sha, endpoint in conn.execute(
        "SELECT sha256, endpoint FROM versions INDEXED BY versions_by_role "
        "WHERE repository = ? AND role = ? AND version = ? ORDER BY first_seen",
        (repo, role, version_key(version)),
    ):
        out.setdefault(sha, []).append(endpoint)
    return out


def record_version(
    conn: sqlite3.Connection,
    repo: str,
    endpoint: str,
    role: str,
    version: int,
    sha256: str,
    expires: float,
    signed_by: tuple[str, ...],
    at: float,
) -> None:
    """Insert the (version, hash) row of the endpoint, or move its last-seen time forward."""
    conn.execute(
        "INSERT INTO versions (repository, endpoint, role, version, sha256, first_seen, "
        "last_seen, expires, signed_by) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?) "
        "ON CONFLICT DO UPDATE SET last_seen = MAX(last_seen, excluded.last_seen)",
        (repo, endpoint, role, version_key(version), sha256, at, at, expires,
         json.dumps(list(signed_by))),
    )


def first_seen(
    conn: sqlite3.Connection, repo: str, endpoint: str | None, role: str, version: int
) -> float | None:
    """When ``version`` of ``role`` was first seen on ``endpoint`` (None: on any endpoint)."""
    if endpoint is None:
        row = conn.execute(
            "SELECT MIN(first_seen) FROM versions INDEXED BY versions_by_role "
            "WHERE repository = ? AND role = ? AND version = ?",
            (repo, role, version_key(version)),
        ).fetchone()
    else:
        row = conn.execute(
            "SELECT MIN(first_seen) FROM versions WHERE repository = ? AND endpoint = ? "
            "AND role = ? AND version = ?",
            (repo, endpoint, role, version_key(version)),
        ).fetchone()
    return None if row[0] is None else float(row[0])


def oldest_newer_than(
    conn: sqlite3.Connection, repo: str, endpoint: str, role: str, version: int
) -> float | None:
    """Earliest first-seen time on ``endpoint`` of any version of ``role`` above ``version``."""
    row = conn.execute(
        "SELECT MIN(first_seen) FROM versions WHERE repository = ? AND endpoint = ? "
        "AND role = ? AND version > ?",
        (repo, endpoint, role, version_key(version)),
    ).fetchone()
    return None if row[0] is None else float(row[0])


def change_times(
    conn: sqlite3.Connection, repo: str, endpoint: str | None, role: str, limit: int
) -> list[float]:
    """First-seen times of the newest ``limit`` versions (one per version), oldest first."""
    where = "repository = ? AND role = ?" + ("" if endpoint is None else " AND endpoint = ?")
    params: tuple[Any, ...] = (repo, role) if endpoint is None else (repo, role, endpoint)
    rows = conn.execute(
        f"SELECT version, MIN(first_seen) FROM versions WHERE {where} "  # noqa: S608
        "GROUP BY version ORDER BY version DESC LIMIT ?",
        (*params, limit),
    ).fetchall()
    return sorted(float(r[1]) for r in rows)


def expiries(
    conn: sqlite3.Connection, repo: str, role: str, limit: int
) -> list[tuple[int, float, float]]:
    """(version, expiry, repository-wide first-seen time) of the newest ``limit`` versions of
    ``role``, newest first; a version served with several contents (equivocation) counts with
    its earliest expiry."""
    rows = conn.execute(
        "SELECT version, MIN(expires), MIN(first_seen) FROM versions INDEXED BY versions_by_role "
        "WHERE repository = ? AND role = ? GROUP BY version ORDER BY version DESC LIMIT ?",
        (repo, role, limit),
    ).fetchall()
    return [(version_of(r[0]), float(r[1]), float(r[2])) for r in rows]


# ---------------------------------------------------------------------------------------------
# Flags, counters, lag, findings


def set_flag(conn: sqlite3.Connection, repo: str, key: str, at: float) -> bool:
    """Mark ``key`` reported; True when it was not marked before (report it now)."""
    cur = conn.execute(
        "INSERT INTO flags (repository, key, first_seen, last_seen) VALUES (?, ?, ?, ?) "
        "ON CONFLICT DO NOTHING",
        (repo, key, at, at),
    )
    if cur.rowcount:
        return True
    conn.execute(
        "UPDATE flags SET last_seen = MAX(last_seen, ?) WHERE repository = ? AND key = ?",
        (at, repo, key),
    )
    return False


def add_counter(
    conn: sqlite3.Connection, metric: str, repo: str, endpoint: str, label: str, delta: float
) -> None:
    """Add ``delta`` to a persisted counter (created at 0)."""
    conn.execute(
        "INSERT INTO counters (metric, repository, endpoint, label, value) VALUES (?, ?, ?, ?, ?) "
        "ON CONFLICT DO UPDATE SET value = value + excluded.value",
        (metric, repo, endpoint, label, delta),
    )


def repo_counters(conn: sqlite3.Connection, repo: str) -> list[CounterRow]:
    """The persisted counter values of the repository."""
    rows = conn.execute(
        "SELECT metric, repository, endpoint, label, value FROM counters WHERE repository = ?",
        (repo,),
    )
    return [CounterRow(r[0], r[1], r[2], r[3], float(r[4])) for r in rows]


def repo_lags(conn: sqlite3.Connection, repo: str) -> dict[str, float]:
    """Open lag episodes of the repository: mirror -> since."""
    rows = conn.execute("SELECT endpoint, since FROM lag WHERE repository = ?", (repo,))
    return {r[0]: float(r[1]) for r in rows}


def set_lag(conn: sqlite3.Connection, repo: str, endpoint: str, since: float | None) -> None:
    """Open (``since``) or close (None) the mirror's lag episode."""
    if since is None:
        conn.execute("DELETE FROM lag WHERE repository = ? AND endpoint = ?", (repo, endpoint))
    else:
        conn.execute(
            "INSERT OR REPLACE INTO lag (repository, endpoint, since) VALUES (?, ?, ?)",
            (repo, endpoint, since),
        )


def insert_finding(
    conn: sqlite3.Connection, at: float, repo: str, endpoint: str, kind: str, body: str
) -> None:
    """Append one finding (JSON body) to the findings log."""
    conn.execute(
        "INSERT INTO findings (time, repository, endpoint, kind, body) VALUES (?, ?, ?, ?, ?)",
        (at, repo, endpoint, kind, body),
    )


def insert_outbox(conn: sqlite3.Connection, event_id: str, document: str) -> None:
    """Queue the event ``document`` (canonical JSON) of a finding for the spool; an id
    already queued is kept once."""
    conn.execute(
        "INSERT OR IGNORE INTO outbox (event_id, document) VALUES (?, ?)", (event_id, document)
    )


def outbox_count(conn: sqlite3.Connection) -> int:
    """Events waiting in the outbox."""
    return int(conn.execute("SELECT COUNT(*) FROM outbox").fetchone()[0])


def outbox_batch(conn: sqlite3.Connection, limit: int) -> list[tuple[int, str]]:
    """The ``limit`` oldest outbox rows as ``(seq, document)``, oldest first."""
    rows = conn.execute("SELECT seq, document FROM outbox ORDER BY seq LIMIT ?", (limit,))
    return [(int(seq), str(document)) for seq, document in rows]


def delete_outbox(conn: sqlite3.Connection, seqs: Sequence[int]) -> int:
    """Delete the outbox rows ``seqs``; returns how many there were."""
    marks = ",".join("?" * len(seqs))
    return conn.execute(f"DELETE FROM outbox WHERE seq IN ({marks})", list(seqs)).rowcount  # noqa: S608


def recent_findings(
    conn: sqlite3.Connection, repo: str | None, since: float, limit: int
) -> list[str]:
    """JSON bodies of findings at or after ``since``, newest first."""
    if repo is None:
        rows = conn.execute(
            "SELECT body FROM findings WHERE time >= ? ORDER BY id DESC LIMIT ?", (since, limit)
        )
    else:
        rows = conn.execute(
            "SELECT body FROM findings WHERE repository = ? AND time >= ? ORDER BY id DESC LIMIT ?",
            (repo, since, limit),
        )
    return [r[0] for r in rows]


# ---------------------------------------------------------------------------------------------
# Roots


def _keys_json(role_keys: Mapping[str, tuple[tuple[str, ...], int]] | None) -> str | None:
    if role_keys is None:
        return None
    return json.dumps(
        {role: {"keyids": sorted(k), "threshold": t} for role, (k, t) in sorted(role_keys.items())}
    )


def _keys_from_json(text: str | None) -> dict[str, tuple[tuple[str, ...], int]] | None:
    if text is None:
        return None
    data = json.loads(text)
    return {role: (tuple(v["keyids"]), int(v["threshold"])) for role, v in data.items()}


def roots(conn: sqlite3.Connection, repo: str) -> list[RootRow]:
    """Root versions recorded for the repository, oldest first."""
    rows = conn.execute(
        "SELECT version, sha256, first_seen, endpoint, role_keys FROM roots "
        "WHERE repository = ? ORDER BY version",
        (repo,),
    ).fetchall()
    return [RootRow(version_of(r[0]), r[1], r[2], r[3], _keys_from_json(r[4])) for r in rows]


def latest_root(conn: sqlite3.Connection, repo: str) -> RootRow | None:
    """The highest root version recorded for the repository."""
    row = conn.execute(
        "SELECT version, sha256, first_seen, endpoint, role_keys FROM roots "
        "WHERE repository = ? ORDER BY version DESC LIMIT 1",
        (repo,),
    ).fetchone()
    return (
        None
        if row is None
        else RootRow(version_of(row[0]), row[1], row[2], row[3], _keys_from_json(row[4]))
    )


def repositories(conn: sqlite3.Connection) -> list[str]:
    """Every repository with stored state."""
    rows = conn.execute(
        "SELECT repository FROM current UNION SELECT repository FROM roots "
        "UNION SELECT repository FROM counters"
    )
    return sorted(r[0] for r in rows)


def insert_root(conn: sqlite3.Connection, repo: str, row: RootRow) -> bool:
    """Record a root version; False when the version was already recorded."""
    cur = conn.execute(
        "INSERT INTO roots (repository, version, sha256, first_seen, endpoint, role_keys) "
        "VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT DO NOTHING",
        (repo, version_key(row.version), row.sha256, row.first_seen, row.endpoint,
         _keys_json(row.role_keys)),
    )
    return bool(cur.rowcount)


# ---------------------------------------------------------------------------------------------
# Retention and forgetting


def prune(conn: sqlite3.Connection, cutoff: float, keep_newest: int = KEEP_NEWEST) -> int:
    """Delete rows last seen before ``cutoff``; return how many went.

    Never deleted: the newest ``keep_newest`` versions of every (repository, endpoint, role),
    the version each endpoint serves now, the ``current`` table (highest version ever served,
    the rollback baseline), root versions (few, and the key history), counters and open lag
    episodes. Flags (``reported once`` markers) go once the condition has not been seen for
    the whole retention period; findings once older than it.
    """
    removed = conn.execute(
        """
        DELETE FROM versions WHERE (repository, endpoint, role, version, sha256) IN (
            SELECT v.repository, v.endpoint, v.role, v.version, v.sha256 FROM (
                SELECT repository, endpoint, role, version, sha256, last_seen,
                       DENSE_RANK() OVER (PARTITION BY repository, endpoint, role
                                          ORDER BY version DESC) AS rank
                FROM versions) AS v
            LEFT JOIN current AS c ON c.repository = v.repository AND c.endpoint = v.endpoint
                 AND c.role = v.role AND c.version = v.version
            WHERE v.rank > ? AND v.last_seen < ? AND c.version IS NULL)
        """,
        (keep_newest, cutoff),
    ).rowcount
    removed += conn.execute("DELETE FROM flags WHERE last_seen < ?", (cutoff,)).rowcount
    removed += conn.execute("DELETE FROM findings WHERE time < ?", (cutoff,)).rowcount
    return removed


def forget(conn: sqlite3.Connection, repo: str, endpoint: str | None) -> None:
    """Delete everything stored for a repository (or only one of its endpoints).

    Used by :func:`expire_unconfigured` only: removing a repository or endpoint from the
    configuration keeps its history on disk for the retention period.
    """
    tables = ("versions", "current", "counters", "lag", "findings")
    for table in tables:
        if endpoint is None:
            conn.execute(f"DELETE FROM {table} WHERE repository = ?", (repo,))  # noqa: S608
        else:
            conn.execute(
                f"DELETE FROM {table} WHERE repository = ? AND endpoint = ?",  # noqa: S608
                (repo, endpoint),
            )
    if endpoint is None:
        conn.execute("DELETE FROM roots WHERE repository = ?", (repo,))
        conn.execute("DELETE FROM flags WHERE repository = ?", (repo,))


def expire_unconfigured(
    conn: sqlite3.Connection, configured: Mapping[str, frozenset[str]], cutoff: float
) -> int:
    """Delete the history of endpoints not configured and not observed since ``cutoff``.

    ``configured`` maps each configured repository to its endpoint names. An endpoint no
    longer configured keeps its history (rows of every table, the rollback baseline included)
    until its last observation (the highest ``last_seen`` of its ``current`` rows) is older
    than ``cutoff``; then all of it goes, and a repository not configured with no endpoint
    left loses its root versions, counters and flags too. Configuring it again before that
    brings its history back. Returns the number of (repository, endpoint) pairs deleted.
    """
    rows = conn.execute(
        "SELECT repository, endpoint, MAX(last_seen) FROM current GROUP BY repository, endpoint"
    ).fetchall()
    expired = [
        (repo, endpoint)
        for repo, endpoint, last_seen in rows
        if endpoint not in configured.get(repo, frozenset()) and float(last_seen) < cutoff
    ]
    for repo, endpoint in expired:
        forget(conn, repo, endpoint)
    left = {r[0] for r in conn.execute("SELECT DISTINCT repository FROM current")}
    for repo in repositories(conn):
        if repo not in configured and repo not in left:
            forget(conn, repo, None)
    return len(expired)
