"""The exporter family: the exporter's own health and coverage. Not scraped, probes stalled, a
delegation tree only partly watched, events piling up or dropped, faults of its host, a dead
thread, file descriptors running out, a failed configuration reload.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from exporter.generate._rules_common import PAGE, TICKET, _alert, _num, builtin, m

if TYPE_CHECKING:
    from exporter.generate.alerts import AlertOptions


def _exporter_alerts(o: AlertOptions) -> list[dict[str, Any]]:
    job = f'up{{job="{o.exporter_job}"}}'
    return [
        _alert(o, "TufExporterDown", f"{job} == 0\nor\nabsent({job})", PAGE, o.exporter_down_for,
               f"tuf-exporter (job {o.exporter_job}) is not scraped",
               "Prometheus cannot scrape {{ with $labels.instance }}target {{ . }} of {{ end }}"
               f"job {o.exporter_job} (or has no target for it): no TUF repository is watched "
               "and no TUF alert can fire."),
        _alert(o, "TufProbesStalled",
               f"time() - {m('tuf_exporter_last_probe_timestamp_seconds')} "
               f"> {_num(o.probe_stall_seconds)}", TICKET, o.probe_stall_for,
               "Probes of {{ $labels.repository }} on {{ $labels.endpoint }} stalled",
               "The last probe of {{ $labels.repository }} on {{ $labels.endpoint }} finished "
               "{{ $value | humanizeDuration }} ago; its metrics are stale."),
        _alert(o, "TufDelegationSweepTruncated",
               f"{m('tuf_delegation_sweep_truncated')} == 1", TICKET, o.delegation_truncated_for,
               "Delegations of {{ $labels.repository }} on {{ $labels.endpoint }} are only "
               "partly watched",
               "The delegation tree of {{ $labels.repository }} on {{ $labels.endpoint }} has "
               "more roles than limits.max_delegations: the roles past the limit are not "
               "verified, so a broken or expiring one goes unnoticed."),
        _alert(o, "TufEventSpoolGrowing",
               f"deriv({m('tuf_exporter_events_spooled')}[{o.spool_growth_window}]) > 0\nand\n"
               f"{m('tuf_exporter_events_spooled')} > {_num(o.spool_backlog_min)}",
               TICKET, o.spool_growth_for,
               "tuf-exporter event spool is growing",
               "Events are piling up in the durable spool of {{ $labels.instance }} "
               f"(growing for {o.spool_growth_for}): the event sink is slow or unreachable."),
        _alert(o, "TufEventsDropped",
               f"increase({m('tuf_exporter_events_dropped_total')}[{o.events_dropped_window}])"
               " > 0", TICKET, "0s",
               "tuf-exporter drops events ({{ $labels.cause }})",
               "{{ $value | humanize }} events were dropped in " + o.events_dropped_window
               + " because of {{ $labels.cause }}; the audit trail has gaps."),
        _alert(o, "TufExporterErrors",
               f"increase({m('tuf_exporter_errors_total')}[{o.exporter_errors_window}]) > 0",
               TICKET, "0s",
               "tuf-exporter fails on its own host ({{ $labels.cause }})",
               "{{ $labels.instance }} had {{ $value | humanize }} faults of its own ("
               "{{ $labels.cause }}) in the last " + o.exporter_errors_window + ": probes they "
               "stopped reached no verdict (reason exporter_error), and the repositories' "
               "last verdicts and alerts are as they were."),
        _alert(o, "TufExporterThreadDown", f"{m('tuf_exporter_thread_up')} == 0", PAGE,
               o.thread_down_for,
               "tuf-exporter thread {{ $labels.thread }} died on {{ $labels.instance }}",
               "The {{ $labels.thread }} thread of {{ $labels.instance }} is dead (it survives "
               "its own errors, so this is a bug or the process is out of resources): "
               "scheduler: nothing is probed and no TUF alert can fire; shipper: events pile "
               "up in the spool. /-/ready fails; restart the exporter."),
        _alert(o, "TufExporterDescriptorsNearLimit",
               f'{builtin("process_open_fds")}{{job="{o.exporter_job}"}}\n/\n'
               f'{builtin("process_max_fds")}{{job="{o.exporter_job}"}}\n'
               f"> {_num(o.descriptors_ratio)}",
               TICKET, o.descriptors_for,
               "tuf-exporter {{ $labels.instance }} is running out of file descriptors",
               "{{ $labels.instance }} has {{ $value | humanizePercentage }} of its open-file "
               f"limit in use (for {o.descriptors_for}): once none is left, probes stop with "
               "reason exporter_error (cause descriptors) and no repository is watched."),
        _alert(o, "TufExporterConfigReloadFailed",
               f"{m('tuf_exporter_config_last_reload_successful')} == 0", TICKET,
               o.config_reload_for,
               "tuf-exporter failed to reload its configuration",
               "The last configuration reload of {{ $labels.instance }} failed; it keeps "
               "running with the previous configuration."),
    ]
