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


def _labels(**labels: str) -> tuple[tuple[str, str], ...]:
    return tuple(sorted(labels.items()))


def test_every_client_view_has_its_series_and_only_returning_moves_the_probe_series() -> None:
    """Issue 16: a view result of any name goes through the store; tuf_probe_* stay the
    returning view's."""
    store = ProbeStore()
    started = datetime.now(UTC)
    store.expect({("r", "e")})
    store.record(ProbeResult("r", "e", True, started, 1.0))
    store.started()
    store.record_view([
        ProbeResult("r", "e", False, started, 3.0, reason=Reason.BAD_SIGNATURE,
                    role=FailedRole.SNAPSHOT, client="new"),
        ProbeResult("r", "e", True, started, 4.0, client="bootstrap-root-v1"),
        ProbeResult("r", "e", True, started, 5.0, client="some-external-client"),
    ])
    samples = _samples(store)
    base = {"repository": "r", "endpoint": "e"}
    success = {c: samples[("tuf_client_update_success", _labels(**base, client=c))]
               for c in ("returning", "new", "bootstrap-root-v1", "some-external-client")}
    assert success == {"returning": 1, "new": 0, "bootstrap-root-v1": 1,
                       "some-external-client": 1}
    assert samples[("tuf_client_last_check_timestamp_seconds",
                    _labels(**base, client="new"))] == started.timestamp() + 3.0
    assert samples[("tuf_client_update_failures_total", _labels(
        **base, client="new", reason="bad_signature", role="snapshot"))] == 1
    assert samples[("tuf_probe_success", _labels(**base))] == 1
    assert samples[("tuf_probe_duration_seconds", _labels(**base))] == 1.0
    assert samples[("tuf_probes_total", _labels(**base, result="failure"))] == 0
    assert not any(name == "tuf_probe_failures_total" for name, _ in samples)
    assert samples[("tuf_exporter_probes_in_flight", ())] == 0
    assert store.clients("r", "e") == ["bootstrap-root-v1", "new", "some-external-client"]
    assert store.endpoint_log("r", "e", "new").failures[0].reason is Reason.BAD_SIGNATURE


def test_a_host_fault_in_a_view_keeps_the_views_last_verdict() -> None:
    store = ProbeStore()
    started = datetime.now(UTC)
    store.record_view([ProbeResult("r", "e", True, started, 1.0, client="new")])
    store.record_view([ProbeResult("r", "e", False, started, 9.0, reason=Reason.EXPORTER_ERROR,
                                   role=FailedRole.SNAPSHOT, client="new")])
    samples = _samples(store)
    new = _labels(repository="r", endpoint="e", client="new")
    assert samples[("tuf_client_update_success", new)] == 1
    assert samples[("tuf_client_last_check_timestamp_seconds", new)] == started.timestamp() + 1.0
    assert samples[("tuf_client_update_failures_total", _labels(
        repository="r", endpoint="e", client="new", reason="exporter_error",
        role="snapshot"))] == 1
    assert samples[("tuf_exporter_errors_total", _labels(cause="internal"))] == 1


def test_a_view_no_longer_configured_is_dropped() -> None:
    store = ProbeStore()
    started = datetime.now(UTC)
    store.record(ProbeResult("r", "e", True, started, 1.0))
    store.record_view([
        ProbeResult("r", "e", True, started, 1.0, client="new"),
        ProbeResult("r", "e", False, started, 1.0, reason=Reason.MISSING, role=FailedRole.ROOT,
                    client="bootstrap-root-v1"),
    ])
    store.expect({("r", "e")}, {("r", "e", "new")})
    samples = _samples(store)
    assert [labels for name, labels in samples if name.startswith("tuf_client_update")
            and ("client", "bootstrap-root-v1") in labels] == []
    assert ("tuf_client_update_success", _labels(repository="r", endpoint="e", client="new")) \
        in samples
    assert store.endpoint_log("r", "e").latest is not None  # returning is always kept
