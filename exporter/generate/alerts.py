"""Prometheus recording rules, alert rules and an Alertmanager example, generated as code.

Every metric is referenced through :func:`m`, which looks the name up in
:mod:`exporter.catalogue` and so fails at generation time when a metric is renamed. The
numbers (SLO target and window, thresholds, ``for:`` durations, webhook URLs, ...) live in
:class:`AlertOptions`, which can be loaded from a small YAML file, so an end-to-end test runs
the very same code with shorter durations.

The rules come in families, each its own module: the SLO (``_rules_slo``: SLI recording rules
and burn-rate alerts), the repository (``_rules_repository``), the signers (``_rules_signers``)
and the exporter itself (``_rules_exporter``), on a shared vocabulary (``_rules_common``). This
module keeps :class:`AlertOptions`, assembles the files and writes them.

Regenerate the committed files with ``python -m exporter.generate.alerts --out alerts``.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from exporter import catalogue
from exporter.config.durations import parse_duration
from exporter.config.yamlfile import ConfigError, read_yaml
from exporter.generate._rules_common import BUILTIN_METRICS as BUILTIN_METRICS
from exporter.generate._rules_common import PAGE as PAGE
from exporter.generate._rules_common import TICKET as TICKET
from exporter.generate._rules_common import _num as _num
from exporter.generate._rules_common import builtin as builtin
from exporter.generate._rules_common import kebab as kebab
from exporter.generate._rules_common import m as m
from exporter.generate._rules_common import promql_metric_names as promql_metric_names
from exporter.generate._rules_exporter import _exporter_alerts
from exporter.generate._rules_repository import COMPROMISE_KINDS as COMPROMISE_KINDS
from exporter.generate._rules_repository import _repository_alerts
from exporter.generate._rules_repository import (
    client_view_failing_expr as client_view_failing_expr,
)
from exporter.generate._rules_repository import expiry_threshold as expiry_threshold
from exporter.generate._rules_repository import expiry_threshold_expr as expiry_threshold_expr
from exporter.generate._rules_signers import _signer_alerts
from exporter.generate._rules_slo import DASHBOARD_WINDOWS as DASHBOARD_WINDOWS
from exporter.generate._rules_slo import _sli_rules, _slo_alerts
from exporter.generate._rules_slo import error_budget_record_name as error_budget_record_name
from exporter.generate._rules_slo import sli_record_name as sli_record_name

RECORDING_RULES_FILE = "recording_rules.yml"
ALERT_RULES_FILE = "alert_rules.yml"
ALERTMANAGER_FILE = "alertmanager.example.yml"

_DURATION = re.compile(r"(?:\d+(?:ms|s|m|h|d|w|y))+")


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


def recording_rules(options: AlertOptions) -> dict[str, Any]:
    """The recording-rule file as a mapping."""
    return {"groups": [{"name": "tuf-exporter-sli", "interval": options.recording_interval,
                        "rules": _sli_rules(options)}]}


def recording_rule_names(options: AlertOptions | None = None) -> set[str]:
    """Names of every recording rule (allowed in expressions besides catalogue metrics)."""
    doc = recording_rules(options or AlertOptions())
    return {r["record"] for g in doc["groups"] for r in g["rules"]}


# --------------------------------------------------------------------------------------------
# Alert rules
# --------------------------------------------------------------------------------------------


def _symptom_alerts(o: AlertOptions) -> list[dict[str, Any]]:
    return [*_repository_alerts(o), *_signer_alerts(o), *_exporter_alerts(o)]


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
