"""The spool's producing side: emit, put, the group commit (see :mod:`exporter.events.spool`)."""

from __future__ import annotations

import logging
import sqlite3
from collections.abc import Callable, Iterable

from exporter.events._spool_db import (
    _GROUP_ROWS,
    _INSERT_ONE,
    SpoolError,
    _group_insert,
    _Request,
    _Row,
    _SpoolConnection,
)
from exporter.events.model import Event
from exporter.sqlite_files import is_corruption

log = logging.getLogger("exporter.events.spool")  # the spool logs as one, whatever module


class _SpoolProducer(_SpoolConnection):
    """Spools events for producers, many in one commit; notifies listeners after each."""

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
                # one statement: nothing returned when the id is known already
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
        """True when ``event_id`` was spooled already (the rule of the ``events_once``
        trigger, asked before room is made for the event)."""
        row = conn.execute(
            "SELECT EXISTS (SELECT 1 FROM known_ids WHERE event_id = ?)", (event_id,)
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
