"""Prometheus recording rules, alert rules and an Alertmanager example, generated as code.

Every metric is referenced through :func:`m`, which looks the name up in
:mod:`exporter.catalogue` and so fails at generation time when a metric is renamed. The
numbers (SLO target and window, thresholds, ``for:`` durations, webhook URLs, ...) live in
:class:`AlertOptions`, which can be loaded from a small YAML file, so an end-to-end test runs
the very same code with shorter durations.

Regenerate the committed files with ``python -m exporter.generate.alerts --out alerts``.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from exporter import catalogue
from exporter.catalogue import CLIENT_RETURNING
from exporter.config.durations import parse_duration
from exporter.config.yamlfile import ConfigError, read_yaml

RECORDING_RULES_FILE = "recording_rules.yml"
ALERT_RULES_FILE = "alert_rules.yml"
ALERTMANAGER_FILE = "alertmanager.example.yml"

#: Label used by every alert to pick its Alertmanager route.
PAGE = "page"
TICKET = "ticket"

#: Anomaly kinds that suggest a compromised or misused signing key.
COMPROMISE_KINDS: tuple[str, ...] = ("equivocation", "unknown_signer")

#: Metrics outside the catalogue that rules and dashboards may use: Prometheus' own ``up``, and
#: the standard families of prometheus_client's process, platform and GC collectors, which
#: the service registers next to its own (see :class:`exporter.serve.service.Service`).
BUILTIN_METRICS: frozenset[str] = frozenset({
    "up",
    "process_open_fds", "process_max_fds", "process_resident_memory_bytes",
    "process_virtual_memory_bytes", "process_cpu_seconds_total", "process_start_time_seconds",
    "python_info", "python_gc_objects_collected_total", "python_gc_objects_uncollectable_total",
    "python_gc_collections_total",
})


def builtin(name: str) -> str:
    """Return ``name`` after checking it is one of :data:`BUILTIN_METRICS` (KeyError otherwise)."""
    if name not in BUILTIN_METRICS:
        raise KeyError(f"{name} is neither a catalogue metric nor a known builtin metric")
    return name

_DURATION = re.compile(r"(?:\d+(?:ms|s|m|h|d|w|y))+")


def m(name: str) -> str:
    """Return ``name`` after checking it is a catalogue metric (KeyError otherwise)."""
    return catalogue.spec(name).name


_PROMQL_STRING = re.compile(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'|`[^`]*`')
_PROMQL_BRACES = re.compile(r"\{[^{}]*\}|\[[^\[\]]*\]")
_PROMQL_GROUPING = re.compile(
    r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^()]*\)", re.IGNORECASE)
_PROMQL_IDENT = re.compile(r"(?<![\w.$])([A-Za-z_:][\w:]*)(\s*\()?")
_PROMQL_KEYWORDS = frozenset({
    "and", "or", "unless", "by", "without", "on", "ignoring", "group_left", "group_right",
    "bool", "offset", "inf", "nan", "start", "end",
})


def promql_metric_names(expr: str) -> set[str]:
    """Metric (or recording rule) names an expression selects.

    A small tokenizer, not a parser: it drops strings, label matchers, range and subquery
    brackets and grouping clauses, then keeps identifiers that are neither keywords nor
    function calls. Grafana variables (``$repository``) inside matchers vanish with them.
    """
    text = _PROMQL_STRING.sub('""', expr)
    previous = None
    while previous != text:
        previous = text
        text = _PROMQL_BRACES.sub(" ", text)
    text = _PROMQL_GROUPING.sub(" ", text)
    names = set()
    for match in _PROMQL_IDENT.finditer(text):
        name, call = match.groups()
        if call or name.lower() in _PROMQL_KEYWORDS:
            continue
        names.add(name)
    return names


def kebab(name: str) -> str:
    """``TufMetadataExpired`` -> ``tuf-metadata-expired`` (runbook file names)."""
    return re.sub(r"(?<=[a-z0-9])(?=[A-Z])", "-", name).lower()


def _check_duration(name: str, value: str) -> str:
    if not isinstance(value, str) or not _DURATION.fullmatch(value):
        raise ValueError(f"{name}: expected a Prometheus duration like 5m or 1h, got {value!r}")
    return value


@dataclass(frozen=True)
class BurnWindow:
    """One multi-window burn-rate condition: ``factor`` x budget over ``long`` AND ``short``."""

    factor: float
    long: str
    short: str


@dataclass(frozen=True)
class BurnAlert:
    """One burn-rate alert: any of its windows firing (``or``) for ``for_`` fires it."""

    name: str
    severity: str
    windows: tuple[BurnWindow, ...]
    for_: str


def _default_burn_alerts() -> tuple[BurnAlert, ...]:
    # Google SRE workbook, chapter 5, "multiwindow, multi-burn-rate alerts".
    return (
        BurnAlert("TufErrorBudgetBurnFast", PAGE,
                  (BurnWindow(14.4, "1h", "5m"), BurnWindow(6, "6h", "30m")), "2m"),
        BurnAlert("TufErrorBudgetBurnSlow", TICKET,
                  (BurnWindow(3, "1d", "2h"), BurnWindow(1, "3d", "6h")), "15m"),
    )


def _role_seconds(**values: float) -> dict[str, float]:
    return dict(values)


@dataclass(frozen=True)
class AlertOptions:
    """Every number the generated rules and the Alertmanager example depend on."""

    #: Verification-success SLO target (0.999 = 99.9 %); the error budget is 1 - target.
    slo_target: float = 0.999
    #: Window the SLO (and the error budget left) is measured over.
    slo_window: str = "30d"
    #: Evaluation interval of the SLI recording rules (the burn-rate alerts read them).
    recording_interval: str = "1m"
    burn_alerts: tuple[BurnAlert, ...] = field(default_factory=_default_burn_alerts)
    #: Expiry warnings are relative to each role's normal lifetime as signed
    #: (``tuf_metadata_normal_lifetime_seconds``, see :func:`expiry_threshold_expr`): the
    #: ticket (page) fires once the margin left is under this share of it ...
    expiry_ticket_lifetime_ratio: float = 0.25
    expiry_page_lifetime_ratio: float = 0.1
    #: ... but never earlier than these margins per top-level role, in seconds (the
    #: thresholds, too, while the normal lifetime is not known yet) ...
    expiry_ticket_seconds: Mapping[str, float] = field(default_factory=lambda: _role_seconds(
        root=21 * 86400, timestamp=6 * 3600, snapshot=7 * 86400, targets=7 * 86400))
    expiry_page_seconds: Mapping[str, float] = field(default_factory=lambda: _role_seconds(
        root=7 * 86400, timestamp=3600, snapshot=86400, targets=86400))
    #: ... and never later than these margins, whatever the lifetime (seconds).
    expiry_ticket_min_seconds: float = 1800
    expiry_page_min_seconds: float = 900
    expiry_ticket_for: str = "10m"
    expiry_page_for: str = "5m"
    expired_for: str = "1m"
    #: Share of a repository's endpoints failing that makes a mass failure (page).
    mass_failure_ratio: float = 0.5
    mass_failure_for: str = "5m"
    endpoint_failure_for: str = "15m"
    #: TufClientViewFailing: how long a client view other than ``returning`` must fail while
    #: ``returning`` passes. The views run every ``new_client_interval`` (default 10m) and
    #: their gauge holds its value between runs, so this counts runs, not scrapes: longer
    #: than one interval and shorter than two, it pages on the second failed run in a row
    #: (one cold fetch that timed out at one CDN edge does not wake anyone), at most
    #: interval + this after the fault. Keep it between 1x and 2x the shortest
    #: ``new_client_interval`` you configure.
    client_view_failure_for: str = "15m"
    mirror_lag_seconds: float = 3600
    mirror_lag_for: str = "15m"
    #: Window over which a rollback or anomaly counter increase fires an alert.
    event_window: str = "30m"
    signer_down_for: str = "15m"
    signer_cadence_for: str = "15m"
    signer_unauthorized_for: str = "5m"
    exporter_job: str = "tuf-exporter"
    exporter_down_for: str = "5m"
    #: A probe older than this is stalled.
    probe_stall_seconds: float = 1800
    probe_stall_for: str = "5m"
    delegation_truncated_for: str = "1h"
    spool_growth_window: str = "30m"
    spool_backlog_min: float = 100
    spool_growth_for: str = "30m"
    events_dropped_window: str = "15m"
    #: Window over which any fault of the exporter itself (tuf_exporter_errors_total) tickets.
    exporter_errors_window: str = "15m"
    config_reload_for: str = "10m"
    thread_down_for: str = "2m"
    #: Share of the exporter's open-file limit in use (process_open_fds / process_max_fds)
    #: that tickets, and for how long.
    descriptors_ratio: float = 0.8
    descriptors_for: str = "10m"
    runbook_base_url: str = (
        "https://github.com/tuf-exporter/tuf-exporter/blob/main/docs/runbooks"
    )
    #: Alertmanager example: webhook receivers and routing timings.
    page_webhook_url: str = "http://127.0.0.1:9099/page"
    ticket_webhook_url: str = "http://127.0.0.1:9099/ticket"
    group_wait: str = "30s"
    group_interval: str = "5m"
    page_repeat_interval: str = "1h"
    ticket_repeat_interval: str = "12h"

    def __post_init__(self) -> None:
        if not 0 < self.slo_target < 1:
            raise ValueError(f"slo_target must be between 0 and 1, got {self.slo_target!r}")
        if not 0 < self.mass_failure_ratio <= 1:
            raise ValueError("mass_failure_ratio must be in (0, 1]")
        if not 0 < self.descriptors_ratio < 1:
            raise ValueError("descriptors_ratio must be between 0 and 1")
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if f.name.endswith(("_for", "_window", "_interval", "group_wait")):
                _check_duration(f.name, value)
        # A ticket that the page inhibits must wait longer than the page: metadata re-signed
        # straight into the page zone starts both pending together, and Alertmanager mutes at
        # flush time, so a ticket arriving first would go out before its inhibitor exists.
        for ticket, page in (("expiry_ticket_for", "expiry_page_for"),
                             ("endpoint_failure_for", "mass_failure_for")):
            if parse_duration(getattr(self, ticket)) <= parse_duration(getattr(self, page)):
                raise ValueError(f"{ticket} ({getattr(self, ticket)}) must be longer than "
                                 f"{page} ({getattr(self, page)}): the page inhibits the "
                                 "ticket only when it reaches Alertmanager first")
        for roles_name in ("expiry_ticket_seconds", "expiry_page_seconds"):
            roles = getattr(self, roles_name)
            unknown = set(roles) - set(catalogue.TOP_LEVEL_ROLES)
            missing = set(catalogue.TOP_LEVEL_ROLES) - set(roles)
            if unknown or missing:
                raise ValueError(f"{roles_name}: need exactly the roles "
                                 f"{', '.join(catalogue.TOP_LEVEL_ROLES)}")
        for kind in ("ticket", "page"):
            ratio = getattr(self, f"expiry_{kind}_lifetime_ratio")
            if not 0 < ratio <= 1:
                raise ValueError(f"expiry_{kind}_lifetime_ratio must be in (0, 1], got {ratio!r}")
            floor = getattr(self, f"expiry_{kind}_min_seconds")
            caps = getattr(self, f"expiry_{kind}_seconds")
            low = sorted(role for role in caps if caps[role] < floor)
            if floor < 0 or low:
                raise ValueError(f"expiry_{kind}_min_seconds ({floor:g}) must be >= 0 and at "
                                 f"most every expiry_{kind}_seconds (not for {', '.join(low)})")
        if self.expiry_page_lifetime_ratio > self.expiry_ticket_lifetime_ratio:
            raise ValueError("expiry_page_lifetime_ratio must not exceed "
                             "expiry_ticket_lifetime_ratio: the ticket comes first")
        for alert in self.burn_alerts:
            if alert.severity not in (PAGE, TICKET):
                raise ValueError(f"{alert.name}: severity must be page or ticket")
            _check_duration(alert.name, alert.for_)
            for w in alert.windows:
                _check_duration(alert.name, w.long)
                _check_duration(alert.name, w.short)

    @property
    def error_budget(self) -> float:
        return 1 - self.slo_target

    @classmethod
    def from_mapping(cls, data: Mapping[str, Any]) -> AlertOptions:
        """Options from a mapping (e.g. parsed YAML); unknown keys are an error."""
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown alert option(s): {', '.join(unknown)}; "
                             f"known: {', '.join(sorted(known))}")
        values: dict[str, Any] = {}
        base = cls()
        for key, value in data.items():
            if key == "burn_alerts":
                values[key] = tuple(
                    BurnAlert(
                        name=str(a["name"]), severity=str(a["severity"]),
                        for_=str(a.get("for", "2m")),
                        windows=tuple(BurnWindow(float(w["factor"]), str(w["long"]),
                                                 str(w["short"])) for w in a["windows"]),
                    ) for a in value)
            elif key in ("expiry_ticket_seconds", "expiry_page_seconds"):
                merged = dict(getattr(base, key))
                merged.update({str(r): parse_duration(v) for r, v in dict(value).items()})
                values[key] = merged
            elif key.endswith("_seconds"):
                values[key] = parse_duration(value)
            elif key in ("slo_target", "mass_failure_ratio", "spool_backlog_min",
                         "expiry_ticket_lifetime_ratio", "expiry_page_lifetime_ratio",
                         "descriptors_ratio"):
                values[key] = float(value)
            else:
                values[key] = str(value)
        return dataclasses.replace(base, **values)

    @classmethod
    def from_yaml(cls, path: Path) -> AlertOptions:
        """Options from a YAML file such as ``{slo_target: 0.995, exporter_job: tuf}``, read
        by the exporter's one YAML reader (:func:`exporter.config.model.read_yaml`).

        Raises :class:`~exporter.config.model.ConfigError` naming the file, the line and the
        option: the one at fault alone, else the first the message names (a rule between
        options), else the top of the file.
        """
        document = read_yaml(path)
        if document is None:
            return cls()
        if not isinstance(document.value, dict):
            raise ConfigError.at(str(path), document.line, None,
                                 "expected a mapping of alert options")
        data: dict[str, Any] = document.plain()
        try:
            return cls.from_mapping(data)
        except (ValueError, TypeError, KeyError, AttributeError) as exc:
            key = _option_at_fault(cls, data, str(exc))
            line = document.value[key].line if key is not None else document.line
            reason = _reason(exc)
            if key is not None:  # the option named once, not "slo_target: slo_target ..."
                reason = reason.removeprefix(f"{key}: ").removeprefix(f"{key} ")
            raise ConfigError.at(str(path), line, key, reason) from None


def _reason(exc: BaseException) -> str:
    """What a conversion error says (a KeyError names only the key it missed)."""
    return f"missing {exc}" if isinstance(exc, KeyError) else str(exc) or type(exc).__name__


def _option_at_fault(
    cls: type[AlertOptions], data: Mapping[str, Any], message: str
) -> str | None:
    """The option of ``data`` that fails on its own, else the first one ``message`` names."""
    for key, value in data.items():
        try:
            cls.from_mapping({key: value})
        except (ValueError, TypeError, KeyError, AttributeError):
            return key
    named = [(message.find(key), key) for key in data if key in message]
    return min(named)[1] if named else None


# --------------------------------------------------------------------------------------------
# Recording rules
# --------------------------------------------------------------------------------------------

#: Aggregation levels of the SLI, with the windows recorded at that level.
_REPO = ("repository",)
_REPO_EP = ("repository", "endpoint")


def sli_record_name(level: Sequence[str], window: str) -> str:
    """``repository:tuf_probe_success:ratio_rate5m`` (the ``level:metric:operations`` form)."""
    return f"{'_'.join(level)}:tuf_probe_success:ratio_rate{window}"


def error_budget_record_name() -> str:
    return "repository:tuf_probe_error_budget:remaining_ratio"


def _sli_expr(level: Sequence[str], window: str) -> str:
    by = ", ".join(level)
    probes = m("tuf_probes_total")
    # Verdicts only: a probe stopped by a fault of the exporter's host (result="exporter_error")
    # says nothing about the repository and spends none of its error budget.
    total = f'sum by ({by}) (rate({probes}{{result!="{catalogue.EXPORTER_ERROR}"}}[{window}]))'
    success = f'sum by ({by}) (rate({probes}{{result="success"}}[{window}]))'
    # "or 0 * total": a repository with only failures (no success series yet) is 0, not absent.
    # "/ (total > 0)": no traffic gives no sample rather than NaN.
    return f"(\n  {success}\n  or\n  0 * {total}\n)\n/\n({total} > 0)\n"


#: SLI windows recorded whatever the burn-rate alerts use: the dashboards chart them.
DASHBOARD_WINDOWS = ("1h",)


def _windows(options: AlertOptions) -> list[str]:
    seen: set[str] = set(DASHBOARD_WINDOWS)
    for alert in options.burn_alerts:
        for w in alert.windows:
            seen.update((w.long, w.short))
    seen.add(options.slo_window)
    return sorted(seen, key=parse_duration)


def recording_rules(options: AlertOptions) -> dict[str, Any]:
    """The recording-rule file as a mapping."""
    windows = _windows(options)
    endpoint_windows = [w for w in windows if w in ("5m", "1h", "1d")] or windows[:1]
    rules: list[dict[str, Any]] = []
    for window in windows:
        rules.append({"record": sli_record_name(_REPO, window), "expr": _sli_expr(_REPO, window)})
    for window in endpoint_windows:
        rules.append({"record": sli_record_name(_REPO_EP, window),
                      "expr": _sli_expr(_REPO_EP, window)})
    slo_ratio = sli_record_name(_REPO, options.slo_window)
    rules.append({
        "record": error_budget_record_name(),
        "expr": f"1 - (1 - {slo_ratio}) / {_num(options.error_budget)}\n",
        "labels": {"slo_window": options.slo_window},
    })
    return {"groups": [{"name": "tuf-exporter-sli", "interval": options.recording_interval,
                        "rules": rules}]}


def recording_rule_names(options: AlertOptions | None = None) -> set[str]:
    """Names of every recording rule (allowed in expressions besides catalogue metrics)."""
    doc = recording_rules(options or AlertOptions())
    return {r["record"] for g in doc["groups"] for r in g["rules"]}


# --------------------------------------------------------------------------------------------
# Alert rules
# --------------------------------------------------------------------------------------------


def _num(value: float) -> str:
    """A short, exact-looking number for PromQL: 2592000 rather than 2.592e+06."""
    if float(value).is_integer():
        return str(int(value))
    return f"{value:.10g}"


def _alert(
    options: AlertOptions,
    name: str,
    expr: str,
    severity: str,
    for_: str,
    summary: str,
    description: str,
) -> dict[str, Any]:
    rule: dict[str, Any] = {"alert": name, "expr": expr.strip() + "\n"}
    if parse_duration(for_) > 0:
        rule["for"] = for_
    rule["labels"] = {"severity": severity}
    rule["annotations"] = {
        "summary": summary,
        "description": description,
        "runbook_url": f"{options.runbook_base_url.rstrip('/')}/{kebab(name)}.md",
    }
    return rule


def _slo_alerts(o: AlertOptions) -> list[dict[str, Any]]:
    out = []
    budget = _num(o.error_budget)
    for alert in o.burn_alerts:
        parts = []
        for w in alert.windows:
            threshold = f"({_num(w.factor)} * {budget})"
            parts.append(
                f"(\n  (1 - {sli_record_name(_REPO, w.long)}) > {threshold}\n  and\n"
                f"  (1 - {sli_record_name(_REPO, w.short)}) > {threshold}\n)")
        windows = ", ".join(f"{_num(w.factor)}x over {w.long} and {w.short}"
                            for w in alert.windows)
        out.append(_alert(
            o, alert.name, "\nor\n".join(parts), alert.severity, alert.for_,
            "{{ $labels.repository }} burns its verification error budget "
            + ("fast" if alert.severity == PAGE else "steadily"),
            "Verification failures of {{ $labels.repository }} are burning the "
            f"{_num(o.slo_target * 100)}% / {o.slo_window} SLO error budget ({windows}); "
            "error ratio {{ $value | humanizePercentage }}.",
        ))
    return out


def expiry_threshold_expr(role: str, ratio: float, floor: float, cap: float) -> str:
    """PromQL for the expiry warning threshold of ``role``, in seconds, per repository.

    ``ratio`` of the role's normal lifetime as signed (``tuf_metadata_normal_lifetime_seconds``,
    learned by the history store), clamped to [``floor``, ``cap``]. Relative, so a 1-day
    timestamp, a 7-day snapshot and a 1-year root all stay quiet between two healthy
    signings; clamped, so a long-lived role is never warned about months ahead (``cap``) and a
    very short-lived one still leaves time to act (``floor``).
    """
    lifetime = f'{m("tuf_metadata_normal_lifetime_seconds")}{{role="{role}"}}'
    return (f"clamp({_num(ratio)} * max by (repository, role) ({lifetime}), "
            f"{_num(floor)}, {_num(cap)})")


def expiry_threshold(ratio: float, floor: float, cap: float, lifetime: float | None) -> float:
    """The threshold of :func:`expiry_threshold_expr` in seconds, for one role, in Python (the
    status page marks rows with it): ``ratio`` x ``lifetime`` clamped to [``floor``, ``cap``],
    and ``cap`` while the normal lifetime is not known. Keep the two in step."""
    if lifetime is None:
        return cap
    return min(max(ratio * lifetime, floor), cap)


def _expiry_expr(ratio: float, floor: float, caps: Mapping[str, float]) -> str:
    margin = m("tuf_metadata_expiry_margin_seconds")
    lifetime = m("tuf_metadata_normal_lifetime_seconds")
    parts = []
    for role in catalogue.TOP_LEVEL_ROLES:
        expiring = f'({margin}{{role="{role}"}} > 0)'
        threshold = expiry_threshold_expr(role, ratio, floor, caps[role])
        parts.append(
            f"(\n  {expiring}\n  < on (repository, role) group_left ()\n  {threshold}\n)")
        # normal lifetime not known (yet): the longest warning
        parts.append(f"(\n  {expiring} < {_num(caps[role])}\n"
                     f'  unless on (repository, role)\n  {lifetime}{{role="{role}"}}\n)')
    return "\nor\n".join(parts)


def client_view_failing_expr() -> str:
    """PromQL of TufClientViewFailing: one sample per (repository, endpoint, client) whose
    client view (``tuf_client_update_success``, issue 16) is 0 while the ``returning`` view of
    the same endpoint is 1.

    Nothing when ``returning`` fails too (TufEndpointVerificationFailing and
    TufVerificationMassFailure are about that), nor for a view without a series yet (the
    ``== 0`` selects existing samples only). A probe stopped by a fault of the exporter
    (``exporter_error``) is no verdict and leaves the gauge as it was, so it cannot fire this.
    """
    success = m("tuf_client_update_success")
    return (f'{success}{{client!="{CLIENT_RETURNING}"}} == 0\n'
            "and on (repository, endpoint)\n"
            f'{success}{{client="{CLIENT_RETURNING}"}} == 1')


def _symptom_alerts(o: AlertOptions) -> list[dict[str, Any]]:
    success = m("tuf_probe_success")
    where = "{{ $labels.role }} metadata of {{ $labels.repository }} on {{ $labels.endpoint }}"
    kinds = "|".join(COMPROMISE_KINDS)
    job = f'up{{job="{o.exporter_job}"}}'
    return [
        _alert(o, "TufMetadataExpiringSoon",
               _expiry_expr(o.expiry_ticket_lifetime_ratio, o.expiry_ticket_min_seconds,
                            o.expiry_ticket_seconds), TICKET,
               o.expiry_ticket_for, f"{where} expires soon",
               f"{where} expires in {{{{ $value | humanizeDuration }}}}; re-sign it before "
               "clients refuse it."),
        _alert(o, "TufMetadataExpiringCritical",
               _expiry_expr(o.expiry_page_lifetime_ratio, o.expiry_page_min_seconds,
                            o.expiry_page_seconds), PAGE,
               o.expiry_page_for, f"{where} is about to expire",
               f"{where} expires in {{{{ $value | humanizeDuration }}}}; once expired every "
               "client refuses to update from this repository."),
        # negated, so $value is the time since expiry
        _alert(o, "TufMetadataExpired",
               f"-1 * {m('tuf_metadata_expiry_margin_seconds')} >= 0", PAGE, o.expired_for,
               f"{where} has expired",
               f"{where} expired {{{{ $value | humanizeDuration }}}} ago; clients refuse to "
               "update from it (an expired timestamp blocks every update)."),
        _alert(o, "TufVerificationMassFailure",
               f"(\n  count by (repository) ({success} == 0)\n  /\n"
               f"  count by (repository) ({success})\n) >= {_num(o.mass_failure_ratio)}",
               PAGE, o.mass_failure_for,
               "{{ $labels.repository }}: most endpoints fail verification",
               "{{ $value | humanizePercentage }} of the endpoints of {{ $labels.repository }} "
               "fail the TUF client refresh or canary downloads: clients cannot update."),
        _alert(o, "TufEndpointVerificationFailing", f"{success} == 0", TICKET,
               o.endpoint_failure_for,
               "{{ $labels.repository }} on {{ $labels.endpoint }} fails verification",
               "The TUF client probe of {{ $labels.repository }} on {{ $labels.endpoint }} has "
               "failed for a while; see tuf_probe_failures_total for the reason and role."),
        _alert(o, "TufClientViewFailing", client_view_failing_expr(), PAGE,
               o.client_view_failure_for,
               "{{ $labels.client }} clients cannot update from {{ $labels.repository }} on "
               "{{ $labels.endpoint }}",
               "The {{ $labels.client }} client view of {{ $labels.repository }} on "
               "{{ $labels.endpoint }} fails while returning clients (the probe's cached "
               "client) update: part of the fleet cannot update (new: first installs with "
               "an empty cache; bootstrap-root-v<N>: clients shipped with root version N). "
               "See tuf_client_update_failures_total for the reason and role."),
        _alert(o, "TufMirrorLagging",
               f"{m('tuf_mirror_lag_seconds')} > {_num(o.mirror_lag_seconds)}", TICKET,
               o.mirror_lag_for,
               "Mirror {{ $labels.endpoint }} of {{ $labels.repository }} lags the primary",
               "Mirror {{ $labels.endpoint }} of {{ $labels.repository }} has been behind the "
               "primary for {{ $value | humanizeDuration }}."),
        _alert(o, "TufRollbackDetected",
               f"increase({m('tuf_rollbacks_detected_total')}[{o.event_window}]) > 0", PAGE, "0s",
               f"Rollback or freeze of {where}",
               f"{where} went back to an older version or froze past its re-signing cadence "
               f"({{{{ $value | humanize }}}} times in {o.event_window}): possible rollback or "
               "freeze attack, or a broken mirror."),
        _alert(o, "TufPossibleKeyCompromise",
               f'increase({m("tuf_anomalies_total")}{{kind=~"{kinds}"}}[{o.event_window}]) > 0',
               PAGE, "0s",
               "{{ $labels.kind }} on {{ $labels.repository }} ({{ $labels.endpoint }}): "
               "possible key compromise",
               "{{ $labels.repository }} on {{ $labels.endpoint }} showed {{ $labels.kind }} "
               "(two different metadata files with the same version, or a signature by a key "
               "nobody knows): treat as a possible signing key compromise."),
        _alert(o, "TufMetadataAnomaly",
               f'increase({m("tuf_anomalies_total")}{{kind!~"{kinds}"}}[{o.event_window}]) > 0',
               TICKET, "0s",
               "{{ $labels.kind }} on {{ $labels.repository }} ({{ $labels.endpoint }})",
               "{{ $labels.repository }} on {{ $labels.endpoint }} showed the anomaly "
               "{{ $labels.kind }} {{ $value | humanize }} times in the last "
               + o.event_window + "."),
        _alert(o, "TufSignerDown", f"{m('tuf_signer_up')} == 0", TICKET, o.signer_down_for,
               "Signer {{ $labels.signer }} ({{ $labels.repository }}/{{ $labels.role }}) "
               "cannot sign",
               "The signing probe of {{ $labels.signer }} for the {{ $labels.role }} role of "
               "{{ $labels.repository }} has not produced a valid signature for "
               + o.signer_down_for + "."),
        _alert(o, "TufSignerOffCadence", f"{m('tuf_signer_cadence_ok')} == 0", TICKET,
               o.signer_cadence_for,
               "{{ $labels.role }} of {{ $labels.repository }} is not re-signed on time",
               "The online role {{ $labels.role }} of {{ $labels.repository }} was not re-signed "
               "within its expected period."),
        _alert(o, "TufSignerKeyUnauthorized", f"{m('tuf_signer_key_authorized')} == 0", PAGE,
               o.signer_unauthorized_for,
               "Signer {{ $labels.signer }} key is not authorized for {{ $labels.repository }}/"
               "{{ $labels.role }}",
               "The key of signer {{ $labels.signer }} is not among the keys the current "
               "metadata of {{ $labels.repository }} authorizes for {{ $labels.role }}: its "
               "signatures will not count."),
        _alert(o, "TufExporterDown", f"{job} == 0\nor\nabsent({job})", PAGE, o.exporter_down_for,
               f"tuf-exporter (job {o.exporter_job}) is not scraped",
               "Prometheus cannot scrape {{ with $labels.instance }}target {{ . }} of {{ end }}"
               f"job {o.exporter_job} (or has no target for it): no TUF repository is watched "
               "and no TUF alert can fire."),
        _alert(o, "TufProbesStalled",
               f"time() - {m('tuf_exporter_last_probe_timestamp_seconds')} "
               f"> {_num(o.probe_stall_seconds)}", TICKET, o.probe_stall_for,
               "Probes of {{ $labels.repository }} on {{ $labels.endpoint }} stalled",
               "The last probe of {{ $labels.repository }} on {{ $labels.endpoint }} finished "
               "{{ $value | humanizeDuration }} ago; its metrics are stale."),
        _alert(o, "TufDelegationSweepTruncated",
               f"{m('tuf_delegation_sweep_truncated')} == 1", TICKET, o.delegation_truncated_for,
               "Delegations of {{ $labels.repository }} on {{ $labels.endpoint }} are only "
               "partly watched",
               "The delegation tree of {{ $labels.repository }} on {{ $labels.endpoint }} has "
               "more roles than limits.max_delegations: the roles past the limit are not "
               "verified, so a broken or expiring one goes unnoticed."),
        _alert(o, "TufEventSpoolGrowing",
               f"deriv({m('tuf_exporter_events_spooled')}[{o.spool_growth_window}]) > 0\nand\n"
               f"{m('tuf_exporter_events_spooled')} > {_num(o.spool_backlog_min)}",
               TICKET, o.spool_growth_for,
               "tuf-exporter event spool is growing",
               "Events are piling up in the durable spool of {{ $labels.instance }} "
               f"(growing for {o.spool_growth_for}): the event sink is slow or unreachable."),
        _alert(o, "TufEventsDropped",
               f"increase({m('tuf_exporter_events_dropped_total')}[{o.events_dropped_window}])"
               " > 0", TICKET, "0s",
               "tuf-exporter drops events ({{ $labels.cause }})",
               "{{ $value | humanize }} events were dropped in " + o.events_dropped_window
               + " because of {{ $labels.cause }}; the audit trail has gaps."),
        _alert(o, "TufExporterErrors",
               f"increase({m('tuf_exporter_errors_total')}[{o.exporter_errors_window}]) > 0",
               TICKET, "0s",
               "tuf-exporter fails on its own host ({{ $labels.cause }})",
               "{{ $labels.instance }} had {{ $value | humanize }} faults of its own ("
               "{{ $labels.cause }}) in the last " + o.exporter_errors_window + ": probes they "
               "stopped reached no verdict (reason exporter_error), and the repositories' "
               "last verdicts and alerts are as they were."),
        _alert(o, "TufExporterThreadDown", f"{m('tuf_exporter_thread_up')} == 0", PAGE,
               o.thread_down_for,
               "tuf-exporter thread {{ $labels.thread }} died on {{ $labels.instance }}",
               "The {{ $labels.thread }} thread of {{ $labels.instance }} is dead (it survives "
               "its own errors, so this is a bug or the process is out of resources): "
               "scheduler: nothing is probed and no TUF alert can fire; shipper: events pile "
               "up in the spool. /-/ready fails; restart the exporter."),
        _alert(o, "TufExporterDescriptorsNearLimit",
               f'{builtin("process_open_fds")}{{job="{o.exporter_job}"}}\n/\n'
               f'{builtin("process_max_fds")}{{job="{o.exporter_job}"}}\n'
               f"> {_num(o.descriptors_ratio)}",
               TICKET, o.descriptors_for,
               "tuf-exporter {{ $labels.instance }} is running out of file descriptors",
               "{{ $labels.instance }} has {{ $value | humanizePercentage }} of its open-file "
               f"limit in use (for {o.descriptors_for}): once none is left, probes stop with "
               "reason exporter_error (cause descriptors) and no repository is watched."),
        _alert(o, "TufExporterConfigReloadFailed",
               f"{m('tuf_exporter_config_last_reload_successful')} == 0", TICKET,
               o.config_reload_for,
               "tuf-exporter failed to reload its configuration",
               "The last configuration reload of {{ $labels.instance }} failed; it keeps "
               "running with the previous configuration."),
    ]


def alert_rules(options: AlertOptions) -> dict[str, Any]:
    """The alert-rule file as a mapping."""
    return {"groups": [
        {"name": "tuf-exporter-slo", "rules": _slo_alerts(options)},
        {"name": "tuf-exporter-symptoms", "rules": _symptom_alerts(options)},
    ]}


def alert_names(options: AlertOptions | None = None) -> list[str]:
    doc = alert_rules(options or AlertOptions())
    return [r["alert"] for g in doc["groups"] for r in g["rules"]]


# --------------------------------------------------------------------------------------------
# Alertmanager example
# --------------------------------------------------------------------------------------------

#: Alerts about one endpoint that are noise while the whole repository or its primary fails.
MIRROR_ALERTS: tuple[str, ...] = (
    "TufEndpointVerificationFailing",
    "TufMirrorLagging",
    "TufMetadataExpiringSoon",
    "TufMetadataExpiringCritical",
    "TufMetadataExpired",
    "TufProbesStalled",
)

_AM_HEADER = """\
# Example Alertmanager configuration for tuf-exporter alerts (generated by
# `python -m exporter.generate.alerts --out alerts`; do not edit by hand).
#
# Alerts carry severity="page" (wake someone up) or severity="ticket" (next working day).
# Alerts are grouped per repository and alert name; alerts about single mirrors are
# inhibited while the whole repository (TufVerificationMassFailure) or its primary fails.
#
# Silence an alert during planned work, e.g. a key ceremony or a mirror migration:
#   amtool silence add --alertmanager.url=http://localhost:9093 \\
#     --duration=2h --comment="mirror cdn-eu migration" \\
#     alertname=TufEndpointVerificationFailing repository=example endpoint=cdn-eu
#   amtool silence query --alertmanager.url=http://localhost:9093
#   amtool silence expire --alertmanager.url=http://localhost:9093 <silence-id>
"""

_AM_FOOTER = """\
# Maintenance window example: mute tickets during a weekly window (Alertmanager >= 0.24).
# Define the interval at top level and reference it from a route:
#
# time_intervals:
#   - name: weekly-maintenance
#     time_intervals:
#       - weekdays: ['tuesday']
#         times:
#           - start_time: '06:00'
#             end_time: '08:00'
#         location: 'UTC'
#
# and in the ticket route:
#
#   - receiver: tuf-ticket
#     matchers: ['severity="ticket"']
#     mute_time_intervals: [weekly-maintenance]
#
# Pages are deliberately never muted by a schedule: use a silence for planned work instead.
"""


def alertmanager_config(o: AlertOptions) -> dict[str, Any]:
    """The Alertmanager example as a mapping."""
    mirror_alerts = "|".join(MIRROR_ALERTS)
    return {
        "route": {
            "receiver": "tuf-ticket",
            "group_by": ["alertname", "repository"],
            "group_wait": o.group_wait,
            "group_interval": o.group_interval,
            "repeat_interval": o.ticket_repeat_interval,
            "routes": [
                {"receiver": "tuf-page", "matchers": [f'severity="{PAGE}"'],
                 "repeat_interval": o.page_repeat_interval},
                {"receiver": "tuf-ticket", "matchers": [f'severity="{TICKET}"'],
                 "repeat_interval": o.ticket_repeat_interval},
            ],
        },
        "inhibit_rules": [
            {"source_matchers": ['alertname="TufVerificationMassFailure"'],
             "target_matchers": [f'alertname=~"{mirror_alerts}"', 'endpoint!="primary"'],
             "equal": ["repository"]},
            {"source_matchers": ['alertname="TufEndpointVerificationFailing"',
                                 'endpoint="primary"'],
             "target_matchers": [f'alertname=~"{mirror_alerts}"', 'endpoint!="primary"'],
             "equal": ["repository"]},
            {"source_matchers": ['alertname=~"TufMetadataExpired|TufMetadataExpiringCritical"'],
             "target_matchers": ['alertname="TufMetadataExpiringSoon"'],
             "equal": ["repository", "endpoint", "role"]},
            {"source_matchers": ['alertname="TufMetadataExpired"'],
             "target_matchers": ['alertname="TufMetadataExpiringCritical"'],
             "equal": ["repository", "endpoint", "role"]},
            {"source_matchers": ['alertname="TufErrorBudgetBurnFast"'],
             "target_matchers": ['alertname="TufErrorBudgetBurnSlow"'],
             "equal": ["repository"]},
        ],
        "receivers": [
            {"name": "tuf-page",
             "webhook_configs": [{"url": o.page_webhook_url, "send_resolved": True}]},
            {"name": "tuf-ticket",
             "webhook_configs": [{"url": o.ticket_webhook_url, "send_resolved": True}]},
        ],
    }


# --------------------------------------------------------------------------------------------
# Writing
# --------------------------------------------------------------------------------------------


class _Dumper(yaml.SafeDumper):
    pass


def _str_representer(dumper: yaml.SafeDumper, data: str) -> yaml.Node:
    style = "|" if "\n" in data else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", data, style=style)


_Dumper.add_representer(str, _str_representer)


def dump_yaml(doc: Mapping[str, Any]) -> str:
    """Deterministic YAML: insertion order, literal blocks for multi-line expressions."""
    return yaml.dump(dict(doc), Dumper=_Dumper, sort_keys=False, width=10_000,
                     default_flow_style=False, allow_unicode=True)


_GENERATED = ("# Generated by `python -m exporter.generate.alerts --out alerts`"
              " from exporter/generate/alerts.py; do not edit.\n")


def render(options: AlertOptions | None = None) -> dict[str, str]:
    """File name -> content of every generated file."""
    o = options or AlertOptions()
    return {
        RECORDING_RULES_FILE: _GENERATED + dump_yaml(recording_rules(o)),
        ALERT_RULES_FILE: _GENERATED + dump_yaml(alert_rules(o)),
        ALERTMANAGER_FILE: _AM_HEADER + dump_yaml(alertmanager_config(o)) + _AM_FOOTER,
    }


def write_files(out_dir: Path, files: Mapping[str, str]) -> list[Path]:
    """Write generated files (name -> text) into ``out_dir``; return their paths."""
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    for name, text in files.items():
        path = out_dir / name
        path.write_text(text, encoding="utf-8")
        paths.append(path)
    return paths


def build_alerts(out_dir: Path, options: AlertOptions | None = None) -> list[Path]:
    """Write the rule files and the Alertmanager example into ``out_dir``; return their paths."""
    return write_files(out_dir, render(options))
