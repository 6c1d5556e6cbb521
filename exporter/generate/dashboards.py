"""Grafana dashboards (executive, on-call, debug) generated with grafanalib.

Every metric is referenced through :func:`exporter.generate.alerts.m` (a catalogue lookup), SLO
numbers and expiry thresholds come from :class:`exporter.generate.alerts.AlertOptions` defaults, and
:func:`build_dashboards` refuses to write a dashboard whose queries name a metric that is not
in the catalogue. Output is pretty JSON with sorted keys and a trailing newline, so
regeneration is byte-identical.

Regenerate the committed files with ``python -m exporter.generate.dashboards --out dashboards``.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from grafanalib.core import (
    Annotations,
    Dashboard,
    DashboardLink,
    GridPos,
    RowPanel,
    Stat,
    Table,
    Target,
    Template,
    Templating,
    Time,
    TimeSeries,
)
from grafanalib.core import Panel as _GPanel

from exporter import catalogue
from exporter.catalogue import CLIENT_RETURNING
from exporter.generate.alerts import (
    BUILTIN_METRICS,
    DASHBOARD_WINDOWS,
    AlertOptions,
    builtin,
    error_budget_record_name,
    m,
    promql_metric_names,
    recording_rule_names,
    sli_record_name,
    write_files,
)

DS = {"type": "prometheus", "uid": "${datasource}"}
SEL = '{repository=~"$repository", endpoint=~"$endpoint"}'
REPO = '{repository=~"$repository"}'
TAGS = ["tuf", "tuf-exporter"]
_OPTIONS = AlertOptions()


@dataclass(frozen=True)
class Board:
    uid: str
    title: str
    file: str


EXECUTIVE = Board("tuf-executive", "TUF / Executive", "tuf-executive.json")
ONCALL = Board("tuf-oncall", "TUF / On-call", "tuf-oncall.json")
DEBUG = Board("tuf-debug", "TUF / Debug", "tuf-debug.json")
BOARDS = (EXECUTIVE, ONCALL, DEBUG)


def sel(name: str, matchers: str = SEL, extra: str = "") -> str:
    """``name{repository=~"$repository", endpoint=~"$endpoint", extra}`` for a catalogue metric."""
    spec = catalogue.spec(name)
    parts = []
    if "repository" in spec.labels and "repository" in matchers:
        parts.append('repository=~"$repository"')
    if "endpoint" in spec.labels and "endpoint" in matchers:
        parts.append('endpoint=~"$endpoint"')
    if extra:
        parts.append(extra)
    return f"{m(name)}{{{', '.join(parts)}}}" if parts else m(name)


def proc(name: str) -> str:
    """``name{job="tuf-exporter"}``: a process/Python metric of the exporter's own job."""
    return f'{builtin(name)}{{job="{_OPTIONS.exporter_job}"}}'


def t(expr: str, legend: str = "", ref: str = "A", instant: bool = False,
      fmt: str = "time_series") -> Target:
    return Target(expr=expr, legendFormat=legend, refId=ref, instant=instant, format=fmt,
                  datasource=DS)


def targets(*pairs: tuple[str, str]) -> list[Target]:
    return [t(expr, legend, ref=chr(ord("A") + i)) for i, (expr, legend) in enumerate(pairs)]


def steps(*values: tuple[str, float | None]) -> list[dict[str, Any]]:
    return [{"color": color, "value": value} for color, value in values]


def ts(title: str, tgs: list[Target], unit: str = "", w: int = 12, h: int = 8,
       thresholds: list[dict[str, Any]] | None = None, description: str = "",
       draw: str = "line", stack: bool = False) -> TimeSeries:
    return TimeSeries(
        title=title, dataSource=DS, targets=tgs, unit=unit, description=description,
        gridPos=GridPos(h=h, w=w, x=0, y=0), drawStyle=draw,
        thresholds=thresholds or steps(("green", None)),
        thresholdsStyleMode="line+area" if thresholds else "off",
        stacking={"mode": "normal", "group": "A"} if stack else {},
        legendDisplayMode="table", legendPlacement="bottom", legendCalcs=["lastNotNull", "max"],
        tooltipMode="multi",
    )


def stat(title: str, tgs: list[Target], unit: str = "none", w: int = 6, h: int = 5,
         thresholds: list[dict[str, Any]] | None = None, description: str = "",
         calc: str = "lastNotNull") -> Stat:
    return Stat(
        title=title, dataSource=DS, targets=tgs, format=unit, description=description,
        gridPos=GridPos(h=h, w=w, x=0, y=0), reduceCalc=calc, graphMode="area",
        colorMode="background", noValue="no data",
        thresholds=thresholds or steps(("green", None)),
    )


def table(title: str, tgs: list[Target], unit: str = "", w: int = 12, h: int = 8,
          description: str = "") -> Table:
    return Table(
        title=title, dataSource=DS, targets=tgs, unit=unit, description=description,
        gridPos=GridPos(h=h, w=w, x=0, y=0), filterable=True,
        transformations=[{"id": "merge", "options": {}},
                         {"id": "organize", "options": {"excludeByName": {"Time": True}}}],
    )


#: A 0/1 verdict shown as words on a coloured cell (Grafana value mappings).
VERDICT_MAPPINGS: list[dict[str, Any]] = [{"type": "value", "options": {
    "0": {"text": "FAILING", "color": "red", "index": 0},
    "1": {"text": "ok", "color": "green", "index": 1},
}}]


def matrix(title: str, expr: str, row_field: str, column_field: str, w: int = 12, h: int = 8,
           description: str = "") -> Table:
    """A table of the 0/1 verdicts ``expr`` returns (instant): one row per value of label
    ``row_field``, one column per value of ``column_field``, each cell FAILING (red) or ok
    (green); an empty cell is a combination without a series."""
    return Table(
        title=title, dataSource=DS, targets=[t(expr, instant=True, fmt="table")],
        description=description, gridPos=GridPos(h=h, w=w, x=0, y=0),
        displayMode="color-background", colorMode="thresholds",
        transformations=[{"id": "groupingToMatrix", "options": {
            "columnField": column_field, "rowField": row_field, "valueField": "Value",
            "emptyValue": "null"}}],
        extraJson={"fieldConfig": {"defaults": {
            "mappings": VERDICT_MAPPINGS, "noValue": "-",
            "thresholds": {"mode": "absolute", "steps": steps(("red", None), ("green", 1))},
        }}},
    )


def row(title: str) -> RowPanel:
    return RowPanel(title=title, gridPos=GridPos(h=1, w=24, x=0, y=0))


def layout(panels: Sequence[_GPanel]) -> list[_GPanel]:
    """Place panels left to right, wrapping at 24 columns; rows span the full width."""
    x = y = row_h = 0
    placed = []
    for panel in panels:
        pos = panel.gridPos
        if isinstance(panel, RowPanel) or x + pos.w > 24:
            y += row_h
            x = row_h = 0
        panel.gridPos = GridPos(h=pos.h, w=pos.w, x=x, y=y)
        placed.append(panel)
        x += pos.w
        row_h = max(row_h, pos.h)
        if isinstance(panel, RowPanel):
            y += pos.h
            x = row_h = 0
    return placed


def templating() -> Templating:
    common: dict[str, Any] = {"dataSource": DS, "includeAll": True, "multi": True,
                              "allValue": ".*", "default": "$__all", "refresh": 2}
    return Templating(list=[
        Template(name="datasource", label="Data source", query="prometheus", type="datasource",
                 default="Prometheus"),
        Template(name="repository", label="Repository",
                 query=f"label_values({m('tuf_probe_success')}, repository)", **common),
        Template(name="endpoint", label="Endpoint",
                 query=f'label_values({m("tuf_probe_success")}{REPO}, endpoint)', **common),
    ])


def links(current: Board) -> list[DashboardLink]:
    return [DashboardLink(title=b.title, type="link", uri=f"/d/{b.uid}", includeVars=True,
                          keepTime=True, icon="dashboard", tooltip=f"Open {b.title}")
            for b in BOARDS if b is not current]


def dashboard(board: Board, description: str, panels: Sequence[_GPanel],
              annotations: list[dict[str, Any]] | None = None) -> Dashboard:
    return Dashboard(
        title=board.title, uid=board.uid, description=description, tags=TAGS,
        timezone="utc", refresh="1m", time=Time("now-24h", "now"), graphTooltip=1,
        templating=templating(), links=links(board), panels=layout(panels),
        annotations=Annotations(list=annotations or []), schemaVersion=37,
    ).auto_panel_ids()


# --------------------------------------------------------------------------------------------
# Executive
# --------------------------------------------------------------------------------------------


def executive() -> Dashboard:
    o = _OPTIONS
    slo = sli_record_name(("repository",), o.slo_window)
    budget = error_budget_record_name()
    rate1h = sli_record_name(("repository",), DASHBOARD_WINDOWS[0])
    slo_steps = steps(("red", None), ("orange", o.slo_target - o.error_budget),
                      ("green", o.slo_target))
    page_ts = o.expiry_page_seconds["timestamp"]
    ticket_ts = o.expiry_ticket_seconds["timestamp"]
    panels: list[_GPanel] = [
        row("Verification SLO"),
        stat(f"Verification success ({o.slo_window}, SLO {o.slo_target:.3%})",
             [t(f"{slo}{REPO}", "{{repository}}")], unit="percentunit",
             thresholds=slo_steps,
             description="Share of successful TUF client probes over the SLO window."),
        stat("Error budget left", [t(f"{budget}{REPO}", "{{repository}}")], unit="percentunit",
             thresholds=steps(("red", None), ("orange", 0.25), ("green", 0.5)),
             description="1 - (error ratio / error budget) over the SLO window; below 0 the "
                         "SLO is missed."),
        ts("Verification success ratio (1h) against the SLO",
           targets((f"{rate1h}{REPO}", "{{repository}}"),
                   (f"vector({o.slo_target})", "SLO")), unit="percentunit", w=12),
        row("Signers and security"),
        stat("Signer availability",
             targets((f"avg by (signer) ({sel('tuf_signer_up', REPO)})", "{{signer}}")),
             unit="percentunit", thresholds=steps(("red", None), ("green", 1))),
        stat("Signing probe success (24h)",
             targets((f'sum by (signer) (increase({m("tuf_signer_probes_total")}'
                      f'{{result="success"}}[1d])) / sum by (signer) '
                      f'(increase({m("tuf_signer_probes_total")}[1d]))', "{{signer}}")),
             unit="percentunit", thresholds=steps(("red", None), ("green", 0.99))),
        stat("Rollbacks detected (range)",
             targets((f"sum by (repository) (increase({sel('tuf_rollbacks_detected_total')}"
                      "[$__range]))", "{{repository}}")),
             thresholds=steps(("green", None), ("red", 1))),
        stat("Anomalies (range)",
             targets((f"sum by (repository, kind) (increase({sel('tuf_anomalies_total')}"
                      "[$__range]))", "{{repository}} {{kind}}")),
             thresholds=steps(("green", None), ("red", 1))),
        row("Expiry"),
        table("Soonest-expiring metadata per repository",
              [t(f"min by (repository) ({sel('tuf_metadata_expiry_margin_seconds')})",
                 instant=True, fmt="table")], unit="s", w=12),
        stat("Soonest expiry per repository and role",
             targets((f"min by (repository, role) "
                      f"({sel('tuf_metadata_expiry_margin_seconds')})",
                      "{{repository}} {{role}}")),
             unit="s", w=12,
             thresholds=steps(("red", None), ("orange", page_ts), ("yellow", ticket_ts),
                              ("green", 86400))),
    ]
    return dashboard(EXECUTIVE, "TUF repositories at a glance: SLO, signers, security, expiry.",
                     panels)


# --------------------------------------------------------------------------------------------
# On-call
# --------------------------------------------------------------------------------------------


def oncall() -> Dashboard:
    o = _OPTIONS
    other_views_failures = sel("tuf_client_update_failures_total",
                               extra=f'client!="{CLIENT_RETURNING}"')
    panels: list[_GPanel] = [
        row("Failing endpoints"),
        table("Failing endpoints with reason and role (15m)",
              [t(f"sum by (repository, endpoint, reason, role) "
                 f"(increase({sel('tuf_probe_failures_total')}[15m])) > 0",
                 instant=True, fmt="table"),
               t(f"{sel('tuf_probe_success')} == 0", instant=True, fmt="table", ref="B")],
              w=16),
        stat("Endpoints failing", targets((f"count({sel('tuf_probe_success')} == 0)", "")),
             w=4, thresholds=steps(("green", None), ("red", 1))),
        stat("Probes in flight", targets((m("tuf_exporter_probes_in_flight"), "{{instance}}")),
             w=4),
        ts("Probe results",
           targets((f"sum by (repository, endpoint, result) "
                    f"(rate({sel('tuf_probes_total')}[$__rate_interval]))",
                    "{{repository}}/{{endpoint}} {{result}}")), unit="ops", w=12),
        ts("Endpoint up (probe success)",
           targets((sel("tuf_probe_success"), "{{repository}}/{{endpoint}}")), w=12,
           thresholds=steps(("red", None), ("green", 1))),
        row("Client views: can the fleet update?"),
        matrix("Client view x endpoint (the last refresh of each view)",
               f'label_join({sel("tuf_client_update_success")}, "view", " / ", '
               '"repository", "client")', row_field="view", column_field="endpoint", w=12,
               description="One row per repository and client view (returning: the probe's "
               "cached client; new: an empty cache; bootstrap-root-v<N>: a client shipped "
               "with root N; any other name: an external client of the configuration's "
               "clients:, e.g. tuf-js), one column per endpoint. A view other than returning "
               "FAILING where returning is ok pages (TufClientViewFailing)."),
        table("Failing client views with reason and role (1h)",
              [t(f"sum by (repository, endpoint, client, reason, role) "
                 f"(increase({other_views_failures}[1h])) > 0", instant=True, fmt="table")],
              w=12,
              description="Views other than returning run every new_client_interval (10m "
                          "by default): an hour holds several runs."),
        ts("Age of each client view's last check",
           targets((f"time() - {sel('tuf_client_last_check_timestamp_seconds')}",
                    "{{repository}}/{{endpoint}} {{client}}")), unit="s", w=24),
        row("Expiry margin per role"),
    ]
    for role in catalogue.TOP_LEVEL_ROLES:
        panels.append(ts(
            f"Expiry margin: {role}",
            targets((sel("tuf_metadata_expiry_margin_seconds", extra=f'role="{role}"'),
                     "{{repository}}/{{endpoint}}")),
            unit="s", w=6,
            thresholds=steps(("red", None), ("orange", 0),
                             ("yellow", o.expiry_page_seconds[role]),
                             ("green", o.expiry_ticket_seconds[role])),
            description=f"Page under {o.expiry_page_lifetime_ratio:g} and ticket under "
                        f"{o.expiry_ticket_lifetime_ratio:g} of the role's normal lifetime "
                        "(tuf_metadata_normal_lifetime_seconds), but at most "
                        f"{o.expiry_page_seconds[role]:.0f}s and "
                        f"{o.expiry_ticket_seconds[role]:.0f}s (the colours)."))
    margin = sel("tuf_metadata_expiry_margin_seconds")
    lifetime = sel("tuf_metadata_normal_lifetime_seconds", REPO)
    panels.append(ts(
        "Expiry margin as a share of the role's normal lifetime",
        targets((f"{margin}\n/ on (repository, role) group_left ()\n"
                 f"max by (repository, role) ({lifetime})",
                 "{{repository}}/{{endpoint}} {{role}}")),
        unit="percentunit", w=24,
        thresholds=steps(("red", None), ("orange", 0),
                         ("yellow", o.expiry_page_lifetime_ratio),
                         ("green", o.expiry_ticket_lifetime_ratio)),
        description="What the expiry alerts compare: a role re-signed as usual stays green "
                    "whatever its lifetime. The ticket fires under "
                    f"{o.expiry_ticket_lifetime_ratio:g} (yellow), the page under "
                    f"{o.expiry_page_lifetime_ratio:g} (orange), within the per-role limits "
                    "of the panels above."))
    panels += [
        row("Mirrors"),
        ts("Mirror lag (time)", targets((sel("tuf_mirror_lag_seconds"),
                                         "{{repository}}/{{endpoint}}")), unit="s",
           thresholds=steps(("green", None), ("red", o.mirror_lag_seconds))),
        ts("Mirror lag (versions)", targets((sel("tuf_mirror_lag_versions"),
                                             "{{repository}}/{{endpoint}} {{role}}"))),
        row("Signers"),
        ts("Signer up / key authorized",
           targets((sel("tuf_signer_up", REPO), "up {{signer}} {{repository}}/{{role}}"),
                   (sel("tuf_signer_key_authorized", REPO),
                    "authorized {{signer}} {{repository}}/{{role}}")), w=8),
        ts("Signing cadence ok", targets((sel("tuf_signer_cadence_ok", REPO),
                                          "{{repository}}/{{role}}")), w=8),
        ts("Signing probes and latency",
           targets((f"sum by (signer, result) (rate({m('tuf_signer_probes_total')}"
                    "[$__rate_interval]))", "{{signer}} {{result}}"),
                   (m("tuf_signer_sign_duration_seconds"), "sign {{signer}} (s)")), w=8),
        row("Probe latency and exporter health"),
        ts("Probe duration", targets((sel("tuf_probe_duration_seconds"),
                                      "{{repository}}/{{endpoint}}"),
                                     (sel("tuf_target_download_duration_seconds"),
                                      "downloads {{repository}}/{{endpoint}}")), unit="s", w=8),
        ts("Time since last probe",
           targets((f"time() - {sel('tuf_exporter_last_probe_timestamp_seconds')}",
                    "{{repository}}/{{endpoint}}")), unit="s", w=8,
           thresholds=steps(("green", None), ("red", o.probe_stall_seconds))),
        ts("Skipped probes, retries, exporter faults, survived errors",
           targets((f"rate({sel('tuf_exporter_probes_skipped_total')}[$__rate_interval])",
                    "skipped {{repository}}/{{endpoint}}"),
                   (f"rate({sel('tuf_probe_retries_total')}[$__rate_interval])",
                    "retries {{repository}}/{{endpoint}}"),
                   (f"sum by (cause) (rate({m('tuf_exporter_errors_total')}[$__rate_interval]))",
                    "exporter fault {{cause}}"),
                   (f"sum by (thread, cause) (rate({m('tuf_exporter_thread_errors_total')}"
                    "[$__rate_interval]))", "error {{thread}} {{cause}}")), unit="ops", w=8),
        row("Event shipper"),
        ts("Event spool backlog", targets((m("tuf_exporter_events_spooled"), "{{instance}}")),
           w=8, thresholds=steps(("green", None), ("orange", o.spool_backlog_min))),
        ts("Events produced, shipped, dropped",
           targets((f"sum by (kind) (rate({m('tuf_exporter_events_total')}[$__rate_interval]))",
                    "produced {{kind}}"),
                   (f"rate({m('tuf_exporter_events_shipped_total')}[$__rate_interval])",
                    "shipped"),
                   (f"sum by (cause) (rate({m('tuf_exporter_events_dropped_total')}"
                    "[$__rate_interval]))", "dropped {{cause}}"),
                   (f"sum by (cause) (rate({m('tuf_exporter_shipper_errors_total')}"
                    "[$__rate_interval]))", "error {{cause}}")), unit="ops", w=8),
        ts("Since last shipped batch / config reload",
           targets((f"time() - {m('tuf_exporter_shipper_last_success_timestamp_seconds')}",
                    "shipped {{instance}}"),
                   (f"time() - "
                    f"{m('tuf_exporter_config_last_reload_success_timestamp_seconds')}",
                    "config {{instance}}")), unit="s", w=8),
        stat("Config reload ok",
             targets((m("tuf_exporter_config_last_reload_successful"), "{{instance}}")),
             thresholds=steps(("red", None), ("green", 1))),
        stat("Threads up",
             targets((m("tuf_exporter_thread_up"), "{{thread}} {{instance}}")),
             thresholds=steps(("red", None), ("green", 1))),
        stat("Exporter version",
             [t(f"{m('tuf_exporter_build_info')}", "{{version}}", instant=True)]),
    ]
    return dashboard(ONCALL, "What is failing now, and why: endpoints, expiry, mirrors, "
                             "signers, probes, event shipping.", panels)


# --------------------------------------------------------------------------------------------
# Debug
# --------------------------------------------------------------------------------------------


def debug() -> Dashboard:
    phase = sel("tuf_probe_phase_duration_seconds")
    network = sel("tuf_probe_phase_network_duration_seconds")
    panels: list[_GPanel] = [
        row("Probe phases"),
        ts("Phase duration", targets((phase, "{{endpoint}} {{phase}}")), unit="s", w=8,
           stack=True),
        ts("Phase network time", targets((network, "{{endpoint}} {{phase}}")), unit="s", w=8,
           stack=True),
        ts("Phase verification time (duration - network)",
           targets((f"{phase} - {network}", "{{endpoint}} {{phase}}")), unit="s", w=8),
        row("Metadata"),
        ts("Versions of every role", targets((sel("tuf_metadata_version"),
                                              "{{endpoint}} {{role}}"),
                                             (sel("tuf_root_version", REPO),
                                              "trusted root {{repository}}"),
                                             (sel("tuf_root_rejected_version"),
                                              "root refused by python-tuf {{endpoint}}")), w=12),
        ts("Valid signatures against threshold (root: also against the previous root)",
           targets((sel("tuf_metadata_signatures_valid"), "valid {{endpoint}} {{role}}"),
                   (sel("tuf_metadata_signature_threshold"),
                    "threshold {{endpoint}} {{role}}"),
                   (sel("tuf_root_previous_signatures_valid"),
                    "valid {{endpoint}} root by previous root keys"),
                   (sel("tuf_root_previous_signature_threshold"),
                    "threshold {{endpoint}} previous root")), w=12),
        ts("Metadata size", targets((sel("tuf_metadata_size_bytes"), "{{endpoint}} {{role}}")),
           unit="bytes", w=12),
        ts("Expiry and last change",
           targets((f"{sel('tuf_metadata_expiry_timestamp_seconds')} - time()",
                    "expires in {{endpoint}} {{role}}"),
                   (f"time() - {sel('tuf_metadata_last_change_timestamp_seconds')}",
                    "unchanged for {{endpoint}} {{role}}"),
                   (sel("tuf_metadata_normal_lifetime_seconds", REPO),
                    "normal lifetime {{repository}} {{role}}")), unit="s", w=12),
        row("Delegations and failures"),
        ts("Delegated roles (seen / failing / sweep truncated at max_delegations: 1)",
           targets((sel("tuf_delegated_roles"), "seen {{endpoint}}"),
                   (sel("tuf_delegated_roles_failing"), "failing {{endpoint}}"),
                   (sel("tuf_delegation_sweep_truncated"), "sweep truncated {{endpoint}}")),
           w=8),
        ts("Earliest delegated role expiry",
           targets((f"{sel('tuf_delegated_roles_min_expiry_timestamp_seconds')} - time()",
                    "{{repository}}/{{endpoint}}")), unit="s", w=8),
        ts("Failures by reason and role",
           targets((f"sum by (reason, role) (increase({sel('tuf_probe_failures_total')}"
                    "[$__rate_interval]))", "{{reason}} ({{role}})")), w=8, draw="bars",
           stack=True),
        ts("Client view failures by client, reason and role",
           targets((f"sum by (client, reason, role) "
                    f"(increase({sel('tuf_client_update_failures_total')}[$__rate_interval]))",
                    "{{client}} {{reason}} ({{role}})")), w=12, draw="bars", stack=True,
           description="Every client view of the selected endpoints: returning (the probe), "
                       "new and bootstrap-root-v<N> (every new_client_interval)."),
        ts("HTTP requests by status class",
           targets((f"sum by (endpoint, code) (rate({sel('tuf_probe_http_requests_total')}"
                    "[$__rate_interval]))", "{{endpoint}} {{code}}")), unit="reqps", w=12),
        ts("Key rotations and anomalies",
           targets((f"increase({sel('tuf_key_rotations_total', REPO)}[$__rate_interval])",
                    "rotation {{repository}} {{role}}"),
                   (f"increase({sel('tuf_anomalies_total')}[$__rate_interval])",
                    "anomaly {{endpoint}} {{kind}}"),
                   (f"increase({sel('tuf_rollbacks_detected_total')}[$__rate_interval])",
                    "rollback {{endpoint}} {{role}}")), w=12, draw="bars"),
        row("Exporter process"),
        ts("Resident memory", targets((proc("process_resident_memory_bytes"), "{{instance}}")),
           unit="bytes", w=6, description="Steady growth between restarts is a leak."),
        ts("CPU", targets((f"rate({proc('process_cpu_seconds_total')}[$__rate_interval])",
                           "{{instance}}")), unit="percentunit", w=6,
           description="CPU seconds per second (1 = one core busy)."),
        ts("Open file descriptors / limit",
           targets((f"{proc('process_open_fds')} / {proc('process_max_fds')}",
                    "{{instance}}")), unit="percentunit", w=6,
           thresholds=steps(("green", None), ("red", _OPTIONS.descriptors_ratio)),
           description="TufExporterDescriptorsNearLimit tickets above the red line; at 100% "
                       "probes stop with exporter_error (cause descriptors)."),
        ts("Garbage collections and uptime",
           targets((f"sum by (instance, generation) (rate("
                    f"{proc('python_gc_collections_total')}[$__rate_interval]))",
                    "{{instance}} gen {{generation}} /s"),
                   (f"time() - {proc('process_start_time_seconds')}",
                    "{{instance}} uptime s")), w=6),
    ]
    annotations = [
        {"datasource": DS, "enable": True, "hide": False, "iconColor": "purple",
         "name": "Key rotations", "step": "1m", "titleFormat": "Key rotation",
         "textFormat": "{{repository}}: keys or threshold of {{role}} changed",
         "expr": f"increase({sel('tuf_key_rotations_total', REPO)}[5m]) > 0"},
        {"datasource": DS, "enable": True, "hide": False, "iconColor": "blue",
         "name": "Root version changes", "step": "1m", "titleFormat": "New root",
         "textFormat": "{{repository}}: new trusted root",
         "expr": f"changes({sel('tuf_root_version', REPO)}[5m]) > 0"},
    ]
    return dashboard(DEBUG, "Per-endpoint detail: phase latencies, versions, signatures, sizes, "
                            "delegations, failures, key rotations; the exporter process.",
                     panels, annotations)


# --------------------------------------------------------------------------------------------
# Writing
# --------------------------------------------------------------------------------------------


def dashboards() -> dict[str, Dashboard]:
    """File name -> dashboard."""
    return {EXECUTIVE.file: executive(), ONCALL.file: oncall(), DEBUG.file: debug()}


def to_json(board: Dashboard) -> str:
    """Deterministic pretty JSON (sorted keys, trailing newline)."""
    data = json.loads(json.dumps(board.to_json_data(), default=_encode))
    return json.dumps(data, sort_keys=True, indent=2, ensure_ascii=False) + "\n"


def _encode(obj: object) -> object:
    to_json_data = getattr(obj, "to_json_data", None)
    if to_json_data is None:
        raise TypeError(f"cannot encode {obj!r}")
    return to_json_data()


def expressions(data: Any) -> Iterator[str]:
    """Every PromQL expression in a dashboard's JSON (targets and annotations)."""
    if isinstance(data, dict):
        for key, value in data.items():
            if key == "expr" and isinstance(value, str) and value:
                yield value
            else:
                yield from expressions(value)
    elif isinstance(data, list):
        for item in data:
            yield from expressions(item)


def check(data: Any) -> None:
    """Raise ValueError when a query names a metric outside the catalogue and the rules."""
    allowed = set(catalogue.METRICS) | recording_rule_names() | BUILTIN_METRICS
    for expr in expressions(data):
        unknown = promql_metric_names(expr) - allowed
        if unknown:
            raise ValueError(f"dashboard query uses unknown metric(s) {sorted(unknown)}: {expr}")


def render() -> dict[str, str]:
    """File name -> JSON text of every dashboard, checked against the catalogue."""
    out = {}
    for name, board in dashboards().items():
        text = to_json(board)
        check(json.loads(text))
        out[name] = text
    return out


def build_dashboards(out_dir: Path) -> list[Path]:
    """Write every dashboard as JSON into ``out_dir``; return the paths."""
    return write_files(out_dir, render())
