"""The durable spool: every event goes to SQLite first, the shipper takes it from there.

Durability guarantee
    The spool is an SQLite database in WAL mode with ``synchronous=FULL``. :meth:`Spool.emit`
    commits (and so fsyncs the WAL) before it returns: an event whose ``emit`` returned survives
    SIGKILL of the process and a crash or power loss of the machine. An event leaves the spool
    only when the sink accepted it (:meth:`Spool.ack`), when the sink rejected it for good (it
    moves to the dead-letter table, :meth:`Spool.dead_letter`), or by the size and age policy
    below, and every one of those is counted.

Exactly once
    Events carry a content-derived id. The spool remembers every id it took, with the time it
    was first spooled (the ``known_ids`` table), and an insert of a known id is skipped (one
    rule, a trigger on ``events``): the same event emitted twice is stored once. An id is
    remembered for ``2 * max_age`` after it was spooled: while its event is spooled (at most
    ``max_age``, the age policy) and at least ``max_age`` after it was delivered,
    dead-lettered or dropped, so a late duplicate is not spooled or shipped again either.
    Acknowledging does not touch the ids: it deletes the delivered rows by their ``seq``
    (never reused, AUTOINCREMENT), consecutive rows of the spool order, so draining a backlog
    writes a few pages per batch, not an index entry at a random place per event.

Schema versions
    The file records its layout (``PRAGMA user_version``, :data:`SCHEMA_VERSION`). A file
    written by an older tuf-exporter is migrated when it is opened, in one transaction
    (nothing is lost, and a failed migration leaves the file as it was and raises
    :class:`SpoolError`); a file written by a newer one is refused with
    :class:`SpoolError`, left as it is.

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

The :class:`Spool` class is built in three layers, one module each: its connections and recovery
(:mod:`exporter.events._spool_db`), the producing side with the group commit
(:mod:`exporter.events._spool_producing`) and, here, the shipping side and introspection.
"""

from __future__ import annotations

import json
import logging
import sqlite3
import time
from collections.abc import Iterable
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

from prometheus_client.core import Metric

from exporter import catalogue
from exporter.config import Events
from exporter.events._spool_db import (
    MAX_ERROR_CHARS,
    SCHEMA_VERSION,
    SPOOL_FILE,
    WAL_AUTOCHECKPOINT_PAGES,
    SpoolError,
)
from exporter.events._spool_producing import _SpoolProducer

__all__ = [
    "DROP_CAUSES",
    "MAX_ERROR_CHARS",
    "SCHEMA_VERSION",
    "SPOOL_FILE",
    "WAL_AUTOCHECKPOINT_PAGES",
    "DeadLetter",
    "Spool",
    "SpoolError",
    "SpooledEvent",
]

log = logging.getLogger(__name__)

#: Why an event can be dropped (``cause`` label of tuf_exporter_events_dropped_total).
DROP_CAUSES = ("spool_full", "too_old", "rejected", "spool_error")


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



class Spool(_SpoolProducer):
    """The durable event spool; also the :class:`~exporter.events.model.Emitter` producers call."""

    @classmethod
    def from_settings(cls, state_dir: Path, settings: Events, **kwargs: Any) -> Spool:
        """The spool ``<state_dir>/spool.sqlite`` with the configured limits."""
        return cls(
            state_dir / SPOOL_FILE,
            max_bytes=settings.spool_max_bytes,
            max_age=settings.spool_max_age,
            **kwargs,
        )

    def __enter__(self) -> Spool:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
    # -- shipping ------------------------------------------------------------------------------

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

    def ack(self, events: Iterable[SpooledEvent]) -> int:
        """Remove delivered events (as :meth:`peek` returned them); returns how many were
        still spooled. One transaction, deleting by ``seq``: the rows of a batch are
        consecutive in the table, and their ids stay known (see "Exactly once")."""
        seqs = sorted({item.seq for item in events})

        def delete(conn: sqlite3.Connection) -> int:
            removed = 0
            freed = 0
            with self._transaction(conn):
                for start in range(0, len(seqs), 500):
                    chunk = seqs[start : start + 500]
                    marks = ",".join("?" * len(chunk))
                    # one statement deletes and tells the sizes freed (no SELECT first)
                    sizes = conn.execute(
                        f"DELETE FROM events WHERE seq IN ({marks}) RETURNING size",  # noqa: S608
                        chunk,
                    ).fetchall()
                    freed += sum(int(size) for (size,) in sizes)
                    removed += len(sizes)
            self._bytes -= freed
            self._count -= removed
            return removed

        return self._guarded(delete) if seqs else 0

    def dead_letter(self, event: SpooledEvent, error: str, status: int | None = None) -> bool:
        """Set a rejected event (as :meth:`peek` returned it) aside with the sink's error;
        counted as dropped{rejected}. False when it was no longer spooled."""
        now = self.clock()
        event_id = event.event_id

        def move(conn: sqlite3.Connection) -> bool:
            with self._transaction(conn):
                row = conn.execute(
                    "SELECT kind, size, document FROM events WHERE seq = ?", (event.seq,)
                ).fetchone()
                if row is None:
                    return False
                conn.execute(
                    "INSERT OR REPLACE INTO dead_letters "
                    "(event_id, kind, failed_at, status, error, document) VALUES (?,?,?,?,?,?)",
                    (event_id, row[0], now, status, error[:MAX_ERROR_CHARS], row[2]),
                )
                conn.execute("DELETE FROM events WHERE seq = ?", (event.seq,))
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
                    # spooled anew: its id is forgotten first, the insert makes it known again
                    conn.execute("DELETE FROM known_ids WHERE event_id = ?", (event_id,))
                    inserted = conn.execute(
                        "INSERT INTO events (event_id, kind, spooled_at, size, document) "
                        "VALUES (?, ?, ?, ?, ?) RETURNING seq",
                        (event_id, kind, now, size, document),
                    ).fetchall()
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
        """Apply the age policy (and forget ids spooled more than ``2 * max_age`` ago, trim
        old dead letters); returns the number of events dropped as too old."""
        now = self.clock()
        cutoff = now - self.max_age

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
                conn.execute(
                    "DELETE FROM known_ids WHERE spooled_at < ?", (now - 2 * self.max_age,)
                )
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

