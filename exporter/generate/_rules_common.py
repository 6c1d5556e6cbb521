"""What every family of generated rules shares: checked metric names, the metric names a PromQL
expression selects, PromQL numbers, severities, and one alert rule with its runbook link.

:func:`m` and :func:`builtin` raise ``KeyError`` at generation time for a metric that is neither in
:mod:`exporter.catalogue` nor one of :data:`BUILTIN_METRICS`.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any

from exporter import catalogue
from exporter.config.durations import parse_duration

if TYPE_CHECKING:
    from exporter.generate.alerts import AlertOptions

#: Label used by every alert to pick its Alertmanager route.
PAGE = "page"
TICKET = "ticket"

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
