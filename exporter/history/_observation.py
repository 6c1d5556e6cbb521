"""Detection: one observation of a ProbeResult judged against the repository's history.

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

This module is longer than most for one job: :class:`_Observation` applies every rule above to
one result, each rule a method reading the same state and writing to the same transaction.
"""

from __future__ import annotations

import sqlite3
from collections import ChainMap
from collections.abc import Callable, Iterable, Mapping
from dataclasses import replace
from datetime import datetime
from typing import Any

from exporter.catalogue import TOP_LEVEL_ROLES
from exporter.config import Policy
from exporter.history import store as db
from exporter.history._rules import (
    _ANOMALIES,
    _ROLLBACKS,
    _ROTATIONS,
    LAG_ROLES,
    LEARN_WINDOW,
    PRIMARY,
    _behind_moment,
    _behind_since,
    _keys_to_rows,
    _lag_of,
    _learned_cadence,
    _max_version,
    _role_order,
    _served_roles,
    lifetime_as_signed,
)
from exporter.history._state import KNOWN_CACHE, _Anchor, _Known, _RepoState
from exporter.history.cadence import ExpectedPeriod, expected_period
from exporter.history.findings import Finding, FindingKind
from exporter.history.store import CurrentRow, RootRow
from exporter.probe import CLIENT_RETURNING, FailedRole, ProbeResult, RoleFacts, rfc3339


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

