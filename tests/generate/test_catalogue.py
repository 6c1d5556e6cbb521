"""The metric catalogue: Prometheus naming rules, and the README's reference kept in step."""

from __future__ import annotations

import re
from pathlib import Path

from exporter.catalogue import (
    ANOMALY_KINDS,
    EXPORTER_ERROR_CAUSES,
    FAILURE_ROLES,
    METRICS,
    PHASES,
    PROBE_RESULTS,
    REASONS,
    MetricType,
    markdown_reference,
)
from exporter.probe import ErrorCause, FailedRole, Reason

README = Path(__file__).resolve().parents[2] / "README.md"
_BASE_UNITS = ("_seconds", "_bytes", "_total", "_timestamp_seconds")
_BAD_UNITS = ("_milliseconds", "_ms", "_minutes", "_hours", "_days", "_kilobytes", "_megabytes")


def test_names_follow_the_prometheus_rules() -> None:
    for name, metric in METRICS.items():
        assert re.fullmatch(r"tuf_[a-z0-9_]+", name), name
        assert (metric.type is MetricType.COUNTER) == name.endswith("_total"), name
        assert not name.endswith(_BAD_UNITS), f"{name}: use base units"
        if "duration" in name or "lag_seconds" in name or "margin" in name:
            assert name.endswith("_seconds"), name
        if "timestamp" in name and not name.endswith("_total"):
            assert name.endswith("_timestamp_seconds") or "timestamp" in metric.labels, name
        for label in metric.labels:
            assert re.fullmatch(r"[a-z][a-z0-9_]*", label) and not label.startswith("__")
        assert metric.help.endswith("."), name


def test_fixed_label_values_match_the_prober() -> None:
    assert set(REASONS) == {str(r) for r in Reason}
    assert set(EXPORTER_ERROR_CAUSES) == {str(c) for c in ErrorCause}
    assert set(FAILURE_ROLES) == {str(r) for r in FailedRole}
    assert PHASES == ("root", "timestamp", "snapshot", "targets", "delegations", "download")


def test_readme_metrics_reference_is_generated_from_the_catalogue() -> None:
    text = README.read_text()
    section = text.split("<!-- metrics:begin -->\n", 1)[1].split("<!-- metrics:end -->", 1)[0]
    assert section == markdown_reference(), (
        "README metrics reference is stale: regenerate it with ./scripts/generate "
        "(from exporter.catalogue.markdown_reference())"
    )


def test_the_reference_lists_every_fixed_label_value() -> None:
    """What a user reads in the README to write a query: every reason (the external client
    views' too), cause (`client` too), result, role, phase and anomaly kind; and the help of the
    families labelled by host-fault cause names each cause."""
    reference = markdown_reference()
    for value in (*REASONS, *EXPORTER_ERROR_CAUSES, *PROBE_RESULTS, *FAILURE_ROLES, *PHASES,
                  *ANOMALY_KINDS):
        assert f"`{value}`" in reference, value
    for name in ("tuf_exporter_errors_total", "tuf_exporter_thread_errors_total"):
        for cause in EXPORTER_ERROR_CAUSES:
            assert cause in METRICS[name].help, (name, cause)
