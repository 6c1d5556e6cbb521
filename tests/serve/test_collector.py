"""The scrape-time collector: probe results become the catalogue's metric families."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from exporter.probe.results import (
    DelegationSummary,
    FailedRole,
    ProbeResult,
    Reason,
    RoleFacts,
)
from exporter.serve.collector import ExporterCollector, ProbeStore


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


def test_root_facts_against_the_previous_root_and_a_refused_root_are_exported() -> None:
    now = datetime.now(UTC)

    def root(version: int, **more: Any) -> RoleFacts:
        return RoleFacts("root", version, now, 1, "0" * 64, ("a",), (), 1, **more)

    refused = root(4, previous_root_signed_by=(), previous_root_threshold=1)
    store = ProbeStore()
    store.record(ProbeResult("r", "primary", False, now, 1.0, roles={"root": root(
        3, previous_root_signed_by=("a", "b"), previous_root_threshold=2, rejected_root=refused
    )}))
    store.record(ProbeResult("r", "mirror", True, now, 1.0, roles={"root": root(1)}))
    samples = _samples(store)
    primary = (("endpoint", "primary"), ("repository", "r"))
    mirror = (("endpoint", "mirror"), ("repository", "r"))
    assert samples[("tuf_root_previous_signatures_valid", primary)] == 2
    assert samples[("tuf_root_previous_signature_threshold", primary)] == 2
    assert samples[("tuf_root_rejected_version", primary)] == 4
    assert samples[("tuf_metadata_version", (*primary, ("role", "root")))] == 3
    for name in ("tuf_root_previous_signatures_valid", "tuf_root_previous_signature_threshold",
                 "tuf_root_rejected_version"):
        assert (name, mirror) not in samples  # a first root: nothing to compare with


def test_the_returning_client_view_mirrors_the_probe_metrics() -> None:
    """Issue 16: every endpoint has the ``returning`` client view, equal to its probe series."""
    store = ProbeStore()
    started = datetime.now(UTC)
    store.record(ProbeResult("r", "e", True, started, 1.0))
    store.record(ProbeResult("r", "e", False, started, 2.0, reason=Reason.EXPIRED,
                             role=FailedRole.TIMESTAMP))
    samples = _samples(store)
    view = {"repository": "r", "endpoint": "e", "client": "returning"}
    assert samples[("tuf_client_update_success", tuple(sorted(view.items())))] == 0
    assert samples[("tuf_client_last_check_timestamp_seconds", tuple(sorted(view.items())))] == (
        started.timestamp() + 2.0)
    failed = {**view, "reason": "expired", "role": "timestamp"}
    assert samples[("tuf_client_update_failures_total", tuple(sorted(failed.items())))] == 1
