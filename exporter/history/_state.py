"""The in-memory detection state of one repository, loaded once from the database.

See :class:`_RepoState`; :func:`_load_state` builds it from the committed rows.
"""

from __future__ import annotations

import sqlite3
from collections import Counter, OrderedDict
from dataclasses import dataclass, field

from exporter.catalogue import ANOMALY_KINDS, TOP_LEVEL_ROLES
from exporter.history import store as db
from exporter.history._rules import (
    _ANOMALIES,
    _ROLLBACKS,
    _ROTATIONS,
    LAG_ROLES,
    LEARN_WINDOW,
    PRIMARY,
    _behind_moment,
    normal_lifetime,
)
from exporter.history.store import CurrentRow, RootRow


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

