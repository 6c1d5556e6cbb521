"""The exporter's own SQLite files (the history store, the event spool): one way to open one,
one test of corruption, one name for a damaged file moved aside.

* :func:`open_database` connects, runs ``PRAGMA quick_check``, switches to WAL with
  ``synchronous = FULL`` (a commit survives power loss) and creates the schema.
* :func:`is_corruption` says whether an error means the file is damaged or not a database:
  SQLite's ``SQLITE_CORRUPT`` or ``SQLITE_NOTADB`` (or a failed ``quick_check``, raised with
  ``SQLITE_CORRUPT``). Nothing else is: a locked database, a full disk, a constraint, or a
  ``ProgrammingError`` (a bug of ours) must not make a store throw its data away.
* :func:`move_aside` renames a damaged file and its ``-wal``/``-shm`` files to
  ``<name>.corrupt-<UTC time>`` (``-<n>`` added when that name is taken: an earlier copy is
  never overwritten).
"""

from __future__ import annotations

import sqlite3
from datetime import UTC, datetime
from pathlib import Path

#: SQLite primary result codes that mean the file is damaged or is not a database.
CORRUPTION_CODES = frozenset({sqlite3.SQLITE_CORRUPT, sqlite3.SQLITE_NOTADB})


def is_corruption(exc: BaseException) -> bool:
    """True when ``exc`` is SQLite saying the file is damaged or is not a database."""
    if not isinstance(exc, sqlite3.DatabaseError):
        return False
    code = getattr(exc, "sqlite_errorcode", None)
    return code is not None and (code & 0xFF) in CORRUPTION_CODES


def connect(path: Path, timeout: float) -> sqlite3.Connection:
    """A connection to ``path`` usable from any thread, in autocommit mode (transactions are
    explicit), waiting up to ``timeout`` seconds for a lock."""
    return sqlite3.connect(
        str(path), timeout=timeout, isolation_level=None, check_same_thread=False
    )


def open_database(path: Path, schema: str, timeout: float) -> sqlite3.Connection:
    """The write connection to ``path`` (created if missing), checked and ready.

    Raises ``sqlite3.DatabaseError`` for which :func:`is_corruption` is True when the file is
    damaged, another ``sqlite3.Error`` for anything else (including a file system that cannot
    do WAL); the connection is closed then.
    """
    conn = connect(path, timeout)
    try:
        check = conn.execute("PRAGMA quick_check").fetchone()[0]
        if check != "ok":
            damaged = sqlite3.DatabaseError(f"quick_check: {check}")
            damaged.sqlite_errorcode = sqlite3.SQLITE_CORRUPT
            raise damaged
        mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
        if str(mode).lower() != "wal":
            raise sqlite3.OperationalError(f"cannot switch {path} to WAL mode (got {mode})")
        conn.execute("PRAGMA synchronous = FULL")
        conn.executescript(schema)
    except BaseException:
        conn.close()
        raise
    return conn


def move_aside(path: Path, now: datetime) -> Path:
    """Rename ``path`` and its -wal/-shm files to ``<name>.corrupt-<UTC time>``; return it."""
    stamp = now.astimezone(UTC).strftime("%Y%m%dT%H%M%SZ")
    aside = path.with_name(f"{path.name}.corrupt-{stamp}")
    n = 1
    while aside.exists():
        aside = path.with_name(f"{path.name}.corrupt-{stamp}-{n}")
        n += 1
    path.rename(aside)
    for suffix in ("-wal", "-shm"):
        extra = path.with_name(path.name + suffix)
        if extra.exists():
            extra.rename(aside.with_name(aside.name + suffix))
    return aside
