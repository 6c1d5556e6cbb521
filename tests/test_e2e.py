"""End to end: faults injected into simulated repositories, pages delivered (issue #8).

A real Prometheus scrapes ``tuf-exporter serve`` every second and evaluates the generated rules
(shortened :class:`~exporter.generate.alerts.AlertOptions`); a real Alertmanager, configured with
the generated example, routes to a webhook recorder. Each scenario owns one repository, injects its
fault, waits for the notification and measures the time from injection to delivery (printed
at the end of the module). See ``tests/e2e_harness.py``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import re
import sys
import threading
import time
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from e2e_harness import (
    REPO_ROOT,
    PromQLError,
    Stack,
    e2e_stack,
    find_binary,
    poll,
)

from exporter.config import parse_duration
from exporter.generate import build_dashboards
from exporter.generate.alerts import kebab, promql_metric_names

_MISSING = [name for name, found in (
    ("prometheus", find_binary("prometheus")),
    ("prometheus-alertmanager", find_binary("prometheus-alertmanager", "alertmanager")),
) if found is None]

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.skipif(bool(_MISSING), reason=f"{' and '.join(_MISSING)} not installed "
                       "(apt-get install prometheus prometheus-alertmanager; scripts/test does)"),
]

#: scenario repository -> number of mirrors
REPOSITORIES = {"healthy": 1, "resign": 0, "expiry": 1, "lag": 1, "mass": 2, "burn": 2,
                "equivocation": 1, "signer": 1, "recovery": 1, "dashboards": 1}
SIGNER = ("signer", "timestamp")
#: "resign" signs its timestamp for minutes: its re-signing stops within one test.
RESIGN_LIFETIME = 150.0
EXPIRIES = {"resign": {"timestamp": timedelta(seconds=RESIGN_LIFETIME)}}

#: From an injected fault to the receiver: probe (1 s) + scrape (1 s) + rule evaluation (1 s)
#: + ``for:`` + group_wait (1 s); generous for 2 loaded cores.
NOTIFY_TIMEOUT = 45.0


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory,
          request: pytest.FixtureRequest) -> Iterator[Stack]:
    tmp = tmp_path_factory.mktemp("e2e")
    started: list[Stack] = []
    stopping = 0.0
    try:
        with e2e_stack(tmp, REPOSITORIES, signer=SIGNER, expiries=EXPIRIES) as s:
            started.append(s)
            yield s
            stopping = time.monotonic()
    finally:
        # Printed once every process has been stopped, with their exit codes.
        if started:
            s = started[0]
            if stopping:
                s.record("teardown", "SIGTERM -> every process exited",
                         time.monotonic() - stopping)
            _print_report(request, s.report() + f"\n  logs and configuration: {tmp}")


def _print_report(request: pytest.FixtureRequest, report: str) -> None:
    """Print past pytest's output capture, also when the last test failed."""
    plugins = request.config.pluginmanager
    capture = plugins.get_plugin("capturemanager")
    reporter = plugins.get_plugin("terminalreporter")
    disabled = (capture.global_and_fixture_disabled() if capture is not None
                else contextlib.nullcontext())
    with disabled:
        if reporter is not None:
            reporter.write_line(report)
        else:
            print(report, file=sys.__stdout__)


@pytest.fixture
def e2e(stack: Stack) -> Stack:
    stack.check_processes()
    return stack


def _runbook(stack: Stack, alertname: str) -> str:
    return f"{stack.options.runbook_base_url.rstrip('/')}/{kebab(alertname)}.md"


def _assert_runbook(stack: Stack, alert: dict[str, Any]) -> None:
    name = alert["labels"]["alertname"]
    assert alert["annotations"].get("runbook_url") == _runbook(stack, name)
    assert (REPO_ROOT / "docs" / "runbooks" / f"{kebab(name)}.md").is_file()


# --------------------------------------------------------------------------------------------
# 0. healthy repositories, re-signed as usual -> no alert at all (runs first, before any fault)
# --------------------------------------------------------------------------------------------


def test_healthy_repositories_raise_no_alert(e2e: Stack) -> None:
    # Every repository has been probed ok; "healthy" keeps being re-signed (timestamp 1 day,
    # snapshot 7 days, targets 90 days, root 1 year: the simulator's lifetimes). Watch for
    # longer than every shortened "for:"; the production-long ones (slow burn, spool, ...)
    # would show as pending in ALERTS, which is asserted empty too.
    o = e2e.options
    fors = [parse_duration(getattr(o, f.name)) for f in dataclasses.fields(o)
            if f.name.endswith("_for")] + [parse_duration(a.for_) for a in o.burn_alerts]
    window = max(f for f in fors if f <= 60) + 15
    sim = e2e.repos["healthy"]
    stop = threading.Event()

    def resign() -> None:
        while not stop.wait(2):
            sim.repo.publish()
            e2e.repos["resign"].repo.resign("timestamp")  # its timestamp lives minutes

    publisher = threading.Thread(target=resign, name="healthy-publisher", daemon=True)
    t0 = time.monotonic()
    publisher.start()
    try:
        deadline = t0 + window
        poll(lambda: time.monotonic() >= deadline or None, window + 5,
             f"{window:g}s of healthy operation", interval=1.0)
    finally:
        stop.set()
        publisher.join(timeout=10)
    seen = e2e.prometheus.query(f"max_over_time(ALERTS[{int(window)}s])")
    assert not seen, "alerts pending or firing on healthy repositories: " + ", ".join(sorted({
        f"{a['metric'].get('alertname')}{{{a['metric'].get('repository', '')}/"
        f"{a['metric'].get('endpoint', '')}/{a['metric'].get('role', '')}}}" for a in seen}))
    assert not e2e.recorder.matching(t0), "notifications sent for healthy repositories"
    assert not e2e.alertmanager.alerts(), "Alertmanager holds alerts"
    lifetime = e2e.prometheus.value(
        'tuf_metadata_normal_lifetime_seconds{repository="healthy", role="snapshot"}')
    assert lifetime is not None and 6 * 86400 < lifetime <= 7 * 86400
    e2e.record("healthy", f"re-signed every 2 s for {window:g}s -> no alert at all",
               time.monotonic() - t0)


def test_re_signing_stopped_tickets_then_pages_before_expiry(e2e: Stack) -> None:
    sim = e2e.repos["resign"]
    # Re-signed every 2 s (as in the healthy test): quiet, its normal lifetime learned.
    stop = threading.Event()

    def resign() -> None:
        while not stop.wait(2):
            sim.repo.resign("timestamp")

    publisher = threading.Thread(target=resign, name="resign-publisher", daemon=True)
    publisher.start()
    try:
        poll(lambda: e2e.prometheus.query(
            'tuf_metadata_normal_lifetime_seconds{repository="resign", role="timestamp"} < '
            f"{RESIGN_LIFETIME:g}"), NOTIFY_TIMEOUT, "the normal lifetime of resign's timestamp")
        assert not e2e.prometheus.alerts(repository="resign")
    finally:
        stop.set()
        publisher.join(timeout=10)
    # The signer stops: the last timestamp expires RESIGN_LIFETIME s after it was signed.
    t0 = time.monotonic()
    expires = sim.repo.latest.signed("timestamp").signed.expires.timestamp()
    expiry = t0 + expires - time.time()
    ticket, _ = e2e.recorder.wait_for(t0, expiry - t0 + 5, receiver="ticket",
                                      alertname="TufMetadataExpiringSoon", repository="resign",
                                      role="timestamp")
    page, alert = e2e.recorder.wait_for(t0, expiry - t0 + 5, receiver="page",
                                        alertname="TufMetadataExpiringCritical",
                                        repository="resign", role="timestamp")
    e2e.record("resign", f"{RESIGN_LIFETIME:g}s timestamp no longer re-signed -> ticket, "
               "seconds before expiry", expiry - ticket.received)
    e2e.record("resign", "... -> page, seconds before expiry", expiry - page.received)
    assert ticket.received < page.received < expiry
    _assert_runbook(e2e, alert)
    # back to a 1-day timestamp: quiet again (its normal lifetime is still minutes)
    sim.repo.set_expiry("timestamp", None)
    sim.repo.resign("timestamp")
    e2e.recorder.wait_for(page.received, NOTIFY_TIMEOUT, status="resolved", receiver="page",
                          alertname="TufMetadataExpiringCritical", repository="resign")


# --------------------------------------------------------------------------------------------
# 1. timestamp about to expire -> page
# --------------------------------------------------------------------------------------------


def test_timestamp_about_to_expire_pages(e2e: Stack) -> None:
    sim = e2e.repos["expiry"]
    # The page threshold of a 1-day timestamp is 1 h; re-sign it for 10 min.
    assert e2e.options.expiry_page_seconds["timestamp"] > 600
    t0 = time.monotonic()
    sim.repo.set_expiry("timestamp", timedelta(minutes=10))
    sim.repo.publish()
    note, alert = e2e.recorder.wait_for(t0, NOTIFY_TIMEOUT, receiver="page",
                                        alertname="TufMetadataExpiringCritical",
                                        repository="expiry")
    e2e.record("expiry", "timestamp re-signed for 10 min -> page", note.received - t0)
    labels = alert["labels"]
    assert labels["severity"] == "page"
    assert labels["repository"] == "expiry"
    assert labels["role"] == "timestamp"
    assert labels["endpoint"] in sim.endpoints
    _assert_runbook(e2e, alert)
    assert note.payload["groupLabels"] == {"alertname": "TufMetadataExpiringCritical",
                                           "repository": "expiry"}

    # The ticket for the same metadata (TufMetadataExpiringSoon) is inhibited by the page.
    def soon_inhibited() -> bool:
        held = e2e.alertmanager.alerts(alertname="TufMetadataExpiringSoon", repository="expiry",
                                       role="timestamp")
        return bool(held) and all(a["status"]["inhibitedBy"] for a in held)

    poll(soon_inhibited, 20, "TufMetadataExpiringSoon inhibited in Alertmanager",
         diagnose=lambda: e2e.diagnose("expiry"))
    assert not [n for n, a in e2e.recorder.matching(t0, repository="expiry")
                if n.receiver == "ticket" and a["labels"].get("role") == "timestamp"]

    t1 = time.monotonic()
    sim.repo.set_expiry("timestamp", None)
    sim.repo.publish()
    note, _ = e2e.recorder.wait_for(t1, NOTIFY_TIMEOUT, status="resolved", receiver="page",
                                    alertname="TufMetadataExpiringCritical", repository="expiry")
    e2e.record("expiry", "re-signed with the default expiry -> resolved", note.received - t1)


# --------------------------------------------------------------------------------------------
# 2. a mirror held back -> ticket, no page
# --------------------------------------------------------------------------------------------


def test_stale_mirror_opens_a_ticket_not_a_page(e2e: Stack) -> None:
    sim = e2e.repos["lag"]
    t0 = time.monotonic()
    sim.server.hold_mirror("mirror-1", state=sim.repo.latest.serial)
    sim.repo.publish()
    try:
        note, alert = e2e.recorder.wait_for(t0, NOTIFY_TIMEOUT, receiver="ticket",
                                            alertname="TufMirrorLagging", repository="lag")
        e2e.record("lag", "mirror held back + publish -> ticket", note.received - t0)
        assert alert["labels"]["endpoint"] == "mirror-1"
        assert alert["labels"]["severity"] == "ticket"
        _assert_runbook(e2e, alert)
        pages = [n.summary() for n, _ in e2e.recorder.matching(t0, repository="lag")
                 if n.receiver == "page"]
        assert not pages, pages
        assert not e2e.prometheus.alerts(repository="lag", severity="page")
    finally:
        t1 = time.monotonic()
        sim.server.release_mirror("mirror-1")
    note, _ = e2e.recorder.wait_for(t1, NOTIFY_TIMEOUT, status="resolved", receiver="ticket",
                                    alertname="TufMirrorLagging", repository="lag")
    e2e.record("lag", "mirror released -> resolved", note.received - t1)


# --------------------------------------------------------------------------------------------
# 3. every endpoint failing -> one grouped page, per-mirror alerts inhibited
# --------------------------------------------------------------------------------------------


def test_mass_failure_pages_once_and_inhibits_mirror_alerts(e2e: Stack) -> None:
    sim = e2e.repos["mass"]
    mirrors = set(sim.mirrors)
    t0 = time.monotonic()
    for endpoint in sim.endpoints:
        sim.server.inject("http-500", endpoint=endpoint)
    try:
        note, alert = e2e.recorder.wait_for(t0, NOTIFY_TIMEOUT, receiver="page",
                                            alertname="TufVerificationMassFailure",
                                            repository="mass")
        e2e.record("mass", "http-500 on every endpoint -> page", note.received - t0)
        assert alert["labels"]["severity"] == "page"
        assert len(note.alerts) == 1  # one alert per repository, not one per endpoint
        _assert_runbook(e2e, alert)

        # The per-endpoint alerts fire in Prometheus for every endpoint ...
        def failing_everywhere() -> bool:
            firing = e2e.prometheus.firing(alertname="TufEndpointVerificationFailing",
                                           repository="mass")
            return {a["labels"]["endpoint"] for a in firing} >= set(sim.endpoints)

        poll(failing_everywhere, NOTIFY_TIMEOUT, "TufEndpointVerificationFailing on every "
             "endpoint of mass", diagnose=lambda: e2e.diagnose("mass"))

        # ... Alertmanager holds the mirrors' inhibited ...
        def mirrors_inhibited() -> bool:
            held = [a for a in e2e.alertmanager.alerts(alertname="TufEndpointVerificationFailing",
                                                       repository="mass")
                    if a["labels"]["endpoint"] in mirrors]
            return len(held) == len(mirrors) and all(
                a["status"]["state"] == "suppressed" and a["status"]["inhibitedBy"]
                for a in held)

        poll(mirrors_inhibited, 20, "mirror alerts inhibited in Alertmanager",
             diagnose=lambda: e2e.diagnose("mass"))

        # ... and the group's ticket carries the primary only.
        ticket, _ = e2e.recorder.wait_for(t0, NOTIFY_TIMEOUT, receiver="ticket",
                                          alertname="TufEndpointVerificationFailing",
                                          repository="mass")
        e2e.record("mass", "-> ticket for the primary (mirrors inhibited)",
                   ticket.received - t0)
        t_clear = time.monotonic()
        leaked = [n.summary() for n, a in e2e.recorder.matching(t0, t_clear, repository="mass")
                  if n.receiver == "ticket" and a["labels"].get("endpoint") in mirrors]
        assert not leaked, f"per-mirror tickets while the mass failure fired: {leaked}"
        pages = {id(n) for n, a in e2e.recorder.matching(
            t0, t_clear, alertname="TufVerificationMassFailure", repository="mass")
            if a["status"] == "firing"}
        assert len(pages) == 1, "the mass failure must page exactly once"
    finally:
        t1 = time.monotonic()
        sim.server.clear()
    note, _ = e2e.recorder.wait_for(t1, NOTIFY_TIMEOUT, status="resolved", receiver="page",
                                    alertname="TufVerificationMassFailure", repository="mass")
    e2e.record("mass", "faults cleared -> resolved", note.received - t1)


# --------------------------------------------------------------------------------------------
# 3b. one mirror of three failing -> the SLO's fast burn pages, no mass failure
# --------------------------------------------------------------------------------------------


def test_error_budget_fast_burn_pages(e2e: Stack) -> None:
    sim = e2e.repos["burn"]
    mirror = sim.mirrors[-1]
    fast = e2e.options.burn_alerts[0]
    assert fast.name == "TufErrorBudgetBurnFast" and fast.severity == "page"
    # One endpoint of three is below mass_failure_ratio: only the budget burn may page.
    assert 1 / len(sim.endpoints) < e2e.options.mass_failure_ratio
    t0 = time.monotonic()
    sim.server.inject("http-500", endpoint=mirror)
    try:
        note, alert = e2e.recorder.wait_for(t0, NOTIFY_TIMEOUT, receiver="page",
                                            alertname="TufErrorBudgetBurnFast",
                                            repository="burn")
        e2e.record("burn", f"http-500 on 1 of {len(sim.endpoints)} endpoints -> fast burn page",
                   note.received - t0)
        assert alert["labels"]["severity"] == "page"
        assert "endpoint" not in alert["labels"]  # an SLO alert is about the repository
        _assert_runbook(e2e, alert)
        # The error ratio it reports is the share of failing probes, about one in three.
        ratio = e2e.prometheus.query('repository:tuf_probe_success:ratio_rate10s'
                                     '{repository="burn"}')
        assert ratio and 0 < 1 - float(ratio[0]["value"][1]) < 1
        assert not [n for n, _ in e2e.recorder.matching(
            t0, alertname="TufVerificationMassFailure", repository="burn")]
    finally:
        t1 = time.monotonic()
        sim.server.clear()
    note, _ = e2e.recorder.wait_for(t1, NOTIFY_TIMEOUT, status="resolved", receiver="page",
                                    alertname="TufErrorBudgetBurnFast", repository="burn")
    e2e.record("burn", "fault cleared -> resolved (short window 10s)", note.received - t1)


# --------------------------------------------------------------------------------------------
# 4. equivocation -> page (possible key compromise)
# --------------------------------------------------------------------------------------------


def test_equivocation_pages_possible_key_compromise(e2e: Stack) -> None:
    sim = e2e.repos["equivocation"]
    t0 = time.monotonic()
    sim.server.inject("equivocation", endpoint="primary")
    try:
        note, alert = e2e.recorder.wait_for(t0, NOTIFY_TIMEOUT, receiver="page",
                                            alertname="TufPossibleKeyCompromise",
                                            repository="equivocation")
        e2e.record("equivocation", "same timestamp version, other bytes -> page",
                   note.received - t0)
        assert alert["labels"]["kind"] == "equivocation"
        assert alert["labels"]["severity"] == "page"
        assert alert["labels"]["endpoint"] == "primary"
        _assert_runbook(e2e, alert)
    finally:
        t1 = time.monotonic()
        sim.server.clear()
        sim.repo.publish()
    # A counter-increase alert resolves once the increase leaves event_window.
    note, _ = e2e.recorder.wait_for(t1, NOTIFY_TIMEOUT, status="resolved", receiver="page",
                                    alertname="TufPossibleKeyCompromise",
                                    repository="equivocation")
    e2e.record("equivocation", f"fault cleared -> resolved (event_window "
               f"{e2e.options.event_window})", note.received - t1)
    assert e2e.prometheus.query(
        'tuf_probe_success{repository="equivocation"} == 1'), "equivocation repo not healthy"


# --------------------------------------------------------------------------------------------
# 5. the signer's key removed from root -> page
# --------------------------------------------------------------------------------------------


def test_signer_key_removed_from_root_pages(e2e: Stack) -> None:
    sim = e2e.repos["signer"]
    assert e2e.signer_keyid is not None
    poll(lambda: e2e.prometheus.query(
        'tuf_signer_key_authorized{repository="signer",role="timestamp"} == 1'), NOTIFY_TIMEOUT,
        "tuf_signer_key_authorized == 1 in Prometheus for the exported signer key")
    t0 = time.monotonic()
    sim.repo.rotate_keys("timestamp", add=1, remove=[e2e.signer_keyid])
    sim.repo.publish()
    note, alert = e2e.recorder.wait_for(t0, NOTIFY_TIMEOUT, receiver="page",
                                        alertname="TufSignerKeyUnauthorized",
                                        repository="signer")
    e2e.record("signer", "signer key revoked in root -> page", note.received - t0)
    assert alert["labels"]["role"] == "timestamp"
    _assert_runbook(e2e, alert)


# --------------------------------------------------------------------------------------------
# 6. recovery -> resolved notifications
# --------------------------------------------------------------------------------------------


def test_recovery_sends_resolved_notifications(e2e: Stack) -> None:
    sim = e2e.repos["recovery"]
    t0 = time.monotonic()
    sim.server.inject("expired-timestamp", endpoint="primary")
    try:
        note, alert = e2e.recorder.wait_for(t0, NOTIFY_TIMEOUT, receiver="page",
                                            alertname="TufMetadataExpired",
                                            repository="recovery")
        e2e.record("recovery", "expired timestamp on the primary -> page", note.received - t0)
        assert alert["labels"]["endpoint"] == "primary"
        assert alert["labels"]["role"] == "timestamp"
        _assert_runbook(e2e, alert)
    finally:
        t1 = time.monotonic()
        sim.server.clear()
        sim.repo.publish()
    note, alert = e2e.recorder.wait_for(t1, NOTIFY_TIMEOUT, status="resolved", receiver="page",
                                        alertname="TufMetadataExpired", repository="recovery")
    e2e.record("recovery", "fault cleared + publish -> resolved", note.received - t1)
    assert note.status == "resolved"
    assert note.payload["groupLabels"] == {"alertname": "TufMetadataExpired",
                                           "repository": "recovery"}
    assert alert["endsAt"] >= alert["startsAt"]


# --------------------------------------------------------------------------------------------
# Dashboards: every panel query returns data from the live Prometheus
# --------------------------------------------------------------------------------------------

#: Grafana macros -> fixed durations for instant queries.
MACROS = {
    "__rate_interval": "1m",
    "__interval": "15s",
    "__range": "5m",
    "__range_s": "300",
    "__range_ms": "300000",
    "__interval_ms": "15000",
}

#: Metrics that may legitimately have no series in this test, and why.
MAY_BE_ABSENT = {
    "tuf_exporter_events_dropped_total": "no event was dropped; the counter has no series "
                                         "until a first drop (causes are not pre-initialised)",
    "tuf_exporter_shipper_errors_total": "no shipper error; the counter has no series until "
                                         "a first error (causes are not pre-initialised)",
    "tuf_root_rejected_version": "no newer root was refused; the gauge has a series only "
                                 "while python-tuf refuses one",
}


def _fill(expr: str, variables: dict[str, str]) -> str:
    def replace(match: re.Match[str]) -> str:
        name = match.group(1) or match.group(2)
        if name in variables:
            return variables[name]
        if name in MACROS:
            return MACROS[name]
        raise KeyError(f"unknown Grafana variable ${name} in {expr}")

    return re.sub(r"\$\{(\w+)(?::\w+)?\}|\$(\w+)", replace, expr)


def _panel_queries(dashboard: Any, board: str) -> Iterator[tuple[str, str]]:
    """(where, expr) of every panel target with an expression, rows' panels included."""
    if isinstance(dashboard, dict):
        targets = dashboard.get("targets")
        if isinstance(targets, list) and "title" in dashboard:
            for target in targets:
                if isinstance(target, dict) and target.get("expr"):
                    yield f"{board} / {dashboard['title']} [{target.get('refId', '?')}]", \
                        target["expr"]
        for key, value in dashboard.items():
            if key != "targets":
                yield from _panel_queries(value, board)
    elif isinstance(dashboard, list):
        for item in dashboard:
            yield from _panel_queries(item, board)


def test_every_dashboard_panel_query_returns_data(e2e: Stack, tmp_path: Path) -> None:
    repositories = sorted(e2e.repos)
    endpoints = sorted({ep for r in e2e.repos.values() for ep in r.endpoints})
    # Plain names: a regex alternation needs no escaping (PromQL refuses Go-invalid "\-").
    assert all(re.fullmatch(r"[\w-]+", n) for n in (*repositories, *endpoints))
    variables = {
        "repository": "|".join(repositories),
        "endpoint": "|".join(endpoints),
        "datasource": "prometheus",
    }
    queries: list[tuple[str, str]] = []
    for path in build_dashboards(tmp_path / "dashboards"):
        queries.extend(_panel_queries(json.loads(path.read_text(encoding="utf-8")), path.stem))
    assert queries, "no panel queries found in the generated dashboards"
    filled = [(where, expr, _fill(expr, variables)) for where, expr in queries]

    # Panels about failing endpoints need one: break this test's own mirror while querying.
    sim = e2e.repos["dashboards"]
    sim.server.inject("http-500", endpoint="mirror-1")
    try:
        poll(lambda: e2e.prometheus.query(
            'tuf_probe_success{repository="dashboards", endpoint="mirror-1"} == 0'),
            NOTIFY_TIMEOUT, "the dashboards mirror failing in Prometheus")
        _check_queries(e2e, filled)
    finally:
        sim.server.clear()


def _check_queries(e2e: Stack, filled: list[tuple[str, str, str]]) -> None:

    errors = []
    for where, _, expr in filled:
        try:
            e2e.prometheus.query(expr)
        except PromQLError as exc:
            errors.append(f"{where}: {exc}\n    {expr}")
    assert not errors, "panel queries Prometheus refuses:\n  " + "\n  ".join(errors)

    def absent(names: set[str]) -> set[str]:
        return {n for n in names
                if not e2e.prometheus.query(f'count({{__name__="{n}"}})')}

    def explained(expr: str) -> str | None:
        gone = absent(promql_metric_names(expr))
        reasons = {MAY_BE_ABSENT[n] for n in gone if n in MAY_BE_ABSENT}
        return "; ".join(sorted(reasons)) if reasons and gone <= set(MAY_BE_ABSENT) else None

    def empty() -> list[tuple[str, str]]:
        return [(where, expr) for where, _, expr in filled if not e2e.prometheus.query(expr)]

    # Recording rules are evaluated every minute: give the first evaluation time to happen.
    started = time.monotonic()
    with contextlib.suppress(AssertionError):
        poll(lambda: all(explained(expr) for _, expr in empty()) or None, 90,
             "every dashboard query to return data", interval=1.0)
    remaining = empty()
    e2e.record("dashboards", f"{len(filled)} panel queries, {len(remaining)} without data "
               "(waited for recording rules)", time.monotonic() - started)
    unexplained = []
    for where, expr in remaining:
        why = explained(expr)
        if why is None:
            missing = sorted(absent(promql_metric_names(expr)))
            unexplained.append(f"{where}: no data (absent: {missing or 'none'})\n    {expr}")
        else:
            e2e.notes.append(f"no data: {where} ({why})")
    assert not unexplained, "panel queries without data:\n  " + "\n  ".join(unexplained)
