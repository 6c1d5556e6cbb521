"""The scrape-time collector: probe results become the catalogue's metric families."""

from __future__ import annotations

from datetime import UTC, datetime

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from exporter.collector import ExporterCollector, ProbeStore
from exporter.results import DelegationSummary, ProbeResult


def _samples(store: ProbeStore) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    registry = CollectorRegistry()
    registry.register(ExporterCollector(store))
    text = generate_latest(registry).decode()
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def test_a_truncated_delegation_sweep_is_exported_per_endpoint() -> None:
    store = ProbeStore()
    now = datetime.now(UTC)
    store.record(ProbeResult("big", "primary", True, now, 1.0,
                             delegations=DelegationSummary(count=4, truncated=True)))
    store.record(ProbeResult("big", "mirror", True, now, 1.0,
                             delegations=DelegationSummary(count=9)))
    samples = _samples(store)
    key = "tuf_delegation_sweep_truncated"
    assert samples[(key, (("endpoint", "primary"), ("repository", "big")))] == 1
    assert samples[(key, (("endpoint", "mirror"), ("repository", "big")))] == 0
    assert samples[("tuf_delegated_roles", (("endpoint", "primary"), ("repository", "big")))] == 4
