"""Passive signer availability: is each online role re-signed as often as it should be?

Online roles (``timestamp``, ``snapshot`` and every role in ``Policy.online_roles``) are signed
by keys kept online, on a schedule. When their signer breaks, nobody signs, and the role's
version stops changing long before its metadata expires. ``tuf_signer_cadence_ok`` says
whether the role was re-signed within its expected period:

* The **last change** is when the role's current version was first seen on the primary
  (the history store's ``last_change(repository, "primary", role)``).
* The **expected period** is ``Policy.cadence[role]`` when configured, otherwise the cadence
  learned from the observed intervals between version changes (the history store's
  ``observed_cadence``, a median), and unknown while that is still being learned.
* ``cadence_ok`` is 1 when the age of the current version (``now - last_change``) is at most
  the allowance and 0 otherwise, where the
  allowance is ``period * 1.0 + 60 s`` for a **configured** period (the owners' promise, plus
  a small grace for publication and probe delays) and ``period * 2.0`` for a **learned**
  period (observed cadences jitter). With no known period the metric is absent.
* This is the one re-signing rule of the exporter: the history store's ``freeze`` finding
  (which pages through ``tuf_rollbacks_detected_total``) uses the same
  :meth:`ExpectedPeriod.on_time`, so a freeze is never reported while ``cadence_ok`` is 1.
* Within one run the age is measured on the monotonic clock (the history store's ``age``, then
  grown by the monotonic clock between probes), so a step of the wall clock neither makes a
  role late nor hides a late one.

Everything here is pure and deterministic (``now`` is always passed in) except
:class:`CadenceTracker`, which keeps the latest inputs so a scrape can re-evaluate them
against the current time: the metric turns to 0 between probes, as soon as the role is late.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum

from prometheus_client.core import Metric

from exporter.catalogue import family
from exporter.config import ALWAYS_ONLINE, Policy

#: Multiplier of a configured period.
CONFIGURED_TOLERANCE = 1.0
#: Seconds added to a configured period (publication and probing delays).
CONFIGURED_GRACE_SECONDS = 60.0
#: Multiplier of a learned period: a median of jittery intervals, so twice it (a missed
#: re-signing and then some) before a role counts as late or frozen.
LEARNED_TOLERANCE = 2.0


class PeriodSource(StrEnum):
    """Where an expected re-signing period comes from."""

    CONFIGURED = "configured"
    LEARNED = "learned"


@dataclass(frozen=True)
class ExpectedPeriod:
    """How often a role should be re-signed, and how late it may be before it counts as late."""

    seconds: float
    source: PeriodSource

    @property
    def allowance_seconds(self) -> float:
        """The longest time since the last change that still counts as on cadence."""
        if self.source is PeriodSource.CONFIGURED:
            return self.seconds * CONFIGURED_TOLERANCE + CONFIGURED_GRACE_SECONDS
        return self.seconds * LEARNED_TOLERANCE

    def on_time(self, age_seconds: float) -> bool:
        """True when a version ``age_seconds`` old is still on cadence."""
        return age_seconds <= self.allowance_seconds


@dataclass(frozen=True)
class CadenceStatus:
    """The cadence verdict for one online role at one moment."""

    repository: str
    role: str
    #: When the current version was first seen on the primary; None when never seen.
    last_change: datetime | None
    period: ExpectedPeriod | None
    #: Seconds since the last change; None when it is unknown.
    age_seconds: float | None
    #: True on cadence, False late, None when it cannot be judged (no period or no change).
    ok: bool | None


def online_roles(policy: Policy) -> tuple[str, ...]:
    """The roles of ``policy`` that are signed online: timestamp, snapshot and the configured
    ``online_roles``, sorted and without duplicates."""
    return tuple(sorted({*ALWAYS_ONLINE, *policy.online_roles}))


def expected_period(role: str, policy: Policy, learned: float | None) -> ExpectedPeriod | None:
    """The configured period of ``role`` if any, else the ``learned`` one, else None.

    ``learned`` is the observed re-signing interval in seconds (e.g. the median interval
    between version changes), or None while it is still unknown. Non-positive values count
    as unknown.
    """
    configured = policy.cadence.get(role)
    if configured is not None and configured > 0:
        return ExpectedPeriod(float(configured), PeriodSource.CONFIGURED)
    if learned is not None and learned > 0:
        return ExpectedPeriod(float(learned), PeriodSource.LEARNED)
    return None


def is_on_cadence(last_change: datetime, period: ExpectedPeriod, now: datetime) -> bool:
    """True when ``now - last_change`` is within ``period.allowance_seconds``."""
    return period.on_time((now - last_change).total_seconds())


def evaluate(
    repository: str,
    role: str,
    last_change: datetime | None,
    period: ExpectedPeriod | None,
    now: datetime,
    age_seconds: float | None = None,
) -> CadenceStatus:
    """The cadence verdict of one role at ``now``.

    ``age_seconds``: the age of the current version measured on the monotonic clock, when
    known; otherwise it is ``now - last_change`` (wall clock).
    """
    age = None
    if last_change is not None:
        age = (now - last_change).total_seconds() if age_seconds is None else age_seconds
    ok = None
    if age is not None and period is not None:
        ok = period.on_time(age)
    return CadenceStatus(repository, role, last_change, period, age, ok)


class CadenceTracker:
    """The latest last-change time and expected period of every online role (thread safe).

    The service calls :meth:`update` after each probe of a repository's primary; a scrape
    calls :meth:`collect` (a prometheus_client collector), which re-evaluates everything
    against the current time.
    """

    def __init__(self, monotonic: Callable[[], float] = time.monotonic) -> None:
        """Start empty: no metric until :meth:`update` is called. ``monotonic`` is the steady
        clock (seconds) that ages given to :meth:`update` grow by."""
        self._lock = threading.Lock()
        self._monotonic = monotonic
        #: (repository, role) -> last change, period, (steady age, monotonic reading) or None
        self._inputs: dict[
            tuple[str, str],
            tuple[datetime | None, ExpectedPeriod | None, tuple[float, float] | None],
        ] = {}

    def update(
        self,
        repository: str,
        role: str,
        last_change: datetime | None,
        policy: Policy,
        learned: float | None,
        now: datetime,
        age_seconds: float | None = None,
    ) -> CadenceStatus:
        """Record the latest facts of ``role`` and return its verdict at ``now``.

        ``age_seconds``: how long the current version has been served, on the monotonic
        clock (the history store's ``age``); scrapes then grow it by the monotonic clock.
        None: ages are ``now - last_change`` by the wall clock.
        """
        period = expected_period(role, policy, learned)
        steady = None if age_seconds is None else (age_seconds, self._monotonic())
        with self._lock:
            self._inputs[(repository, role)] = (last_change, period, steady)
        return evaluate(repository, role, last_change, period, now, age_seconds)

    def forget(self, repository: str, roles: Iterable[str] | None = None) -> None:
        """Drop ``roles`` of ``repository`` (all of them when None), e.g. after a reload."""
        wanted = None if roles is None else set(roles)
        with self._lock:
            for key in [k for k in self._inputs if k[0] == repository]:
                if wanted is None or key[1] in wanted:
                    del self._inputs[key]

    def retain(self, repositories: Iterable[str]) -> None:
        """Keep only the roles of ``repositories`` (the configured ones)."""
        keep = set(repositories)
        with self._lock:
            for key in [k for k in self._inputs if k[0] not in keep]:
                del self._inputs[key]

    def statuses(self, now: datetime) -> list[CadenceStatus]:
        """The verdict of every tracked role at ``now``, sorted by repository and role."""
        with self._lock:
            inputs = sorted(self._inputs.items())
        steady_now = self._monotonic()
        return [
            evaluate(repo, role, last, period, now,
                     None if steady is None else steady[0] + max(0.0, steady_now - steady[1]))
            for (repo, role), (last, period, steady) in inputs
        ]

    def collect(self) -> Iterator[Metric]:
        """prometheus_client's collector interface (the service registers the tracker): the
        families of :meth:`metrics` at the current time."""
        yield from self.metrics()

    def metrics(self, now: datetime | None = None) -> Iterator[Metric]:
        """``tuf_signer_cadence_ok`` of every role whose period and last change are known."""
        moment = datetime.now(UTC) if now is None else now
        ok = family("tuf_signer_cadence_ok")
        for status in self.statuses(moment):
            if status.ok is not None:
                ok.add_metric([status.repository, status.role], 1 if status.ok else 0)
        yield ok
