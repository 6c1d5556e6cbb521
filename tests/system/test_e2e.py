"""End to end: faults injected into simulated repositories, pages delivered (issue #8).

A real Prometheus scrapes ``tuf-exporter serve`` every second and evaluates the generated rules
(shortened :class:`~exporter.generate.alerts.AlertOptions`); a real Alertmanager, configured with
the generated example, routes to a webhook recorder. Each scenario owns one repository, injects its
fault, waits for the notification and measures the time from injection to delivery (printed
at the end of the module). See ``tests/support/e2e_harness.py``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import re
import shutil
import sys
import threading
import time
from collections.abc import Callable, Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import requests
from support import tuf_js_unavailable
from support.e2e_harness import (
    FLOOD_BYTES,
    FLOOD_LAST_LINE,
    REPO_ROOT,
    SCRAPE_TIMEOUT,
    FaultyClient,
    PromQLError,
    RepoSetup,
    Stack,
    e2e_stack,
    find_binary,
    live_processes,
    poll,
)

from exporter.adapters import TUF_JS_CLIENT
from exporter.config.durations import parse_duration
from exporter.generate.alerts import kebab, promql_metric_names
from exporter.generate.dashboards import build_dashboards
from exporter.probe.external import MESSAGE_TAIL, OUTPUT_BOUND

_MISSING = [name for name, found in (
    ("prometheus", find_binary("prometheus")),
    ("prometheus-alertmanager", find_binary("prometheus-alertmanager", "alertmanager")),
) if found is None]

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.skipif(bool(_MISSING), reason=f"{' and '.join(_MISSING)} not installed "
                       "(apt-get install prometheus prometheus-alertmanager; scripts/test does)"),
]

SIGNER = ("signer", "timestamp")
#: "resign" signs its timestamp for minutes: its re-signing stops within one test.
RESIGN_LIFETIME = 150.0
EXPIRIES = {"resign": {"timestamp": timedelta(seconds=RESIGN_LIFETIME)}}

#: How often the client views of the fleet scenarios run (``new_client_interval``, and the
#: ``interval`` of the tuf-js client).
NEW_CLIENT_INTERVAL = "2s"

#: "divergence" (issue 17): an external client view, the shipped tuf-js adapter, beside the
#: exporter's own views. Left out (and its scenario skipped) where node or the adapter's
#: node_modules is missing; scripts/test installs them.
TUF_JS_MISSING = tuf_js_unavailable()
TUF_JS = "tuf-js"
#: The timestamp key's scheme that python-tuf 7 verifies and tuf-js 5.0.1 does not (cloud KMS
#: RSA keys sign with it): docs/clients.md, "Divergences".
DIVERGENT_SCHEME = "rsa-pkcs1v15-sha256"

#: "contained" (issue 17): two external clients (the harness's FAULTY_CLIENT) that pass until
#: their fault is switched on. The hanging one ignores SIGTERM: a run lasts its timeout plus the
#: kill grace (5 + 2 s), longer than the gap the python-tuf probes of its repository may show.
#: The flooding one exits 1 after 100 MiB: a client floods its output when something went wrong
#: (a debug trace left on, a dump of what it refused), and a failed run is the one whose output
#: on-call reads, its reason last (as in a traceback); a passing run's output is not kept at all.
HANG = ("hang", "5s")
FLOOD = ("flood", "20s")
#: How often they run: a healthy run is a python process (0.15 s of CPU) and a forwarder, so
#: less often than the other views, to keep the stack's background load low.
FAULTY_INTERVAL = "5s"
#: The largest age of the last python-tuf probe of "contained" while its clients hang and flood:
#: its interval (1 s) + a loose 5 s for scrapes and probes on 2 loaded cores; below the 7 s a
#: hung run lasts, so a probe held up by one would show.
PROBE_GAP_BOUND = 6.0
#: How much the exporter's resident memory may grow while the flood runs (a 100 MiB flood
#: buffered would take at least 100 MiB).
FLOOD_RSS_BOUND = 40 * 1024 * 1024


@dataclasses.dataclass(frozen=True)
class Fleet:
    """A scenario of client views (issues 16, 17): its repository (``mirrors``, ``setup``), the
    views of each of its endpoints, and the views its fault fails on every endpoint, with the
    reason and role of their failures."""

    mirrors: int
    setup: RepoSetup
    views: frozenset[str]
    failing: dict[str, tuple[str, str]]


#: "fleet-new": a timestamp that lists the snapshot's version only (as most real repositories
#: do), so a new client refuses the broken snapshot for its signature. "fleet-boot": root
#: rotated to version 3 (timestamp keys at 2, root keys at 3) before the exporter starts, its
#: trusted root version 3, clients in the field starting from versions 1 and 2.
FLEET = {
    "fleet-new": Fleet(1, RepoSetup(timestamp_hashes=False,
                                    config={"new_client_interval": NEW_CLIENT_INTERVAL}),
                       frozenset({"returning", "new"}), {"new": ("bad_signature", "snapshot")}),
    "fleet-boot": Fleet(0, RepoSetup(rotations=("timestamp", "root"), config={
        "new_client_interval": NEW_CLIENT_INTERVAL,
        "bootstrap_roots": ["{root_v1}", "{root_v2}"]}),
        frozenset({"returning", "new", "bootstrap-root-v1", "bootstrap-root-v2"}),
        {"bootstrap-root-v1": ("bad_signature", "timestamp")}),
    "divergence": Fleet(0, RepoSetup(config={
        "new_client_interval": NEW_CLIENT_INTERVAL,
        **({} if TUF_JS_MISSING else {"clients": [TUF_JS]})}),
        frozenset({"returning", "new"} | (set() if TUF_JS_MISSING else {TUF_JS})),
        {TUF_JS: ("client_rejected", "timestamp")}),
    "contained": Fleet(0, RepoSetup(config={"new_client_interval": 0,
                                            "clients": [HANG[0], FLOOD[0]]}),
                       frozenset({"returning", HANG[0], FLOOD[0]}),
                       {HANG[0]: ("client_timeout", "timestamp"),
                        FLOOD[0]: ("client_rejected", "timestamp")}),
}

#: scenario repository -> number of mirrors
REPOSITORIES = {"healthy": 1, "resign": 0, "expiry": 1, "lag": 1, "mass": 2, "burn": 2,
                "equivocation": 1, "signer": 1, "recovery": 1, "dashboards": 1,
                **{name: fleet.mirrors for name, fleet in FLEET.items()}}
SETUPS = {name: fleet.setup for name, fleet in FLEET.items()}
# the dashboards' panels about failing client views other than returning need one
SETUPS["dashboards"] = RepoSetup(config={"new_client_interval": NEW_CLIENT_INTERVAL})

#: From an injected fault to the receiver: probe (1 s) + scrape (1 s) + rule evaluation (1 s)
#: + ``for:`` + group_wait (1 s); generous for 2 loaded cores.
NOTIFY_TIMEOUT = 45.0


@pytest.fixture(scope="module")
def faulty(tmp_path_factory: pytest.TempPathFactory) -> dict[str, FaultyClient]:
    """The external clients of "contained", by name, their program written."""
    directory = tmp_path_factory.mktemp("faulty-clients")
    return {name: FaultyClient(name, name, directory).write() for name, _ in (HANG, FLOOD)}


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory, faulty: dict[str, FaultyClient],
          request: pytest.FixtureRequest) -> Iterator[Stack]:
    tmp = tmp_path_factory.mktemp("e2e")
    started: list[Stack] = []
    stopping = 0.0
    clients = [faulty[name].config(FAULTY_INTERVAL, timeout) for name, timeout in (HANG, FLOOD)]
    if not TUF_JS_MISSING:
        # As often as the new view, so the alert's for: (3 s) is again between one and two
        # runs. No canary: a run is one node process (refresh) after the first init, about
        # 0.3 s of CPU; the divergence is in the refresh.
        clients.append({"name": TUF_JS, "command": [shutil.which("node"), str(TUF_JS_CLIENT)],
                        "interval": NEW_CLIENT_INTERVAL, "timeout": "20s", "canary_targets": []})
    try:
        with e2e_stack(tmp, REPOSITORIES, signer=SIGNER, expiries=EXPIRIES,
                       setups=SETUPS, clients=clients) as s:
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
    for name, fleet in FLEET.items():  # the client views ran all along, and passed
        expected = {(ep, c) for ep in e2e.repos[name].endpoints for c in fleet.views}
        assert _views(e2e, name, 1) == expected, name


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
# 7. part of the fleet cannot update (issues 16, 17) -> TufClientViewFailing pages for the views
#    that fail, returning green (the scenarios of FLEET)
# --------------------------------------------------------------------------------------------

#: The page's budget: the next run of the view (one interval), the confirming run within the
#: alert's for:, then scrape, evaluation and group_wait as for the other scenarios.
FLEET_TIMEOUT = NOTIFY_TIMEOUT + 2 * parse_duration(FAULTY_INTERVAL)


def _views(e2e: Stack, repository: str, value: int) -> set[tuple[str, str]]:
    """(endpoint, client) of the views of ``repository`` whose last verdict is ``value``."""
    return {(r["metric"]["endpoint"], r["metric"]["client"]) for r in e2e.prometheus.query(
        f'tuf_client_update_success{{repository="{repository}"}} == {value}')}


def _wait_views_ok(e2e: Stack, repository: str, clients: set[str]) -> None:
    endpoints = e2e.repos[repository].endpoints
    wanted = {(endpoint, client) for endpoint in endpoints for client in clients}
    poll(lambda: _views(e2e, repository, 1) >= wanted, NOTIFY_TIMEOUT,
         f"the views {sorted(clients)} of {repository} ok in Prometheus",
         diagnose=lambda: e2e.diagnose(repository))


def _views_ran_since(e2e: Stack, repository: str, since: float, clients: set[str]) -> bool:
    """Every view of ``clients`` of ``repository`` finished a run after unix time ``since``."""
    ran = {(r["metric"]["endpoint"], r["metric"]["client"]) for r in e2e.prometheus.query(
        f'tuf_client_last_check_timestamp_seconds{{repository="{repository}"}} > {since:.3f}')}
    return ran >= {(ep, c) for ep in e2e.repos[repository].endpoints for c in clients}


def _assert_returning_stayed_green(e2e: Stack, repository: str, since: float,
                                   also: tuple[str, ...] = ()) -> None:
    """The returning view (and the views ``also``) of every endpoint of ``repository`` passed
    all along since ``since`` (time.monotonic()), and no endpoint alert was sent for it."""
    window = f"{int(time.monotonic() - since) + 1}s"
    for selector in (f'tuf_probe_success{{repository="{repository}"}}',
                     *(f'tuf_client_update_success{{repository="{repository}", '
                       f'client="{client}"}}' for client in ("returning", *also))):
        dipped = e2e.prometheus.query(f"min_over_time({selector}[{window}]) < 1")
        assert not dipped, f"the returning view of {repository} failed: {dipped}"
    endpoint_alerts = [n.summary() for n, a in e2e.recorder.matching(since, repository=repository)
                       if a["labels"].get("alertname") in ("TufEndpointVerificationFailing",
                                                           "TufVerificationMassFailure")]
    assert not endpoint_alerts, endpoint_alerts


@contextlib.contextmanager
def _fleet_fault(e2e: Stack, repository: str, inject: Callable[[], object], what: str,
                 clear: Callable[[], object], cleared: str) -> Iterator[float]:
    """``inject`` a fault into a :data:`FLEET` scenario's repository (its views ok first) and
    check what on-call sees against the table: TufClientViewFailing pages (severity, runbook,
    one group per repository) for each failing view on every endpoint and for nothing else;
    once every view has run since the fault, the failing views at 0 with their reason and role
    in ``tuf_client_update_failures_total``, the others at 1 and green all along. Yields the
    fault's time.monotonic() to the scenario's own checks, made while the fault is in; then
    ``clear`` and wait for the pages to resolve. ``what`` and ``cleared`` name the timings."""
    fleet, endpoints = FLEET[repository], e2e.repos[repository].endpoints
    failing = {(ep, c) for ep in endpoints for c in fleet.failing}
    _wait_views_ok(e2e, repository, set(fleet.views))
    t0, fault_time = time.monotonic(), time.time()
    inject()
    try:
        note, _ = e2e.recorder.wait_for(t0, FLEET_TIMEOUT, receiver="page",
                                        alertname="TufClientViewFailing", repository=repository)
        e2e.record(repository, f"{what} -> page", note.received - t0)
        assert note.payload["groupLabels"] == {"alertname": "TufClientViewFailing",
                                               "repository": repository}

        def paged() -> set[tuple[str, str]]:
            return {(a["labels"]["endpoint"], a["labels"]["client"]) for _, a in
                    e2e.recorder.matching(t0, alertname="TufClientViewFailing",
                                          repository=repository)}

        poll(lambda: paged() >= failing, FLEET_TIMEOUT, f"a page for every failing view of "
             f"{repository}: {sorted(failing)}", diagnose=lambda: e2e.diagnose(repository))
        for _, alert in e2e.recorder.matching(t0, alertname="TufClientViewFailing",
                                              repository=repository):
            assert alert["labels"]["severity"] == "page"
            _assert_runbook(e2e, alert)
        poll(lambda: _views_ran_since(e2e, repository, fault_time, set(fleet.views)),
             FLEET_TIMEOUT, f"every view of {repository} run after the fault",
             diagnose=lambda: e2e.diagnose(repository))
        assert _views(e2e, repository, 0) == failing
        assert _views(e2e, repository, 1) == {
            (ep, c) for ep in endpoints for c in fleet.views} - failing
        for client, (reason, role) in fleet.failing.items():
            assert e2e.prometheus.query(
                f'tuf_client_update_failures_total{{repository="{repository}", '
                f'client="{client}", reason="{reason}", role="{role}"}} > 0'), client
        yield t0
        assert paged() == failing
        _assert_returning_stayed_green(e2e, repository, t0, also=tuple(sorted(
            fleet.views - fleet.failing.keys() - {"returning"})))
    finally:
        t1 = time.monotonic()
        clear()
    for client in sorted(fleet.failing):
        note, _ = e2e.recorder.wait_for(t1, FLEET_TIMEOUT, status="resolved", receiver="page",
                                        alertname="TufClientViewFailing",
                                        repository=repository, client=client)
    e2e.record(repository, f"{cleared} -> resolved", note.received - t1)


def test_snapshot_broken_for_new_clients_pages_for_the_new_view(e2e: Stack) -> None:
    sim = e2e.repos["fleet-new"]

    def corrupt() -> None:
        # Same version, same length, timestamp unchanged: returning clients never fetch it
        # again. Both endpoints serve the broken copy: both pages arrive in the repository's
        # group, python-tuf's verdict for new clients is the snapshot's signature (FLEET).
        for endpoint in sim.endpoints:
            sim.server.inject("corrupt-signature", endpoint=endpoint)

    with _fleet_fault(e2e, "fleet-new", corrupt, f"snapshot signature broken -> new clients "
                      f"(interval {NEW_CLIENT_INTERVAL}, for: "
                      f"{e2e.options.client_view_failure_for})", sim.server.clear,
                      "fault cleared"):
        pass


def test_missing_intermediate_root_pages_for_bootstrap_root_v1_only(e2e: Stack) -> None:
    sim = e2e.repos["fleet-boot"]
    assert sim.repo.latest.root_versions() == [1, 2, 3]
    # python-tuf takes the 404 as the end of the chain: root 1 does not know the timestamp key
    # rotated in root 2 (FLEET: bad_signature on timestamp, for bootstrap-root-v1 alone).
    with _fleet_fault(e2e, "fleet-boot", lambda: sim.server.inject("root-missing", version=2),
                      "2.root.json missing -> bootstrap-root-v1", sim.server.clear,
                      "2.root.json restored"):
        pass


# --------------------------------------------------------------------------------------------
# 8. one client implementation cannot verify the repository (issue 17) -> page for that client
# --------------------------------------------------------------------------------------------


@pytest.mark.skipif(TUF_JS_MISSING is not None, reason=TUF_JS_MISSING or "")
def test_timestamp_key_tuf_js_cannot_verify_pages_for_tuf_js_only(e2e: Stack,
                                                                  tmp_path: Path) -> None:
    sim = e2e.repos["divergence"]
    views = set(FLEET["divergence"].views)
    _wait_views_ok(e2e, "divergence", views)
    # The timestamp key rotated as a careful operator does: the RSA key added (root 2, the
    # timestamp signed by both keys), then the ed25519 key revoked (root 3, the RSA key signs
    # alone). A client between two files of one publish never meets a timestamp its root does
    # not know, so every view that can verify the RSA key stays green throughout.
    t_add = time.time()
    sim.repo.rotate_keys("timestamp", add=1, scheme=DIVERGENT_SCHEME)
    sim.repo.publish()
    poll(lambda: _views_ran_since(e2e, "divergence", t_add, views), FLEET_TIMEOUT,
         "every view of divergence run with the RSA key added",
         diagnose=lambda: e2e.diagnose("divergence"))
    assert _views(e2e, "divergence", 1) >= {("primary", c) for c in views}

    def rotate(add: int) -> None:
        sim.repo.rotate_keys("timestamp", add=add, remove=1)
        sim.repo.publish()

    # The RSA key alone; back to an ed25519 timestamp key (root 4) to clear: tuf-js follows
    # the root chain and passes. tuf-js exits 1 after fetching the timestamp (the exporter's
    # forwarder saw it last): client_rejected on timestamp (FLEET).
    with _fleet_fault(e2e, "divergence", lambda: rotate(0),
                      f"timestamp signed with {DIVERGENT_SCHEME} -> {TUF_JS}", lambda: rotate(1),
                      "timestamp key rotated back to ed25519"):
        assert [key.scheme for key in sim.repo.root_keys("timestamp")] == [DIVERGENT_SCHEME]
        assert _oncall_matrix(e2e, "divergence", tmp_path) == {
            "divergence / returning": 1.0, "divergence / new": 1.0,
            f"divergence / {TUF_JS}": 0.0}
        row = _status_page_view_row(e2e, "divergence", TUF_JS)
        assert row["state"] == "failing", row
        assert row["Reason"].startswith("client_rejected"), row
        assert row["Role"] == "timestamp", row
        assert "timestamp was signed by 0/1 keys" in row["Message"], row


# --------------------------------------------------------------------------------------------
# 9. an external client hangs, another floods its output (issue 17) -> contained, paged for
#    those clients; python-tuf probes on time, scrapes answered, memory bounded, nothing left
# --------------------------------------------------------------------------------------------


def test_hanging_and_flooding_clients_are_contained_and_paged(
        e2e: Stack, faulty: dict[str, FaultyClient]) -> None:
    hang, flood = faulty[HANG[0]], faulty[FLOOD[0]]
    job = e2e.options.exporter_job
    rss = f'process_resident_memory_bytes{{job="{job}"}}'
    before = e2e.prometheus.value(f"max_over_time({rss}[30s])")
    assert before is not None

    def switch(on: bool) -> None:
        hang.set_fault(on)
        flood.set_fault(on)

    with _fleet_fault(e2e, "contained", lambda: switch(True),
                      f"{hang.name} (timeout {HANG[1]}) and {flood.name} (100 MiB, exit 1)",
                      lambda: switch(False), "faults switched off") as t0:
        # Both failed at least once (FLEET): client_timeout and client_rejected, each on what
        # it fetched last through the forwarder. Meanwhile, the python-tuf probes of the same
        # endpoint ran on time (and passed: _fleet_fault). (Not "none skipped": on 2 loaded
        # cores every repository of the stack has probes skipped, those without clients too.)
        window = f"{int(time.monotonic() - t0) + 1}s"
        age = e2e.prometheus.value(
            "max_over_time((time() - tuf_exporter_last_probe_timestamp_seconds"
            f'{{repository="contained"}})[{window}:1s])')
        assert age is not None and age < PROBE_GAP_BOUND, age
        # ... every scrape was answered within its timeout ...
        assert e2e.prometheus.value(f'min_over_time(up{{job="{job}"}}[{window}])') == 1
        slowest = e2e.prometheus.value(
            f'max_over_time(scrape_duration_seconds{{job="{job}"}}[{window}])')
        assert slowest is not None and slowest < SCRAPE_TIMEOUT, slowest
        # ... the exporter's memory did not take the flood ...
        peak = e2e.prometheus.value(f"max_over_time({rss}[{window}])")
        assert peak is not None and peak - before < FLOOD_RSS_BOUND, (before, peak)
        # ... and neither is a fault of this host (that would be TufExporterErrors, cause client).
        assert not e2e.prometheus.query("increase(tuf_exporter_errors_total"
                                        f'{{cause="client"}}[{window}]) > 0')
        # The flood's tail, its last line included: 64 KiB in the log, 4 KiB in the event (and
        # the view's page; the overview table shows the message's first words); every byte
        # before the tail counted, none kept.
        last = FLOOD_LAST_LINE.decode()
        logged = poll(lambda: _log_records(e2e, "client flood on contained/primary: "),
                      NOTIFY_TIMEOUT, "the flooding client's failure in the exporter's log")
        before_tail = FLOOD_BYTES + len(FLOOD_LAST_LINE) - OUTPUT_BOUND
        for record in logged:
            assert record["reason"] == "client_rejected", record["msg"]
            assert record["stdout"] == f"[{before_tail} earlier bytes not kept] " + \
                record["stdout"][-OUTPUT_BOUND:]
            assert record["stdout"].endswith(last)
        # The pages say what these clients are (the description names new and bootstrap views).
        for _, alert in e2e.recorder.matching(t0, alertname="TufClientViewFailing",
                                              repository="contained"):
            assert "the external client of that name" in alert["annotations"]["description"]
        # The hung runs: SIGTERM ignored, so killed by the SIGKILL the grace ends with.
        hung = _log_records(e2e, "client hang on contained/primary: ")
        assert hung and {(r["reason"], r["status"]) for r in hung} == {("client_timeout", -9)}
        events = poll(lambda: _events(e2e, "contained", FLOOD[0], "client_rejected"),
                      NOTIFY_TIMEOUT, "the flooding client's event")
        for event in events:
            assert event["message"].rstrip().endswith(last.rstrip())
            assert len(event["message"]) < MESSAGE_TAIL + 200, len(event["message"])
        for client, head in ((FLOOD[0], "refresh exited with status 1"),
                             (HANG[0], "refresh did not finish in time")):
            row = _status_page_view_row(e2e, "contained", client)
            assert (row["state"], row["Role"]) == ("failing", "timestamp"), row
            assert row["Reason"].startswith(FLEET["contained"].failing[client][0]), row
            assert row["Message"].startswith(head), row
        e2e.record("contained", f"probe age at most {age:.1f} s, slowest scrape {slowest:.2f} s, "
                   f"RSS +{(peak - before) / 2**20:.0f} MiB", time.monotonic() - t0)
    # Every process group the hanging client ran with its fault on, the child it started
    # included, is gone (killed at the timeout; the pages resolved after a later run).
    runs = hang.runs()
    groups = {int(r["pgid"]) for r in runs}
    children = {int(r["child"]) for r in runs if "child" in r}
    assert groups and children, runs
    poll(lambda: not live_processes(groups, children), NOTIFY_TIMEOUT,
         f"no process left of the {len(groups)} hung runs' groups",
         diagnose=lambda: "\n".join(live_processes(groups, children)))


def _log_records(e2e: Stack, prefix: str) -> list[dict[str, Any]]:
    """The exporter's JSON log records whose message starts with ``prefix``."""
    records = []
    with e2e.exporter.log_path.open(encoding="utf-8", errors="replace") as log:
        for line in log:
            if f'"msg": "{prefix}' in line:
                records.append(json.loads(line))
    return records


def _events(e2e: Stack, repository: str, client: str, reason: str) -> list[dict[str, Any]]:
    """The events the file sink wrote for ``client``'s view of ``repository`` failing with
    ``reason`` (verification and client_view events)."""
    found = []
    for path in sorted((e2e.tmp / "state").glob("events.jsonl*")):
        with path.open(encoding="utf-8", errors="replace") as f:
            for line in f:
                if f'"{client}"' in line and f'"{reason}"' in line:
                    event = json.loads(line)
                    if (event.get("repository"), event.get("reason"),
                            event.get("details", {}).get("client")) == (repository, reason,
                                                                        client):
                        found.append(event)
    return found


def _oncall_matrix(e2e: Stack, repository: str, tmp: Path) -> dict[str, float]:
    """The on-call dashboard's client view x endpoint matrix of ``repository``, as Prometheus
    answers its query now: view ("<repository> / <client>") -> value."""
    queries = [(where, expr) for path in build_dashboards(tmp / "dashboards")
               for where, expr in _panel_queries(json.loads(path.read_text(encoding="utf-8")),
                                                 path.stem)
               if "Client view x endpoint" in where]
    assert len(queries) == 1, queries
    expr = _fill(queries[0][1], {"repository": repository, "endpoint": ".*",
                                 "datasource": "prometheus"})
    return {r["metric"]["view"]: float(r["value"][1]) for r in e2e.prometheus.query(expr)}


def _status_page_view_row(e2e: Stack, repository: str, client: str) -> dict[str, str]:
    """The row of ``client``'s view in the status page's client view table (column -> text,
    and ``state``: the row's class)."""
    html = requests.get(f"{e2e.exporter_url}/", timeout=5).text
    table = html.split('id="views"', 1)[1].split("</table>", 1)[0]
    head = [re.sub(r"<[^>]+>", "", h).strip()
            for h in re.findall(r"<th[^>]*>(.*?)</th>", table, re.S)]
    for state, body in re.findall(r'<tr class="(\w+)">(.*?)</tr>', table, re.S):
        cells = [re.sub(r"<[^>]+>", "", c).strip()
                 for c in re.findall(r"<td[^>]*>(.*?)</td>", body, re.S)]
        row = dict(zip(head, cells, strict=True))
        if row.get("Repository") == repository and row.get("Client") == client:
            return {"state": state, **row}
    raise AssertionError(f"no row for the view {client} of {repository} in the status page")


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
