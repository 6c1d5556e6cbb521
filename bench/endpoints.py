"""Case 4: 1,000 small endpoints probed every 30 s by the real ``Service``.

The endpoints are the primary and 999 mirrors of one simulated repository (served from a
separate process), configured as 4 repositories of 250 endpoints, each with one canary target,
default ``workers`` (8), ``jitter`` (0.1) and ``full_refresh_every`` (10); the repository does
not change during the run (steady state). The service runs in its own process (see
:mod:`bench.service_run`); the first 35 s (first probes spread over one interval, each a full
refresh from the trusted root) are warm-up and not measured.

Goals (absolute): CPU under 25 % of one core, 100 % of probes on time (started within
``interval * (1 + jitter) + 2 s`` of the previous one, successful, none skipped), resident
memory under 300 MB and flat (the median of the last third of the samples at most 5 % above
the median of the first third). Flat is judged only on the samples after :data:`SETTLED`:
until every endpoint's ring of ``RECENT_PROBES`` recent probes (the status page's) is full,
resident memory grows by design (about 4 MB per interval for 1,000 endpoints, 10 intervals);
a run too short to reach it (the default 150 s) reports the growth as information. The
one-hour soak (:mod:`bench.soak`) is the test of flatness.
"""

from __future__ import annotations

from exporter.collector import RECENT_PROBES

from bench.common import INFO, Goal, Row, scratch
from bench.service_run import INTERVAL, JITTER, rss_growth, run_service, write_config
from bench.simproc import SimProcess, Spec

WARMUP = INTERVAL + 5.0
#: Seconds until the rings of recent probes are full: the first probe within the first
#: interval, then ``RECENT_PROBES - 1`` more, each at most ``interval * (1 + jitter)`` later.
SETTLED = INTERVAL * (1 + (RECENT_PROBES - 1) * (1 + JITTER)) + 5.0


def run(quick: bool, *, long: bool = False) -> list[Row]:
    """All rows of case 4."""
    count = 100 if quick else 1000
    duration = 70.0 if quick else (600.0 if long else 150.0)
    with SimProcess(Spec(targets=10, mirrors=count - 1)) as sim, scratch() as tmp:
        config = write_config(tmp, sim.built, repositories=4, endpoints=count)
        summary = run_service(config, duration, WARMUP, "endpoints")
    label = f"4 {count} endpoints every {INTERVAL:g} s ({summary.window_seconds:.0f} s window)"
    due = summary.on_time + summary.late + summary.failed + summary.skipped
    on_time = 100.0 * summary.on_time / due if due else 0.0
    settled = duration >= SETTLED + 120  # two minutes or more of settled samples
    first, last = rss_growth(summary.rss_samples, SETTLED if settled else WARMUP)
    growth = 100.0 * (last - first) / first if first else 0.0
    after = sum(1 for t, _ in summary.rss_samples if t >= (SETTLED if settled else WARMUP))
    when = (f"after the recent-probe rings filled ({SETTLED:.0f} s)" if settled else
            f"while the recent-probe rings fill (until {SETTLED:.0f} s): information, "
            "run --long or the soak")
    detail = (f"{summary.probes} probes, {summary.reused} reused, {summary.late} late, "
              f"{summary.failed} failed, {summary.skipped} skipped")
    return [
        Row(f"{label}: CPU, share of one core", 100.0 * summary.cpu_share, "%", None, "",
            Goal("value<=", 25.0, "< 25 %"), 1),
        Row(f"{label}: probes on time", on_time, "%", None, "",
            Goal("value>=", 100.0, "100 %"), 1, note=detail),
        Row(f"{label}: resident memory (peak)", summary.max_rss_mb, "MB", None, "",
            Goal("value<=", 300.0, "< 300 MB"), 1),
        Row(f"{label}: resident memory growth after warm-up", growth, "%", None, "",
            Goal("value<=", 5.0, "flat (<= 5 %)") if settled else INFO, after,
            note=f"{first:.0f} MB -> {last:.0f} MB, {when}"),
    ]
