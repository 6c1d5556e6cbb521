"""Constants and small pure helpers shared by the history's state, detection and store.

Nothing here touches SQLite except :func:`_behind_moment` (one read on a connection it is given).
"""

from __future__ import annotations

import itertools
import sqlite3
import statistics
from collections.abc import Iterable, Mapping

from exporter.catalogue import TOP_LEVEL_ROLES
from exporter.config import Config
from exporter.history import store as db
from exporter.history.store import CurrentRow
from exporter.probe import ProbeResult, RoleFacts, RoleKeys

#: Name of the primary endpoint in ProbeResult.endpoint.
PRIMARY = "primary"
#: Roles whose versions define mirror lag.
LAG_ROLES: tuple[str, ...] = ("timestamp", "snapshot")
#: Version changes looked at when learning a cadence.
LEARN_WINDOW = 20
#: Intervals needed before a learned cadence is trusted.
LEARN_MIN_INTERVALS = 5
#: Seconds between retention passes (run by ``observe``).
_ROLLBACKS = "tuf_rollbacks_detected_total"
_ANOMALIES = "tuf_anomalies_total"
_ROTATIONS = "tuf_key_rotations_total"


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

