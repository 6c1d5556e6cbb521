"""The ``/metrics`` collector: computes every sample at scrape time from in-memory state.

Probes never run at scrape time. The scheduler records each probe's result in a
:class:`ProbeStore`; a scrape reads the latest results and counters under a short lock, and
computes expiry margins against the current time, so they are never stale between probes.
The history, the signer monitor, the cadence tracker and the shipper are collectors of their
own, registered by the service; ``sources`` add the few families of the service itself (the
scheduler's, its threads'). Every family is built from the metric catalogue.
"""

from __future__ import annotations

import threading
import time
from collections import Counter, deque
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, replace
from typing import Any

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from exporter import __version__
from exporter.catalogue import EXPORTER_ERROR, TOP_LEVEL_ROLES, family
from exporter.probe.results import CLIENT_RETURNING, ErrorCause, ProbeResult, Reason, RoleFacts

MetricSource = Callable[[], Iterable[Metric]]

#: Probes kept per endpoint for the status page (newest first), whatever their outcome.
RECENT_PROBES = 10
#: Probes kept of each client view other than ``returning`` (the fleet view, external clients):
#: the last one only. Such a view runs every ``new_client_interval`` or client ``interval``
#: (10 minutes by default) and each result carries every request of a cold, full refresh, so
#: a ring of :data:`RECENT_PROBES` would keep filling for 100 minutes, growing resident memory
#: by about 9 MB per 1,000 endpoints and view each pass (the one-hour soak, bench/RESULTS.md): an
#: operator sizing an instance after its first minutes would be wrong an hour later. One entry
#: is full at the first pass; a view's failed verdicts still have their own ring
#: (:data:`RECENT_FAILURES`).
RECENT_VIEW_PROBES = 1
#: Failed verdicts kept per endpoint, apart from the recent probes, so that an endpoint's rare
#: failure stays visible however often it (or any other endpoint) probes since.
RECENT_FAILURES = 10


def _code_class(status: int | None) -> str:
    return "error" if status is None else f"{status // 100}xx"


@dataclass(frozen=True)
class _Key:
    repository: str
    endpoint: str
    client: str = CLIENT_RETURNING


@dataclass(frozen=True)
class EndpointLog:
    """What the store remembers of one endpoint, for the status page.

    ``latest`` is the verdict in force (what ``/metrics`` shows; a probe stopped by a fault of
    this host leaves it as it was), None before the first verdict. ``recent`` holds the last
    :data:`RECENT_PROBES` probes of the endpoint (:data:`RECENT_VIEW_PROBES` of a client view
    other than ``returning``), ``failures`` its last
    :data:`RECENT_FAILURES` failed verdicts (``exporter_error`` excluded: those are faults of
    this host, not of the endpoint), both newest first and as each probe saw them, delegated
    role facts left out. Both are bounded per endpoint.
    """

    latest: ProbeResult | None
    recent: tuple[ProbeResult, ...]
    failures: tuple[ProbeResult, ...]


@dataclass(frozen=True)
class StoreSnapshot:
    """What one scrape reads from a :class:`ProbeStore`, copied at one instant. Counter keys are
    label values in the order of the metric's labels in the catalogue."""

    #: The latest result of every client view of every endpoint.
    latest: list[ProbeResult]
    #: tuf_probes_total: (repository, endpoint, result) -> count.
    probes: dict[tuple[str, str, str], int]
    #: tuf_probe_failures_total: (repository, endpoint, reason, role) -> count.
    failures: dict[tuple[str, str, str, str], int]
    #: tuf_probe_http_requests_total: (repository, endpoint, code class) -> count.
    http: dict[tuple[str, str, str], int]
    #: tuf_probe_retries_total: (repository, endpoint) -> count.
    retries: dict[tuple[str, str], int]
    #: tuf_exporter_probes_skipped_total: (repository, endpoint) -> count.
    skipped: dict[tuple[str, str], int]
    #: tuf_exporter_errors_total: (cause,) -> count.
    exporter_errors: dict[tuple[str], int]
    #: Probes and view passes running now.
    in_flight: int
    #: tuf_client_update_failures_total: (repository, endpoint, client, reason, role) -> count.
    client_failures: dict[tuple[str, str, str, str, str], int]


class ProbeStore:
    """The latest result of every client view of every endpoint, its recent probes and
    failures, and the cumulative probe counters (thread safe).

    Results are kept per (repository, endpoint, client) (issue 16). The ``tuf_probe_*`` series
    and counters are the ``returning`` view's (:data:`CLIENT_RETURNING`), as they always were;
    every view, ``returning`` included and whatever its name (``new``,
    ``bootstrap-root-v<N>``, an external client's), has its ``tuf_client_*`` series.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._latest: dict[_Key, ProbeResult] = {}
        self._recent: dict[_Key, deque[ProbeResult]] = {}
        self._recent_failures: dict[_Key, deque[ProbeResult]] = {}
        self._probes: Counter[tuple[str, str, str]] = Counter()
        self._failures: Counter[tuple[str, str, str, str]] = Counter()
        #: Failed verdicts of every view: (repository, endpoint, client, reason, role).
        self._client_failures: Counter[tuple[str, str, str, str, str]] = Counter()
        self._http: Counter[tuple[str, str, str]] = Counter()
        self._retries: Counter[tuple[str, str]] = Counter()
        self._skipped: Counter[tuple[str, str]] = Counter()
        #: Faults of this host, by cause; every cause exists at 0 so increase() sees the first.
        self._exporter_errors: Counter[tuple[str]] = Counter(
            {(str(cause),): 0 for cause in ErrorCause})
        self._in_flight = 0

    def expect(
        self,
        endpoints: Iterable[tuple[str, str]],
        clients: Iterable[tuple[str, str, str]] | None = None,
    ) -> None:
        """Declare the configured endpoints: their counters exist (at 0) before any probe,
        and the state of endpoints no longer configured is dropped.

        ``clients``: the (repository, endpoint, client) views configured besides
        ``returning``; the results and failure counts of other views are dropped (a bootstrap
        root removed, the views turned off). None: keep every view of a configured endpoint.
        """
        wanted = set(endpoints)
        views = None if clients is None else set(clients)
        with self._lock:
            for repository, endpoint in wanted:
                for result in ("success", "failure"):
                    self._probes[(repository, endpoint, result)] += 0
                self._retries[(repository, endpoint)] += 0
                self._skipped[(repository, endpoint)] += 0
            for counter in (self._probes, self._failures, self._http, self._retries,
                            self._skipped, self._client_failures):
                _drop(counter, wanted)
            if views is not None:
                for key in [k for k in self._client_failures
                            if k[2] != CLIENT_RETURNING and k[:3] not in views]:
                    del self._client_failures[key]
            for kept in (self._latest, self._recent, self._recent_failures):
                for stale in [k for k in kept if (k.repository, k.endpoint) not in wanted or (
                        views is not None and k.client != CLIENT_RETURNING
                        and (k.repository, k.endpoint, k.client) not in views)]:
                    del kept[stale]

    def started(self) -> None:
        """A probe began."""
        with self._lock:
            self._in_flight += 1

    def discard(self) -> None:
        """A probe finished whose endpoint is no longer configured: it records nothing and
        only leaves the in-flight count."""
        with self._lock:
            self._in_flight = max(0, self._in_flight - 1)

    def record(self, result: ProbeResult) -> None:
        """A probe finished: keep its result and count it.

        A probe cut short by a fault of this host (``reason == exporter_error``) reached no
        verdict: it is counted (``tuf_probes_total{result="exporter_error"}``, the failure
        counter with its reason, ``tuf_exporter_errors_total{cause}``) but leaves the
        endpoint's last verdict, facts and last-probe time as they were, so nothing about the
        repository changes because of the host.

        A result of another client view than ``returning`` (:meth:`record_view`) is kept the
        same way under its view; it is counted in ``tuf_client_update_failures_total`` (and a
        fault of this host in ``tuf_exporter_errors_total``), never in a ``tuf_probe*`` series.
        """
        with self._lock:
            self._in_flight = max(0, self._in_flight - 1)
            self._record(result)

    def record_view(self, results: Iterable[ProbeResult]) -> None:
        """A view pass finished (one probe in flight): keep and count each view's result."""
        with self._lock:
            self._in_flight = max(0, self._in_flight - 1)
            for result in results:
                self._record(result)

    def _record(self, result: ProbeResult) -> None:
        """Keep and count one view's result; the caller holds the lock."""
        repo, endpoint = result.repository, result.endpoint
        key = _Key(repo, endpoint, result.client)
        returning = result.client == CLIENT_RETURNING
        seen = replace(result, delegated={})  # as this probe saw it; bounded in size
        ring = RECENT_PROBES if returning else RECENT_VIEW_PROBES
        self._recent.setdefault(key, deque(maxlen=ring)).appendleft(seen)
        if not result.success:
            reason, role = str(result.reason or "other"), str(result.role or "root")
            self._client_failures[(repo, endpoint, result.client, reason, role)] += 1
            if returning:
                self._failures[(repo, endpoint, reason, role)] += 1
        if result.reason is Reason.EXPORTER_ERROR:
            self._exporter_errors[(str(result.cause or ErrorCause.INTERNAL),)] += 1
            if returning:
                self._probes[(repo, endpoint, EXPORTER_ERROR)] += 1
                for request in result.requests:
                    self._http[(repo, endpoint, _code_class(request.status))] += 1
            return
        previous = self._latest.get(key)
        if not result.success and previous is not None:
            # keep the last-known facts of what this probe could not read; the success
            # and last-probe metrics say they are old
            result = _with_facts_of(result, previous)
        self._latest[key] = result
        if not result.success:
            self._recent_failures.setdefault(key, deque(maxlen=RECENT_FAILURES)).appendleft(seen)
        if returning:
            self._probes[(repo, endpoint, "success" if result.success else "failure")] += 1
            for request in result.requests:
                self._http[(repo, endpoint, _code_class(request.status))] += 1
                self._retries[(repo, endpoint)] += request.retries

    def exporter_error(self, cause: ErrorCause) -> None:
        """Count a fault of this host outside a probe's verdict (history, spool, ...)."""
        with self._lock:
            self._exporter_errors[(str(cause),)] += 1

    def skipped(self, repository: str, endpoint: str) -> None:
        """A scheduled probe did not run: the previous one of the endpoint still ran."""
        with self._lock:
            self._skipped[(repository, endpoint)] += 1

    def latest(self) -> list[ProbeResult]:
        """The latest result of every client view of every endpoint."""
        with self._lock:
            return list(self._latest.values())

    def endpoint_log(
        self, repository: str, endpoint: str, client: str = CLIENT_RETURNING
    ) -> EndpointLog:
        """The verdict in force, recent probes and recent failures of one view of one
        endpoint (the returning view's by default)."""
        key = _Key(repository, endpoint, client)
        with self._lock:
            return EndpointLog(
                latest=self._latest.get(key),
                recent=tuple(self._recent.get(key, ())),
                failures=tuple(self._recent_failures.get(key, ())),
            )

    def clients(self, repository: str, endpoint: str) -> list[str]:
        """The views of one endpoint other than ``returning`` that have a result, by name."""
        with self._lock:
            return sorted({k.client for k in self._recent
                           if (k.repository, k.endpoint) == (repository, endpoint)
                           and k.client != CLIENT_RETURNING})

    def snapshot(self) -> StoreSnapshot:
        """Everything a scrape needs, copied under one short lock."""
        with self._lock:
            return StoreSnapshot(
                latest=list(self._latest.values()),
                probes=dict(self._probes),
                failures=dict(self._failures),
                http=dict(self._http),
                retries=dict(self._retries),
                skipped=dict(self._skipped),
                exporter_errors=dict(self._exporter_errors),
                in_flight=self._in_flight,
                client_failures=dict(self._client_failures),
            )


def _drop(counter: Counter[Any], wanted: set[tuple[str, str]]) -> None:
    for key in [k for k in counter if (k[0], k[1]) not in wanted]:
        del counter[key]


def _with_facts_of(result: ProbeResult, previous: ProbeResult) -> ProbeResult:
    delegations = result.delegations if result.delegations.count else previous.delegations
    return replace(
        result,
        roles={**previous.roles, **result.roles},
        delegated={**previous.delegated, **result.delegated},
        delegations=delegations,
    )


class ExporterCollector(Collector):
    """Collects probe metrics from a :class:`ProbeStore` plus the families of ``sources``."""

    def __init__(
        self,
        store: ProbeStore,
        sources: Iterable[MetricSource] = (),
        config_status: Callable[[], tuple[bool, float]] | None = None,
    ) -> None:
        self._store = store
        self._sources = list(sources)
        self._config_status = config_status

    def add_source(self, source: MetricSource) -> None:
        """Add another subsystem's metric families."""
        self._sources.append(source)

    def collect(self) -> Iterator[Metric]:
        """Called by prometheus_client on every scrape."""
        now = time.time()
        snap = self._store.snapshot()
        yield from _probe_families(snap.latest, now)
        yield from _counter_families(snap)
        info = family("tuf_exporter_build_info")
        info.add_metric([__version__], 1)
        yield info
        flight = family("tuf_exporter_probes_in_flight")
        flight.add_metric([], snap.in_flight)
        yield flight
        if self._config_status is not None:
            ok, when = self._config_status()
            reload_ok = family("tuf_exporter_config_last_reload_successful")
            reload_ok.add_metric([], 1 if ok else 0)
            yield reload_ok
            reload_time = family("tuf_exporter_config_last_reload_success_timestamp_seconds")
            reload_time.add_metric([], when)
            yield reload_time
        for source in self._sources:
            yield from source()


def _probe_families(latest: list[ProbeResult], now: float) -> Iterator[Metric]:
    names = (
        "tuf_probe_success", "tuf_probe_duration_seconds", "tuf_probe_phase_duration_seconds",
        "tuf_probe_phase_network_duration_seconds", "tuf_metadata_expiry_timestamp_seconds",
        "tuf_metadata_expiry_margin_seconds", "tuf_metadata_version", "tuf_metadata_size_bytes",
        "tuf_metadata_signatures_valid", "tuf_metadata_signature_threshold",
        "tuf_root_previous_signatures_valid", "tuf_root_previous_signature_threshold",
        "tuf_root_rejected_version", "tuf_delegated_roles", "tuf_delegated_roles_failing",
        "tuf_delegated_roles_min_expiry_timestamp_seconds", "tuf_delegation_sweep_truncated",
        "tuf_target_download_duration_seconds", "tuf_exporter_last_probe_timestamp_seconds",
        "tuf_client_update_success", "tuf_client_last_check_timestamp_seconds",
    )
    fam = {name: family(name) for name in names}
    for r in sorted(latest, key=lambda r: (r.repository, r.endpoint, r.client)):
        base = [r.repository, r.endpoint]
        view = [*base, r.client]
        fam["tuf_client_update_success"].add_metric(view, 1 if r.success else 0)
        fam["tuf_client_last_check_timestamp_seconds"].add_metric(view, r.finished_at)
        if r.client != CLIENT_RETURNING:
            continue  # every other series is the returning view's
        fam["tuf_probe_success"].add_metric(base, 1 if r.success else 0)
        fam["tuf_probe_duration_seconds"].add_metric(base, r.duration_seconds)
        for phase in r.phases:
            fam["tuf_probe_phase_duration_seconds"].add_metric([*base, phase.phase], phase.seconds)
            fam["tuf_probe_phase_network_duration_seconds"].add_metric(
                [*base, phase.phase], phase.network_seconds
            )
        for role in TOP_LEVEL_ROLES:
            facts = r.roles.get(role)
            if facts is None:
                continue
            labels = [*base, role]
            expires = facts.expires.timestamp()
            fam["tuf_metadata_expiry_timestamp_seconds"].add_metric(labels, expires)
            fam["tuf_metadata_expiry_margin_seconds"].add_metric(labels, expires - now)
            fam["tuf_metadata_version"].add_metric(labels, facts.version)
            fam["tuf_metadata_size_bytes"].add_metric(labels, facts.size_bytes)
            fam["tuf_metadata_signatures_valid"].add_metric(labels, facts.signatures_valid)
            fam["tuf_metadata_signature_threshold"].add_metric(labels, facts.threshold)
        root = r.roles.get("root")
        if root is not None:
            _root_families(fam, base, root)
        fam["tuf_delegated_roles"].add_metric(base, r.delegations.count)
        fam["tuf_delegated_roles_failing"].add_metric(base, r.delegations.failing)
        fam["tuf_delegation_sweep_truncated"].add_metric(base, 1 if r.delegations.truncated else 0)
        if r.delegations.min_expires is not None:
            fam["tuf_delegated_roles_min_expiry_timestamp_seconds"].add_metric(
                base, r.delegations.min_expires.timestamp()
            )
        fam["tuf_target_download_duration_seconds"].add_metric(base, r.target_download_seconds)
        fam["tuf_exporter_last_probe_timestamp_seconds"].add_metric(base, r.finished_at)
    yield from fam.values()


def _root_families(
    fam: dict[str, GaugeMetricFamily | CounterMetricFamily], base: list[str], root: RoleFacts
) -> None:
    """The trusted root's count against the previous root version, and a refused root."""
    valid, threshold = root.previous_root_signatures_valid, root.previous_root_threshold
    if valid is not None and threshold is not None:
        fam["tuf_root_previous_signatures_valid"].add_metric(base, valid)
        fam["tuf_root_previous_signature_threshold"].add_metric(base, threshold)
    if root.rejected_root is not None:
        fam["tuf_root_rejected_version"].add_metric(base, root.rejected_root.version)


def _counter_families(snap: StoreSnapshot) -> Iterator[Metric]:
    """Every counter family of the store, each sample keyed by its label values."""
    pairs: list[tuple[str, dict[Any, int]]] = [
        ("tuf_probes_total", snap.probes),
        ("tuf_probe_failures_total", snap.failures),
        ("tuf_probe_http_requests_total", snap.http),
        ("tuf_probe_retries_total", snap.retries),
        ("tuf_exporter_probes_skipped_total", snap.skipped),
        ("tuf_exporter_errors_total", snap.exporter_errors),
        ("tuf_client_update_failures_total", snap.client_failures),
    ]
    for name, values in pairs:
        metric = family(name)
        for labels, value in sorted(values.items()):
            metric.add_metric(list(labels), value)
        yield metric
