"""The history store: what every endpoint served over time, and what that history reveals.

The prober hands each :class:`~exporter.probe.results.ProbeResult` to :meth:`HistoryStore.observe`,
which records the versions and content hashes the endpoint served (in one SQLite transaction,
see :mod:`exporter.history.store`) and returns :class:`Finding` values: rollbacks, frozen
metadata, equivocation, unknown signers, over-long expiry, version jumps, key rotations, new
versions and mirror lag episodes. :meth:`HistoryStore.metrics` exports the history metrics of
the catalogue from an in-memory snapshot (no SQL on the scrape path).

Reporting rules (every finding is reported once, and re-observing stored facts after a restart
reports nothing):

* ``rollback``: the endpoint serves a lower version of a role than the highest it ever served.
  Reported once per (endpoint, role, served version, highest version): an endpoint that keeps
  serving the same old version, or flaps between the same two versions, counts once; a rollback
  to another version, or after the endpoint moved on to a higher version, counts again.
* ``freeze``: the endpoint still serves the same version past the allowance of its expected
  period, by the one rule of ``exporter.history.cadence`` (``ExpectedPeriod.allowance_seconds``, the
  same that sets ``tuf_signer_cadence_ok``): the role's ``Policy.cadence`` when configured (any
  role) plus a grace, otherwise, for the timestamp only, the median interval between the last
  version changes seen on the endpoint times a tolerance (judged only after
  ``LEARN_MIN_INTERVALS`` intervals). Once per (endpoint, role, version).
  Rollbacks and freezes both count in ``tuf_rollbacks_detected_total``.
* ``equivocation``: a content hash for (role, version) new to the repository while another hash
  is already known for it, on any endpoint (across mirrors, or over time on one endpoint).
  Once per (role, version, hash), attributed to the endpoint that first showed that hash.
  A client view other than ``returning`` (``new``, ``bootstrap-root-v<N>``: issue 16) is held
  to the same rule, against the hashes returning clients were given (and only that: a view
  records nothing and moves no per-endpoint state, so no rollback, freeze, lag or rotation
  comes of it); once per (endpoint, role, version, hash), naming the first view given it.
* ``unknown_signer`` and ``expiry_beyond_policy`` (expires minus the repository's first-seen
  time above ``Policy.max_lifetime[role]``): once per (repository, role, version), attributed to
  the endpoint where first seen.
* ``version_jump``: a version new to the repository more than ``Policy.max_version_jump`` above
  the highest version any endpoint served before. Once (a mirror catching up is no jump).
* ``new_version``: a version of a role above every version the repository's endpoints served
  before (not for the very first version seen, which is the baseline), with the keyids that
  signed it. Once per (role, version), on the endpoint that showed it first.
* ``key_rotation``: a root version above the newest recorded one changes a role's keys or
  threshold; one finding per role changed. Roots of probes that failed on the root role are
  not trusted for the key history.
* ``mirror_lag_started`` / ``mirror_caught_up``: judged when a mirror is observed: it serves a
  lower timestamp or snapshot version than the primary's current one / it no longer does.

The **lifetime as signed** of a version is its expiry minus when the repository's endpoints
first served it (:func:`lifetime_as_signed`; TUF metadata carries no signing time, and a
version is first seen within one probe interval of its publication, except the very first
version seen, whose lifetime is underestimated by the time it was already out). The **normal
lifetime** of a top-level role (``tuf_metadata_normal_lifetime_seconds``) is the upper median
of the lifetimes as signed of its newest ``LEARN_WINDOW`` versions (:func:`normal_lifetime`): a
single version signed shorter or longer than usual does not move it, a lasting change does
after about ``LEARN_WINDOW / 2`` versions. The expiry alerts warn relative to it.

Failed probes are recorded too, but only the roles the endpoint was seen serving (see
``_served_roles``): facts the client read from its own cache after a failed download are not
observations of the endpoint. Metadata without a threshold of valid signatures is recorded
(equivocation and rollback still apply to it) but never raises the highest version seen, so
a forged file with a huge version cannot poison the rollback baseline or hide later versions.

Delegated targets roles are not tracked (their number can be huge; their names never become
labels).
"""

from __future__ import annotations

import itertools
import json
import logging
import sqlite3
import statistics
import threading
import time
from collections import ChainMap, Counter, OrderedDict
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from enum import StrEnum
from pathlib import Path
from types import TracebackType
from typing import Any

from prometheus_client.metrics_core import Metric

from exporter.catalogue import ANOMALY_KINDS, TOP_LEVEL_ROLES, family
from exporter.config.model import Config, Policy
from exporter.events.model import Event, EventKind
from exporter.history import store as db
from exporter.history.cadence import ExpectedPeriod, expected_period
from exporter.history.store import (
    FILENAME,
    CurrentRow,
    HistoryCorruptError,
    HistoryError,
    HistoryRecoveredError,
    OnCorrupt,
    RootRow,
)
from exporter.probe.results import (
    CLIENT_RETURNING,
    FailedRole,
    ProbeResult,
    RoleFacts,
    RoleKeys,
    rfc3339,
)

__all__ = [
    "FILENAME",
    "Finding",
    "FindingKind",
    "HistoryCorruptError",
    "HistoryError",
    "HistoryRecoveredError",
    "HistoryStore",
    "RootVersion",
    "Severity",
]

log = logging.getLogger(__name__)

#: Name of the primary endpoint in ProbeResult.endpoint.
PRIMARY = "primary"
#: Roles whose versions define mirror lag.
LAG_ROLES: tuple[str, ...] = ("timestamp", "snapshot")
#: Version changes looked at when learning a cadence.
LEARN_WINDOW = 20
#: Intervals needed before a learned cadence is trusted.
LEARN_MIN_INTERVALS = 5
#: Seconds between retention passes (run by ``observe``).
PRUNE_EVERY = 3600.0

_ROLLBACKS = "tuf_rollbacks_detected_total"
_ANOMALIES = "tuf_anomalies_total"
_ROTATIONS = "tuf_key_rotations_total"


class FindingKind(StrEnum):
    """What a finding reports."""

    ROLLBACK = "rollback"
    FREEZE = "freeze"
    EQUIVOCATION = "equivocation"
    UNKNOWN_SIGNER = "unknown_signer"
    EXPIRY_BEYOND_POLICY = "expiry_beyond_policy"
    VERSION_JUMP = "version_jump"
    KEY_ROTATION = "key_rotation"
    NEW_VERSION = "new_version"
    MIRROR_LAG_STARTED = "mirror_lag_started"
    MIRROR_CAUGHT_UP = "mirror_caught_up"


class Severity(StrEnum):
    """How urgent a finding is."""

    CRITICAL = "critical"
    WARNING = "warning"
    INFO = "info"


_SEVERITY: dict[FindingKind, Severity] = {
    FindingKind.ROLLBACK: Severity.CRITICAL,
    FindingKind.EQUIVOCATION: Severity.CRITICAL,
    FindingKind.UNKNOWN_SIGNER: Severity.CRITICAL,
    FindingKind.FREEZE: Severity.WARNING,
    FindingKind.EXPIRY_BEYOND_POLICY: Severity.WARNING,
    FindingKind.VERSION_JUMP: Severity.WARNING,
    FindingKind.KEY_ROTATION: Severity.INFO,
    FindingKind.NEW_VERSION: Severity.INFO,
    FindingKind.MIRROR_LAG_STARTED: Severity.INFO,
    FindingKind.MIRROR_CAUGHT_UP: Severity.INFO,
}


#: The event kind of each finding kind (the finding's kind becomes the event's ``reason``).
_EVENT_KINDS: dict[FindingKind, EventKind] = {
    FindingKind.ROLLBACK: EventKind.ROLLBACK,
    FindingKind.FREEZE: EventKind.ROLLBACK,
    FindingKind.EQUIVOCATION: EventKind.ANOMALY,
    FindingKind.UNKNOWN_SIGNER: EventKind.ANOMALY,
    FindingKind.EXPIRY_BEYOND_POLICY: EventKind.ANOMALY,
    FindingKind.VERSION_JUMP: EventKind.ANOMALY,
    FindingKind.KEY_ROTATION: EventKind.KEY_ROTATION,
    FindingKind.NEW_VERSION: EventKind.SIGNING,
    FindingKind.MIRROR_LAG_STARTED: EventKind.MIRROR_LAG,
    FindingKind.MIRROR_CAUGHT_UP: EventKind.MIRROR_LAG,
}


@dataclass(frozen=True)
class Finding:
    """One thing the history revealed, self-describing (it becomes an event as is).

    ``versions`` names the versions involved (``previous``/``current``, ``primary``/``mirror``,
    ``old_root``/``new_root``), ``hashes`` the content hashes, ``keyids`` the keys concerned
    (signers of a new version, unknown signers, keys a rotation authorizes now) and ``details``
    everything else (for ``key_rotation``: ``added``, ``removed``, ``old_threshold``,
    ``new_threshold``).
    """

    kind: FindingKind
    repository: str
    endpoint: str
    role: str | None
    time: datetime
    message: str
    versions: Mapping[str, int] = field(default_factory=dict)
    hashes: Mapping[str, str] = field(default_factory=dict)
    keyids: tuple[str, ...] = ()
    details: Mapping[str, Any] = field(default_factory=dict)

    @property
    def severity(self) -> Severity:
        """``critical`` for attacks, ``warning`` for policy breaches, ``info`` otherwise."""
        return _SEVERITY[self.kind]

    def to_event(self) -> Event:
        """The event recording this finding; ``reason`` is the finding's kind. Its id is
        derived from the content (time included), so the same finding is the same event."""
        return Event(
            kind=_EVENT_KINDS[self.kind],
            time=self.time,
            repository=self.repository,
            endpoint=self.endpoint,
            role=self.role,
            versions=self.versions,
            hashes=self.hashes,
            keyids=self.keyids,
            reason=str(self.kind),
            message=self.message,
            details={**self.details, "severity": str(self.severity)},
        )

    def to_json(self) -> dict[str, Any]:
        """JSON-ready finding, time as RFC 3339 UTC."""
        return {
            "kind": str(self.kind),
            "severity": str(self.severity),
            "repository": self.repository,
            "endpoint": self.endpoint,
            "role": self.role,
            "time": rfc3339(self.time),
            "message": self.message,
            "versions": dict(self.versions),
            "hashes": dict(self.hashes),
            "keyids": list(self.keyids),
            "details": dict(self.details),
        }


@dataclass(frozen=True)
class RootVersion:
    """One root version of a repository, for dashboards, annotations and signer probes."""

    version: int
    first_seen: datetime
    sha256: str
    endpoint: str  #: where it was first seen
    #: Keys and threshold of every top-level role (None when the probe did not report them).
    role_keys: Mapping[str, RoleKeys] | None


# ---------------------------------------------------------------------------------------------
# Small helpers


def configured_endpoints(config: Config) -> dict[str, frozenset[str]]:
    """Repository name -> names of its endpoints (primary and mirrors), as configured."""
    return {r.name: frozenset(e.name for e in r.endpoints) for r in config.repositories}


def _median_interval(times: list[float]) -> tuple[float, int] | None:
    """Median gap between consecutive ``times`` (sorted) and the number of gaps."""
    gaps = [b - a for a, b in itertools.pairwise(times) if b > a]
    if not gaps:
        return None
    return statistics.median(gaps), len(gaps)


def _learned_cadence(times: list[float]) -> float | None:
    """The median interval when there are at least ``LEARN_MIN_INTERVALS`` of them."""
    median = _median_interval(times)
    if median is None or median[1] < LEARN_MIN_INTERVALS:
        return None
    return median[0]


def lifetime_as_signed(expires: float, first_seen: float) -> float:
    """Seconds a version was signed to last: ``expires`` minus its repository-wide first
    sighting (both Unix seconds). The one definition used by ``expiry_beyond_policy`` and by
    the normal lifetime."""
    return expires - first_seen


def normal_lifetime(versions: Iterable[tuple[float, float]]) -> float | None:
    """The usual lifetime as signed, in seconds, of (expiry, first seen) pairs of versions.

    The upper median of the positive lifetimes (a version already expired when first seen,
    such as a forged one, says nothing about the usual life); None without any.
    """
    lifetimes = [x for x in (lifetime_as_signed(e, f) for e, f in versions) if x > 0]
    return statistics.median_high(lifetimes) if lifetimes else None


def _role_order(name: str) -> tuple[int, str]:
    """Root first (its keys judge the rest), then the other top-level roles, then any other."""
    if name in TOP_LEVEL_ROLES:
        return TOP_LEVEL_ROLES.index(name), name
    return len(TOP_LEVEL_ROLES), name


def _keys_to_rows(
    keys: Mapping[str, RoleKeys] | None,
) -> dict[str, tuple[tuple[str, ...], int]] | None:
    if keys is None:
        return None
    return {role: (tuple(sorted(k.keyids)), k.threshold) for role, k in keys.items()}


def _keys_from_rows(
    rows: Mapping[str, tuple[tuple[str, ...], int]] | None,
) -> dict[str, RoleKeys] | None:
    if rows is None:
        return None
    return {role: RoleKeys(keyids, threshold) for role, (keyids, threshold) in rows.items()}


def _max_version(prev: CurrentRow | None, version: int | None) -> int:
    """The rollback baseline after an observation (``version`` None: not properly signed)."""
    if prev is None:
        return 0 if version is None else version
    return prev.max_version if version is None else max(prev.max_version, version)


def _served_roles(result: ProbeResult) -> Mapping[str, RoleFacts]:
    """The roles of ``result`` that show what the endpoint serves now.

    A successful (or reused) verdict vouches for every role, fetched or still valid in the
    client's cache. After a failed probe the inspector also reports roles read from the cache,
    which say nothing about the endpoint (a mirror that is down would look frozen): only roles
    with a completed 2xx download in ``result.requests`` count then. Results without request
    records (nothing to tell them apart) are taken as they are.
    """
    if result.success or result.reused_verdict or not result.requests:
        return result.roles
    fetched = {
        r.role
        for r in result.requests
        if r.status is not None and 200 <= r.status < 300 and r.error is None
    }
    return {name: facts for name, facts in result.roles.items() if name in fetched}


def _lag_of(current: Mapping[tuple[str, str], CurrentRow], mirror: str) -> dict[str, int] | None:
    """Versions the mirror is behind the primary per lag role; None when not comparable."""
    lags: dict[str, int] = {}
    for role in LAG_ROLES:
        primary, here = current.get((PRIMARY, role)), current.get((mirror, role))
        if primary is not None and here is not None:
            lags[role] = max(0, primary.version - here.version)
    return lags or None


def _behind_moment(
    conn: sqlite3.Connection, repo: str, role: str, primary: CurrentRow, version: int
) -> float:
    """When the primary first showed a ``role`` version above ``version`` (a mirror's)."""
    oldest = db.oldest_newer_than(conn, repo, PRIMARY, role, version)
    return primary.since if oldest is None else min(oldest, primary.since)


def _behind_since(
    current: Mapping[tuple[str, str], CurrentRow],
    moments: Mapping[tuple[str, int], float],
    mirror: str,
) -> float | None:
    """When the primary first showed the oldest version the mirror lacks; None when current.

    ``moments`` holds :func:`_behind_moment` per (lag role, mirror version below the
    primary's), so no SQL runs here.
    """
    since: float | None = None
    for role in LAG_ROLES:
        primary, here = current.get((PRIMARY, role)), current.get((mirror, role))
        if primary is None or here is None or primary.version <= here.version:
            continue
        moment = moments.get((role, here.version), primary.since)
        since = moment if since is None else min(since, moment)
    return since


# ---------------------------------------------------------------------------------------------
# The in-memory state of one repository


@dataclass(frozen=True)
class _Anchor:
    """Where this run first saw the version an endpoint serves for a role, on a steady clock.

    The age of that version is ``age + (monotonic now - monotonic)``: a step of the wall
    clock during the run changes nothing. Only ``age``, the wall-clock age at that first
    sighting, comes from the wall clock (0 for a version new to the endpoint; for one first
    seen before this run, the stored first-seen time is all that survives a restart).
    """

    version: int
    since: float  #: the ``current`` row's ``since`` (first-seen time, wall clock)
    monotonic: float  #: steady-clock reading at the first sighting in this run
    age: float  #: wall-clock age of the version at that sighting, never negative


#: (role, version) entries kept in each repository's cache of known content hashes.
KNOWN_CACHE = 64


@dataclass
class _Known:
    """Content hashes the repository's endpoints served for one (role, version)."""

    hashes: set[str]
    first_seen: float | None  #: earliest first-seen time of the version on any endpoint


@dataclass
class _RepoState:
    """One repository's detection state in memory, the same as the committed database.

    Loaded when the store opens (the only time every row of the repository is read). After
    that an observation reads it instead of SQL, and it changes only for the probed
    endpoint, once the observation's transaction committed and before the store's write lock
    is released (so the next observation sees it). What ``metrics()`` and ``last_change()``
    read changes under the view lock too.
    """

    #: (endpoint, role) -> its ``current`` row; ``last_seen`` may be ahead of the database
    current: dict[tuple[str, str], CurrentRow] = field(default_factory=dict)
    #: keys of ``current`` whose ``last_seen`` is not written yet (see ``HistoryStore``)
    stale: set[tuple[str, str]] = field(default_factory=set)
    #: (metric, endpoint, label) -> value, known series at 0
    counters: dict[tuple[str, str, str], float] = field(default_factory=dict)
    #: open lag episodes: mirror -> since
    lags: dict[str, float] = field(default_factory=dict)
    #: role -> highest version any endpoint ever served (``MAX(max_version)`` of ``current``)
    repo_max: dict[str, int] = field(default_factory=dict)
    root_versions: set[int] = field(default_factory=set)
    latest_root: RootRow | None = None
    #: lag role -> mirror version -> number of mirrors serving it now
    mirror_versions: dict[str, Counter[int]] = field(
        default_factory=lambda: {role: Counter() for role in LAG_ROLES}
    )
    #: (lag role, version of a mirror below the primary's) -> :func:`_behind_moment`
    moments: dict[tuple[str, int], float] = field(default_factory=dict)
    #: cache (least recently used first): (role, version) -> hashes served, first seen
    known: OrderedDict[tuple[str, int], _Known] = field(default_factory=OrderedDict)
    #: cache: (endpoint, role) -> (version, sha256 served, learned cadence of the endpoint)
    cadences: dict[tuple[str, str], tuple[int, str, float | None]] = field(default_factory=dict)
    #: the endpoints loaded (the configured ones); None: every endpoint stored
    endpoints: frozenset[str] | None = None
    #: (endpoint, role) -> :class:`_Anchor` of the version it serves now (ages within a run)
    anchors: dict[tuple[str, str], _Anchor] = field(default_factory=dict)
    #: top-level role -> (expiry, repository-wide first sighting) of its newest
    #: ``LEARN_WINDOW`` versions, by version
    lives: dict[str, dict[int, tuple[float, float]]] = field(default_factory=dict)
    #: top-level role -> :func:`normal_lifetime` of ``lives`` (absent: none known)
    lifetimes: dict[str, float] = field(default_factory=dict)

    def add_life(self, role: str, version: int, expires: float, first_seen: float) -> None:
        """A version of ``role`` new to the repository (keeps the newest ``LEARN_WINDOW``)."""
        lives = self.lives.setdefault(role, {})
        lives[version] = (expires, first_seen)
        for old in sorted(lives)[:-LEARN_WINDOW]:
            del lives[old]
        lifetime = normal_lifetime(lives.values())
        if lifetime is None:
            self.lifetimes.pop(role, None)
        else:
            self.lifetimes[role] = lifetime

    def put(self, row: CurrentRow, written: bool) -> None:
        """Take ``row`` as the endpoint's current row (``written``: its last_seen is stored)."""
        key = (row.endpoint, row.role)
        old = self.current.get(key)
        self.current[key] = row
        if written:
            self.stale.discard(key)
        else:
            self.stale.add(key)
        self.repo_max[row.role] = max(self.repo_max.get(row.role, row.max_version), row.max_version)
        if old is None:
            self.counters.setdefault((_ROLLBACKS, row.endpoint, row.role), 0.0)
            for kind in ANOMALY_KINDS:
                self.counters.setdefault((_ANOMALIES, row.endpoint, kind), 0.0)
        if row.endpoint != PRIMARY and row.role in LAG_ROLES:
            versions = self.mirror_versions[row.role]
            if old is not None:
                versions[old.version] -= 1
                if versions[old.version] <= 0:
                    del versions[old.version]
            versions[row.version] += 1

    def add_root(self, row: RootRow) -> None:
        """A root version was recorded."""
        self.root_versions.add(row.version)
        if self.latest_root is None or row.version > self.latest_root.version:
            self.latest_root = row
            keys = row.role_keys or {}
            # Rotation series at 0 for the roles of the newest root only (stored ones are >= 1).
            for key, value in list(self.counters.items()):
                if key[0] == _ROTATIONS and value == 0.0 and key[2] not in keys:
                    del self.counters[key]
            for role in keys:
                self.counters.setdefault((_ROTATIONS, "", role), 0.0)

    def keep_caches(self, old: _RepoState) -> None:
        """Take over the caches and steady-clock anchors of ``old`` (the same repository
        before a reload) for the endpoints loaded here."""
        self.known = old.known
        self.cadences = {k: v for k, v in old.cadences.items() if self._has(k[0])}
        self.anchors = {k: v for k, v in old.anchors.items() if self._has(k[0])}

    def _has(self, endpoint: str) -> bool:
        return self.endpoints is None or endpoint in self.endpoints

    def moments_of(
        self, conn: sqlite3.Connection, repo: str, role: str
    ) -> dict[tuple[str, int], float]:
        """:func:`_behind_moment` of every version mirrors serve below the primary's now."""
        primary = self.current.get((PRIMARY, role))
        if primary is None:
            return {}
        return {
            (role, version): _behind_moment(conn, repo, role, primary, version)
            for version in self.mirror_versions[role]
            if version < primary.version
        }

    def all_moments(self, conn: sqlite3.Connection, repo: str) -> dict[tuple[str, int], float]:
        """:meth:`moments_of` every lag role."""
        return {k: v for role in LAG_ROLES for k, v in self.moments_of(conn, repo, role).items()}


def _load_state(
    conn: sqlite3.Connection, repo: str, endpoints: frozenset[str] | None = None
) -> _RepoState:
    """Read everything the detection and the metrics of the repository need.

    ``endpoints``: load only the state of these endpoints (the configured ones; None: all).
    The highest version the repository ever served (``repo_max``) counts every stored
    endpoint, as the equivocation and new-version checks read every stored hash.
    """

    def wanted(endpoint: str) -> bool:
        return endpoints is None or endpoint in endpoints

    lags = {mirror: since for mirror, since in db.repo_lags(conn, repo).items() if wanted(mirror)}
    state = _RepoState(lags=lags, endpoints=endpoints)
    for row in db.repo_current(conn, repo):
        if wanted(row.endpoint):
            state.put(row, written=True)
        else:
            state.repo_max[row.role] = max(state.repo_max.get(row.role, 0), row.max_version)
    roots = db.roots(conn, repo)
    state.root_versions = {root.version for root in roots}
    if roots:
        state.add_root(roots[-1])
    for c in db.repo_counters(conn, repo):
        if c.metric == _ROTATIONS or wanted(c.endpoint):
            state.counters[(c.metric, c.endpoint, c.label)] = c.value
    state.moments = state.all_moments(conn, repo)
    for role in sorted({role for _, role in state.current} & set(TOP_LEVEL_ROLES)):
        for version, expires, first_seen in db.expiries(conn, repo, role, LEARN_WINDOW):
            state.add_life(role, version, expires, first_seen)
    return state


# ---------------------------------------------------------------------------------------------
# Detection: one observation


class _Observation:
    """Judges one ProbeResult against the repository's in-memory state and stores it.

    Every write goes to one transaction, begun by the first statement needed (``conn``): an
    observation that changes nothing stored (the endpoint serves exactly what it served
    before, and nothing is to report) runs no SQL at all. What the observation changes in
    memory is collected here and applied by the store once the transaction committed
    (:meth:`HistoryStore._apply`), so a failed observation leaves memory as it was.
    """

    def __init__(
        self,
        begin: Callable[[], sqlite3.Connection],
        state: _RepoState,
        result: ProbeResult,
        policy: Policy,
        at: datetime,
        monotonic: float,
    ) -> None:
        self._begin = begin
        self._conn: sqlite3.Connection | None = None
        self.state = state
        self.result = result
        self.policy = policy
        self.at = at
        self.t = at.timestamp()
        self.monotonic = monotonic
        self.repo = result.repository
        self.endpoint = result.endpoint
        self.findings: list[Finding] = []
        # What to apply to ``state`` after the commit:
        #: role -> (the endpoint's new current row, whether its last_seen was written)
        self.rows: dict[str, tuple[CurrentRow, bool]] = {}
        self.counts: dict[tuple[str, str, str], float] = {}
        #: (since,) of a lag episode opened, (None,) when closed
        self.lag: tuple[float | None] | None = None
        self.root: RootRow | None = None
        #: (role, version) -> (hash served, first-seen time of the version on the endpoint)
        self.seen: dict[tuple[str, int], tuple[str, float]] = {}
        self.cadences: dict[tuple[str, str], tuple[int, str, float | None]] = {}
        #: role -> (version, expiry, first seen) of a version new to the repository
        self.lives: dict[str, tuple[int, float, float]] = {}
        #: moments computed, and the lag roles whose moments they replace (primary moved)
        self.moments: dict[tuple[str, int], float] = {}
        self.moment_roles: set[str] = set()
        #: (endpoint, role) -> anchor of a version this run sees for the first time
        self.anchors: dict[tuple[str, str], _Anchor] = {}

    @property
    def conn(self) -> sqlite3.Connection:
        """The observation's transaction (begun on first use)."""
        if self._conn is None:
            self._conn = self._begin()
        return self._conn

    # --- plumbing ------------------------------------------------------------------------

    def _report(
        self,
        kind: FindingKind,
        role: str | None,
        message: str,
        *,
        versions: Mapping[str, int] | None = None,
        hashes: Mapping[str, str] | None = None,
        keyids: Iterable[str] = (),
        details: Mapping[str, Any] | None = None,
        endpoint: str | None = None,
    ) -> None:
        self.findings.append(
            Finding(
                kind=kind,
                repository=self.repo,
                endpoint=self.endpoint if endpoint is None else endpoint,
                role=role,
                time=self.at,
                message=message,
                versions=dict(versions or {}),
                hashes=dict(hashes or {}),
                keyids=tuple(keyids),
                details=dict(details or {}),
            )
        )

    def _count(self, metric: str, endpoint: str, label: str) -> None:
        db.add_counter(self.conn, metric, self.repo, endpoint, label, 1.0)
        key = (metric, endpoint, label)
        self.counts[key] = self.counts.get(key, 0.0) + 1.0

    def _once(self, key: str) -> bool:
        return db.set_flag(self.conn, self.repo, key, self.t)

    def _current(self, endpoint: str, role: str) -> CurrentRow | None:
        """The current row, as this observation leaves it."""
        if endpoint == self.endpoint and role in self.rows:
            return self.rows[role][0]
        return self.state.current.get((endpoint, role))

    def _known(self, role: str, version: int) -> _Known:
        """Hashes the repository served for (role, version) before this observation.

        Cached per repository (least recently used entries go first): read from the database
        once per (role, version), then kept up to date by the observations.
        """
        key = (role, version)
        known = self.state.known.get(key)
        if known is None:
            hashes = db.hashes_of(self.conn, self.repo, role, version)
            # The committed state: valid whether or not this observation commits.
            known = _Known(set(hashes), min(hashes.values(), default=None))
            self.state.known[key] = known
            while len(self.state.known) > KNOWN_CACHE:
                self.state.known.popitem(last=False)
        else:
            self.state.known.move_to_end(key)
        return known

    # --- the observation -----------------------------------------------------------------

    def run(self) -> list[Finding]:
        """Record every role the endpoint was seen serving, then judge root keys and lag."""
        roles = _served_roles(self.result)
        if self.result.client != CLIENT_RETURNING:
            for name in sorted(roles, key=_role_order):
                self._view_role(roles[name])
            return self.findings
        for name in sorted(roles, key=_role_order):
            self._role(roles[name])
        root = roles.get("root")
        if root is not None and self._root_trusted():
            self._root(root)
        if self.endpoint == PRIMARY:
            self._primary_moved()
        else:
            self._mirror_lag()
        return self.findings

    def _role(self, facts: RoleFacts) -> None:
        role, version = facts.name, facts.version
        prev = self.state.current.get((self.endpoint, role))
        # Facts without a threshold of valid signatures are recorded (what was served) but
        # never raise the versions the rollback and jump checks compare against.
        signed = facts.signatures_valid >= facts.threshold
        # Serving the content stored as current: its versions row exists (retention keeps
        # the rows of the versions served now), so the hash is known and the version not new.
        same = prev is not None and prev.version == version and prev.sha256 == facts.sha256
        known: _Known | None = None
        if not same:
            known = self._known(role, version)
            if known.hashes and facts.sha256 not in known.hashes:
                self._equivocation(facts, db.endpoints_by_hash(self.conn, self.repo, role, version))
            repo_max = self.state.repo_max.get(role)
            if signed and not known.hashes and repo_max is not None and version > repo_max:
                self._new_version(facts, repo_max)
                self._version_jump(facts, repo_max)
        if prev is not None and version < prev.max_version:
            self._rollback(facts, prev)
        if facts.unknown_signers:
            self._unknown_signer(facts)
        here = self._record(facts, prev, same, _max_version(prev, version if signed else None))
        if here is not None and role == "timestamp" and not self.policy.cadence.get(role):
            self._learned_here(role)  # now, in the open transaction: repeats then need no SQL
        if here is not None and known is not None and not known.hashes \
                and role in TOP_LEVEL_ROLES:
            self.lives[role] = (version, facts.expires.timestamp(), here)
        self._expiry(facts, known, here)
        age = self._age(self.rows[role][0])
        if prev is not None and prev.version == version:
            self._freeze(facts, prev, age)

    def _view_role(self, facts: RoleFacts) -> None:
        """What a client view fetched: the equivocation rule only, against the content
        returning clients were given for the same (role, version); nothing is recorded.

        Not for root: the root a returning client trusts may be the configured file itself
        (a copy with other bytes but the same signed content is as good), and python-tuf
        judges every root of a view's chain by the previous root's keys anyway."""
        if facts.name == "root":
            return
        known = self._known(facts.name, facts.version)
        if not known.hashes or facts.sha256 in known.hashes:
            return
        key = f"equivocation|{self.endpoint}|{facts.name}|{facts.version}|{facts.sha256}"
        if self._once(key):  # the first view that was given it is named
            self._equivocation(
                facts, db.endpoints_by_hash(self.conn, self.repo, facts.name, facts.version)
            )

    def _age(self, row: CurrentRow) -> float:
        """Seconds the endpoint has served ``row``'s version, by the steady clock (see
        :class:`_Anchor`); anchors the version at its first sighting in this run."""
        key = (row.endpoint, row.role)
        anchor = self.state.anchors.get(key)
        if anchor is None or (anchor.version, anchor.since) != (row.version, row.since):
            anchor = _Anchor(row.version, row.since, self.monotonic, max(0.0, self.t - row.since))
            self.anchors[key] = anchor
        return anchor.age + max(0.0, self.monotonic - anchor.monotonic)

    def _record(
        self, facts: RoleFacts, prev: CurrentRow | None, same: bool, max_version: int
    ) -> float | None:
        """Store what the endpoint serves for the role.

        Returns the first-seen time of the version on the endpoint, None when nothing was
        written: the endpoint serves what is stored, and only its last-seen time moves, in
        memory (written in batches, see ``HistoryStore``).
        """
        role, version = facts.name, facts.version
        if same and prev is not None and prev.max_version == max_version:
            self.rows[role] = (replace(prev, last_seen=max(prev.last_seen, self.t)), False)
            return None
        if prev is not None and not same and (self.endpoint, role) in self.state.stale:
            db.touch_last_seen(self.conn, [prev])  # its last sighting, kept in memory so far
        db.record_version(
            self.conn,
            self.repo,
            self.endpoint,
            role,
            version,
            facts.sha256,
            facts.expires.timestamp(),
            facts.signed_by,
            self.t,
        )
        here = db.first_seen(self.conn, self.repo, self.endpoint, role, version)
        since = prev.since if prev is not None and prev.version == version else here
        row = CurrentRow(
            self.repo,
            self.endpoint,
            role,
            version,
            facts.sha256,
            self.t if since is None else since,
            self.t,
            max_version,
        )
        db.put_current(self.conn, row)
        self.rows[role] = (row, True)
        if here is not None:
            self.seen[(role, version)] = (facts.sha256, here)
        return here

    # --- per-role detectors --------------------------------------------------------------

    def _equivocation(self, facts: RoleFacts, known: Mapping[str, list[str]]) -> None:
        self._count(_ANOMALIES, self.endpoint, "equivocation")
        others = list(known)  # in first-seen order
        client = self.result.client
        where = self.endpoint if client == CLIENT_RETURNING else (
            f"{self.endpoint} (to the client view {client})")
        self._report(
            FindingKind.EQUIVOCATION,
            facts.name,
            f"{where} serves {facts.name} version {facts.version} with content "
            f"{facts.sha256[:12]}, but the repository already served that version with "
            f"different content ({', '.join(h[:12] for h in others)})",
            versions={"current": facts.version},
            hashes={"current": facts.sha256, "previous": others[0]},
            keyids=facts.signed_by,
            details={"known": {sha: sorted(set(eps)) for sha, eps in known.items()},
                     "client": client},
        )

    def _new_version(self, facts: RoleFacts, repo_max: int) -> None:
        self._report(
            FindingKind.NEW_VERSION,
            facts.name,
            f"new {facts.name} version {facts.version} (previous highest {repo_max}) first seen "
            f"on {self.endpoint}, signed by {', '.join(facts.signed_by) or 'no authorized key'}",
            versions={"previous": repo_max, "current": facts.version},
            hashes={"current": facts.sha256},
            keyids=facts.signed_by,
            details={
                "expires": rfc3339(facts.expires),
                "threshold": facts.threshold,
                "unknown_signers": list(facts.unknown_signers),
                "size_bytes": facts.size_bytes,
            },
        )

    def _version_jump(self, facts: RoleFacts, repo_max: int) -> None:
        jump = facts.version - repo_max
        if jump <= self.policy.max_version_jump:
            return
        self._count(_ANOMALIES, self.endpoint, "version_jump")
        self._report(
            FindingKind.VERSION_JUMP,
            facts.name,
            f"{facts.name} jumped from version {repo_max} to {facts.version} (+{jump}, policy "
            f"allows +{self.policy.max_version_jump}) on {self.endpoint}",
            versions={"previous": repo_max, "current": facts.version},
            hashes={"current": facts.sha256},
            keyids=facts.signed_by,
            details={"jump": jump, "max_version_jump": self.policy.max_version_jump},
        )

    def _rollback(self, facts: RoleFacts, prev: CurrentRow) -> None:
        key = f"rollback|{self.endpoint}|{facts.name}|{facts.version}|{prev.max_version}"
        if not self._once(key):
            return
        self._count(_ROLLBACKS, self.endpoint, facts.name)
        self._report(
            FindingKind.ROLLBACK,
            facts.name,
            f"{self.endpoint} serves {facts.name} version {facts.version}, lower than version "
            f"{prev.max_version} it already served",
            versions={
                "previous": prev.max_version,
                "current": facts.version,
                "last_served": prev.version,
            },
            hashes={"current": facts.sha256, "last_served": prev.sha256},
            keyids=facts.signed_by,
            details={
                "probe_reason": None if self.result.reason is None else str(self.result.reason)
            },
        )

    def _unknown_signer(self, facts: RoleFacts) -> None:
        """A signature by a key the delegator does not authorize for the role; for root, by a
        key neither the root nor its previous version authorizes (the inspector's
        ``unknown_signers``): a rotation's signatures by the previous root's keys never count.
        """
        if not self._once(f"unknown_signer|{facts.name}|{facts.version}"):
            return
        self._count(_ANOMALIES, self.endpoint, "unknown_signer")
        details: dict[str, object] = {
            "signed_by": list(facts.signed_by), "delegator": facts.delegator
        }
        if facts.previous_root_signed_by is not None:
            details["previous_root_signed_by"] = list(facts.previous_root_signed_by)
        whose = (
            "not authorized for the role" if facts.name != "root"
            else "neither this root nor the previous version authorizes for root"
        )
        self._report(
            FindingKind.UNKNOWN_SIGNER,
            facts.name,
            f"{facts.name} version {facts.version} on {self.endpoint} carries signatures by "
            f"keys {whose}: {', '.join(facts.unknown_signers)}",
            versions={"current": facts.version},
            hashes={"current": facts.sha256},
            keyids=facts.unknown_signers,
            details=details,
        )

    def _expiry(self, facts: RoleFacts, known: _Known | None, here: float | None) -> None:
        """``known``: the repository's hashes before the observation (None: not looked up);
        ``here``: first-seen time of the version on the endpoint, when it was just written."""
        limit = self.policy.max_lifetime.get(facts.name)
        if not limit:
            return
        if known is None:  # the endpoint serves what is stored: its row is counted in it
            known = self._known(facts.name, facts.version)
        times = [x for x in (known.first_seen, here) if x is not None]
        first = (min(times) if times else None) or self.t
        lifetime = lifetime_as_signed(facts.expires.timestamp(), first)
        if lifetime <= limit or not self._once(
            f"expiry_beyond_policy|{facts.name}|{facts.version}"
        ):
            return
        self._count(_ANOMALIES, self.endpoint, "expiry_beyond_policy")
        self._report(
            FindingKind.EXPIRY_BEYOND_POLICY,
            facts.name,
            f"{facts.name} version {facts.version} expires {rfc3339(facts.expires)}, "
            f"{lifetime:.0f}s after it was first seen; policy allows {limit:.0f}s",
            versions={"current": facts.version},
            hashes={"current": facts.sha256},
            keyids=facts.signed_by,
            details={
                "expires": rfc3339(facts.expires),
                "first_seen": rfc3339(db.from_ts(first)),
                "lifetime_seconds": lifetime,
                "max_lifetime_seconds": limit,
            },
        )

    def _expected_period(self, role: str) -> ExpectedPeriod | None:
        """The role's period by the one cadence rule; learned only for the timestamp."""
        configured = self.policy.cadence.get(role)
        learned = None
        if not configured and role == "timestamp":
            learned = self._learned_here(role)
        return expected_period(role, self.policy, learned)

    def _learned_here(self, role: str) -> float | None:
        """Learned cadence of ``role`` on the endpoint.

        Cached per content served: the endpoint's change times only change when it serves
        other content (and retention keeps more versions than are looked at).
        """
        key = (self.endpoint, role)
        row = self._current(self.endpoint, role)
        cached = self.cadences.get(key) or self.state.cadences.get(key)
        if row is not None and cached is not None and cached[:2] == (row.version, row.sha256):
            return cached[2]
        times = db.change_times(self.conn, self.repo, self.endpoint, role, LEARN_WINDOW + 1)
        learned = _learned_cadence(times)
        if row is not None:
            self.cadences[key] = (row.version, row.sha256, learned)
        return learned

    def _freeze(self, facts: RoleFacts, prev: CurrentRow, age: float) -> None:
        """``age``: how long the endpoint has served the version, by :meth:`_age` (a step of
        the wall clock during the run neither raises nor hides a freeze)."""
        expected = self._expected_period(facts.name)
        if expected is None:
            return
        period, source = expected.allowance_seconds, expected.source.value
        key = f"freeze|{self.endpoint}|{facts.name}|{facts.version}"
        if expected.on_time(age) or not self._once(key):
            return
        self._count(_ROLLBACKS, self.endpoint, facts.name)
        self._report(
            FindingKind.FREEZE,
            facts.name,
            f"{self.endpoint} still serves {facts.name} version {facts.version} {age:.0f}s after "
            f"it first appeared; expected a new version within {period:.0f}s ({source})",
            versions={"current": facts.version},
            hashes={"current": facts.sha256},
            keyids=facts.signed_by,
            details={
                "since": rfc3339(db.from_ts(prev.since)),
                "age_seconds": age,
                "expected_period_seconds": period,
                "cadence_source": source,
            },
        )

    # --- root keys -----------------------------------------------------------------------

    def _root_trusted(self) -> bool:
        """Whether this probe's root may enter the key history (not when root failed)."""
        root = self.result.roles["root"]
        if root.signatures_valid < root.threshold:
            return False
        return self.result.success or (
            self.result.role is not None and self.result.role is not FailedRole.ROOT
        )

    def _root(self, facts: RoleFacts) -> None:
        if facts.version in self.state.root_versions:
            return  # recorded before: the first sighting stays
        latest = self.state.latest_root
        row = RootRow(
            facts.version, facts.sha256, self.t, self.endpoint, _keys_to_rows(facts.role_keys)
        )
        inserted = db.insert_root(self.conn, self.repo, row)
        if inserted:
            self.root = row
        if not inserted or latest is None or facts.version <= latest.version:
            return
        if latest.role_keys is None or row.role_keys is None:
            return
        for role in sorted(set(latest.role_keys) | set(row.role_keys)):
            old = latest.role_keys.get(role, ((), 0))
            new = row.role_keys.get(role, ((), 0))
            if set(old[0]) != set(new[0]) or old[1] != new[1]:
                self._rotation(role, latest.version, facts.version, old, new)

    def _rotation(
        self,
        role: str,
        old_version: int,
        new_version: int,
        old: tuple[tuple[str, ...], int],
        new: tuple[tuple[str, ...], int],
    ) -> None:
        added = sorted(set(new[0]) - set(old[0]))
        removed = sorted(set(old[0]) - set(new[0]))
        self._count(_ROTATIONS, "", role)
        parts = []
        if added:
            parts.append(f"added {', '.join(added)}")
        if removed:
            parts.append(f"removed {', '.join(removed)}")
        if old[1] != new[1]:
            parts.append(f"threshold {old[1]} -> {new[1]}")
        self._report(
            FindingKind.KEY_ROTATION,
            role,
            f"root version {new_version} changed the {role} keys: {'; '.join(parts)}",
            versions={"old_root": old_version, "new_root": new_version},
            keyids=tuple(sorted(new[0])),
            details={
                "added": added,
                "removed": removed,
                "old_threshold": old[1],
                "new_threshold": new[1],
                "old_keyids": sorted(old[0]),
                "new_keyids": sorted(new[0]),
            },
        )

    # --- mirror lag ----------------------------------------------------------------------

    def _primary_moved(self) -> None:
        """The primary serves another lag-role version: recompute when mirrors fell behind.

        One query per version some mirror serves below the primary's (few, whatever the
        number of mirrors); the lag of each mirror is derived from them at scrape time.
        """
        for role in LAG_ROLES:
            entry = self.rows.get(role)
            if entry is None:
                continue
            new, old = entry[0], self.state.current.get((PRIMARY, role))
            if old is not None and (old.version, old.sha256, old.since) == (
                new.version,
                new.sha256,
                new.since,
            ):
                continue
            self.moment_roles.add(role)
            for version in self.state.mirror_versions[role]:
                if version < new.version:
                    self.moments[(role, version)] = _behind_moment(
                        self.conn, self.repo, role, new, version
                    )

    def _mirror_lag(self) -> None:
        rows: dict[tuple[str, str], CurrentRow] = {}
        for role in LAG_ROLES:
            for endpoint in (PRIMARY, self.endpoint):
                row = self._current(endpoint, role)
                if row is not None:
                    rows[(endpoint, role)] = row
        for role in LAG_ROLES:  # the moments this mirror's versions need, if not known yet
            primary, here = rows.get((PRIMARY, role)), rows.get((self.endpoint, role))
            if primary is None or here is None or primary.version <= here.version:
                continue
            if (role, here.version) not in self.state.moments:
                self.moments[(role, here.version)] = _behind_moment(
                    self.conn, self.repo, role, primary, here.version
                )
        lags = _lag_of(rows, self.endpoint)
        if lags is None:
            return
        open_since = self.state.lags.get(self.endpoint)
        behind = max(lags.values()) > 0
        versions = {
            f"{who}_{role}": rows[(endpoint, role)].version
            for role in lags
            for who, endpoint in (("primary", PRIMARY), ("mirror", self.endpoint))
        }
        if behind and open_since is None:
            moments = ChainMap(self.moments, self.state.moments)
            since = _behind_since(rows, moments, self.endpoint) or self.t
            db.set_lag(self.conn, self.repo, self.endpoint, since)
            self.lag = (since,)
            self._report(
                FindingKind.MIRROR_LAG_STARTED,
                "timestamp" if lags.get("timestamp") else "snapshot",
                f"mirror {self.endpoint} is behind the primary: "
                + ", ".join(f"{role} by {n} version(s)" for role, n in lags.items() if n),
                versions=versions,
                details={"lag_versions": dict(lags), "behind_since": rfc3339(db.from_ts(since))},
            )
        elif not behind and open_since is not None:
            db.set_lag(self.conn, self.repo, self.endpoint, None)
            self.lag = (None,)
            self._report(
                FindingKind.MIRROR_CAUGHT_UP,
                "timestamp",
                f"mirror {self.endpoint} caught up with the primary after "
                f"{self.t - open_since:.0f}s",
                versions=versions,
                details={
                    "behind_since": rfc3339(db.from_ts(open_since)),
                    "lag_duration_seconds": self.t - open_since,
                },
            )


# ---------------------------------------------------------------------------------------------
# The store


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
