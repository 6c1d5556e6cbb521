"""The history store: persistence, detection findings and the history metrics."""

from __future__ import annotations

import hashlib
import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.metrics_core import Metric
from support import Sim

from exporter import catalogue
from exporter.config import Policy
from exporter.history import (
    CONFIGURED_GRACE_SECONDS,
    Finding,
    FindingKind,
    HistoryCorruptError,
    HistoryStore,
    Severity,
    evaluate,
    expected_period,
)
from exporter.history import store as history_store
from exporter.probe import (
    FailedRole,
    Prober,
    ProbeResult,
    Reason,
    RequestRecord,
    RoleFacts,
    RoleKeys,
)

T0 = datetime(2027, 1, 1, tzinfo=UTC)
REPO = "repo"
POLICY = Policy()


# ---------------------------------------------------------------------------------------------
# Factories


def at(seconds: float) -> datetime:
    """T0 plus ``seconds``."""
    return T0 + timedelta(seconds=seconds)


def sha(role: str, version: int, variant: str = "") -> str:
    """A deterministic content hash: the same role and version give the same content."""
    return hashlib.sha256(f"{role}-{version}{variant}".encode()).hexdigest()


def facts(
    role: str,
    version: int,
    *,
    variant: str = "",
    expires: datetime | None = None,
    signed_by: tuple[str, ...] = ("k-online",),
    unknown: tuple[str, ...] = (),
    role_keys: Mapping[str, RoleKeys] | None = None,
) -> RoleFacts:
    return RoleFacts(
        name=role,
        version=version,
        expires=expires or at(86400),
        size_bytes=100,
        sha256=sha(role, version, variant),
        signed_by=signed_by,
        unknown_signers=unknown,
        threshold=1,
        role_keys=role_keys,
    )


def result(
    endpoint: str = "primary",
    roles: Iterable[RoleFacts] = (),
    *,
    repo: str = REPO,
    success: bool = True,
    reason: Reason | None = None,
    role: FailedRole | None = None,
) -> ProbeResult:
    return ProbeResult(
        repository=repo,
        endpoint=endpoint,
        success=success,
        started_at=T0,
        duration_seconds=0.1,
        reason=reason,
        role=role,
        roles={f.name: f for f in roles},
    )


def online(
    endpoint: str, version: int, *, snapshot: int | None = None, **kw: object
) -> ProbeResult:
    """A probe seeing timestamp ``version`` and snapshot ``snapshot`` (default: the same)."""
    snap = version if snapshot is None else snapshot
    return result(endpoint, [facts("timestamp", version, **kw), facts("snapshot", snap)])  # type: ignore[arg-type]


def kinds(findings: Iterable[Finding]) -> list[str]:
    return [str(f.kind) for f in findings]


def samples(store: HistoryStore, now: datetime) -> dict[tuple[str, tuple[str, ...]], float]:
    """Every exported sample: (sample name, label values) -> value."""
    out: dict[tuple[str, tuple[str, ...]], float] = {}
    for metric in store.metrics(now):
        for s in metric.samples:
            if s.name.endswith("_created"):
                continue
            out[(s.name, tuple(s.labels.values()))] = s.value
    return out


@pytest.fixture
def store(tmp_path: Path) -> Iterable[HistoryStore]:
    s = HistoryStore.open(tmp_path / "history.sqlite")
    yield s
    s.close()


# ---------------------------------------------------------------------------------------------
# Mirror lag and freshness


def test_mirror_held_back_three_versions(store: HistoryStore) -> None:
    lag_s = ("tuf_mirror_lag_seconds", (REPO, "m1"))
    lag_ts = ("tuf_mirror_lag_versions", (REPO, "m1", "timestamp"))
    lag_snap = ("tuf_mirror_lag_versions", (REPO, "m1", "snapshot"))
    assert store.observe(online("primary", 10), POLICY, at(0)) == []
    assert store.observe(online("m1", 10), POLICY, at(1)) == []
    assert samples(store, at(1))[lag_ts] == 0
    assert samples(store, at(1))[lag_s] == 0

    found: list[Finding] = []
    for step, version in enumerate((11, 12, 13), start=1):
        found += store.observe(online("primary", version), POLICY, at(300 * step))
        found += store.observe(online("m1", 10), POLICY, at(300 * step + 1))
    started = [f for f in found if f.kind is FindingKind.MIRROR_LAG_STARTED]
    assert len(started) == 1
    assert started[0].endpoint == "m1"
    assert started[0].details["lag_versions"] == {"timestamp": 1, "snapshot": 1}

    now = samples(store, at(901))
    assert now[lag_ts] == 3
    assert now[lag_snap] == 3
    # The primary first showed version 11 (the oldest the mirror lacks) at 300s.
    assert now[lag_s] == 601
    assert samples(store, at(2000))[lag_s] == 1700  # grows between probes

    found = store.observe(online("primary", 13), POLICY, at(2100))
    found += store.observe(online("m1", 13), POLICY, at(2101))
    assert kinds(found) == ["mirror_caught_up"]
    assert found[0].details["lag_duration_seconds"] == pytest.approx(2101 - 300)
    after = samples(store, at(2200))
    assert after[lag_ts] == 0
    assert after[lag_s] == 0
    # No lag series for the primary itself.
    assert ("tuf_mirror_lag_seconds", (REPO, "primary")) not in after


def test_mirror_ahead_of_primary_is_not_lagging(store: HistoryStore) -> None:
    store.observe(online("primary", 5), POLICY, at(0))
    assert kinds(store.observe(online("m1", 6), POLICY, at(1))) == ["new_version"] * 2
    s = samples(store, at(10))
    assert s[("tuf_mirror_lag_versions", (REPO, "m1", "timestamp"))] == 0
    assert s[("tuf_mirror_lag_seconds", (REPO, "m1"))] == 0


def test_last_change_is_first_seen_of_current_version(store: HistoryStore) -> None:
    store.observe(online("primary", 1), POLICY, at(0))
    store.observe(online("primary", 1), POLICY, at(300))
    assert store.last_change(REPO, "primary", "timestamp") == at(0)
    store.observe(online("primary", 2), POLICY, at(600))
    assert store.last_change(REPO, "primary", "timestamp") == at(600)
    assert store.last_change(REPO, "primary", "targets") is None
    key = ("tuf_metadata_last_change_timestamp_seconds", (REPO, "primary", "timestamp"))
    assert samples(store, at(700))[key] == at(600).timestamp()


def test_new_version_reports_signers_but_not_the_baseline(store: HistoryStore) -> None:
    assert store.observe(online("primary", 1), POLICY, at(0)) == []
    found = store.observe(online("primary", 2, signed_by=("k-a", "k-b")), POLICY, at(300))
    ts = [f for f in found if f.role == "timestamp"]
    assert kinds(ts) == ["new_version"]
    assert ts[0].keyids == ("k-a", "k-b")
    assert ts[0].versions == {"previous": 1, "current": 2}
    assert ts[0].severity is Severity.INFO
    # The mirror showing the same version later is not a new version of the repository.
    assert store.observe(online("m1", 2, signed_by=("k-a", "k-b")), POLICY, at(301)) == []


# ---------------------------------------------------------------------------------------------
# Rollback and freeze


def rollbacks(store: HistoryStore, endpoint: str = "primary", role: str = "timestamp") -> float:
    return samples(store, at(0))[("tuf_rollbacks_detected_total", (REPO, endpoint, role))]


def test_normal_lifetime_is_the_usual_life_as_signed(tmp_path: Path) -> None:
    """expires - first seen (on any endpoint) of the role's versions, their upper median: a
    version signed short once does not move it, a restart keeps it, mirrors share it."""
    path = tmp_path / "history.sqlite"
    key = ("tuf_metadata_normal_lifetime_seconds", (REPO, "timestamp"))
    with HistoryStore.open(path) as store:
        assert key not in samples(store, at(0))
        # a 1-day timestamp re-signed every hour, first seen at its publication
        for v in range(1, 5):
            t = 3600 * v
            store.observe(online("primary", v, expires=at(t + 86400)), POLICY, at(t))
            assert samples(store, at(t))[key] == 86400
        # the mirror shows version 4 later: the repository's first sighting counts
        store.observe(online("m1", 4, expires=at(4 * 3600 + 86400)), POLICY, at(5 * 3600))
        got = samples(store, at(5 * 3600))
        assert got[key] == 86400
        assert got[("tuf_metadata_normal_lifetime_seconds", (REPO, "snapshot"))] > 0
        # one version signed for ten minutes: still a 1-day role (and so, close to expiry)
        store.observe(online("primary", 5, expires=at(5 * 3600 + 600)), POLICY, at(5 * 3600))
        assert samples(store, at(5 * 3600))[key] == 86400
        # a forged, already expired version says nothing about the usual life
        store.observe(online("primary", 6, expires=at(0)), POLICY, at(6 * 3600))
        assert samples(store, at(6 * 3600))[key] == 86400
    with HistoryStore.open(path) as again:
        assert samples(again, at(7 * 3600))[key] == 86400
        # a lasting change (now 2 hours) takes over once it is most of the recent versions
        for v in range(7, 30):
            t = 3600 * v
            again.observe(online("primary", v, expires=at(t + 7200)), POLICY, at(t))
        assert samples(again, at(30 * 3600))[key] == 7200


def test_rollback_counted_once(store: HistoryStore) -> None:
    for v in range(1, 6):
        store.observe(online("primary", v), POLICY, at(v * 300))
    assert rollbacks(store) == 0
    found = store.observe(online("primary", 3, snapshot=5), POLICY, at(1800))
    assert kinds(found) == ["rollback"]
    assert found[0].versions == {"previous": 5, "current": 3, "last_served": 5}
    assert found[0].severity is Severity.CRITICAL
    assert rollbacks(store) == 1
    # Still serving the same old version: no new finding, no new count.
    assert store.observe(online("primary", 3, snapshot=5), POLICY, at(2100)) == []
    assert store.observe(online("primary", 3, snapshot=5), POLICY, at(2400)) == []
    assert rollbacks(store) == 1
    assert rollbacks(store, role="snapshot") == 0


def test_freeze_with_configured_cadence(store: HistoryStore) -> None:
    policy = Policy(cadence={"timestamp": 600.0})
    assert store.observe(online("primary", 1), policy, at(0)) == []
    assert store.observe(online("primary", 1), policy, at(300)) == []
    assert store.observe(online("primary", 1), policy, at(600)) == []
    found = store.observe(online("primary", 1), policy, at(900))
    assert kinds(found) == ["freeze"]
    assert found[0].details["cadence_source"] == "configured"
    assert found[0].details["age_seconds"] == 900
    assert found[0].details["expected_period_seconds"] == 600 + CONFIGURED_GRACE_SECONDS
    assert store.observe(online("primary", 1), policy, at(1200)) == []
    assert rollbacks(store) == 1
    assert rollbacks(store, role="snapshot") == 0  # snapshot has no cadence configured


def test_freeze_with_learned_cadence(store: HistoryStore) -> None:
    found: list[Finding] = []
    for v in range(1, 7):  # versions every 300s: 5 intervals, enough to judge
        found += store.observe(online("primary", v), POLICY, at(v * 300))
    assert store.observed_cadence(REPO, "timestamp") == 300
    # Still version 6: not frozen at 2x the learned cadence, frozen beyond it.
    found += store.observe(online("primary", 6), POLICY, at(1800 + 300))
    found += store.observe(online("primary", 6), POLICY, at(1800 + 600))
    assert "freeze" not in kinds(found)
    found = store.observe(online("primary", 6), POLICY, at(1800 + 900))
    assert kinds(found) == ["freeze"]
    assert found[0].details["cadence_source"] == "learned"
    assert found[0].details["expected_period_seconds"] == 600
    assert store.observe(online("primary", 6), POLICY, at(1800 + 1200)) == []
    assert rollbacks(store) == 1


@pytest.mark.parametrize("configured", [True, False])
def test_freeze_is_reported_exactly_when_cadence_is_not_ok(
    store: HistoryStore, configured: bool
) -> None:
    """One re-signing rule: no freeze while ``tuf_signer_cadence_ok`` would say 1, and a freeze
    as soon as it says 0 (configured and learned periods alike)."""
    policy = Policy(cadence={"timestamp": 300.0}) if configured else POLICY
    for v in range(1, 7):  # versions every 300s: 5 intervals, enough to learn 300s
        assert "freeze" not in kinds(store.observe(online("primary", v), policy, at(v * 300)))
    learned = None if configured else store.observed_cadence(REPO, "timestamp")
    period = expected_period("timestamp", policy, learned)
    assert period is not None
    last_change = at(1800)
    for age in range(30, 1200, 30):
        now = at(1800 + age)
        status = evaluate(REPO, "timestamp", last_change, period, now, float(age))
        found = store.observe(online("primary", 6), policy, now)
        if status.ok:
            assert "freeze" not in kinds(found), (age, period)
        else:
            assert kinds(found) == ["freeze"], (age, period)
            break
    else:
        raise AssertionError("never late")


def test_no_learned_freeze_before_enough_observations(store: HistoryStore) -> None:
    for v in range(1, 4):
        store.observe(online("primary", v), POLICY, at(v * 300))
    assert store.observed_cadence(REPO, "timestamp") is None
    assert store.observe(online("primary", 3), POLICY, at(100_000)) == []


# ---------------------------------------------------------------------------------------------
# Anomalies


def anomalies(store: HistoryStore, endpoint: str, kind: str) -> float:
    return samples(store, at(0))[("tuf_anomalies_total", (REPO, endpoint, kind))]


def test_equivocation_across_two_mirrors(store: HistoryStore) -> None:
    store.observe(online("primary", 4), POLICY, at(0))
    assert kinds(store.observe(online("m1", 5), POLICY, at(300))) == ["new_version"] * 2
    found = store.observe(online("m2", 5, variant="evil"), POLICY, at(301))
    assert kinds(found) == ["equivocation"]
    assert found[0].endpoint == "m2"
    assert found[0].hashes == {
        "current": sha("timestamp", 5, "evil"),
        "previous": sha("timestamp", 5),
    }
    assert found[0].details["known"] == {sha("timestamp", 5): ["m1"]}
    # Both keep serving their content; the primary catches up with m1's: nothing new.
    assert store.observe(online("m1", 5), POLICY, at(600)) == []
    assert store.observe(online("m2", 5, variant="evil"), POLICY, at(601)) == []
    assert store.observe(online("primary", 5), POLICY, at(602)) == []
    assert anomalies(store, "m2", "equivocation") == 1
    assert anomalies(store, "m1", "equivocation") == 0
    assert anomalies(store, "primary", "equivocation") == 0


def test_equivocation_over_time_on_one_endpoint(store: HistoryStore) -> None:
    store.observe(online("primary", 7), POLICY, at(0))
    found = store.observe(online("primary", 7, variant="b"), POLICY, at(300))
    assert kinds(found) == ["equivocation"]
    assert store.observe(online("primary", 7, variant="b"), POLICY, at(600)) == []
    assert store.observe(online("primary", 7), POLICY, at(900)) == []
    assert anomalies(store, "primary", "equivocation") == 1


def test_unknown_signer_once(store: HistoryStore) -> None:
    store.observe(online("primary", 1), POLICY, at(0))
    found = store.observe(online("primary", 2, unknown=("k-evil",)), POLICY, at(300))
    bad = [f for f in found if f.kind is FindingKind.UNKNOWN_SIGNER]
    assert len(bad) == 1
    assert bad[0].keyids == ("k-evil",)
    assert bad[0].role == "timestamp"
    assert store.observe(online("primary", 2, unknown=("k-evil",)), POLICY, at(600)) == []
    assert store.observe(online("m1", 2, unknown=("k-evil",)), POLICY, at(601)) == []
    assert anomalies(store, "primary", "unknown_signer") == 1


def test_expiry_beyond_policy_once(store: HistoryStore) -> None:
    policy = Policy(max_lifetime={"timestamp": 86400.0})
    assert store.observe(online("primary", 1, expires=at(3600)), policy, at(0)) == []
    found = store.observe(online("primary", 2, expires=at(300 + 2 * 86400)), policy, at(300))
    bad = [f for f in found if f.kind is FindingKind.EXPIRY_BEYOND_POLICY]
    assert len(bad) == 1
    assert bad[0].details["lifetime_seconds"] == 2 * 86400
    assert bad[0].details["max_lifetime_seconds"] == 86400
    assert store.observe(online("primary", 2, expires=at(300 + 2 * 86400)), policy, at(600)) == []
    assert anomalies(store, "primary", "expiry_beyond_policy") == 1


def test_version_jump_once(store: HistoryStore) -> None:
    policy = Policy(max_version_jump=10)
    store.observe(online("primary", 1), policy, at(0))
    store.observe(online("m1", 1), policy, at(1))
    assert "version_jump" not in kinds(store.observe(online("primary", 11), policy, at(300)))
    found = store.observe(online("primary", 50), policy, at(600))
    jumps = [f for f in found if f.kind is FindingKind.VERSION_JUMP]
    assert [f.role for f in jumps] == ["timestamp", "snapshot"]
    assert jumps[0].versions == {"previous": 11, "current": 50}
    # A mirror catching up from 1 to 50 is no second jump.
    assert "version_jump" not in kinds(store.observe(online("m1", 50), policy, at(601)))
    assert anomalies(store, "primary", "version_jump") == 2  # timestamp and snapshot
    assert anomalies(store, "m1", "version_jump") == 0


# ---------------------------------------------------------------------------------------------
# Root keys


ROOT_V1_KEYS = {
    "root": RoleKeys(("r1", "r2"), 2),
    "timestamp": RoleKeys(("t1",), 1),
    "snapshot": RoleKeys(("s1",), 1),
    "targets": RoleKeys(("a1", "a2"), 1),
}
ROOT_V2_KEYS = {
    **ROOT_V1_KEYS,
    "timestamp": RoleKeys(("t1", "t2"), 2),
    "targets": RoleKeys(("a1", "a3"), 1),
}


def root_result(
    version: int, keys: Mapping[str, RoleKeys], endpoint: str = "primary"
) -> ProbeResult:
    return result(endpoint, [facts("root", version, role_keys=keys, signed_by=("r1", "r2"))])


def test_root_rotation(store: HistoryStore) -> None:
    assert store.observe(root_result(1, ROOT_V1_KEYS), POLICY, at(0)) == []
    found = store.observe(root_result(2, ROOT_V2_KEYS), POLICY, at(300))
    rotations = {f.role or "": f for f in found if f.kind is FindingKind.KEY_ROTATION}
    assert sorted(rotations) == ["targets", "timestamp"]
    targets = rotations["targets"]
    assert targets.details["added"] == ["a3"]
    assert targets.details["removed"] == ["a2"]
    assert (targets.details["old_threshold"], targets.details["new_threshold"]) == (1, 1)
    assert targets.versions == {"old_root": 1, "new_root": 2}
    assert targets.keyids == ("a1", "a3")
    ts = rotations["timestamp"]
    assert ts.details["added"] == ["t2"]
    assert ts.details["removed"] == []
    assert (ts.details["old_threshold"], ts.details["new_threshold"]) == (1, 2)

    s = samples(store, at(400))
    assert s[("tuf_root_version", (REPO,))] == 2
    assert s[("tuf_key_rotations_total", (REPO, "targets"))] == 1
    assert s[("tuf_key_rotations_total", (REPO, "timestamp"))] == 1
    assert s[("tuf_key_rotations_total", (REPO, "root"))] == 0
    # Mirrors showing the same root later change nothing.
    assert store.observe(root_result(2, ROOT_V2_KEYS, "m1"), POLICY, at(301)) == []

    history = store.root_history(REPO)
    assert [(h.version, h.first_seen) for h in history] == [(1, at(0)), (2, at(300))]
    assert history[1].role_keys is not None
    assert history[1].role_keys["targets"] == RoleKeys(("a1", "a3"), 1)
    assert store.authorized_keys(REPO, "timestamp") == RoleKeys(("t1", "t2"), 2)
    assert store.authorized_keys("other", "timestamp") is None


def test_root_from_probe_failing_on_root_is_not_trusted(store: HistoryStore) -> None:
    store.observe(root_result(1, ROOT_V1_KEYS), POLICY, at(0))
    bad = result(
        "m1",
        [facts("root", 2, role_keys={"targets": RoleKeys(("evil",), 1)})],
        success=False,
        reason=Reason.BAD_SIGNATURE,
        role=FailedRole.ROOT,
    )
    assert "key_rotation" not in kinds(store.observe(bad, POLICY, at(300)))
    assert [h.version for h in store.root_history(REPO)] == [1]


def test_failed_probe_still_records_what_was_read(store: HistoryStore) -> None:
    failed = result(
        "primary",
        [facts("timestamp", 3)],
        success=False,
        reason=Reason.EXPIRED,
        role=FailedRole.SNAPSHOT,
    )
    store.observe(failed, POLICY, at(0))
    assert store.last_change(REPO, "primary", "timestamp") == at(0)


def test_failed_probe_ignores_roles_read_from_the_client_cache(store: HistoryStore) -> None:
    policy = Policy(cadence={"timestamp": 600.0})
    store.observe(online("m1", 1), policy, at(0))
    # m1 is down: the download of the timestamp failed; the facts are the cached version 1.
    down = ProbeResult(
        repository=REPO,
        endpoint="m1",
        success=False,
        started_at=at(3600),
        duration_seconds=5.0,
        reason=Reason.DOWNLOAD_ERROR,
        role=FailedRole.TIMESTAMP,
        roles={"timestamp": facts("timestamp", 1), "snapshot": facts("snapshot", 1)},
        requests=(
            RequestRecord("http://m1/timestamp.json", "timestamp", 503, 0, 0.0, 0.1),
            RequestRecord("http://m1/1.snapshot.json", "snapshot", None, 0, 0.1, 0.1, error="x"),
        ),
    )
    assert store.observe(down, policy, at(3600)) == []  # no freeze: nothing was served
    assert store.last_change(REPO, "m1", "timestamp") == at(0)
    fetched = ProbeResult(
        repository=REPO,
        endpoint="m1",
        success=False,
        started_at=at(3900),
        duration_seconds=1.0,
        reason=Reason.EXPIRED,
        role=FailedRole.TIMESTAMP,
        roles={"timestamp": facts("timestamp", 1)},
        requests=(RequestRecord("http://m1/timestamp.json", "timestamp", 200, 100, 0.0, 0.1),),
    )
    assert kinds(store.observe(fetched, policy, at(3900))) == ["freeze"]


def test_unsigned_metadata_does_not_poison_the_baseline(store: HistoryStore) -> None:
    policy = Policy(max_version_jump=10)
    store.observe(online("m1", 5), policy, at(0))
    forged = store.observe(online("m1", 999_999, snapshot=5, signed_by=()), policy, at(300))
    assert forged == []
    found = store.observe(online("m1", 6), policy, at(600))
    assert [(f.kind, f.role) for f in found if f.role == "timestamp"] == [
        (FindingKind.NEW_VERSION, "timestamp")
    ]
    assert rollbacks(store, "m1") == 0


# ---------------------------------------------------------------------------------------------
# Persistence


def scenario(store: HistoryStore) -> list[tuple[ProbeResult, Policy, datetime]]:
    """Observations raising one of everything; returns them for replay."""
    policy = Policy(max_lifetime={"timestamp": 86400.0}, max_version_jump=10)
    steps = [
        (root_result(1, ROOT_V1_KEYS), policy, at(0)),
        (online("primary", 1), policy, at(0)),
        (online("primary", 2), policy, at(300)),
        (online("primary", 1), policy, at(600)),  # rollback
        (online("m1", 2, variant="x"), policy, at(601)),  # equivocation
        (online("primary", 3, unknown=("k-evil",)), policy, at(900)),
        (online("primary", 50, expires=at(10 * 86400)), policy, at(1200)),
        (root_result(2, ROOT_V2_KEYS), policy, at(1500)),
        (online("m1", 50, expires=at(10 * 86400)), policy, at(1501)),
    ]
    for res, pol, when in steps:
        store.observe(res, pol, when)
    return steps


COUNTERS = ("tuf_rollbacks_detected_total", "tuf_anomalies_total", "tuf_key_rotations_total")


def counter_samples(store: HistoryStore) -> dict[tuple[str, tuple[str, ...]], float]:
    return {k: v for k, v in samples(store, at(0)).items() if k[0] in COUNTERS}


def test_restart_keeps_counters_and_raises_nothing(tmp_path: Path) -> None:
    path = tmp_path / "history.sqlite"
    with HistoryStore.open(path) as first:
        steps = scenario(first)
        before = counter_samples(first)
        findings = first.recent_findings(REPO)
    assert before[("tuf_rollbacks_detected_total", (REPO, "primary", "timestamp"))] == 1
    assert before[("tuf_anomalies_total", (REPO, "m1", "equivocation"))] == 1
    assert before[("tuf_anomalies_total", (REPO, "primary", "unknown_signer"))] == 1
    assert before[("tuf_anomalies_total", (REPO, "primary", "expiry_beyond_policy"))] == 1
    assert before[("tuf_anomalies_total", (REPO, "primary", "version_jump"))] == 2
    assert before[("tuf_key_rotations_total", (REPO, "targets"))] == 1
    assert {f["kind"] for f in findings} >= {"rollback", "equivocation", "key_rotation"}

    with HistoryStore.open(path) as second:
        assert counter_samples(second) == before
        assert samples(second, at(0))[("tuf_root_version", (REPO,))] == 2
        # What each endpoint served last, observed again after the restart.
        for res, pol, _ in steps[-3:]:
            assert second.observe(res, pol, at(1800)) == []
        assert counter_samples(second) == before


CHILD = textwrap.dedent(
    """
    import sys
    from datetime import UTC, datetime, timedelta
    from pathlib import Path
    from exporter.config import Policy
    from exporter.history import HistoryStore
    from exporter.probe import ProbeResult, RoleFacts

    t0 = datetime(2027, 1, 1, tzinfo=UTC)
    store = HistoryStore.open(Path(sys.argv[1]))
    v = 0
    while True:
        v += 1
        when = t0 + timedelta(seconds=v)
        roles = {
            name: RoleFacts(name, v, when + timedelta(days=1), 10, f"{name}-{v}", ("k",), (), 1)
            for name in ("timestamp", "snapshot", "targets")
        }
        store.observe(ProbeResult("repo", "primary", True, when, 0.1, roles=roles), Policy(), when)
        print(v, flush=True)
    """
)


def test_kill_9_while_writing_leaves_a_consistent_store(tmp_path: Path) -> None:
    path = tmp_path / "history.sqlite"
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    child = subprocess.Popen(
        [sys.executable, "-c", CHILD, str(path)], stdout=subprocess.PIPE, text=True, env=env
    )
    assert child.stdout is not None
    last = 0
    try:
        for line in child.stdout:
            last = int(line)
            if last >= 150:
                break
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait(timeout=10)
    assert last >= 150

    with HistoryStore.open(path) as store:
        stored = store.last_change(REPO, "primary", "timestamp")
        assert stored is not None
        conn = sqlite3.connect(path)
        try:
            assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
            current = {
                role: version
                for role, version in conn.execute(
                    "SELECT role, version FROM current WHERE endpoint = 'primary'"
                )
            }
        finally:
            conn.close()
        # Each observation is atomic: all three roles at the same version, at least the last
        # one the child reported committed.
        assert len(set(current.values())) == 1
        version = current["timestamp"]
        assert version >= last
        assert store.last_change(REPO, "primary", "timestamp") == T0 + timedelta(seconds=version)
        again = {
            name: RoleFacts(
                name, version, at(version + 86400), 10, f"{name}-{version}", ("k",), (), 1
            )
            for name in ("timestamp", "snapshot", "targets")
        }
        res = ProbeResult(REPO, "primary", True, T0, 0.1, roles=again)
        assert store.observe(res, POLICY, at(version + 1)) == []


def test_a_failing_observation_stores_nothing(
    store: HistoryStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    store.observe(online("primary", 5), POLICY, at(0))

    def boom(*args: object) -> None:
        raise RuntimeError("disk on fire")

    monkeypatch.setattr(history_store, "insert_finding", boom)
    with pytest.raises(RuntimeError):
        store.observe(online("primary", 3), POLICY, at(300))  # a rollback, not stored
    monkeypatch.undo()
    assert store.last_change(REPO, "primary", "timestamp") == at(0)
    assert rollbacks(store) == 0
    # The same observation again is still news: nothing of the failed one was kept.
    assert kinds(store.observe(online("primary", 3), POLICY, at(600))) == ["rollback"] * 2


def test_corrupt_file_raises_a_clear_error_and_rename_recovers(tmp_path: Path) -> None:
    path = tmp_path / "history.sqlite"
    garbage = os.urandom(8192)
    path.write_bytes(garbage)
    wal = path.with_name("history.sqlite-wal")
    wal.write_bytes(b"stale wal")
    with pytest.raises(HistoryCorruptError) as err:
        HistoryStore.open(path)
    message = str(err.value)
    assert str(path) in message
    assert "on_corrupt='rename'" in message
    assert "move the file aside" in message
    assert err.value.path == path
    assert path.read_bytes() == garbage  # raise mode leaves the file in place

    with HistoryStore.open(path, on_corrupt="rename") as store:
        assert store.observe(online("primary", 1), POLICY, at(0)) == []
        assert store.last_change(REPO, "primary", "timestamp") == at(0)
    # SQLite itself drops the stale -wal when it closes the unreadable file; what is left of
    # it is moved aside with the same name, so nothing of it reaches the fresh history.
    aside = sorted(tmp_path.glob("history.sqlite.corrupt-*"))
    assert aside[0].name.endswith("Z")
    assert aside[0].read_bytes() == garbage
    assert all(p.name.startswith(aside[0].name) for p in aside)
    with HistoryStore.open(path) as reopened:  # the fresh file is healthy
        assert reopened.last_change(REPO, "primary", "timestamp") == at(0)


def test_damaged_pages_are_detected(tmp_path: Path) -> None:
    path = tmp_path / "history.sqlite"
    with HistoryStore.open(path) as store:
        for v in range(1, 400):
            store.observe(online("primary", v), POLICY, at(v))
    data = bytearray(path.read_bytes())
    page = 4096
    assert len(data) > 4 * page
    data[2 * page : 4 * page] = os.urandom(2 * page)
    path.write_bytes(bytes(data))
    with pytest.raises(HistoryCorruptError):
        HistoryStore.open(path)


def test_retention_prunes_old_rows_but_keeps_detection_state(tmp_path: Path) -> None:
    path = tmp_path / "history.sqlite"
    with HistoryStore.open(path, retention=3600.0) as store:
        for v in range(1, 101):
            store.observe(online("primary", v), POLICY, at(v * 300))
        removed = store.prune(at(101 * 300))
        assert removed > 0
        conn = sqlite3.connect(path)
        try:
            rows = conn.execute(
                "SELECT COUNT(*), MIN(version) FROM versions WHERE role = 'timestamp'"
            ).fetchone()
        finally:
            conn.close()
        assert rows[0] < 100
        assert rows[1] > 1
        # Detection still works: a rollback to a pruned version is seen, and the learned
        # cadence is still known.
        assert store.observed_cadence(REPO, "timestamp") == 300
        found = store.observe(online("primary", 2), POLICY, at(101 * 300))
        assert kinds(found) == ["rollback", "rollback"]
        assert store.last_change(REPO, "primary", "snapshot") == at(101 * 300)


def test_concurrent_observations_and_scrapes(store: HistoryStore) -> None:
    errors: list[BaseException] = []

    def worker(endpoint: str) -> None:
        try:
            for v in range(1, 40):
                store.observe(online(endpoint, v), POLICY, at(v * 10))
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(f"m{i}",)) for i in range(4)]
    threads.append(threading.Thread(target=worker, args=("primary",)))
    for t in threads:
        t.start()
    while any(t.is_alive() for t in threads):
        samples(store, at(1000))
        time.sleep(0.002)
    for t in threads:
        t.join()
    assert errors == []
    s = samples(store, at(1000))
    assert s[("tuf_mirror_lag_versions", (REPO, "m0", "timestamp"))] == 0


def test_scrapes_and_queries_do_not_wait_for_a_write(store: HistoryStore) -> None:
    for v in range(1, 8):
        store.observe(online("primary", v), POLICY, at(v * 300))
    holding, release = threading.Event(), threading.Event()

    def writer() -> None:
        with store._db.transaction():  # a long observation in progress
            holding.set()
            release.wait(10)

    thread = threading.Thread(target=writer)
    thread.start()
    try:
        assert holding.wait(5)
        started = time.monotonic()
        samples(store, at(3000))
        assert store.last_change(REPO, "primary", "timestamp") == at(2100)
        assert store.observed_cadence(REPO, "timestamp") == 300
        assert len(store.root_history(REPO)) == 0
        assert time.monotonic() - started < 1.0
    finally:
        release.set()
        thread.join()


def test_finding_json_is_self_describing(store: HistoryStore) -> None:
    store.observe(online("primary", 5), POLICY, at(0))
    found = store.observe(online("primary", 4), POLICY, at(300))
    doc = found[0].to_json()
    assert doc["kind"] == "rollback"
    assert doc["severity"] == "critical"
    assert doc["time"] == "2027-01-01T00:05:00Z"
    assert doc["repository"] == REPO
    assert doc["endpoint"] == "primary"
    assert doc["role"] == "timestamp"
    assert doc["versions"]["previous"] == 5
    assert doc["hashes"]["current"] == sha("timestamp", 4)
    assert store.recent_findings(REPO)[0]["kind"] == "rollback"


def series_of(
    store: HistoryStore, now: datetime, *values: str
) -> list[tuple[str, tuple[str, ...]]]:
    """Exported series whose labels include every one of ``values``."""
    return [k for k in samples(store, now) if all(v in k[1] for v in values)]


def rows_of(path: Path, table: str, repo: str, endpoint: str | None = None) -> int:
    conn = sqlite3.connect(path)
    try:
        where = "repository = ?" + ("" if endpoint is None else " AND endpoint = ?")
        args = (repo,) if endpoint is None else (repo, endpoint)
        return int(conn.execute(f"SELECT COUNT(*) FROM {table} WHERE {where}", args).fetchone()[0])
    finally:
        conn.close()


def lagging_and_other(store: HistoryStore) -> None:
    """REPO: primary at 12, mirror m1 held at 10 (lagging, a rollback on m1); repo 'other'."""
    store.observe(online("primary", 10), POLICY, at(0))
    store.observe(online("m1", 10), POLICY, at(1))
    store.observe(online("primary", 12), POLICY, at(300))
    store.observe(online("m1", 11), POLICY, at(301))
    store.observe(online("m1", 10), POLICY, at(302))  # back to 10: a rollback on m1
    store.observe(online_in("other", "primary", 1), POLICY, at(0))


def online_in(repo: str, endpoint: str, version: int) -> ProbeResult:
    return result(endpoint, [facts("timestamp", version), facts("snapshot", version)], repo=repo)


def test_removed_endpoints_lose_their_series_but_keep_their_history(tmp_path: Path) -> None:
    path = tmp_path / "history.sqlite"
    both = {REPO: {"primary", "m1"}, "other": {"primary"}}
    with HistoryStore.open(path, repositories=both) as store:
        lagging_and_other(store)
        assert ("tuf_mirror_lag_seconds", (REPO, "m1")) in samples(store, at(400))
        assert series_of(store, at(400), "other")
        rows = rows_of(path, "versions", REPO, "m1")

        store.configure({REPO: {"primary"}})  # a reload without m1 and without 'other'
        assert series_of(store, at(400), "m1") == []
        assert series_of(store, at(400), "other") == []
        assert series_of(store, at(400), REPO)  # the primary keeps its series
        # A probe finishing after its removal records nothing.
        assert store.observe(online("m1", 9), POLICY, at(500)) == []
        assert store.observe(online_in("other", "primary", 9), POLICY, at(500)) == []
        assert series_of(store, at(500), "m1") == []
        assert series_of(store, at(500), "other") == []
        assert rows_of(path, "versions", REPO, "m1") == rows  # kept on disk, nothing added
        assert rows_of(path, "current", "other") == 2

    # A restart with the smaller configuration does not load them either.
    with HistoryStore.open(path, repositories={REPO: {"primary"}}) as store:
        assert series_of(store, at(400), "m1") == []
        assert series_of(store, at(400), "other") == []
        # Configured again: back as they were (lag, rollback counter, baseline).
        store.configure(both)
        now = samples(store, at(400))
        assert now[("tuf_mirror_lag_versions", (REPO, "m1", "timestamp"))] == 2
        assert now[("tuf_rollbacks_detected_total", (REPO, "m1", "timestamp"))] == 1
        assert ("tuf_metadata_last_change_timestamp_seconds",
                ("other", "primary", "timestamp")) in now
        assert kinds(store.observe(online_in("other", "primary", 0), POLICY, at(600))) == [
            "rollback", "rollback"]


def test_removed_history_is_deleted_after_the_retention(tmp_path: Path) -> None:
    path = tmp_path / "history.sqlite"
    with HistoryStore.open(path, retention=3600.0,
                           repositories={REPO: {"primary", "m1"}, "other": {"primary"}}) as store:
        lagging_and_other(store)
        store.configure({REPO: {"primary"}})
        store.prune(at(3000))  # within the retention: all of it stays
        assert rows_of(path, "current", REPO, "m1") > 0
        assert rows_of(path, "current", "other") > 0
        store.observe(online("primary", 12), POLICY, at(3500))  # the primary stays observed
        store.prune(at(302 + 3601))
        for table in ("versions", "current", "counters", "lag"):
            assert rows_of(path, table, REPO, "m1") == 0, table
        for table in ("versions", "current", "counters", "roots", "flags", "findings"):
            assert rows_of(path, table, "other") == 0, table
        assert rows_of(path, "current", REPO, "primary") > 0
        store.prune(at(10 * 3600))  # a configured endpoint keeps its baseline, observed or not
        assert rows_of(path, "current", REPO, "primary") > 0


def test_churn_of_renamed_repositories_grows_neither_memory_nor_scrape(tmp_path: Path) -> None:
    with HistoryStore.open(tmp_path / "history.sqlite", repositories={}) as store:
        sizes = []
        for i in range(1000):
            name = f"repo-{i}"
            store.configure({name: {"primary", "m1"}})
            store.observe(online_in(name, "primary", 2), POLICY, at(i))
            store.observe(online_in(name, "m1", 1), POLICY, at(i))
            sizes.append(len(generate_latest(Registry(store)).decode()))
            assert len(store._states) == 1
        assert max(sizes[10:]) <= sizes[10] + 200  # label values grow from 'repo-10' on


class Registry(CollectorRegistry):
    """A registry serving the history metrics of one store."""

    def __init__(self, store: HistoryStore) -> None:
        super().__init__()

        class Source:
            def collect(self) -> Iterable[Metric]:
                return store.metrics(at(0))

        self.register(Source())  # type: ignore[arg-type]


def test_a_wall_clock_step_raises_no_freeze(tmp_path: Path) -> None:
    policy = Policy(cadence={"timestamp": 600.0})
    steady = [1000.0]
    with HistoryStore.open(tmp_path / "h.sqlite", monotonic=lambda: steady[0]) as store:
        assert store.observe(online("primary", 1), policy, at(0), steady[0]) == []
        steady[0] += 300
        assert store.observe(online("primary", 1), policy, at(300), steady[0]) == []
        # The wall clock steps forward a day; 300 s pass on the steady clock.
        steady[0] += 300
        assert store.observe(online("primary", 1), policy, at(86400 + 600), steady[0]) == []
        assert rollbacks(store) == 0
        # Truly frozen (steady clock past the period): reported, with the steady age.
        steady[0] += 301
        found = store.observe(online("primary", 1), policy, at(86400 + 901), steady[0])
        assert kinds(found) == ["freeze"]
        assert found[0].details["age_seconds"] == 901
        # A new version restarts the age from its first sighting.
        steady[0] += 10
        assert kinds(store.observe(online("primary", 2), policy, at(86400 + 911),
                                   steady[0])) == ["new_version"] * 2
        steady[0] += 590
        assert store.observe(online("primary", 2), policy, at(3 * 86400), steady[0]) == []


def test_age_of_the_current_version_is_on_the_steady_clock(tmp_path: Path) -> None:
    steady = [10.0]
    with HistoryStore.open(tmp_path / "h.sqlite", monotonic=lambda: steady[0]) as store:
        assert store.age(REPO, "primary", "timestamp") is None
        store.observe(online("primary", 1), POLICY, at(0), steady[0])
        steady[0] += 40
        store.observe(online("primary", 1), POLICY, at(86400), steady[0])  # a wall-clock step
        steady[0] += 5
        assert store.age(REPO, "primary", "timestamp") == 45
        store.observe(online("primary", 2), POLICY, at(86400), steady[0])
        assert store.age(REPO, "primary", "timestamp") == 0


def test_freeze_age_carried_over_a_restart_counts_the_downtime(tmp_path: Path) -> None:
    policy = Policy(cadence={"timestamp": 600.0})
    path = tmp_path / "h.sqlite"
    with HistoryStore.open(path, monotonic=lambda: 50.0) as store:
        store.observe(online("primary", 1), policy, at(0), 50.0)
    # Restarted 500 s later (wall clock), a new steady clock: 500 s old at the first sighting.
    with HistoryStore.open(path, monotonic=lambda: 7.0) as store:
        assert store.observe(online("primary", 1), policy, at(500), 7.0) == []
        assert store.observe(online("primary", 1), policy, at(500), 167.0) == []  # 660 s: grace
        assert kinds(store.observe(online("primary", 1), policy, at(500), 168.0)) == ["freeze"]


def corrupt(*args: object) -> None:
    raise malformed()


def malformed() -> sqlite3.DatabaseError:
    """The error SQLite raises on a damaged page (SQLITE_CORRUPT)."""
    damaged = sqlite3.DatabaseError("database disk image is malformed")
    damaged.sqlite_errorcode = sqlite3.SQLITE_CORRUPT
    return damaged


def test_retention_failing_after_an_observation_loses_none_of_its_findings(
    store: HistoryStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    store.observe(online("primary", 5), POLICY, at(0))  # retention ran at 0
    monkeypatch.setattr(history_store, "prune", corrupt)
    found = store.observe(online("primary", 3), POLICY, at(3601))  # retention is due
    assert kinds(found) == ["rollback"] * 2
    assert store.recoveries == 1


def test_corruption_found_by_a_reload_is_recovered_and_the_reload_applies(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with HistoryStore.open(tmp_path / "h.sqlite", repositories={REPO: {"primary"}}) as store:
        store.observe(online("primary", 5), POLICY, at(0))
        monkeypatch.setattr(history_store, "repo_current", corrupt)
        store.configure({"other": {"primary"}})  # does not raise
        monkeypatch.undo()
        assert store.recoveries == 1
        assert store.observe(online("primary", 1), POLICY, at(10)) == []  # REPO: removed
        assert store.observe(online_in("other", "primary", 1), POLICY, at(10)) == []
        assert series_of(store, at(10), "other")
        assert series_of(store, at(10), REPO) == []


def test_corruption_while_running_moves_the_file_aside_and_starts_afresh(
    tmp_path: Path,
) -> None:
    path = tmp_path / "history.sqlite"
    with HistoryStore.open(path, repositories={REPO: {"primary"}}) as store:
        for v in range(1, 400):
            store.observe(online("primary", v), POLICY, at(v))
        check = sqlite3.connect(path)
        check.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        check.close()
        size = path.stat().st_size
        with path.open("r+b") as f:  # damage every page but the first two
            f.seek(2 * 4096)
            f.write(os.urandom(size - 2 * 4096))
        with pytest.raises(HistoryCorruptError) as err:
            store.observed_cadence(REPO, "timestamp")
        assert "moved" in str(err.value)
        assert store.recoveries == 1
        aside = sorted(tmp_path.glob("history.sqlite.corrupt-*"))
        assert aside and aside[0].stat().st_size == size
        # A fresh history: the next probe is the baseline (no alarm), then detection works.
        assert series_of(store, at(500), REPO) == []
        assert store.observe(online("primary", 5), POLICY, at(500)) == []
        assert kinds(store.observe(online("primary", 4), POLICY, at(800))) == ["rollback"] * 2
    with HistoryStore.open(path) as reopened:  # the fresh file is healthy
        assert reopened.last_change(REPO, "primary", "timestamp") == at(800)


# ---------------------------------------------------------------------------------------------
# With the real prober against the simulated repository


def test_injected_rollback_raises_the_counter_exactly_once(sim: Sim, tmp_path: Path) -> None:
    prober = Prober(sim.state_dir)
    config = sim.config()
    sim.repo.publish()
    with HistoryStore.open(tmp_path / "h.sqlite") as store:
        assert store.observe(prober.probe(config, config.primary), POLICY, at(0)) == []
        sim.server.inject("rollback")
        found: list[Finding] = []
        for step in range(1, 4):
            res = prober.probe(config, config.primary)
            assert (res.reason, res.role) == ("rollback", "timestamp"), res.message
            found += store.observe(res, POLICY, at(300 * step))
        assert [(f.kind, f.role) for f in found] == [(FindingKind.ROLLBACK, "timestamp")]
        key = ("tuf_rollbacks_detected_total", ("sim", "primary", "timestamp"))
        assert samples(store, at(1000))[key] == 1


def test_injected_equivocation_on_a_mirror(sim: Sim, tmp_path: Path) -> None:
    prober = Prober(sim.state_dir)
    config = sim.config()
    mirror = config.mirrors[0]
    with HistoryStore.open(tmp_path / "h.sqlite") as store:
        assert store.observe(prober.probe(config, config.primary), POLICY, at(0)) == []
        sim.server.inject("equivocation", endpoint=mirror.name)
        found = store.observe(prober.probe(config, mirror), POLICY, at(1))
        found += store.observe(prober.probe(config, mirror), POLICY, at(300))
        assert [(f.kind, f.endpoint, f.role) for f in found] == [
            (FindingKind.EQUIVOCATION, mirror.name, "timestamp")
        ]
        key = ("tuf_anomalies_total", ("sim", mirror.name, "equivocation"))
        assert samples(store, at(1000))[key] == 1


def test_stale_mirror_lags(sim: Sim, tmp_path: Path) -> None:
    prober = Prober(sim.state_dir)
    config = sim.config()
    mirror = config.mirrors[0]
    with HistoryStore.open(tmp_path / "h.sqlite") as store:
        sim.server.inject("stale-mirror", endpoint=mirror.name, states_behind=1)
        sim.repo.publish()
        store.observe(prober.probe(config, config.primary), POLICY, at(0))
        found = store.observe(prober.probe(config, mirror), POLICY, at(10))
        assert kinds(found) == ["mirror_lag_started"]
        s = samples(store, at(70))
        assert s[("tuf_mirror_lag_versions", ("sim", mirror.name, "timestamp"))] >= 1
        assert s[("tuf_mirror_lag_seconds", ("sim", mirror.name))] == 70


def test_metrics_match_the_catalogue_and_expose(store: HistoryStore) -> None:
    scenario(store)
    store.observe(online("m1", 40), POLICY, at(2000))
    history_specs = {m.name: m for m in catalogue.by_subsystem(catalogue.Subsystem.HISTORY)}
    seen = set()
    for metric in store.metrics(at(2100)):
        spec = next(m for m in history_specs.values() if m.family_name == metric.name)
        seen.add(spec.name)
        assert metric.type == str(spec.type)
        for sample in metric.samples:
            assert tuple(sample.labels) == spec.labels, (sample.name, sample.labels)
    assert seen == set(history_specs)

    class Collector:
        def collect(self) -> Iterable[Metric]:
            return store.metrics(at(2100))

    registry = CollectorRegistry()
    registry.register(Collector())
    text = generate_latest(registry).decode()
    assert 'tuf_anomalies_total{endpoint="m1",kind="equivocation",repository="repo"} 1.0' in text
    assert 'tuf_mirror_lag_versions{endpoint="m1",repository="repo",role="timestamp"} 10.0' in text


def test_the_store_is_a_collector_of_its_own(store: HistoryStore) -> None:
    """Registered as it is (as the service does), it serves every history family."""
    scenario(store)
    registry = CollectorRegistry(auto_describe=True)
    registry.register(store)
    text = generate_latest(registry).decode()
    for spec in catalogue.by_subsystem(catalogue.Subsystem.HISTORY):
        assert f"# HELP {spec.name} " in text, spec.name
    assert 'tuf_anomalies_total{endpoint="m1",kind="equivocation",repository="repo"} 1.0' in text


# ---------------------------------------------------------------------------------------------
# Cost of an observation


class SqlWork:
    """SQL statements run, and SQLite VM steps taken, on the store's connections.

    VM steps (counted by a progress handler called every step) grow with the rows a statement
    visits, so they show a scan of the repository's endpoints even inside a single statement.
    Both counts are deterministic: no timing involved.
    """

    def __init__(self, store: HistoryStore) -> None:
        self.statements: list[str] = []
        self.steps = 0
        self._conns = (store._db._writer, store._db._reader)
        for conn in self._conns:
            conn.set_trace_callback(self.statements.append)
            conn.set_progress_handler(self._step, 1)

    def _step(self) -> int:
        self.steps += 1
        return 0

    def stop(self) -> tuple[int, int]:
        """Detach; (statements, steps) counted."""
        for conn in self._conns:
            conn.set_trace_callback(None)
            conn.set_progress_handler(None, 1)
        return len(self.statements), self.steps


def observe_counted(
    store: HistoryStore, res: ProbeResult, when: datetime
) -> tuple[list[Finding], tuple[int, int]]:
    work = SqlWork(store)
    try:
        found = store.observe(res, POLICY, when)
    finally:
        counted = work.stop()
    return found, counted


def served(endpoint: str, version: int) -> ProbeResult:
    """A full probe: root and targets unchanged, timestamp and snapshot at ``version``."""
    root = facts("root", 1, role_keys=ROOT_V1_KEYS, signed_by=("r1",))
    return result(endpoint, [root, facts("targets", 1), *online(endpoint, version).roles.values()])


def work_per_observation(tmp_path: Path, mirrors: int) -> dict[str, tuple[int, int]]:
    """(statements, VM steps) of typical observations in a repository with ``mirrors``."""
    work: dict[str, tuple[int, int]] = {}
    names = [f"m{i:04d}" for i in range(mirrors)]
    lag = ("tuf_mirror_lag_versions", (REPO, names[1], "timestamp"))
    with HistoryStore.open(tmp_path / f"cost-{mirrors}.sqlite") as store:
        store.observe(served("primary", 1), POLICY, at(0))
        for name in names:
            store.observe(served(name, 1), POLICY, at(1))
        found, work["steady"] = observe_counted(store, served(names[-1], 1), at(30))
        assert found == []
        found, work["primary_moves"] = observe_counted(store, served("primary", 2), at(60))
        assert kinds(found) == ["new_version"] * 2
        for name in names[:-1]:
            store.observe(served(name, 2), POLICY, at(61))
        found, work["mirror_follows"] = observe_counted(store, served(names[-1], 2), at(62))
        assert found == []
        store.observe(served("primary", 3), POLICY, at(90))
        found, work["mirror_falls_behind"] = observe_counted(store, served(names[0], 2), at(91))
        assert kinds(found) == ["mirror_lag_started"]
        found, work["mirror_catches_up"] = observe_counted(store, served(names[0], 3), at(120))
        assert kinds(found) == ["mirror_caught_up"]
        assert samples(store, at(120))[lag] == 1
    return work


def test_work_per_observation_does_not_grow_with_the_endpoints(tmp_path: Path) -> None:
    small = work_per_observation(tmp_path, 10)
    large = work_per_observation(tmp_path, 200)
    # Re-observing exactly what an endpoint serves needs no SQL at all (last_seen is batched).
    assert small["steady"] == large["steady"] == (0, 0)
    for case, (statements, steps) in large.items():
        assert statements == small[case][0], case
        assert steps <= small[case][1] * 1.1 + 20, (case, small[case], large[case])


def stored_last_seen(path: Path, endpoint: str, role: str = "timestamp") -> dict[str, float]:
    """last_seen of the endpoint's current row and of its versions rows (by version)."""
    conn = sqlite3.connect(path)
    try:
        out = {
            "current": conn.execute(
                "SELECT last_seen FROM current WHERE endpoint = ? AND role = ?", (endpoint, role)
            ).fetchone()[0]
        }
        for version, seen in conn.execute(
            "SELECT version, last_seen FROM versions WHERE endpoint = ? AND role = ?",
            (endpoint, role),
        ):
            out[f"v{version}"] = seen
    finally:
        conn.close()
    return out


def test_last_seen_is_batched_but_never_lost(tmp_path: Path) -> None:
    path = tmp_path / "history.sqlite"
    with HistoryStore.open(path) as store:
        for step in range(4):
            store.observe(online("m1", 1), POLICY, at(step * 30))
        # Serving the same content: last_seen moves in memory only.
        assert stored_last_seen(path, "m1") == {
            "current": at(0).timestamp(),
            "v1": at(0).timestamp(),
        }
        # Serving something else: the version left gets its last sighting.
        store.observe(online("m1", 2), POLICY, at(120))
        assert stored_last_seen(path, "m1") == {
            "current": at(120).timestamp(),
            "v1": at(90).timestamp(),
            "v2": at(120).timestamp(),
        }
        store.observe(online("m1", 2), POLICY, at(150))
        # A retention pass writes them first (it judges rows by them).
        store.prune(at(160))
        assert stored_last_seen(path, "m1")["v2"] == at(150).timestamp()
        store.observe(online("m1", 2), POLICY, at(180))
    # Closing writes them too: nothing is lost by a restart.
    assert stored_last_seen(path, "m1") == {
        "current": at(180).timestamp(),
        "v1": at(90).timestamp(),
        "v2": at(180).timestamp(),
    }
    with HistoryStore.open(path) as again:
        assert again.observe(online("m1", 2), POLICY, at(210)) == []
        assert again.last_change(REPO, "m1", "timestamp") == at(120)


# ---------------------------------------------------------------------------------------------
# Versions past 2**63 - 1 (python-tuf accepts any positive integer)


def test_a_signed_version_past_int64_is_stored_compared_and_jumps(sim: Sim, tmp_path: Path
                                                                 ) -> None:
    prober = Prober(sim.state_dir)
    config = sim.config()
    policy = Policy(max_version_jump=10)
    path = tmp_path / "h.sqlite"
    with HistoryStore.open(path) as store:
        first = prober.probe(config, config.primary)
        assert store.observe(first, policy, at(0)) == []
        sim.server.inject("version-jump", by=2**63)
        jumped = prober.probe(config, config.primary)
        assert jumped.success, jumped.message  # python-tuf accepts it
        big = jumped.roles["timestamp"].version
        assert big == first.roles["timestamp"].version + 2**63 > history_store.INT64_MAX
        found = store.observe(jumped, policy, at(300))
        jumps = [f for f in found if f.kind is FindingKind.VERSION_JUMP]
        assert [(f.role, f.versions) for f in jumps] == [
            ("timestamp", {"previous": first.roles["timestamp"].version, "current": big})]
        assert samples(store, at(301))[
            ("tuf_anomalies_total", ("sim", "primary", "version_jump"))] == 1
        # the same version again is no news; a lower one is a rollback, whatever the forms
        assert store.observe(jumped, policy, at(600)) == []
        assert kinds(store.observe(online_at("sim", "primary", big - 1), policy, at(900))) == [
            "rollback"]
    with HistoryStore.open(path) as again:  # and it survives a restart, as itself
        assert again.last_change("sim", "primary", "timestamp") == at(900)
        assert kinds(again.observe(online_at("sim", "primary", big + 1), policy, at(1200))) == [
            "new_version"]
        # other content under the big version the simulator signed: found by its version
        assert kinds(again.observe(online_at("sim", "primary", big), policy, at(1500))) == [
            "equivocation", "rollback"]


def online_at(repo: str, endpoint: str, version: int) -> ProbeResult:
    """A probe of ``repo`` seeing timestamp ``version`` (nothing else)."""
    return result(endpoint, [facts("timestamp", version)], repo=repo)


@pytest.mark.parametrize("version", [1, 2**63 - 1, 2**63, 2**64 + 7, 10**40, 10**4000],
                         ids=["1", "2^63-1", "2^63", "2^64+7", "10^40", "10^4000"])
def test_stored_versions_keep_their_value_and_order(version: int) -> None:
    conn = sqlite3.connect(":memory:")
    conn.execute("CREATE TABLE t (v INTEGER NOT NULL)")
    neighbours = [version - 1, version, version + 1, 2**63 - 1, 2**63, 5]
    conn.executemany("INSERT INTO t VALUES (?)",
                     [(history_store.version_key(v),) for v in neighbours if v > 0])
    stored = [history_store.version_of(r[0]) for r in conn.execute("SELECT v FROM t ORDER BY v")]
    assert stored == sorted(v for v in neighbours if v > 0)
    top = conn.execute("SELECT MAX(v) FROM t").fetchone()[0]
    assert history_store.version_of(top) == max(neighbours)
    above = conn.execute("SELECT COUNT(*) FROM t WHERE v > ?",
                         (history_store.version_key(version),)).fetchone()[0]
    assert above == sum(1 for v in neighbours if v > version)


# The outbox: a finding's event commits with the finding


def test_a_findings_event_commits_with_it_and_leaves_the_outbox_only_once_spooled(
    tmp_path: Path,
) -> None:
    from exporter.events import Event, Spool

    with HistoryStore.open(tmp_path / "h.sqlite") as store, Spool(tmp_path / "s.sqlite") as spool:
        store.observe(online("primary", 1), POLICY, at(0))
        found = store.observe(online("primary", 2), POLICY, at(60))
        assert found and store.outbox_pending == len(found)
        wanted = {f.to_event().event_id for f in found}

        def broken(events: list[Event]) -> None:
            raise sqlite3.OperationalError("database or disk is full")

        with pytest.raises(sqlite3.OperationalError):
            store.drain_outbox(broken)
        assert store.outbox_pending == len(found), "kept for the next drain"
        handed: list[list[Event]] = []

        def put_then_crash(events: list[Event]) -> None:  # spooled, then the delete is lost
            spool.put_many(events)
            handed.append(events)
            raise KeyboardInterrupt

        with pytest.raises(KeyboardInterrupt):
            store.drain_outbox(put_then_crash)
        assert {e.event_id for e in handed[0]} == wanted
    with HistoryStore.open(tmp_path / "h.sqlite") as store, Spool(tmp_path / "s.sqlite") as spool:
        assert store.outbox_pending == len(found), "the outbox count survives a restart"
        assert store.drain_outbox(spool.put_many) == len(found)
        assert store.outbox_pending == 0 and store.drain_outbox(spool.put_many) == 0
        assert {e.event_id for e in spool.peek(100)} == wanted, "spooled once"
        spool.ack(spool.peek(100))
        store.observe(online("primary", 3), POLICY, at(120))
        assert store.outbox_pending > 0


@pytest.mark.parametrize(
    "rotation",
    [{"add": 1, "remove": 1}, {"add": 1, "threshold": 2}, {"add": 2, "remove": 1, "threshold": 2}],
    ids=["key-replaced", "threshold-raised", "keys-and-threshold"],
)
def test_a_root_rotation_is_no_unknown_signer_but_a_key_neither_root_knows_is(
    sim: Sim, tmp_path: Path, rotation: dict[str, int]
) -> None:
    """Root v2 carries the signature of v1's key, as python-tuf requires: a key rotation, no
    anomaly (no TufPossibleKeyCompromise page). Root v3 also signed by a key neither v2 nor v3
    authorizes: one unknown_signer anomaly."""
    prober = Prober(sim.state_dir)
    config = sim.config()
    with HistoryStore.open(tmp_path / "h.sqlite") as store:
        assert store.observe(prober.probe(config, config.primary), POLICY, at(0)) == []
        sim.repo.rotate_keys("root", **rotation)
        sim.repo.publish()
        result = prober.probe(config, config.primary)
        assert result.success and result.roles["root"].version == 2, result.message
        found = store.observe(result, POLICY, at(300))
        assert FindingKind.UNKNOWN_SIGNER not in [f.kind for f in found]
        assert (FindingKind.KEY_ROTATION, "root") in [(f.kind, f.role) for f in found]
        assert anomalies_of(store, "unknown_signer") == 0
        sim.repo.rotate_keys("timestamp", add=1, remove=1)  # any change makes a root v3
        sim.repo.publish(extra_signers=["root"])
        result = prober.probe(config, config.primary)
        assert result.success and result.roles["root"].version == 3, result.message
        found = store.observe(result, POLICY, at(600))
        [unknown] = [f for f in found if f.kind is FindingKind.UNKNOWN_SIGNER]
        assert unknown.role == "root"
        assert unknown.keyids == (sim.repo.unknown_signer.public_key.keyid,)
        assert unknown.details["previous_root_signed_by"] == sorted(sim.repo.keyids("root"))
        assert anomalies_of(store, "unknown_signer") == 1


def anomalies_of(store: HistoryStore, kind: str) -> float:
    return samples(store, at(0)).get(("tuf_anomalies_total", ("sim", "primary", kind)), 0.0)


def test_an_error_that_is_not_corruption_is_not_reported_as_corruption(tmp_path: Path) -> None:
    """Only SQLite's own word for a damaged file (SQLITE_CORRUPT, SQLITE_NOTADB, a failed
    quick_check) is corruption, which starts the history over: not a bug of ours."""
    database = history_store.Database.open(tmp_path / "h.sqlite")
    try:
        with pytest.raises(sqlite3.ProgrammingError), database.transaction():
            raise sqlite3.ProgrammingError("a bug of ours")
        with pytest.raises(history_store.HistoryCorruptError), database.transaction():
            raise malformed()
    finally:
        database.close()
