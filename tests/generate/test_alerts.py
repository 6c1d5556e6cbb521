"""Generated rule files and the Alertmanager example: single source of truth and behaviour.

promtool/amtool tests skip (with a reason) only where the binaries are missing; CI installs them.
"""

from __future__ import annotations

import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from exporter import catalogue
from exporter.config.durations import parse_duration
from exporter.generate import alerts
from exporter.generate.alerts import AlertOptions

ROOT = Path(__file__).resolve().parents[2]
ALERTS_DIR = ROOT / "alerts"
TESTS_DIR = ALERTS_DIR / "tests"
RUNBOOKS = ROOT / "docs" / "runbooks"
REGENERATE = "./scripts/generate"

PROMTOOL = shutil.which("promtool") or "promtool"
AMTOOL = shutil.which("amtool") or "amtool"
needs_promtool = pytest.mark.skipif(shutil.which("promtool") is None,
                                    reason="promtool is not installed (CI installs it)")
needs_amtool = pytest.mark.skipif(shutil.which("amtool") is None,
                                  reason="amtool is not installed (CI installs it)")


def _rules(doc: dict[str, Any]) -> list[dict[str, Any]]:
    return [r for g in doc["groups"] for r in g["rules"]]


def _alert_rules() -> list[dict[str, Any]]:
    return _rules(alerts.alert_rules(AlertOptions()))


def _promtool_tests() -> list[dict[str, Any]]:
    return [yaml.safe_load(p.read_text()) for p in sorted(TESTS_DIR.glob("*.yml"))]


# --- single source of truth -----------------------------------------------------------------


def test_tokenizer_finds_metrics_not_functions_labels_or_durations() -> None:
    expr = ('sum by (repository) (rate(tuf_probes_total{result="success", x=~"a|b"}[5m])) '
            '/ on (repository) group_left (role) a:b:c > bool 0.5 or absent(up{job="j"}) '
            'and time() - 1e3 * tuf_root_version offset 1h')
    assert alerts.promql_metric_names(expr) == {
        "tuf_probes_total", "a:b:c", "up", "tuf_root_version"}


def test_every_rule_expression_uses_only_catalogue_metrics_or_recording_rules() -> None:
    options = AlertOptions()
    allowed = set(catalogue.METRICS) | alerts.recording_rule_names(options) | alerts.BUILTIN_METRICS
    rules = _rules(alerts.recording_rules(options)) + _alert_rules()
    for rule in rules:
        unknown = alerts.promql_metric_names(rule["expr"]) - allowed
        assert not unknown, f"{rule.get('alert') or rule.get('record')}: unknown {unknown}"


def test_m_fails_loudly_on_unknown_metric() -> None:
    with pytest.raises(KeyError, match="tuf_no_such_metric"):
        alerts.m("tuf_no_such_metric")


def test_recording_rules_follow_level_metric_operations_and_cover_windows() -> None:
    names = alerts.recording_rule_names()
    for window in ("5m", "30m", "1h", "2h", "6h", "1d", "3d", "30d"):
        assert f"repository:tuf_probe_success:ratio_rate{window}" in names
    assert "repository_endpoint:tuf_probe_success:ratio_rate5m" in names
    for name in names:
        assert len(name.split(":")) == 3, name


@pytest.mark.parametrize("name", list(alerts.render()))
def test_committed_files_are_fresh(name: str, tmp_path: Path) -> None:
    fresh = {p.name: p.read_bytes() for p in alerts.build_alerts(tmp_path)}
    committed = ALERTS_DIR / name
    assert committed.exists(), f"{committed} is missing; run `{REGENERATE}`"
    assert committed.read_bytes() == fresh[name], (
        f"{committed} is stale; regenerate it with `{REGENERATE}`")


def test_generation_is_deterministic(tmp_path: Path) -> None:
    a = [p.read_bytes() for p in alerts.build_alerts(tmp_path / "a")]
    b = [p.read_bytes() for p in alerts.build_alerts(tmp_path / "b")]
    assert a == b
    assert all(content.endswith(b"\n") for content in a)


# --- alert conventions ----------------------------------------------------------------------


def test_every_alert_has_severity_annotations_and_runbook() -> None:
    rules = _alert_rules()
    names = [r["alert"] for r in rules]
    assert len(names) == len(set(names)), "duplicate alert names"
    for rule in rules:
        name = rule["alert"]
        assert rule["labels"]["severity"] in ("page", "ticket"), name
        ann = rule["annotations"]
        assert set(ann) == {"summary", "description", "runbook_url"}, name
        assert "{{" in ann["description"], f"{name}: description has no templating"
        assert ann["runbook_url"].endswith(f"/{alerts.kebab(name)}.md"), name
        runbook = RUNBOOKS / f"{alerts.kebab(name)}.md"
        assert runbook.is_file(), f"{name}: runbook {runbook} is missing"


def test_runbooks_have_the_standard_sections() -> None:
    for name in alerts.alert_names():
        text = (RUNBOOKS / f"{alerts.kebab(name)}.md").read_text()
        assert text.startswith(f"# {name}"), name
        for section in ("## Symptom", "## Impact", "## Checks", "## Mitigation", "## Escalation"):
            assert section in text, f"{name}: runbook lacks {section}"
        assert "```promql" in text, f"{name}: runbook has no PromQL check"


def test_severities_match_the_policy() -> None:
    severity = {r["alert"]: r["labels"]["severity"] for r in _alert_rules()}
    for page in ("TufErrorBudgetBurnFast", "TufMetadataExpired", "TufMetadataExpiringCritical",
                 "TufVerificationMassFailure", "TufRollbackDetected", "TufPossibleKeyCompromise",
                 "TufSignerKeyUnauthorized", "TufExporterDown", "TufClientViewFailing"):
        assert severity[page] == "page", page
    for ticket in ("TufErrorBudgetBurnSlow", "TufMetadataExpiringSoon",
                   "TufEndpointVerificationFailing", "TufMirrorLagging", "TufMetadataAnomaly"):
        assert severity[ticket] == "ticket", ticket


# --- options ----------------------------------------------------------------------------------


def test_options_change_numbers_not_code_path(tmp_path: Path) -> None:
    config = tmp_path / "alerts.yml"
    config.write_text(
        "slo_target: 0.99\n"
        "exporter_job: tuf\n"
        "runbook_base_url: https://runbooks.example/tuf/\n"
        "mirror_lag_seconds: 10m\n"
        "expiry_page_seconds: {timestamp: 30m}\n"
        "endpoint_failure_for: 30s\n"
        "mass_failure_for: 10s\n"
        "page_webhook_url: http://127.0.0.1:5001/page\n"
        "burn_alerts:\n"
        "  - {name: TufErrorBudgetBurnFast, severity: page, for: 0s,\n"
        "     windows: [{factor: 14.4, long: 2m, short: 30s}]}\n")
    options = AlertOptions.from_yaml(config)
    assert options.expiry_page_seconds["timestamp"] == 1800
    assert options.expiry_page_seconds["root"] == 7 * 86400  # defaults kept
    out = alerts.render(options)
    rules = out[alerts.ALERT_RULES_FILE]
    assert "(14.4 * 0.01)" in rules
    assert 'up{job="tuf"}' in rules
    assert "tuf_mirror_lag_seconds > 600" in rules
    assert '(tuf_metadata_expiry_margin_seconds{role="timestamp"} > 0) < 1800' in rules
    assert "https://runbooks.example/tuf/tuf-exporter-down.md" in rules
    assert "for: 30s" in rules
    assert "repository:tuf_probe_success:ratio_rate30s" in out[alerts.RECORDING_RULES_FILE]
    assert "http://127.0.0.1:5001/page" in out[alerts.ALERTMANAGER_FILE]
    paths = alerts.build_alerts(tmp_path / "out", options)
    assert sorted(p.name for p in paths) == sorted(out)


def test_options_reject_unknown_keys_and_bad_values(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="unknown alert option"):
        AlertOptions.from_mapping({"slo_targett": 0.99})
    with pytest.raises(ValueError, match="slo_target"):
        AlertOptions(slo_target=1.5)
    with pytest.raises(ValueError, match="duration"):
        AlertOptions.from_mapping({"mirror_lag_for": "soon"})


def test_expiry_options_are_checked_and_read_from_yaml() -> None:
    options = AlertOptions.from_mapping({"expiry_ticket_lifetime_ratio": "0.3",
                                         "expiry_page_min_seconds": "10m"})
    assert options.expiry_ticket_lifetime_ratio == 0.3
    assert options.expiry_page_min_seconds == 600
    rules = alerts.render(options)[alerts.ALERT_RULES_FILE]
    assert "clamp(0.3 * max by (repository, role) (tuf_metadata_normal_lifetime_seconds" in rules
    with pytest.raises(ValueError, match="expiry_ticket_lifetime_ratio"):
        AlertOptions.from_mapping({"expiry_ticket_lifetime_ratio": 0})
    with pytest.raises(ValueError, match="must not exceed"):
        AlertOptions.from_mapping({"expiry_page_lifetime_ratio": 0.5})
    with pytest.raises(ValueError, match=r"expiry_page_min_seconds .* \(not for timestamp\)"):
        AlertOptions.from_mapping({"expiry_page_min_seconds": "2h"})


@pytest.mark.parametrize(("ticket", "page"), [("expiry_ticket_for", "expiry_page_for"),
                                              ("endpoint_failure_for", "mass_failure_for")])
def test_options_reject_a_ticket_that_could_beat_its_inhibiting_page(ticket: str,
                                                                      page: str) -> None:
    with pytest.raises(ValueError, match=f"{ticket} .* must be longer than {page}"):
        AlertOptions.from_mapping({ticket: "5m", page: "5m"})
    AlertOptions.from_mapping({ticket: "6m", page: "5m"})


def test_cli_alerts_build(tmp_path: Path) -> None:
    from exporter import cli

    options = tmp_path / "options.yml"
    options.write_text("exporter_job: my-exporter\n")
    assert cli.main(["alerts", "build", "--out", str(tmp_path / "out"),
                     "--config", str(options)]) == 0
    rules = (tmp_path / "out" / alerts.ALERT_RULES_FILE).read_text()
    assert 'job="my-exporter"' in rules


# --- promtool -------------------------------------------------------------------------------


@needs_promtool
def test_promtool_check_rules() -> None:
    files = [str(ALERTS_DIR / name)
             for name in (alerts.RECORDING_RULES_FILE, alerts.ALERT_RULES_FILE)]
    result = subprocess.run([PROMTOOL, "check", "rules", *files],
                            capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stdout + result.stderr


@needs_promtool
def test_promtool_unit_tests_pass() -> None:
    files = sorted(str(p) for p in TESTS_DIR.glob("*.yml"))
    assert files, "no promtool tests under alerts/tests/"
    result = subprocess.run([PROMTOOL, "test", "rules", *files],
                            capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stdout + result.stderr


def test_every_alert_is_covered_by_promtool_tests_firing_and_quiet() -> None:
    firing: set[str] = set()
    quiet: set[str] = set()
    for doc in _promtool_tests():
        for group in doc["tests"]:
            for case in group.get("alert_rule_test", []):
                (firing if case.get("exp_alerts") else quiet).add(case["alertname"])
    names = set(alerts.alert_names())
    assert names - firing == set(), "alerts never expected to fire in alerts/tests/"
    assert names - quiet == set(), "alerts never expected to stay quiet in alerts/tests/"
    assert (firing | quiet) - names == set(), "promtool tests name unknown alerts"


# --- amtool ---------------------------------------------------------------------------------

AM_CONFIG = ALERTS_DIR / alerts.ALERTMANAGER_FILE


@needs_amtool
def test_amtool_check_config() -> None:
    result = subprocess.run([AMTOOL, "check-config", str(AM_CONFIG)],
                            capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stdout + result.stderr


@needs_amtool
@pytest.mark.parametrize(("labels", "receiver"), [
    (["severity=page", "alertname=TufMetadataExpired", "repository=r", "endpoint=primary"],
     "tuf-page"),
    (["severity=ticket", "alertname=TufMirrorLagging", "repository=r", "endpoint=m1"],
     "tuf-ticket"),
])
def test_amtool_routes(labels: list[str], receiver: str) -> None:
    result = subprocess.run(
        [AMTOOL, "config", "routes", "test", f"--config.file={AM_CONFIG}",
         f"--verify.receivers={receiver}", *labels],
        capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.strip() == receiver


def test_alertmanager_inhibits_mirror_alerts_on_mass_or_primary_failure() -> None:
    config = yaml.safe_load(AM_CONFIG.read_text())
    assert config["route"]["group_by"] == ["alertname", "repository"]
    inhibits = config["inhibit_rules"]
    sources = {tuple(rule["source_matchers"]) for rule in inhibits
               if 'endpoint!="primary"' in rule["target_matchers"]}
    assert ('alertname="TufVerificationMassFailure"',) in sources
    assert ('alertname="TufEndpointVerificationFailing"', 'endpoint="primary"') in sources
    for rule in inhibits:
        if 'endpoint!="primary"' in rule["target_matchers"]:
            assert rule["equal"] == ["repository"]
            # security alerts are never inhibited
            assert "TufRollbackDetected" not in str(rule["target_matchers"])
    text = AM_CONFIG.read_text()
    assert "mute_time_intervals" in text and "amtool silence add" in text


def test_runbook_queries_use_only_catalogue_metrics() -> None:
    allowed = set(catalogue.METRICS) | alerts.recording_rule_names() | alerts.BUILTIN_METRICS
    for path in sorted(RUNBOOKS.glob("*.md")):
        blocks = path.read_text().split("```promql\n")[1:]
        for block in blocks:
            expr = block.split("```", 1)[0]
            unknown = alerts.promql_metric_names(expr) - allowed
            assert not unknown, f"{path.name}: {expr.strip()} uses {unknown}"


def test_dashboard_windows_are_recorded_whatever_the_burn_windows() -> None:
    options = AlertOptions(
        recording_interval="15s",
        burn_alerts=(alerts.BurnAlert("TufErrorBudgetBurnFast", alerts.PAGE,
                                      (alerts.BurnWindow(14.4, "30m", "2m"),), "1m"),))
    names = alerts.recording_rule_names(options)
    for window in alerts.DASHBOARD_WINDOWS:
        assert alerts.sli_record_name(("repository",), window) in names
    assert "repository:tuf_probe_success:ratio_rate30m" in names
    groups = alerts.recording_rules(options)["groups"]
    assert [g["interval"] for g in groups] == ["15s"]
    with pytest.raises(ValueError, match="recording_interval"):
        AlertOptions(recording_interval="often")


# --- expiry relative to each role's normal lifetime: real repositories ------------------------

DAY = 86400.0
HOUR = 3600.0
#: tuf-on-ci's online-sign workflow runs every few hours: an online role is re-signed at the
#: latest this long after its signing period began.
ONLINE_SLACK = 6 * HOUR
#: An offline role (root, targets) is re-signed by people: a signing event opened when the
#: signing period begins collects its signatures within a week.
OFFLINE_SLACK = 7 * DAY


@dataclass(frozen=True)
class ExpiryShape:
    """How one role of one repository lives: signed for ``lifetime`` seconds, re-signed when
    ``lowest`` seconds are left (the lowest margin of the healthy repository)."""

    repository: str  #: folder under ../shared/fixtures/real, or "simulator"
    role: str
    lifetime: float
    lowest: float
    #: tuf-on-ci's (expiry period, signing period) in days, as the fixture's metadata says
    tuf_on_ci: tuple[int, int] | None = None


def _tuf_on_ci(repository: str, role: str, expiry_days: int, signing_days: int) -> ExpiryShape:
    slack = ONLINE_SLACK if role in ("timestamp", "snapshot") else OFFLINE_SLACK
    return ExpiryShape(repository, role, expiry_days * DAY, signing_days * DAY - slack,
                       (expiry_days, signing_days))


#: Every top-level role of the six real repositories (../shared/fixtures/real/*/FACTS.txt and
#: the x-tuf-on-ci-expiry-period / -signing-period their metadata carries), and the simulator's
#: defaults (the demo re-signs timestamp and snapshot every few seconds).
EXPIRY_SHAPES: tuple[ExpiryShape, ...] = (
    *(_tuf_on_ci(repo, role, e, s)
      for repo in ("sigstore-2026-08-21", "sigstore-2025-05-19")
      for role, e, s in (("root", 197, 46), ("timestamp", 7, 6), ("snapshot", 3650, 365),
                         ("targets", 3650, 31))),
    *(_tuf_on_ci("sigstore-staging-2026-08-21", role, e, s)
      for role, e, s in (("root", 182, 35), ("timestamp", 7, 6), ("snapshot", 3650, 365),
                         ("targets", 3650, 365))),
    *(_tuf_on_ci("docker-tuf-2024-12-03", role, e, s)
      for role, e, s in (("root", 365, 60), ("timestamp", 2, 1), ("snapshot", 365, 60),
                         ("targets", 365, 60))),
    *(_tuf_on_ci("jku-tuf-demo-2026-08-21", role, e, s)
      for role, e, s in (("root", 364, 60), ("timestamp", 2, 1), ("snapshot", 365, 60),
                         ("targets", 365, 60))),
    # Legacy sigstore (before tuf-on-ci): a weekly job re-signs snapshot (21 days) and
    # timestamp (7 days) together: its 68 N.snapshot.json files expire 7 days apart, timestamp
    # v144 expires one second after snapshot v119 minus 14 days. Its timestamp is re-signed
    # when it expires (see LEGACY_TIMESTAMP); when root v8 and targets v8 were signed is not
    # recorded (v7 expired 2023-10-04): the tuf-on-ci roots above cover six-month roots.
    ExpiryShape("sigstore-legacy-2023-12-26", "snapshot", 21 * DAY, 14 * DAY),
    *(ExpiryShape("simulator", role, lifetime, lifetime - HOUR)
      for role, lifetime in (("root", 365 * DAY), ("timestamp", DAY), ("snapshot", 7 * DAY),
                             ("targets", 90 * DAY))),
)


#: Legacy sigstore's timestamp: signed for 7 days by the weekly job that re-signs it, so it
#: is re-signed when it expires (v144 was signed at 16:06:35 and published with the commit at
#: 16:34:17: the live timestamp was expired for about half an hour every week).
LEGACY_TIMESTAMP = ExpiryShape("sigstore-legacy-2023-12-26", "timestamp", 7 * DAY, 0.0)


def test_a_timestamp_re_signed_only_when_it_expires_is_warned_about() -> None:
    """No rule can tell that schedule from a stopped signer before expiry: the warnings that
    come in time for the one come every week for the other, and say what is true."""
    o = AlertOptions()
    assert _threshold(LEGACY_TIMESTAMP, "ticket", o) == 6 * HOUR
    assert _threshold(LEGACY_TIMESTAMP, "page", o) == HOUR
    assert _threshold(LEGACY_TIMESTAMP, "page", o) > LEGACY_TIMESTAMP.lowest


def _threshold(shape: ExpiryShape, kind: str, o: AlertOptions) -> float:
    """What ``alerts.expiry_threshold_expr`` computes, for the expectations."""
    ratio = getattr(o, f"expiry_{kind}_lifetime_ratio")
    floor = getattr(o, f"expiry_{kind}_min_seconds")
    cap = getattr(o, f"expiry_{kind}_seconds")[shape.role]
    return float(min(max(ratio * shape.lifetime, floor), cap))


def _humanize_duration(seconds: float) -> str:
    """Prometheus' humanizeDuration for whole seconds >= 60 (what the annotations show)."""
    s = int(seconds)
    days, s = divmod(s, 86400)
    hours, s = divmod(s, 3600)
    minutes, s = divmod(s, 60)
    if days:
        return f"{days}d {hours}h {minutes}m {s}s"
    if hours:
        return f"{hours}h {minutes}m {s}s"
    return f"{minutes}m {s}s"


def _expiry_alert(name: str, shape: ExpiryShape, margin: float) -> dict[str, Any]:
    where = f"{shape.role} metadata of {shape.repository} on primary"
    after = {"TufMetadataExpiringSoon": "re-sign it before clients refuse it.",
             "TufMetadataExpiringCritical": "once expired every client refuses to update from "
                                            "this repository."}[name]
    summary = {"TufMetadataExpiringSoon": f"{where} expires soon",
               "TufMetadataExpiringCritical": f"{where} is about to expire"}[name]
    return {
        "exp_labels": {"severity": "ticket" if name == "TufMetadataExpiringSoon" else "page",
                       "repository": shape.repository, "endpoint": "primary",
                       "role": shape.role},
        "exp_annotations": {
            "summary": summary,
            "description": f"{where} expires in {_humanize_duration(margin)}; {after}",
            "runbook_url": f"{AlertOptions().runbook_base_url}/{alerts.kebab(name)}.md",
        },
    }


def _countdown_group(shape: ExpiryShape, start: float, minutes: int) -> dict[str, Any]:
    """The margin of ``shape`` from ``start`` down one minute per minute, its lifetime known."""
    labels = f'repository="{shape.repository}", endpoint="primary", role="{shape.role}"'
    return {"interval": "1m", "input_series": [
        {"series": f"tuf_metadata_expiry_margin_seconds{{{labels}}}",
         "values": f"{alerts._num(start)}-60x{minutes}"},
        {"series": f'tuf_metadata_normal_lifetime_seconds{{repository="{shape.repository}", '
                   f'role="{shape.role}"}}',
         "values": f"{alerts._num(shape.lifetime)}x{minutes}"},
    ], "alert_rule_test": []}


def _expiry_shape_tests(shape: ExpiryShape, o: AlertOptions) -> list[dict[str, Any]]:
    soon, critical = "TufMetadataExpiringSoon", "TufMetadataExpiringCritical"
    ticket, page = _threshold(shape, "ticket", o), _threshold(shape, "page", o)
    ticket_for = parse_duration(o.expiry_ticket_for) / 60
    page_for = parse_duration(o.expiry_page_for) / 60
    # Healthy: the margin at its lowest (down to the moment of re-signing), for 40 minutes,
    # longer than every "for": quiet. Every other moment of the cycle has a larger margin.
    healthy = _countdown_group(shape, shape.lowest + 2400, 40)
    healthy["alert_rule_test"] = [{"eval_time": "40m", "alertname": name, "exp_alerts": []}
                                  for name in (soon, critical)]
    # Re-signing stopped: the margin crosses the ticket threshold at t=10m (strictly under it
    # from 11m); the ticket fires once its "for" has passed, well before expiry.
    fires = 11 + ticket_for
    stopped = _countdown_group(shape, ticket + 600, 40)
    stopped["alert_rule_test"] = [
        {"eval_time": f"{fires - 1:g}m", "alertname": soon, "exp_alerts": []},
        {"eval_time": f"{fires:g}m", "alertname": soon,
         "exp_alerts": [_expiry_alert(soon, shape, ticket + 600 - 60 * fires)]},
    ]
    # ... and later the page, the same way around the page threshold.
    fires = 11 + page_for
    later = _countdown_group(shape, page + 600, 40)
    later["alert_rule_test"] = [
        {"eval_time": f"{fires - 1:g}m", "alertname": critical, "exp_alerts": []},
        {"eval_time": f"{fires:g}m", "alertname": critical,
         "exp_alerts": [_expiry_alert(critical, shape, page + 600 - 60 * fires)]},
    ]
    return [healthy, stopped, later]


def test_expiry_shapes_warn_late_enough_to_be_quiet_and_early_enough_to_act() -> None:
    o = AlertOptions()
    for shape in EXPIRY_SHAPES:
        ticket, page = _threshold(shape, "ticket", o), _threshold(shape, "page", o)
        name = f"{shape.repository}/{shape.role}"
        assert ticket < shape.lowest, f"{name}: ticket at {ticket:g}s on a healthy repository"
        assert page < ticket, name
        # in time: the ticket leaves at least a quarter of the role's life (or the full cap)
        # and the page at least the page floor, before expiry
        assert ticket >= min(shape.lifetime / 4, o.expiry_ticket_seconds[shape.role]), name
        assert page >= o.expiry_page_min_seconds, name


def test_expiry_shapes_match_the_real_repositories() -> None:
    """The tuf-on-ci periods of the table are those of the fixtures' metadata."""
    from support import REAL
    if not REAL.is_dir():
        pytest.skip(f"real repositories not available: {REAL} is absent")
    for shape in EXPIRY_SHAPES:
        if shape.tuf_on_ci is None:
            continue
        folder = REAL / shape.repository
        roots = sorted(folder.glob("*.root.json"), key=lambda p: int(p.name.split(".")[0]))
        root = yaml.safe_load(roots[-1].read_text())["signed"]
        if shape.role in ("timestamp", "snapshot"):
            fields = root["roles"][shape.role]
        elif shape.role == "root":
            fields = root
        else:
            files = sorted(folder.glob("*.targets.json"), key=lambda p: int(p.name.split(".")[0]))
            fields = yaml.safe_load(files[-1].read_text())["signed"]
        assert (fields["x-tuf-on-ci-expiry-period"], fields["x-tuf-on-ci-signing-period"]) == \
            shape.tuf_on_ci, f"{shape.repository}/{shape.role}"


@needs_promtool
def test_promtool_expiry_of_the_real_repositories(tmp_path: Path) -> None:
    """Healthy: no expiry alert at the lowest margin of each role's cycle; re-signing stopped:
    ticket, then page, before expiry (run against the committed rules)."""
    o = AlertOptions()
    doc = {
        "rule_files": [str(ALERTS_DIR / alerts.RECORDING_RULES_FILE),
                       str(ALERTS_DIR / alerts.ALERT_RULES_FILE)],
        "evaluation_interval": "1m",
        "group_eval_order": ["tuf-exporter-sli", "tuf-exporter-slo", "tuf-exporter-symptoms"],
        "tests": [group for shape in EXPIRY_SHAPES for group in _expiry_shape_tests(shape, o)]
        # re-signed only when it expires: only the "stopped" half holds
        + _expiry_shape_tests(LEGACY_TIMESTAMP, o)[1:],
    }
    path = tmp_path / "expiry-real.test.yml"
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    result = subprocess.run([PROMTOOL, "test", "rules", str(path)],
                            capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stdout[-6000:] + result.stderr[-2000:]
