"""Passive re-signing cadence of online roles, with deterministic times."""

from __future__ import annotations

import itertools
import statistics
from collections.abc import Iterable
from datetime import UTC, datetime, timedelta

import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import Metric

from exporter import catalogue
from exporter.config import Policy
from exporter.history import (
    CONFIGURED_GRACE_SECONDS,
    LEARNED_TOLERANCE,
    CadenceTracker,
    ExpectedPeriod,
    PeriodSource,
    evaluate,
    expected_period,
    is_on_cadence,
    online_roles,
)
from exporter.simulator import SimulatedRepository

T0 = datetime(2030, 1, 1, tzinfo=UTC)


def at(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


def cadence_samples(metrics: Iterable[Metric]) -> dict[tuple[str, str], float]:
    out = {}
    for metric in metrics:
        assert metric.name == "tuf_signer_cadence_ok"
        for s in metric.samples:
            assert tuple(s.labels) == catalogue.spec("tuf_signer_cadence_ok").labels
            out[(s.labels["repository"], s.labels["role"])] = s.value
    return out


class Observer:
    """What the history store does for the primary: the first time each version was seen."""

    def __init__(self, repo: SimulatedRepository) -> None:
        self.repo = repo
        self.seen: dict[str, tuple[int, datetime]] = {}
        self.changes: dict[str, list[datetime]] = {}

    def observe(self, role: str, now: datetime) -> datetime:
        version = self.repo.latest.versions[role]
        if role not in self.seen or self.seen[role][0] != version:
            self.seen[role] = (version, now)
            self.changes.setdefault(role, []).append(now)
        return self.seen[role][1]

    def learned(self, role: str, minimum: int = 3) -> float | None:
        times = self.changes.get(role, [])
        gaps = [(b - a).total_seconds() for a, b in itertools.pairwise(times)]
        return statistics.median(gaps) if len(gaps) >= minimum else None


def test_online_roles() -> None:
    assert online_roles(Policy()) == ("snapshot", "timestamp")
    assert online_roles(Policy(online_roles=("bins", "timestamp"))) == (
        "bins", "snapshot", "timestamp")


def test_expected_period_prefers_configuration() -> None:
    policy = Policy(cadence={"timestamp": 300.0})
    assert expected_period("timestamp", policy, 60.0) == ExpectedPeriod(
        300.0, PeriodSource.CONFIGURED)
    assert expected_period("snapshot", policy, 60.0) == ExpectedPeriod(60.0, PeriodSource.LEARNED)
    assert expected_period("snapshot", policy, None) is None
    assert expected_period("snapshot", policy, 0.0) is None


def test_allowances() -> None:
    configured = ExpectedPeriod(300.0, PeriodSource.CONFIGURED)
    learned = ExpectedPeriod(300.0, PeriodSource.LEARNED)
    assert configured.allowance_seconds == 300.0 + CONFIGURED_GRACE_SECONDS
    assert learned.allowance_seconds == 300.0 * LEARNED_TOLERANCE
    assert is_on_cadence(at(0), configured, at(360))  # the boundary is still on cadence
    assert not is_on_cadence(at(0), configured, at(361))
    assert is_on_cadence(at(0), learned, at(600))
    assert not is_on_cadence(at(0), learned, at(600.5))


def test_evaluate_unknowns() -> None:
    period = ExpectedPeriod(60.0, PeriodSource.LEARNED)
    assert evaluate("r", "timestamp", None, period, at(10)).ok is None
    status = evaluate("r", "timestamp", at(0), None, at(10))
    assert (status.ok, status.age_seconds) == (None, 10.0)


def test_configured_cadence_stops_and_resumes() -> None:
    repo = SimulatedRepository()
    observer = Observer(repo)
    tracker = CadenceTracker()
    policy = Policy(cadence={"timestamp": 300.0})

    def step(now: datetime) -> float | None:
        last = observer.observe("timestamp", now)
        tracker.update("sim", "timestamp", last, policy, observer.learned("timestamp"), now)
        return cadence_samples(tracker.metrics(now)).get(("sim", "timestamp"))

    # re-signed every 300 s: on cadence
    for i in range(4):
        repo.resign("timestamp")
        assert step(at(300 * i)) == 1
    # the signer stops: still fine within period + grace, late after it
    assert step(at(900 + 300)) == 1
    assert step(at(900 + 360)) == 1
    assert step(at(900 + 361)) == 0
    # the metric turns to 0 at scrape time too, with no new observation
    assert cadence_samples(tracker.metrics(at(5000)))[("sim", "timestamp")] == 0
    # re-signing resumes
    repo.resign("timestamp")
    assert step(at(5000)) == 1
    assert tracker.statuses(at(5000))[0].period == ExpectedPeriod(300.0,
                                                                   PeriodSource.CONFIGURED)


def test_the_tracker_is_a_collector_of_its_own() -> None:
    """Registered as it is (as the service does), it serves tuf_signer_cadence_ok now."""
    tracker = CadenceTracker()
    now = datetime.now(UTC)
    policy = Policy(cadence={"timestamp": 300.0})
    tracker.update("sim", "timestamp", now - timedelta(seconds=10), policy, None, now)
    tracker.update("sim", "snapshot", now - timedelta(days=1), Policy(cadence={"snapshot": 60.0}),
                   None, now)
    registry = CollectorRegistry(auto_describe=True)
    registry.register(tracker)
    text = generate_latest(registry).decode()
    assert 'tuf_signer_cadence_ok{repository="sim",role="timestamp"} 1.0' in text
    assert 'tuf_signer_cadence_ok{repository="sim",role="snapshot"} 0.0' in text


def test_learned_cadence_stops_and_resumes() -> None:
    repo = SimulatedRepository()
    observer = Observer(repo)
    tracker = CadenceTracker()
    policy = Policy()

    def step(now: datetime) -> float | None:
        last = observer.observe("snapshot", now)
        tracker.update("sim", "snapshot", last, policy, observer.learned("snapshot"), now)
        return cadence_samples(tracker.metrics(now)).get(("sim", "snapshot"))

    # while the cadence is still being learned there is no metric
    repo.resign("snapshot")
    assert step(at(0)) is None
    for i in range(1, 3):
        repo.resign("snapshot")
        assert step(at(60 * i)) is None
    # three intervals of 60 s: the learned period is 60 s, allowance 120 s
    repo.resign("snapshot")
    assert step(at(180)) == 1
    assert tracker.statuses(at(180))[0].period == ExpectedPeriod(60.0, PeriodSource.LEARNED)
    # the signer stops
    assert step(at(180 + 120)) == 1
    assert step(at(180 + 121)) == 0
    # it resumes
    repo.resign("snapshot")
    assert step(at(400)) == 1


def test_tracker_forget_and_retain() -> None:
    tracker = CadenceTracker()
    policy = Policy(cadence={"timestamp": 60.0, "snapshot": 60.0})
    for repo in ("a", "b"):
        for role in ("timestamp", "snapshot"):
            tracker.update(repo, role, at(0), policy, None, at(0))
    assert len(cadence_samples(tracker.metrics(at(1)))) == 4
    tracker.forget("a", ["snapshot"])
    assert set(cadence_samples(tracker.metrics(at(1)))) == {
        ("a", "timestamp"), ("b", "snapshot"), ("b", "timestamp")}
    tracker.retain(["b"])
    assert set(cadence_samples(tracker.metrics(at(1)))) == {("b", "snapshot"), ("b", "timestamp")}
    tracker.forget("b")
    assert cadence_samples(tracker.metrics(at(1))) == {}


@pytest.mark.parametrize("learned", [None, 20.0])
def test_update_returns_the_status(learned: float | None) -> None:
    status = CadenceTracker().update("r", "timestamp", at(0), Policy(), learned, at(50))
    assert status.ok is (None if learned is None else False)
    assert status.age_seconds == 50.0


def test_a_wall_clock_step_does_not_make_a_role_late() -> None:
    steady = [100.0]
    tracker = CadenceTracker(monotonic=lambda: steady[0])
    policy = Policy(cadence={"timestamp": 300.0})  # allowance 360 s
    # the version was first seen 100 s ago (the history store's steady age)
    assert tracker.update("r", "timestamp", at(0), policy, None, at(100), age_seconds=100.0).ok
    steady[0] += 30  # 30 s pass; the wall clock steps two hours forward
    assert cadence_samples(tracker.metrics(at(7200)))[("r", "timestamp")] == 1
    assert tracker.statuses(at(7200))[0].age_seconds == 130.0
    steady[0] += 231  # truly late now: 361 s on the steady clock
    assert cadence_samples(tracker.metrics(at(7200)))[("r", "timestamp")] == 0
