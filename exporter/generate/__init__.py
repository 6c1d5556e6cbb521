"""Generated artefacts: Prometheus alerting and recording rules, Alertmanager routes, Grafana
dashboards, all from the metric catalogue (:mod:`exporter.catalogue`) and the alert options.

In: :class:`AlertOptions` (thresholds in seconds or ratios, read from a YAML file by
:meth:`AlertOptions.from_yaml`, errors naming file, line and key) and an output directory. Out:
the files written (:func:`build_alerts`, :func:`build_dashboards` return their paths). Run by
``tuf-exporter generate`` and ``./scripts/generate``. Depends on catalogue and config only.
"""

from exporter.generate.alerts import AlertOptions, build_alerts, expiry_threshold, kebab
from exporter.generate.dashboards import build_dashboards

__all__ = ["AlertOptions", "build_alerts", "build_dashboards", "expiry_threshold", "kebab"]
