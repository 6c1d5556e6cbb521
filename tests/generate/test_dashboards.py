"""Generated Grafana dashboards: catalogue-only queries, full catalogue coverage, freshness."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from exporter import catalogue
from exporter.generate import alerts, dashboards

ROOT = Path(__file__).resolve().parents[2]
DASHBOARDS_DIR = ROOT / "dashboards"
REGENERATE = "./scripts/generate"


def _boards() -> dict[str, dict[str, Any]]:
    return {name: json.loads(text) for name, text in dashboards.render().items()}


def _panels(board: dict[str, Any]) -> list[dict[str, Any]]:
    out = []
    for panel in board["panels"]:
        out.append(panel)
        out.extend(panel.get("panels", []))
    return out


def test_every_query_uses_only_catalogue_metrics_or_recording_rules() -> None:
    allowed = set(catalogue.METRICS) | alerts.recording_rule_names() | alerts.BUILTIN_METRICS
    for name, board in _boards().items():
        for expr in dashboards.expressions(board):
            unknown = alerts.promql_metric_names(expr) - allowed
            assert not unknown, f"{name}: {expr} uses {unknown}"


def test_every_catalogue_metric_is_on_some_panel() -> None:
    used: set[str] = set()
    for board in _boards().values():
        for panel in _panels(board):
            for target in panel.get("targets", []):
                used |= alerts.promql_metric_names(target["expr"])
    missing = set(catalogue.METRICS) - used
    assert not missing, f"catalogue metrics on no panel: {sorted(missing)}"


def test_check_rejects_unknown_metric() -> None:
    with pytest.raises(ValueError, match="tuf_renamed_metric"):
        dashboards.check({"targets": [{"expr": 'rate(tuf_renamed_metric{a="b"}[5m])'}]})


def test_template_variables_links_and_uids() -> None:
    boards = _boards()
    uids = {b["uid"] for b in boards.values()}
    assert uids == {"tuf-executive", "tuf-oncall", "tuf-debug"}
    for name, board in boards.items():
        variables = {v["name"]: v for v in board["templating"]["list"]}
        assert set(variables) == {"datasource", "repository", "endpoint"}, name
        assert variables["datasource"]["type"] == "datasource"
        for var in ("repository", "endpoint"):
            assert variables[var]["multi"] and variables[var]["includeAll"], (name, var)
            assert variables[var]["query"].startswith("label_values(tuf_probe_success"), var
        links = {link["url"] for link in board["links"]}
        assert links == {f"/d/{uid}" for uid in uids - {board["uid"]}}, name
        ids = [p["id"] for p in _panels(board)]
        assert len(ids) == len(set(ids)), f"{name}: duplicate panel ids"


def test_debug_dashboard_annotates_key_rotations() -> None:
    board = _boards()[dashboards.DEBUG.file]
    exprs = " ".join(a["expr"] for a in board["annotations"]["list"])
    assert "tuf_key_rotations_total" in exprs and "tuf_root_version" in exprs


def test_oncall_expiry_panels_draw_alert_thresholds() -> None:
    board = _boards()[dashboards.ONCALL.file]
    options = alerts.AlertOptions()
    for role in catalogue.TOP_LEVEL_ROLES:
        panel = next(p for p in board["panels"] if p["title"] == f"Expiry margin: {role}")
        values = [s["value"] for s in panel["fieldConfig"]["defaults"]["thresholds"]["steps"]]
        assert options.expiry_page_seconds[role] in values
        assert options.expiry_ticket_seconds[role] in values
        assert panel["fieldConfig"]["defaults"]["custom"]["thresholdsStyle"]["mode"] != "off"
    share = next(p for p in board["panels"]
                 if p["title"] == "Expiry margin as a share of the role's normal lifetime")
    values = [s["value"] for s in share["fieldConfig"]["defaults"]["thresholds"]["steps"]]
    assert options.expiry_page_lifetime_ratio in values
    assert options.expiry_ticket_lifetime_ratio in values
    assert "tuf_metadata_normal_lifetime_seconds" in share["targets"][0]["expr"]


@pytest.mark.parametrize("name", [b.file for b in dashboards.BOARDS])
def test_committed_dashboards_are_fresh(name: str, tmp_path: Path) -> None:
    fresh = {p.name: p.read_bytes() for p in dashboards.build_dashboards(tmp_path)}
    committed = DASHBOARDS_DIR / name
    assert committed.exists(), f"{committed} is missing; run `{REGENERATE}`"
    assert committed.read_bytes() == fresh[name], (
        f"{committed} is stale; regenerate it with `{REGENERATE}`")


def test_output_is_deterministic_sorted_and_newline_terminated(tmp_path: Path) -> None:
    first = [p.read_text() for p in dashboards.build_dashboards(tmp_path / "a")]
    second = [p.read_text() for p in dashboards.build_dashboards(tmp_path / "b")]
    assert first == second
    for text in first:
        assert text.endswith("}\n")
        assert text == json.dumps(json.loads(text), sort_keys=True, indent=2,
                                  ensure_ascii=False) + "\n"


def test_cli_dashboards_build(tmp_path: Path) -> None:
    from exporter import cli

    assert cli.main(["dashboards", "build", "--out", str(tmp_path)]) == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(b.file for b in dashboards.BOARDS)


def test_debug_board_has_a_row_for_the_exporter_process() -> None:
    board = _boards()["tuf-debug.json"]
    titles = [p["title"] for p in board["panels"]]
    assert "Exporter process" in titles
    after = board["panels"][titles.index("Exporter process") + 1:]
    used: set[str] = set()
    for panel in after:
        for target in panel.get("targets", []):
            assert 'job="tuf-exporter"' in target["expr"], target["expr"]
            used |= alerts.promql_metric_names(target["expr"])
    assert {"process_resident_memory_bytes", "process_cpu_seconds_total", "process_open_fds",
            "process_max_fds", "python_gc_collections_total"} <= used


def _queries(panel: dict[str, Any]) -> list[str]:
    return [target["expr"] for target in panel.get("targets", [])]


def test_oncall_has_a_client_view_by_endpoint_matrix() -> None:
    matrices = [p for p in _panels(_boards()["tuf-oncall.json"])
                if any("tuf_client_update_success" in e for e in _queries(p))
                and any(tr["id"] == "groupingToMatrix" for tr in p.get("transformations", []))]
    assert len(matrices) == 1, "no client view x endpoint matrix on the on-call board"
    panel = matrices[0]
    (grouping,) = panel["transformations"]
    assert grouping["options"]["columnField"] == "endpoint"
    # the row label joins repository and client: one row per view of each repository
    row_label = grouping["options"]["rowField"]
    (expr,) = _queries(panel)
    assert 'label_join(tuf_client_update_success{' in expr
    assert f'"{row_label}", " / ", "repository", "client")' in expr
    mapped = panel["fieldConfig"]["defaults"]["mappings"][0]["options"]
    assert mapped["0"]["color"] == "red" and mapped["1"]["color"] == "green"


def test_debug_shows_client_view_failures_by_client_and_reason() -> None:
    exprs = [e for p in _panels(_boards()["tuf-debug.json"]) for e in _queries(p)]
    assert any("tuf_client_update_failures_total" in e and "by (client, reason, role)" in e
               for e in exprs), "no client view failures by client and reason on the debug board"
