"""The SLO family: verification-success SLI recording rules (``level:metric:operations`` names),
the error budget left, and the multi-window burn-rate alerts that read them.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from exporter import catalogue
from exporter.config.durations import parse_duration
from exporter.generate._rules_common import PAGE, _alert, _num, m

if TYPE_CHECKING:
    from exporter.generate.alerts import AlertOptions

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


def _sli_rules(options: AlertOptions) -> list[dict[str, Any]]:
    """The rules of the SLI recording group: the SLI per window and level, the budget left."""
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
    return rules


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
