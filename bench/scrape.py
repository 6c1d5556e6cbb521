"""Case 5: ``/metrics`` rendering (``generate_latest`` of the service registry).

The real ``Service`` (in its own process) probes 10 or 1,000 endpoints once; then its registry
is rendered 7 times, alternating with a registry of plain ``Gauge`` objects holding the same
families and the same number of samples (the baseline). A further repository points at a
server that accepts connections and never answers: its probe hangs for 90 s, and scrapes taken
while it is in flight must return at once (a scrape never waits for a probe).
"""

from __future__ import annotations

from bench.common import Goal, Row, median, scratch
from bench.service_run import hung_listener, run_service, write_config
from bench.simproc import SimProcess, Spec


def scrape(count: int) -> list[Row]:
    """Rows for one endpoint count."""
    listener, hung_url = hung_listener()
    try:
        with SimProcess(Spec(targets=10, mirrors=count - 1)) as sim, scratch() as tmp:
            config = write_config(tmp, sim.built, repositories=min(4, count), endpoints=count,
                                  hung_url=hung_url)
            summary = run_service(config, 80.0, 0.0, "scrape", release=listener.close)
    finally:
        listener.close()
    plain = median(summary.scrape_plain)
    label = f"5 scrape, {count} endpoints ({summary.scrape_samples} samples)"
    worst = max(summary.scrape_during_hang)
    return [
        Row(f"{label}: generate_latest", median(summary.scrape_ours), "s", plain,
            "plain Gauges, same samples", Goal("ratio<=", 2.0), len(summary.scrape_ours)),
        Row(f"{label}: slowest scrape while a probe hangs", worst, "s", plain,
            "plain Gauges, same samples", Goal("ratio<=", 2.0, "never waits (<= 2x)"),
            len(summary.scrape_during_hang),
            verdict=summary.hang_pending and worst <= 2.0 * plain,
            note="hung probe still in flight" if summary.hang_pending else "hung probe ended"),
    ]


def run(quick: bool) -> list[Row]:
    """All rows of case 5."""
    return scrape(10) + scrape(100 if quick else 1000)
