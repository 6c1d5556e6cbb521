"""The status page (``/`` and ``/endpoint``): what it shows, in what order, escaped, bounded."""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

import bcrypt
import pytest
import requests
import yaml
from prometheus_client import CollectorRegistry
from prometheus_client.core import Metric

from exporter.catalogue import family
from exporter.config.model import Config, Endpoint, Repository, Signer
from exporter.generate import alerts
from exporter.generate.alerts import AlertOptions
from exporter.probe.results import (
    ErrorCause,
    FailedRole,
    ProbeResult,
    Reason,
    RequestRecord,
    RoleFacts,
)
from exporter.probe.signers import SignerReason, SignerResult
from exporter.serve.collector import (
    RECENT_FAILURES,
    RECENT_PROBES,
    RECENT_VIEW_PROBES,
    ProbeStore,
)
from exporter.serve.status_page import StatusPage, reason_alert, view_reason_alert
from exporter.serve.web import ExporterServer

ROOT = Path(__file__).resolve().parents[2]
RUNBOOKS = ROOT / "docs" / "runbooks"
NOW = datetime(2027, 3, 1, 12, 0, tzinfo=UTC)


def _config(*mirrors: str, name: str = "repo") -> Config:
    def endpoint(n: str) -> Endpoint:
        return Endpoint(n, f"https://{n}.example/metadata/", f"https://{n}.example/targets/")

    repo = Repository(name=name, trusted_root=Path("root.json"), primary=endpoint("primary"),
                      mirrors=tuple(endpoint(m) for m in mirrors))
    return Config(repositories=(repo,))


def _facts(role: str, version: int, expires_in: timedelta) -> RoleFacts:
    return RoleFacts(role, version, NOW + expires_in, 100, "0" * 64, ("k",), (), 1)


HEALTHY = {
    "root": _facts("root", 3, timedelta(days=300)),
    "timestamp": _facts("timestamp", 42, timedelta(days=1)),
    "snapshot": _facts("snapshot", 41, timedelta(days=30)),
    "targets": _facts("targets", 7, timedelta(days=90)),
}


def _ok(endpoint: str, at: datetime = NOW, repository: str = "repo") -> ProbeResult:
    request = RequestRecord(f"https://{endpoint}.example/metadata/timestamp.json", "timestamp",
                            200, 469, 0.0, 0.012)
    return ProbeResult(repository, endpoint, True, at, 0.5, roles=HEALTHY, requests=(request,))


def _failed(endpoint: str, at: datetime = NOW, message: str = "signature threshold not met",
            reason: Reason = Reason.BAD_SIGNATURE, url: str | None = None) -> ProbeResult:
    request = RequestRecord(url or f"https://{endpoint}.example/metadata/timestamp.json",
                            "timestamp", 200, 469, 0.0, 0.034)
    return ProbeResult("repo", endpoint, False, at, 0.7, reason=reason,
                       role=FailedRole.TIMESTAMP, message=message, requests=(request,))


def _page(store: ProbeStore, config: Config, *, now: datetime = NOW,
          history: Iterable[Metric] = (), options: AlertOptions | None = None) -> StatusPage:
    return StatusPage(store, lambda: config, history_metrics=lambda: list(history),
                      options=options, clock=lambda: now.timestamp())


def _rows(html: str, table: str = "endpoints") -> list[str]:
    body = html.split(f'id="{table}"', 1)[1].split("</table>", 1)[0]
    return re.findall(r"<tr class=\"(\w+)\">(.*?)</tr>", body, re.S)


def test_failing_rows_come_first_with_reason_role_and_runbook() -> None:
    store = ProbeStore()
    store.record(_ok("primary"))
    store.record(_ok("a-mirror"))
    store.record(_failed("z-mirror"))
    options = AlertOptions(runbook_base_url="https://runbooks.example/tuf/")
    page = _page(store, _config("a-mirror", "z-mirror", "never-probed"), options=options)
    result = page.overview()
    assert result.status == 200
    rows = _rows(result.html)
    assert [state for state, _ in rows] == ["failing", "pending", "ok", "ok"]
    failing = rows[0][1]
    assert "z-mirror" in failing and "bad_signature" in failing and "timestamp" in failing
    assert ('href="https://runbooks.example/tuf/tuf-endpoint-verification-failing.md"'
            in failing)
    assert "signature threshold not met" in failing
    assert "endpoint?repository=repo&amp;endpoint=z-mirror" in failing
    assert "never-probed" in rows[1][1] and "never" in rows[1][1]
    ok = rows[2][1]  # the primary before mirrors among equals
    assert "primary" in ok and "timestamp&nbsp;42" in ok
    assert "0s ago<br><small>2027-03-01 12:00:00Z" in ok
    assert "timestamp: 2027-03-02 12:00Z" in ok and "in 1d 0h" in ok
    assert "4 endpoints: 1 failing, 0 warning, 1 not probed yet, 2 ok" in result.html


def test_every_failure_reason_links_an_existing_runbook() -> None:
    names = set(alerts.alert_names())
    for reason in (*Reason, None):
        for alert in (reason_alert(reason), view_reason_alert(reason)):
            assert alert in names, reason
            assert (RUNBOOKS / f"{alerts.kebab(alert)}.md").is_file(), reason
    page = _page(ProbeStore(), _config())
    assert page.runbook_url("TufMetadataExpired") == next(
        r["annotations"]["runbook_url"]
        for g in alerts.alert_rules(page.options)["groups"] for r in g["rules"]
        if r["alert"] == "TufMetadataExpired")


def test_warnings_follow_the_alert_thresholds_and_sort_after_failures() -> None:
    store = ProbeStore()
    soon = dict(HEALTHY, timestamp=_facts("timestamp", 42, timedelta(hours=2)))
    store.record(ProbeResult("repo", "primary", True, NOW, 0.5, roles=soon))
    store.record(_ok("lagging"))
    store.record(_ok("current"))
    lag = family("tuf_mirror_lag_seconds")
    lag.add_metric(["repo", "lagging"], 7200.0)
    lag.add_metric(["repo", "current"], 0.0)
    versions = family("tuf_mirror_lag_versions")
    versions.add_metric(["repo", "lagging", "timestamp"], 3.0)
    versions.add_metric(["repo", "lagging", "snapshot"], 2.0)
    page = _page(store, _config("lagging", "current"), history=[lag, versions])
    rows = _rows(page.overview().html)
    assert [state for state, _ in rows] == ["warning", "warning", "ok"]
    primary, lagging, current = (cells for _, cells in rows)
    assert "timestamp expires in 2h 0m" in primary
    assert "tuf-metadata-expiring-soon.md" in primary  # 2h: under the 6h ticket, over the 1h page
    assert "3 versions, behind for 2h 0m" in lagging and "tuf-mirror-lagging.md" in lagging
    assert "current" in current and "runbook" not in current


def test_remote_text_is_escaped() -> None:
    store = ProbeStore()
    evil = '<script>alert("x")</script><img src=x onerror=alert(1)>'
    store.record(_failed("mirror", message=evil, url='https://m.example/"><b>bold</b>.json'))
    page = _page(store, _config("mirror"))
    for result in (page.overview(), page.endpoint("repository=repo&endpoint=mirror")):
        assert "<script>" not in result.html and "<img" not in result.html
        assert "<b>bold" not in result.html
        assert "&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt;" in result.html


def test_endpoint_page_shows_request_log_and_failures_with_times() -> None:
    store = ProbeStore()
    store.record(_failed("mirror", NOW - timedelta(minutes=30), message="first failure"))
    store.record(_ok("mirror", NOW - timedelta(minutes=1)))
    page = _page(store, _config("mirror"))
    result = page.endpoint("repository=repo&endpoint=mirror")
    assert result.status == 200
    assert "Earlier probes (1)" in result.html
    last = result.html.partition("Earlier probes (1)")[0]
    assert "Last probe" in last
    assert "https://mirror.example/metadata/timestamp.json" in last
    assert "<td data-label=\"Status\">200</td>" in last and "469" in last
    failures = result.html.split("Last failures of this endpoint (1)", 1)[1]
    assert "2027-03-01 11:30:00Z (30m 0s ago): bad_signature, role timestamp" in failures
    assert "first failure" in failures


def test_endpoint_page_errors() -> None:
    page = _page(ProbeStore(), _config("mirror"))
    assert page.endpoint("repository=repo").status == 400
    missing = page.endpoint("repository=repo&endpoint=%3Cnope%3E")
    assert missing.status == 404 and "&#x27;&lt;nope&gt;&#x27;" in missing.html
    never = page.endpoint("repository=repo&endpoint=mirror")
    assert never.status == 200 and "not been probed yet" in never.html


def test_failures_are_kept_per_endpoint_and_bounded() -> None:
    """A constantly failing endpoint cannot push out another endpoint's rare failure."""
    store = ProbeStore()
    store.record(_failed("rare", NOW - timedelta(hours=5), message="the rare one"))
    for i in range(5 * RECENT_FAILURES):
        at = NOW - timedelta(hours=4) + timedelta(seconds=i)
        store.record(_failed("flaky", at))
        store.record(_ok("rare", at))
    rare = store.endpoint_log("repo", "rare")
    assert len(rare.recent) == RECENT_PROBES and all(p.success for p in rare.recent)
    assert [p.message for p in rare.failures] == ["the rare one"]
    flaky = store.endpoint_log("repo", "flaky")
    assert len(flaky.failures) == RECENT_FAILURES
    assert flaky.failures[0].started_at > flaky.failures[-1].started_at  # newest first
    html = _page(store, _config("rare", "flaky")).endpoint("repository=repo&endpoint=rare").html
    assert "the rare one" in html and "2027-03-01 07:00:00Z" in html
    store.expect([("repo", "flaky")])
    assert store.endpoint_log("repo", "rare").recent == ()


def test_other_client_views_keep_only_their_last_probe_and_their_failures() -> None:
    """A view that runs every 10 minutes holds its whole memory after its first pass (the soak:
    a ring of 10 cold refreshes per view kept filling for 100 minutes); its failures keep
    their own ring."""
    store = ProbeStore()
    store.record_view([replace(_failed("primary", NOW - timedelta(hours=2),
                                       message="the view's rare failure"), client="new")])
    for i in range(3 * RECENT_PROBES):
        at = NOW - timedelta(hours=1) + timedelta(minutes=10 * i)
        store.record_view([replace(_ok("primary", at), client="new")])
        store.record(_ok("primary", at))
    view = store.endpoint_log("repo", "primary", "new")
    assert RECENT_VIEW_PROBES == 1 and len(view.recent) == RECENT_VIEW_PROBES
    assert view.recent[0].started_at == NOW - timedelta(hours=1) + timedelta(minutes=290)
    assert [p.message for p in view.failures] == ["the view's rare failure"]
    assert len(store.endpoint_log("repo", "primary").recent) == RECENT_PROBES


def test_a_fault_of_this_host_is_a_probe_but_not_a_failure_of_the_endpoint() -> None:
    store = ProbeStore()
    store.record(_ok("mirror", NOW - timedelta(minutes=2)))
    store.record(ProbeResult("repo", "mirror", False, NOW, 0.1, reason=Reason.EXPORTER_ERROR,
                             message="[Errno 24] Too many open files",
                             cause=ErrorCause.DESCRIPTORS))
    log = store.endpoint_log("repo", "mirror")
    assert log.latest is not None and log.latest.success
    assert len(log.recent) == 2 and log.failures == ()
    page = _page(store, _config("mirror"))
    assert [state for state, _ in _rows(page.overview().html)] == ["pending", "ok"]
    html = page.endpoint("repository=repo&endpoint=mirror").html
    assert "exporter_error (descriptors: a fault of this host, no verdict)" in html
    assert "Last failures of this endpoint (0)" in html


def test_signers_failing_first_with_their_runbooks() -> None:
    def signer(name: str) -> Signer:
        return Signer(name, f"file:{name}.key", "repo", "timestamp")

    config = Config(repositories=_config().repositories,
                    signers=(signer("a-ok"), signer("b-down"), signer("c-stranger"),
                             signer("d-new")))
    results = [
        SignerResult("a-ok", "repo", "timestamp", NOW, up=True, authorized=True),
        SignerResult("b-down", "repo", "timestamp", NOW - timedelta(minutes=5), up=False,
                     authorized=None, reason=SignerReason.KEY_UNAVAILABLE,
                     message="<pkcs11> token not present"),
        SignerResult("c-stranger", "repo", "timestamp", NOW, up=True, authorized=False),
    ]
    page = StatusPage(ProbeStore(), lambda: config, signer_results=lambda: results,
                      clock=lambda: NOW.timestamp())
    rows = _rows(page.overview().html, "signers")
    assert [state for state, _ in rows] == ["failing", "failing", "pending", "ok"]
    down, stranger, new, ok = (cells for _, cells in rows)
    assert "b-down" in down and "key_unavailable" in down and "tuf-signer-down.md" in down
    assert "5m 0s ago" in down and "&lt;pkcs11&gt; token not present" in down
    assert "c-stranger" in stranger and "tuf-signer-key-unauthorized.md" in stranger
    assert "d-new" in new and "never" in new
    assert "a-ok" in ok and "runbook" not in ok


@pytest.fixture
def served(tmp_path: Path) -> Iterator[str]:
    store = ProbeStore()
    store.record(_failed("mirror"))
    web = tmp_path / "web.yml"
    hashed = bcrypt.hashpw(b"s3cret", bcrypt.gensalt(rounds=4)).decode()
    web.write_text(yaml.safe_dump({"basic_auth_users": {"sre": hashed}}))
    server = ExporterServer("127.0.0.1:0", CollectorRegistry(), ready=lambda: True,
                            reload=lambda: (True, ""), web_config_file=web,
                            status_page=_page(store, _config("mirror")))
    server.start()
    try:
        yield server.url
    finally:
        server.stop()


def test_served_at_root_and_endpoint_with_the_same_auth_as_metrics(served: str) -> None:
    for path in ("", "endpoint?repository=repo&endpoint=mirror", "metrics"):
        assert requests.get(served + path, timeout=5).status_code == 401, path
    page = requests.get(served, auth=("sre", "s3cret"), timeout=5)
    assert page.status_code == 200
    assert page.headers["Content-Type"] == "text/html; charset=utf-8"
    assert page.headers["Cache-Control"] == "no-store"
    assert 'name="viewport"' in page.text and "<script" not in page.text
    detail = requests.get(served + "endpoint?repository=repo&endpoint=mirror",
                          auth=("sre", "s3cret"), timeout=5)
    assert detail.status_code == 200 and "bad_signature" in detail.text


def test_expiry_warnings_are_relative_to_the_normal_lifetime_as_the_alerts_are() -> None:
    # a 7-day snapshot re-signed daily (6.5 days left) is healthy once its normal lifetime is
    # known, as TufMetadataExpiringSoon judges it; a 1-day timestamp with 5 h left tickets
    store = ProbeStore()
    roles = dict(HEALTHY, snapshot=_facts("snapshot", 41, timedelta(days=6, hours=12)),
                 timestamp=_facts("timestamp", 42, timedelta(hours=5)))
    store.record(ProbeResult("repo", "primary", True, NOW, 0.5, roles=roles))
    lifetime = family("tuf_metadata_normal_lifetime_seconds")
    lifetime.add_metric(["repo", "snapshot"], 7 * 86400.0)
    lifetime.add_metric(["repo", "timestamp"], 86400.0)
    ((state, cells),) = _rows(_page(store, _config(), history=[lifetime]).overview().html)
    assert state == "warning"
    assert "timestamp expires in 5h 0m" in cells
    assert "snapshot expires" not in cells
    # without a known lifetime the fixed caps apply: the same snapshot warns (7-day cap)
    alone = ProbeStore()
    alone.record(ProbeResult("repo", "primary", True, NOW, 0.5,
                             roles=dict(HEALTHY, snapshot=roles["snapshot"])))
    ((_, unknown),) = _rows(_page(alone, _config()).overview().html)
    assert "snapshot expires" in unknown
    ((healthy, _),) = _rows(_page(alone, _config(), history=[lifetime]).overview().html)
    assert healthy == "ok"
    assert alerts.expiry_threshold(0.25, 1800, 86400, 7 * 86400.0) == 86400  # capped
    assert alerts.expiry_threshold(0.25, 1800, 86400, 4000.0) == 1800  # floored
    assert alerts.expiry_threshold(0.25, 1800, 86400, None) == 86400


def test_client_views_have_a_row_each_failing_first() -> None:
    """Issue 16: one row per client view besides returning, under its endpoint; an external
    client (issue 17) is a view like the others, named by its client name. A failing view
    links the runbook of the alert that pages for it, TufClientViewFailing."""

    store = ProbeStore()
    store.record(_ok("primary"))
    store.record(_ok("mirror"))
    tuf_js = replace(_failed("primary", reason=Reason.CLIENT_REJECTED,
                             message="refresh exited with status 1 after 0.4 s; stderr: "
                             "timestamp was signed by 0/1 keys"), client="tuf-js")
    store.record_view([replace(_ok("primary"), client="new"),
                       replace(_ok("primary"), client="bootstrap-root-v1"), tuf_js])
    store.record_view([replace(_ok("mirror"), client="new"),
                       replace(_failed("mirror", reason=Reason.MISSING,
                                       message="HTTP 404 for 2.root.json"),
                               client="bootstrap-root-v1"),
                       replace(_ok("mirror"), client="tuf-js")])
    options = AlertOptions(runbook_base_url="https://runbooks.example/tuf/")
    result = _page(store, _config("mirror"), options=options).overview()
    assert [state for state, _ in _rows(result.html)] == ["ok", "ok"]  # endpoints unchanged
    views = _rows(result.html, "views")
    cells = [re.findall(r"<td[^>]*>(.*?)</td>", row, re.S) for _, row in views]
    assert [(state, c[2], re.sub("<[^>]+>", "", c[3])) for (state, _), c in zip(
        views, cells, strict=True)] == [
        ("failing", "primary", "tuf-js"), ("failing", "mirror", "bootstrap-root-v1"),
        ("ok", "primary", "bootstrap-root-v1"), ("ok", "primary", "new"),
        ("ok", "mirror", "new"), ("ok", "mirror", "tuf-js")]
    view_runbook = 'href="https://runbooks.example/tuf/tuf-client-view-failing.md"'
    assert "client_rejected" in cells[0][4] and view_runbook in cells[0][4]
    assert cells[0][5] == "timestamp"
    assert "timestamp was signed by 0/1 keys" in cells[0][8]
    assert "missing" in cells[1][4] and view_runbook in cells[1][4]
    assert "HTTP 404 for 2.root.json" in cells[1][8]
    cells = cells[1:]
    page = _page(store, _config("mirror"))
    link = re.search(r'href="(endpoint\?[^"]+)"', cells[0][3])
    assert link is not None
    detail = page.endpoint(link.group(1).split("?", 1)[1].replace("&amp;", "&"))
    assert detail.status == 200
    assert "client view bootstrap-root-v1" in detail.html
    assert "HTTP 404 for 2.root.json" in detail.html
    assert page.endpoint("repository=repo&endpoint=mirror&client=nope").status == 404
    detail = _page(store, _config("mirror"), options=options).endpoint(
        "repository=repo&endpoint=primary&client=tuf-js")
    assert detail.status == 200 and "client view tuf-js" in detail.html
    assert "client_rejected" in detail.html and view_runbook in detail.html
    empty = _page(ProbeStore(), _config()).overview().html
    assert "No client view has been probed yet" in empty


def test_a_long_message_keeps_its_end_where_a_client_says_why() -> None:
    """A client that printed megabytes of trace says why it failed last: the overview shows the
    start and the end of its message, the view's page the whole of it."""
    trace = "".join(f"trace line {i}\n" for i in range(400))
    message = (f"refresh exited with status 1 after 3.2 s; stdout: {trace}"
               "Error: timestamp signature threshold not met")
    store = ProbeStore()
    store.record(_ok("primary"))
    store.record_view([replace(_failed("primary", message=message, reason=Reason.CLIENT_REJECTED),
                               client="tuf-js")])
    page = _page(store, _config())
    ((_, cells),) = _rows(page.overview().html, "views")
    assert "refresh exited with status 1" in cells
    assert "Error: timestamp signature threshold not met" in cells
    assert "trace line 200" not in cells
    detail = page.endpoint("repository=repo&endpoint=primary&client=tuf-js").html
    assert "trace line 200" in detail
