"""The history store: what every endpoint served over time, and what that history reveals.

:class:`HistoryStore` owns the database (:mod:`exporter.history.store`), the in-memory state of
every repository (:mod:`exporter.history._state`) and runs each observation
(:mod:`exporter.history._observation`, where the reporting rules are written) in one transaction;
its :meth:`HistoryStore.metrics` exports the history metrics of the catalogue from memory.
"""

from __future__ import annotations

import json
import logging
import sqlite3
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import ExitStack, contextmanager
from datetime import UTC, datetime
from pathlib import Path
from types import TracebackType
from typing import Any

from prometheus_client.metrics_core import Metric

from exporter.catalogue import family
from exporter.config import Config, Policy
from exporter.events import Event
from exporter.history import store as db
from exporter.history._observation import _Observation
from exporter.history._rules import (
    _ANOMALIES,
    _ROLLBACKS,
    _ROTATIONS,
    LEARN_WINDOW,
    PRIMARY,
    _behind_since,
    _keys_from_rows,
    _lag_of,
    _learned_cadence,
    configured_endpoints,
)
from exporter.history._state import _load_state, _RepoState
from exporter.history.findings import Finding, RootVersion
from exporter.history.store import (
    FILENAME,
    HistoryCorruptError,
    HistoryRecoveredError,
    OnCorrupt,
)
from exporter.probe import ProbeResult, RoleKeys

__all__ = ["HistoryStore"]

log = logging.getLogger(__name__)

#: Seconds between retention passes (run by ``observe``).
PRUNE_EVERY = 3600.0


class HistoryStore:
    """The embedded history store (SQLite, WAL) with detection and the history metrics.

    Thread safe: ``observe`` may be called from many worker threads (observations are
    serialized, one transaction each); ``metrics`` and ``last_change`` read an in-memory
    snapshot and never touch SQLite; the other queries use a separate reader connection and
    do not wait for observations being written.

    Cost: each repository's detection state (the ``current`` rows, open lag episodes,
    counters, root versions) is read once, when the store opens, and kept in memory; an
    observation reads it instead of SQL and updates it for the probed endpoint only, after
    its transaction committed. The work of an observation does not grow with the number of
    endpoints of the repository, and an endpoint serving exactly what it served before (the
    steady state) costs no SQL at all.

    Last-seen times are batched: while an endpoint keeps serving the same content, its
    ``last_seen`` (``current`` and ``versions`` rows) moves in memory only. It is written when
    the endpoint serves something else (the row it leaves gets its last sighting), before
    every retention pass (so retention judges by exact times) and when the store closes.
    Nothing in detection reads ``last_seen``; retention does, and keeps the rows of the
    version an endpoint serves now whatever their ``last_seen``. A crash loses at most
    ``PRUNE_EVERY`` seconds of last-seen times of rows still being served: once the endpoint
    serves something else, such a row can be pruned that much earlier than ``retention``
    after its true last sighting, never more.
    """

    def __init__(
        self,
        database: db.Database,
        retention: float,
        repositories: Mapping[str, Iterable[str]] | None = None,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        """Use :meth:`open` or :meth:`for_config`."""
        self._db = database
        self.retention = retention
        self._monotonic = monotonic
        self._states: dict[str, _RepoState] = {}
        #: repository -> endpoints configured (see :meth:`configure`); None: every one stored
        self._configured: dict[str, frozenset[str]] | None = None
        #: Serializes writers: observations, retention, configure, recovery, close (held
        #: until the in-memory state reflects the commit).
        self._write_lock = threading.Lock()
        #: Guards what ``metrics()`` and ``last_change()`` read of the states.
        self._view_lock = threading.Lock()
        self._last_prune = float("-inf")
        #: Corruptions found while running and recovered from (see :meth:`_recover`).
        self.recoveries = 0
        #: One outbox drainer at a time.
        self._outbox_lock = threading.Lock()
        #: Guards ``_outbox_pending``: events in the outbox, counted in memory so that a drain
        #: with nothing to do runs no SQL.
        self._pending_lock = threading.Lock()
        with database.transaction() as conn:
            self._outbox_pending = db.outbox_count(conn)
        if repositories is not None:
            self.configure(repositories)
            return
        with database.transaction() as conn:
            for repo in db.repositories(conn):
                self._states[repo] = _load_state(conn, repo)

    @property
    def path(self) -> Path:
        """The database file."""
        return self._db.path

    @classmethod
    def open(
        cls,
        path: Path,
        *,
        on_corrupt: OnCorrupt = "raise",
        retention: float = 90 * 86400.0,
        repositories: Mapping[str, Iterable[str]] | None = None,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> HistoryStore:
        """Open the history database at ``path`` (normally ``<state_dir>/history.sqlite``).

        The file is created if missing and checked with ``PRAGMA quick_check`` when opened.
        If SQLite reports it damaged or not a database:

        * ``on_corrupt="raise"`` (default): :class:`HistoryCorruptError` is raised; its message
          names the file and the recovery. The file is left where it is.
        * ``on_corrupt="rename"``: the file is renamed to
          ``history.sqlite.corrupt-<UTC time, YYYYmmddTHHMMSSZ>`` (its ``-wal`` and ``-shm``
          files get the same name plus ``-wal``/``-shm``), an ERROR is logged naming both
          files, and a fresh, empty history is started in its place.

        To recover by hand: stop the exporter, move ``history.sqlite``, ``history.sqlite-wal``
        and ``history.sqlite-shm`` out of the state directory (or delete them), and start it
        again. A fresh history loses the version history, root key history and counter
        values (Prometheus treats the counters as reset). The next probe of every endpoint
        becomes the new baseline: no false alarms, but a rollback relative to a version seen
        only before the recovery cannot be detected, and learned cadences are learned again.

        Corruption found *while running* is always recovered from the same way (see
        :meth:`_recover`), whatever ``on_corrupt`` says: ``on_corrupt`` decides whether a
        damaged file found at start stops the exporter.

        ``retention`` (seconds) is how long rows no longer being observed are kept.
        ``repositories`` maps the configured repositories to their endpoint names (see
        :meth:`configure`); None (tools, tests) loads every repository stored and records
        every observation. ``monotonic`` is the steady clock (seconds) that ages within one
        run are measured with (the freeze check).
        """
        return cls(db.Database.open(path, on_corrupt), retention, repositories, monotonic)

    @classmethod
    def for_config(
        cls,
        config: Config,
        *,
        on_corrupt: OnCorrupt = "raise",
        monotonic: Callable[[], float] = time.monotonic,
    ) -> HistoryStore:
        """Open ``<config.state_dir>/history.sqlite`` with ``config.history_retention``,
        loading only the repositories and endpoints of ``config``."""
        return cls.open(
            config.state_dir / FILENAME,
            on_corrupt=on_corrupt,
            retention=config.history_retention,
            repositories=configured_endpoints(config),
            monotonic=monotonic,
        )

    def configure(self, repositories: Mapping[str, Iterable[str]]) -> None:
        """Keep in memory, export and record only the configured repositories and endpoints.

        ``repositories`` maps each configured repository to its endpoint names. A repository
        or endpoint left out loses its series at once, and :meth:`observe` records nothing
        of it any more (a probe that finishes after its removal), but its history stays on
        disk: configured again within ``retention`` seconds of its last observation, it
        comes back as it was (series, counters, rollback baseline); after that, retention
        deletes it (:func:`~exporter.history.store.expire_unconfigured`). Called when the
        store opens (``for_config``) and on every reload; only repositories that are new or
        whose endpoints changed are read from the database. Corruption found here is
        recovered from (see :meth:`_recover`) without raising: the configuration applies to
        the fresh history.
        """
        wanted = {repo: frozenset(endpoints) for repo, endpoints in repositories.items()}
        with self._write_lock:
            try:
                with self._recovering():
                    self._configure(wanted)
            except HistoryRecoveredError as exc:
                log.error("%s", exc)
                with self._view_lock:
                    self._states = {repo: _RepoState(endpoints=eps) for repo, eps in wanted.items()}
            self._configured = wanted

    def _configure(self, wanted: dict[str, frozenset[str]]) -> None:
        """:meth:`configure`, with ``_write_lock`` held."""
        old = self._states
        changed = {r for r, s in old.items() if r not in wanted or wanted[r] != s.endpoints}
        load = [r for r, eps in wanted.items() if r not in old or old[r].endpoints != eps]
        states = {repo: s for repo, s in old.items() if repo not in changed}
        if changed or load:
            with self._db.transaction() as conn:
                # what leaves memory (or is read again) gets its last sighting first
                self._flush(conn, (old[repo] for repo in changed))
                for repo in load:
                    states[repo] = _load_state(conn, repo, wanted[repo])
                    if repo in old:
                        states[repo].keep_caches(old[repo])
        with self._view_lock:
            self._states = states

    def close(self) -> None:
        """Write the batched last-seen times, checkpoint and close the database."""
        with self._write_lock:
            try:
                if any(state.stale for state in self._states.values()):
                    with self._db.transaction() as conn:
                        self._flush(conn, self._states.values())
            finally:
                self._db.close()

    def __enter__(self) -> HistoryStore:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    # --- writing ---------------------------------------------------------------------------

    def observe(
        self,
        result: ProbeResult,
        policy: Policy,
        now: datetime | None = None,
        monotonic: float | None = None,
    ) -> list[Finding]:
        """Record what the probe saw (failed probes too) and return the findings, in order.

        One transaction: either all of the observation is stored, or none of it. ``now`` is
        the observation time (default: the current time). ``monotonic`` is the steady-clock
        reading of the observation (default: the store's ``monotonic()`` when ``now`` is
        None, else ``now`` itself: a caller that supplies times is taken to be the clock).

        A repository or endpoint not configured (see :meth:`configure`) is not recorded:
        the result is []. Corruption found while running is recovered from, then raised as
        :class:`HistoryRecoveredError` (the observation is not recorded).
        """
        at = datetime.now(UTC) if now is None else now.astimezone(UTC)
        if monotonic is None:
            monotonic = self._monotonic() if now is None else at.timestamp()
        with self._write_lock, self._recovering():
            if self._configured is not None and result.endpoint not in self._configured.get(
                result.repository, ()
            ):
                return []  # removed from the configuration while it was probed
            state = self._states.get(result.repository) or _RepoState()
            with ExitStack() as stack:

                def begin() -> sqlite3.Connection:
                    return stack.enter_context(self._db.transaction())

                observation = _Observation(begin, state, result, policy, at, monotonic)
                findings = observation.run()
                for finding in findings:
                    db.insert_finding(
                        observation.conn,
                        at.timestamp(),
                        finding.repository,
                        finding.endpoint,
                        str(finding.kind),
                        json.dumps(finding.to_json(), sort_keys=True),
                    )
                    event = finding.to_event()
                    db.insert_outbox(observation.conn, event.event_id, event.to_json())
            self._apply(result.repository, state, observation)
            if findings:
                with self._pending_lock:
                    self._outbox_pending += len(findings)
        for finding in findings:  # the caller logs and ships them; keep a trace here
            log.debug("finding %s", finding.to_json())
        if at.timestamp() - self._last_prune >= PRUNE_EVERY:
            try:
                self.prune(at)
            except Exception:  # the observation is committed: its findings must still ship
                log.exception("history retention failed; the next observation tries again")
        return findings

    def _apply(self, repo: str, state: _RepoState, obs: _Observation) -> None:
        """Bring the in-memory state to what the observation committed."""
        with self._view_lock:
            for row, written in obs.rows.values():
                state.put(row, written)
            for key, delta in obs.counts.items():
                state.counters[key] = state.counters.get(key, 0.0) + delta
            if obs.lag is not None:
                since = obs.lag[0]
                if since is None:
                    state.lags.pop(obs.endpoint, None)
                else:
                    state.lags[obs.endpoint] = since
            if obs.root is not None:
                state.add_root(obs.root)
            if obs.moment_roles:
                state.moments = {
                    k: v for k, v in state.moments.items() if k[0] not in obs.moment_roles
                }
            state.moments.update(obs.moments)
            state.anchors.update(obs.anchors)
            for role, (version, expires, first_seen) in obs.lives.items():
                state.add_life(role, version, expires, first_seen)
            self._states.setdefault(repo, state)
        for seen, (sha, first) in obs.seen.items():  # caches read by observations only
            known = state.known.get(seen)
            if known is not None:
                known.hashes.add(sha)
                known.first_seen = min(
                    first, first if known.first_seen is None else known.first_seen
                )
        state.cadences.update(obs.cadences)

    @staticmethod
    def _flush(conn: sqlite3.Connection, states: Iterable[_RepoState]) -> None:
        """Write the batched last-seen times (clear ``stale`` once committed)."""
        db.touch_last_seen(conn, [s.current[key] for s in states for key in s.stale])

    # --- the outbox: finding events on their way to the spool -------------------------------

    @property
    def outbox_pending(self) -> int:
        """Finding events committed with their findings and not yet handed to the spool."""
        with self._pending_lock:
            return self._outbox_pending

    def drain_outbox(self, put: Callable[[list[Event]], object], batch: int = 500) -> int:
        """Hand the outbox's events to ``put`` (the spool's ``put_many``: durable when it
        returns, raises when it failed), oldest first, ``batch`` at a time; delete each batch
        from the outbox only after ``put`` returned. Returns how many events were handed on.

        Exactly once: a finding and its event commit in one transaction (``observe``); a
        crash after ``put`` and before the delete hands the same events (same content, same
        id) to ``put`` again after the restart, and the spool keeps an id once (also after it
        was shipped, for ``events.spool_max_age``). Errors of ``put`` or of the database
        propagate and leave the events in the outbox for the next drain.
        """
        handed = 0
        with self._outbox_lock:
            while self.outbox_pending > 0:
                with self._db.reading() as conn:
                    rows = db.outbox_batch(conn, batch)
                if not rows:  # the count was off (a duplicate id was ignored): recount
                    with self._pending_lock, self._db.reading() as conn:
                        self._outbox_pending = db.outbox_count(conn)
                    break
                put([Event.from_document(json.loads(document)) for _seq, document in rows])
                self._outbox_delivered([seq for seq, _document in rows])
                handed += len(rows)
        return handed

    def _outbox_delivered(self, seqs: list[int]) -> None:
        """Delete outbox rows the spool committed (called with ``_outbox_lock`` held)."""
        with self._db.transaction() as conn:
            db.delete_outbox(conn, seqs)
        with self._pending_lock:
            self._outbox_pending = max(0, self._outbox_pending - len(seqs))

    def prune(self, now: datetime | None = None) -> int:
        """Apply the retention now; return the number of rows deleted.

        Rows not observed for ``retention`` seconds are deleted, except what detection needs:
        the newest versions of every (repository, endpoint, role), the version each endpoint
        serves now and the highest it ever served, root versions, counters and open lag
        episodes. Endpoints no longer configured (see :meth:`configure`) lose all of it once
        not observed for ``retention`` seconds. ``observe`` runs this at most once per
        ``PRUNE_EVERY`` seconds. The batched last-seen times are written first, in the same
        transaction.
        """
        at = datetime.now(UTC) if now is None else now
        with self._write_lock, self._recovering():
            self._last_prune = at.timestamp()
            states = list(self._states.items())
            with self._db.transaction() as conn:
                self._flush(conn, (state for _, state in states))
                cutoff = at.timestamp() - self.retention
                if self._configured is not None:
                    expired = db.expire_unconfigured(conn, self._configured, cutoff)
                    if expired:
                        log.info("history retention removed %d endpoints no longer configured",
                                 expired)
                removed = db.prune(conn, cutoff)
                # Versions the lag and the caches were computed from may be gone.
                moments = {repo: s.all_moments(conn, repo) for repo, s in states if removed}
            for repo, state in states:
                state.stale.clear()
                if removed:
                    state.known.clear()
                    state.cadences.clear()
                    with self._view_lock:
                        state.moments = moments[repo]
        if removed:
            log.info("history retention removed %d rows older than %.0fs", removed, self.retention)
        return removed

    # --- corruption while running ---------------------------------------------------------

    @contextmanager
    def _recovering(self) -> Iterator[None]:
        """Recover from corruption found inside (``_write_lock`` held), then re-raise it."""
        failed = self._db
        try:
            yield
        except HistoryRecoveredError:
            raise
        except HistoryCorruptError as exc:
            raise self._recover(failed, exc) from exc

    @contextmanager
    def _reading(self) -> Iterator[sqlite3.Connection]:
        """The database's reader connection; corruption found is recovered from, re-raised."""
        failed = self._db
        try:
            with failed.reading() as conn:
                yield conn
        except HistoryCorruptError as exc:
            with self._write_lock:
                raise self._recover(failed, exc) from exc

    def _recover(self, failed: db.Database, exc: HistoryCorruptError) -> HistoryCorruptError:
        """Corruption found while running: move the file aside, start a fresh history.

        As at open with ``on_corrupt="rename"``: the damaged file (and its -wal/-shm) is
        renamed to ``history.sqlite.corrupt-<UTC time>``, an ERROR is logged, and a fresh
        database takes its place; the in-memory state of every configured repository starts
        empty (the next probe of each endpoint is the new baseline, and raises no alarm).
        ``recoveries`` counts it. Returns the error to raise: a fault of this host for the
        caller to count, never a repository's. Called with ``_write_lock`` held; when another
        thread already replaced ``failed``, only returns ``exc``.
        """
        if self._db is not failed:
            return exc
        failed.abandon()
        fresh, aside = db.Database.start_over(failed.path, exc.detail)
        self._db = fresh
        self.recoveries += 1
        self._last_prune = float("-inf")
        with self._pending_lock:  # the outbox of the damaged file is gone with it
            self._outbox_pending = 0
        configured = self._configured or {}
        with self._view_lock:
            self._states = {repo: _RepoState(endpoints=eps) for repo, eps in configured.items()}
        return HistoryRecoveredError(failed.path, exc.detail, aside)

    # --- reading ---------------------------------------------------------------------------

    def last_change(self, repository: str, endpoint: str, role: str) -> datetime | None:
        """First-seen time of the version the endpoint serves now for ``role`` (None: unseen)."""
        with self._view_lock:
            state = self._states.get(repository)
            row = None if state is None else state.current.get((endpoint, role))
        return None if row is None else db.from_ts(row.since)

    def age(self, repository: str, endpoint: str, role: str) -> float | None:
        """Seconds the endpoint has served its current version of ``role``, on the store's
        monotonic clock (see :class:`_Anchor`: a wall-clock step during the run changes
        nothing); None when unseen in this run. Meaningful when the observations used that
        clock too (``observe`` without ``now``, as the service calls it)."""
        with self._view_lock:
            state = self._states.get(repository)
            row = None if state is None else state.current.get((endpoint, role))
            anchor = None if state is None else state.anchors.get((endpoint, role))
        if row is None or anchor is None or (anchor.version, anchor.since) != (
            row.version,
            row.since,
        ):
            return None
        return anchor.age + max(0.0, self._monotonic() - anchor.monotonic)

    def observed_cadence(self, repository: str, role: str) -> float | None:
        """Learned re-signing period of ``role`` in seconds, or None while still learning.

        The median interval between the first sightings (on any endpoint) of its last
        ``LEARN_WINDOW`` versions; needs ``LEARN_MIN_INTERVALS`` intervals.
        """
        with self._reading() as conn:
            times = db.change_times(conn, repository, None, role, LEARN_WINDOW + 1)
        return _learned_cadence(times)

    def root_history(self, repository: str) -> list[RootVersion]:
        """Every recorded root version of the repository, oldest first, with its role keys."""
        with self._reading() as conn:
            rows = db.roots(conn, repository)
        return [
            RootVersion(
                r.version,
                db.from_ts(r.first_seen),
                r.sha256,
                r.endpoint,
                _keys_from_rows(r.role_keys),
            )
            for r in rows
        ]

    def authorized_keys(self, repository: str, role: str) -> RoleKeys | None:
        """Keys and threshold the newest recorded root authorizes for a top-level role."""
        with self._reading() as conn:
            root = db.latest_root(conn, repository)
        if root is None or root.role_keys is None or role not in root.role_keys:
            return None
        keyids, threshold = root.role_keys[role]
        return RoleKeys(keyids, threshold)

    def recent_findings(
        self, repository: str | None = None, since: datetime | None = None, limit: int = 100
    ) -> list[dict[str, Any]]:
        """Stored findings (JSON form), newest first, within the retention period."""
        start = float("-inf") if since is None else since.timestamp()
        with self._reading() as conn:
            bodies = db.recent_findings(conn, repository, start, limit)
        return [json.loads(b) for b in bodies]

    def collect(self) -> Iterator[Metric]:
        """prometheus_client's collector interface (the service registers the store): the
        families of :meth:`metrics` at the current time."""
        yield from self.metrics()

    def metrics(self, now: datetime | None = None) -> Iterator[Metric]:
        """The history metric families, from the in-memory snapshot (no SQL, no waiting).

        ``tuf_mirror_lag_seconds`` is computed against ``now`` (default: the current time),
        so it grows between probes.
        """
        t = (datetime.now(UTC) if now is None else now).timestamp()
        with self._view_lock:  # copies (the rows themselves are immutable)
            views = sorted(
                (
                    repo,
                    dict(s.current),
                    dict(s.moments),
                    dict(s.counters),
                    None if s.latest_root is None else s.latest_root.version,
                    dict(s.lifetimes),
                )
                for repo, s in self._states.items()
            )
        lag_v = family("tuf_mirror_lag_versions")
        lag_s = family("tuf_mirror_lag_seconds")
        changed = family("tuf_metadata_last_change_timestamp_seconds")
        rollbacks = family(_ROLLBACKS)
        anomalies = family(_ANOMALIES)
        rotations = family(_ROTATIONS)
        root = family("tuf_root_version")
        lifetime = family("tuf_metadata_normal_lifetime_seconds")
        by_metric = {_ROLLBACKS: rollbacks, _ANOMALIES: anomalies}
        for repo, current, moments, counters, root_version, lifetimes in views:
            mirrors = sorted({endpoint for endpoint, _ in current} - {PRIMARY})
            for (endpoint, role), row in sorted(current.items()):
                changed.add_metric([repo, endpoint, role], row.since)
            behind: list[tuple[str, float | None]] = []
            for mirror in mirrors:
                lags = _lag_of(current, mirror)
                if lags is None:
                    continue
                for role, n in sorted(lags.items()):
                    lag_v.add_metric([repo, mirror, role], float(n))
                behind.append((mirror, _behind_since(current, moments, mirror)))
            for mirror, since in behind:
                lag_s.add_metric([repo, mirror], 0.0 if since is None else max(0.0, t - since))
            for (metric, endpoint, label), value in sorted(counters.items()):
                if metric == _ROTATIONS:
                    rotations.add_metric([repo, label], value)
                elif metric in by_metric:
                    by_metric[metric].add_metric([repo, endpoint, label], value)
            if root_version is not None:
                root.add_metric([repo], float(root_version))
            for role, seconds in sorted(lifetimes.items()):
                lifetime.add_metric([repo, role], seconds)
        yield from (lag_v, lag_s, changed, rollbacks, anomalies, rotations, root, lifetime)

