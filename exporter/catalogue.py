"""The one metric catalogue: every metric tuf-exporter exports, with its type, help and labels.

The collector, the generated dashboards and the generated alert rules all import this module,
so a renamed metric or label cannot silently break a panel or an alert: tests check every
expression of every rule and panel against :data:`METRICS`, and every exported sample against
its entry here.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from enum import StrEnum

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily


class MetricType(StrEnum):
    """Prometheus metric types used by the exporter."""

    GAUGE = "gauge"
    COUNTER = "counter"


class Subsystem(StrEnum):
    """Which part of the exporter produces a metric."""

    PROBE = "probe"
    HISTORY = "history"
    SIGNER = "signer"
    EVENTS = "events"
    EXPORTER = "exporter"


@dataclass(frozen=True)
class MetricSpec:
    """One metric: its full name (with ``_total`` for counters), type, help and label names."""

    name: str
    type: MetricType
    help: str
    labels: tuple[str, ...]
    subsystem: Subsystem

    @property
    def family_name(self) -> str:
        """The name prometheus_client expects for a family (counters without ``_total``)."""
        if self.type is MetricType.COUNTER:
            return self.name.removesuffix("_total")
        return self.name


#: The probe result and failure reason of a probe stopped by a fault of the exporter's host:
#: no verdict, kept out of the SLO and the repository alerts.
EXPORTER_ERROR = "exporter_error"

#: Fixed failure reasons of the prober and of external client views (``reason`` label values).
REASONS: tuple[str, ...] = (
    "expired",
    "bad_signature",
    "rollback",
    "length_or_hash_mismatch",
    "missing",
    "download_error",
    "timeout",
    "invalid_metadata",
    "target_not_found",
    "other",
    EXPORTER_ERROR,
    "client_rejected",
    "client_timeout",
    "client_error",
)

#: Faults of this host (``cause`` label of tuf_exporter_errors_total and
#: tuf_exporter_thread_errors_total); see results.ErrorCause and classify.exporter_fault.
EXPORTER_ERROR_CAUSES: tuple[str, ...] = (
    "disk", "descriptors", "memory", "history", "spool", "client", "workers", "internal",
)

#: The client view of the existing probe: a python-tuf client whose cache holds what it verified
#: last time (issue 16). Every ``tuf_probe_*`` metric is this view's.
CLIENT_RETURNING = "returning"
#: The client view of a first install: python-tuf, an empty cache, the configured trusted root.
CLIENT_NEW = "new"


def bootstrap_client_name(version: int) -> str:
    """The client view that starts from an embedded root of ``version``: ``bootstrap-root-v<N>``."""
    return f"bootstrap-root-v{version}"

#: ``result`` label values of tuf_probes_total; ``exporter_error`` is no verdict.
PROBE_RESULTS: tuple[str, ...] = ("success", "failure", EXPORTER_ERROR)

#: The top-level roles of TUF, in the order a client updates them; the one list of them (the
#: ``role`` label of per-role facts).
TOP_LEVEL_ROLES: tuple[str, ...] = ("root", "timestamp", "snapshot", "targets")

#: Roles a failure is attributed to (``role`` label of failure metrics).
FAILURE_ROLES: tuple[str, ...] = (*TOP_LEVEL_ROLES, "delegated", "target")

#: Probe phases (``phase`` label).
PHASES: tuple[str, ...] = (*TOP_LEVEL_ROLES, "delegations", "download")

#: Kinds of anomalies the history store detects (``kind`` label of tuf_anomalies_total).
ANOMALY_KINDS: tuple[str, ...] = (
    "equivocation",
    "unknown_signer",
    "expiry_beyond_policy",
    "version_jump",
)

#: The exporter's long-running threads (``thread`` label of tuf_exporter_thread_up).
THREADS: tuple[str, ...] = ("scheduler", "shipper")

#: Who survived an exception (``thread`` label of tuf_exporter_thread_errors_total): the
#: scheduler's own loop, and the probe and signer jobs its worker threads run.
JOB_THREADS: tuple[str, ...] = ("scheduler", "probe_worker", "signer_worker")

_RE = ("repository", "endpoint")
_RER = ("repository", "endpoint", "role")

_P = Subsystem.PROBE
_H = Subsystem.HISTORY
_S = Subsystem.SIGNER
_E = Subsystem.EVENTS
_X = Subsystem.EXPORTER
G = MetricType.GAUGE
C = MetricType.COUNTER

_SPECS: tuple[MetricSpec, ...] = (
    # --- probes -------------------------------------------------------------------------
    MetricSpec("tuf_probe_success", G,
               "1 when the last client refresh and every canary download of the endpoint passed "
               "(the last verdict: a probe stopped by a fault of the exporter leaves it as it "
               "was).", _RE, _P),
    # --- client views (issue 16): the fleet's view of each endpoint ------------------------
    MetricSpec("tuf_client_update_success", G,
               "1 when the last refresh and canary downloads of this client view of the endpoint "
               "passed: returning (the probe's cached client), new (empty cache), "
               "bootstrap-root-v<N> (an embedded old root) or a configured external client.",
               ("repository", "endpoint", "client"), _P),
    MetricSpec("tuf_client_update_failures_total", C,
               "Failed refreshes of a client view, by reason and by the role the failure is "
               "attributed to.", ("repository", "endpoint", "client", "reason", "role"), _P),
    MetricSpec("tuf_client_last_check_timestamp_seconds", G,
               "Unix time when the last refresh of this client view of the endpoint finished.",
               ("repository", "endpoint", "client"), _P),
    MetricSpec("tuf_probe_duration_seconds", G,
               "Wall-clock duration of the last probe of the endpoint.", _RE, _P),
    MetricSpec("tuf_probe_phase_duration_seconds", G,
               "Duration of each phase of the last probe (network and verification).",
               ("repository", "endpoint", "phase"), _P),
    MetricSpec("tuf_probe_phase_network_duration_seconds", G,
               "Time each phase of the last probe spent in HTTP requests; the rest of the phase is "
               "parsing and verification.", ("repository", "endpoint", "phase"), _P),
    MetricSpec("tuf_probes_total", C,
               "Probes run, by result: success, failure, or exporter_error (stopped by a fault "
               "of the exporter's host, no verdict).",
               ("repository", "endpoint", "result"), _P),
    MetricSpec("tuf_probe_failures_total", C,
               "Failed probes by reason and by the role the failure is attributed to.",
               ("repository", "endpoint", "reason", "role"), _P),
    MetricSpec("tuf_probe_http_requests_total", C,
               "HTTP requests made by probes, by status code class (2xx, 3xx, 4xx, 5xx, error).",
               ("repository", "endpoint", "code"), _P),
    MetricSpec("tuf_probe_retries_total", C,
               "HTTP request retries made by probes (only where retries are configured).", _RE, _P),
    MetricSpec("tuf_metadata_expiry_timestamp_seconds", G,
               "Expiry of the role's metadata as last fetched, in Unix seconds.", _RER, _P),
    MetricSpec("tuf_metadata_expiry_margin_seconds", G,
               "Seconds until the role's metadata expires (negative once expired), computed at "
               "scrape time.", _RER, _P),
    MetricSpec("tuf_metadata_version", G, "Version of the role's metadata as last fetched.",
               _RER, _P),
    MetricSpec("tuf_metadata_size_bytes", G, "Size of the role's metadata file.", _RER, _P),
    MetricSpec("tuf_metadata_signatures_valid", G,
               "Signatures on the role's metadata that verify with keys its delegator authorizes.",
               _RER, _P),
    MetricSpec("tuf_metadata_signature_threshold", G,
               "Signature threshold the delegator sets for the role.", _RER, _P),
    MetricSpec("tuf_root_previous_signatures_valid", G,
               "Signatures on the trusted root that verify with the root keys of the previous "
               "root version (python-tuf requires its threshold too); absent for a first root.",
               _RE, _P),
    MetricSpec("tuf_root_previous_signature_threshold", G,
               "Root threshold of the previous root version, which the trusted root must meet "
               "as well; absent for a first root.", _RE, _P),
    MetricSpec("tuf_root_rejected_version", G,
               "Version of the newer root python-tuf refused in the last probe; absent when "
               "none was refused.", _RE, _P),
    MetricSpec("tuf_delegated_roles", G, "Delegated targets roles seen on the endpoint.", _RE, _P),
    MetricSpec("tuf_delegated_roles_failing", G,
               "Delegated targets roles that failed verification in the last probe.", _RE, _P),
    MetricSpec("tuf_delegated_roles_min_expiry_timestamp_seconds", G,
               "Earliest expiry among the delegated targets roles, in Unix seconds.", _RE, _P),
    MetricSpec("tuf_delegation_sweep_truncated", G,
               "1 when the delegation tree has more roles than limits.max_delegations and the "
               "last sweep stopped before verifying all of them.", _RE, _P),
    MetricSpec("tuf_target_download_duration_seconds", G,
               "Total duration of the canary target downloads of the last probe.", _RE, _P),
    MetricSpec("tuf_exporter_last_probe_timestamp_seconds", G,
               "When the last probe of the endpoint finished, in Unix seconds.", _RE, _P),
    # --- history ------------------------------------------------------------------------
    MetricSpec("tuf_mirror_lag_versions", G,
               "The primary's version of the role minus the mirror's (timestamp and snapshot).",
               _RER, _H),
    MetricSpec("tuf_mirror_lag_seconds", G,
               "How long the mirror has been behind: now minus when the primary first showed the "
               "oldest version the mirror does not have yet; 0 when current.", _RE, _H),
    MetricSpec("tuf_metadata_last_change_timestamp_seconds", G,
               "When a new version of the role was first seen on the endpoint, in Unix seconds.",
               _RER, _H),
    MetricSpec("tuf_metadata_normal_lifetime_seconds", G,
               "Usual lifetime of the role's metadata as signed: the upper median, over its newest "
               "versions, of expiry minus when the repository first served the version. The "
               "expiry alerts warn relative to it.", ("repository", "role"), _H),
    MetricSpec("tuf_rollbacks_detected_total", C,
               "Times the endpoint served a lower version than already seen for the role, or froze "
               "the role past its expected re-signing cadence.", _RER, _H),
    MetricSpec("tuf_anomalies_total", C,
               f"Anomalies seen: {', '.join(ANOMALY_KINDS)}.",
               ("repository", "endpoint", "kind"), _H),
    MetricSpec("tuf_key_rotations_total", C,
               "Root versions that changed the keys or threshold of the role.",
               ("repository", "role"), _H),
    MetricSpec("tuf_root_version", G, "Newest trusted root version seen for the repository.",
               ("repository",), _H),
    # --- signers ------------------------------------------------------------------------
    MetricSpec("tuf_signer_up", G, "1 when the last signing probe produced a valid signature.",
               ("signer", "repository", "role"), _S),
    MetricSpec("tuf_signer_sign_duration_seconds", G,
               "Time the last signing probe took to sign its challenge.", ("signer",), _S),
    MetricSpec("tuf_signer_key_authorized", G,
               "1 when the signer's key is among the keys the repository's current metadata "
               "authorizes for the role.", ("signer", "repository", "role"), _S),
    MetricSpec("tuf_signer_probes_total", C, "Signing probes, by result (success or failure).",
               ("signer", "result"), _S),
    MetricSpec("tuf_signer_cadence_ok", G,
               "1 when the online role was re-signed within its expected period.",
               ("repository", "role"), _S),
    # --- events -------------------------------------------------------------------------
    MetricSpec("tuf_exporter_events_total", C, "Events produced, by kind.", ("kind",), _E),
    MetricSpec("tuf_exporter_events_shipped_total", C,
               "Events accepted by the event sink (OpenSearch or the local file).", (), _E),
    MetricSpec("tuf_exporter_events_spooled", G, "Events waiting in the durable spool.", (), _E),
    MetricSpec("tuf_exporter_events_dropped_total", C,
               "Events dropped by the spool's size or age policy, or rejected by the sink.",
               ("cause",), _E),
    MetricSpec("tuf_exporter_shipper_errors_total", C, "Shipper errors, by cause.", ("cause",), _E),
    MetricSpec("tuf_exporter_shipper_last_success_timestamp_seconds", G,
               "When the shipper last delivered a batch, in Unix seconds.", (), _E),
    # --- the exporter itself ------------------------------------------------------------
    MetricSpec("tuf_exporter_build_info", G, "Build information; the value is always 1.",
               ("version",), _X),
    MetricSpec("tuf_exporter_config_last_reload_successful", G,
               "1 when the last configuration (re)load succeeded.", (), _X),
    MetricSpec("tuf_exporter_config_last_reload_success_timestamp_seconds", G,
               "When the configuration was last loaded successfully, in Unix seconds.", (), _X),
    MetricSpec("tuf_exporter_probes_in_flight", G, "Probes running right now.", (), _X),
    MetricSpec("tuf_exporter_errors_total", C,
               "Faults of the exporter itself, never of a repository, by cause: "
               f"{', '.join(EXPORTER_ERROR_CAUSES)}.", ("cause",), _X),
    MetricSpec("tuf_exporter_thread_up", G,
               "1 while the exporter's long-running thread runs, 0 once it has died (then "
               "/-/ready fails too).", ("thread",), _X),
    MetricSpec("tuf_exporter_thread_errors_total", C,
               "Exceptions a long-running thread (or a probe or signer job of the scheduler's "
               f"workers) survived, by thread and cause: {', '.join(EXPORTER_ERROR_CAUSES)}.",
               ("thread", "cause"), _X),
    MetricSpec("tuf_exporter_probes_skipped_total", C,
               "Scheduled probes skipped because the previous probe of the endpoint still ran.",
               _RE, _X),
)

#: Every metric, by name.
METRICS: dict[str, MetricSpec] = {spec.name: spec for spec in _SPECS}


def spec(name: str) -> MetricSpec:
    """Return the catalogue entry for ``name``; a KeyError names the unknown metric."""
    try:
        return METRICS[name]
    except KeyError:
        raise KeyError(f"metric {name!r} is not in the catalogue") from None


def by_subsystem(subsystem: Subsystem) -> Iterator[MetricSpec]:
    """Every catalogue metric produced by ``subsystem``."""
    return (m for m in _SPECS if m.subsystem is subsystem)


def sample_names(metric: MetricSpec) -> tuple[str, ...]:
    """Sample names a scrape shows for ``metric`` (counters also expose ``_created``)."""
    if metric.type is MetricType.COUNTER:
        return (metric.name, metric.family_name + "_created")
    return (metric.name,)


def family(name: str) -> GaugeMetricFamily | CounterMetricFamily:
    """An empty metric family for the catalogue metric ``name``, ready for ``add_metric``.

    Custom collectors build every family through this function, so what they export always
    matches the catalogue's name, type, help and labels.
    """
    metric = spec(name)
    if metric.type is MetricType.COUNTER:
        return CounterMetricFamily(metric.family_name, metric.help, labels=metric.labels)
    return GaugeMetricFamily(metric.name, metric.help, labels=metric.labels)


def _values(values: tuple[str, ...]) -> str:
    return ", ".join(f"`{value}`" for value in values)


def markdown_reference() -> str:
    """The metrics reference for the README, generated from the catalogue: the fixed label
    values, then one table row per metric (markdown text, ending in a newline)."""
    lines = [
        f"Label values of `reason`: {_values(REASONS)}; of `result`: {_values(PROBE_RESULTS)}; "
        f"of `cause` (`tuf_exporter_errors_total`, `tuf_exporter_thread_errors_total`): "
        f"{_values(EXPORTER_ERROR_CAUSES)}; of `role` on failures: {_values(FAILURE_ROLES)}; "
        f"of `phase`: {_values(PHASES)}; of `kind` (`tuf_anomalies_total`): "
        f"{_values(ANOMALY_KINDS)}; of `client`: `{CLIENT_RETURNING}`, `{CLIENT_NEW}`, "
        "`bootstrap-root-v<N>` and the names of the configured external clients.",
        "",
        "| metric | type | labels | help |", "|---|---|---|---|",
    ]
    for metric in _SPECS:
        labels = ", ".join(f"`{label}`" for label in metric.labels) or "—"
        lines.append(f"| `{metric.name}` | {metric.type} | {labels} | {metric.help} |")
    return "\n".join(lines) + "\n"
