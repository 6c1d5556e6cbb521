"""Case 3: delegation sweeps over hash-bin repositories (succinct and classic).

* cold: a new prober (empty cache) probes once and verifies every bin; the baseline is a bare
  cold ``Updater`` that refreshes and then walks every bin with ``get_targetinfo`` (one target
  per bin), which is how python-tuf alone would load them all.
* warm, one bin changed: one target of one bin is replaced and published; the warm prober
  probes again. It must fetch exactly one bin (requests counted on the simulator) and cost at
  most 0.02x the cold sweep.
"""

from __future__ import annotations

import re

from bench.common import (
    Goal,
    Row,
    bare_refresh,
    median,
    paired,
    repository,
    scratch,
    timed,
    timed_probe,
)
from bench.service_run import peak_rss_mb
from bench.simproc import SimProcess, Spec
from exporter.probe import Prober, delegations

_BIN_FILE = re.compile(r"^metadata/\d+\.bin-[0-9a-f]+\.json$")


def _bin_requests(counts: dict[str, int]) -> int:
    return sum(n for name, n in counts.items() if _BIN_FILE.match(name))


def sweep(bins: int, succinct: bool, reps: int, warm_reps: int) -> list[Row]:
    """Rows for one flavour of hash bins."""
    flavour = "succinct" if succinct else "classic"
    spec = Spec(targets=0, bins=bins, succinct=succinct, one_per_bin=True)
    with SimProcess(spec) as sim, scratch() as tmp:
        built = sim.built
        urls = built.urls["primary"]
        root = built.trusted_root
        repo = repository(urls)
        paths = list(built.bin_targets.values())
        runs = [0]
        probers: list[Prober] = []

        def ours() -> float:
            runs[0] += 1
            prober = Prober(tmp / f"ours-{runs[0]}")
            probers.append(prober)
            seconds, result = timed_probe(prober, repo, root)
            assert result.success, result.message
            assert result.delegations.count == bins
            return seconds

        def bare() -> float:
            runs[0] += 1
            directory = tmp / f"bare-{runs[0]}"

            def walk() -> None:
                updater = bare_refresh(directory, urls, root)
                for path in paths:
                    assert updater.get_targetinfo(path) is not None

            return timed(walk)

        cold, walked = paired(reps, ours, bare)
        workers = [peak_rss_mb(pid) for pid in delegations.process_ids()]
        prober = probers[-1]
        warm: list[float] = []
        fetched: list[int] = []
        for i in range(warm_reps):
            sim.change(paths[(i * 7919) % len(paths)])
            sim.reset_requests()
            seconds, result = timed_probe(prober, repo, root)
            assert result.success, result.message
            warm.append(seconds)
            fetched.append(_bin_requests(sim.requests("primary")))
    cold_median = median(cold)
    one_bin = all(n == 1 for n in fetched)
    warm_row = Row(
        f"3 {bins} {flavour} bins: warm sweep, one bin changed", median(warm), "s", cold_median,
        "our cold sweep", Goal("ratio<=", 0.02, "<= 0.02x and 1 bin fetched"), warm_reps,
        note=f"bins fetched per probe: {sorted(set(fetched))}",
    )
    warm_ok = warm_row.goal.met(warm_row.ours, warm_row.ratio)
    return [
        Row(f"3 {bins} {flavour} bins: cold full sweep", cold_median, "s", median(walked),
            "bare cold refresh + get_targetinfo per bin", Goal("ratio<=", 0.6), reps,
            note=f"{len(workers)} delegation worker processes, peak RSS "
                 f"{', '.join(f'{mb:.0f}' for mb in workers) or '-'} MB"),
        Row(warm_row.case, warm_row.ours, warm_row.unit, warm_row.baseline,
            warm_row.baseline_name, warm_row.goal, warm_row.reps,
            verdict=bool(warm_ok) and one_bin, note=warm_row.note),
    ]


def run(quick: bool) -> list[Row]:
    """All rows of case 3."""
    bins = 256 if quick else 4096
    reps = 3
    rows: list[Row] = []
    for succinct in (True, False):
        rows += sweep(bins, succinct, reps, 3)
    return rows
