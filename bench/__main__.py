"""``python -m bench``: run every benchmark case and print the table (issues #10, #16, #17).

``python -m bench --case NAME [--case NAME ...] [--quick]`` runs some cases; ``--quick`` uses
smaller sizes and fewer repetitions. ``--long`` runs the many-endpoints case for 10 minutes
instead of the default 150 seconds. ``--server nginx`` (the default) serves the benchmark
repositories with Debian's nginx (installed with apt-get where missing), ``--server simulator``
with the simulator's own HTTP/1.0 server, for comparison. A full run (every case, not quick)
writes the table to ``bench/RESULTS.md`` unless ``--no-write``.

``python -m bench --case soak [--minutes N] [--trace]`` runs the one-hour soak
(:mod:`bench.soak`; ``--minutes`` shortens it, ``--trace`` adds tracemalloc diffs). It is not
part of the default run and not in the test suite; its rows are recorded in the "Soak" section
of ``bench/RESULTS.md`` by hand.
"""

from __future__ import annotations

import argparse
import os
import platform
import shlex
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

from bench import simproc
from bench.common import Row, table

RESULTS = Path(__file__).resolve().parent / "RESULTS.md"


def _cases(
    long: bool, minutes: float = 60.0, trace: bool = False
) -> dict[str, Callable[[bool], list[Row]]]:
    from bench import (
        delegation_sweep,
        drain,
        endpoints,
        events,
        probe_cost,
        scrape,
        soak,
        sweep_memory,
        views,
    )

    return {
        "probe": probe_cost.run,
        "delegations": delegation_sweep.run,
        "endpoints": lambda quick: endpoints.run(quick, long=long),
        "scrape": scrape.run,
        "events": events.run,
        "memory": sweep_memory.run,
        "drain": drain.run,
        "views": views.run,
        "soak": lambda quick: soak.run(quick, minutes=minutes, trace=trace),
    }


CASE_NAMES = ("probe", "delegations", "endpoints", "scrape", "events", "memory", "drain", "views")
#: Cases run only when named with ``--case``.
EXTRA_CASES = ("soak",)


def machine() -> str:
    """A one-line description of this machine."""
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    memory = ""
    try:
        pages = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
        memory = f", {pages / 2**30:.0f} GiB RAM"
    except (ValueError, OSError):
        pass
    return (
        f"{platform.system()} {platform.release()}, {os.cpu_count()} cores ({cpu}){memory}, "
        f"Python {platform.python_version()}"
    )


def _load() -> str:
    """The load averages of this machine (the benchmarks share it), or why not."""
    try:
        one, five, fifteen = os.getloadavg()
    except OSError as exc:
        return f"unknown ({exc})"
    return f"{one:.1f}, {five:.1f}, {fifteen:.1f} on {os.cpu_count()} cores"


SERVER_NOTES = {
    "nginx": "- Server: Debian's nginx on loopback (`--server nginx`, one worker, HTTP/1.1 "
             "keep-alive, sendfile) serving the simulator's published files from disk; ours and "
             "every baseline fetch from the same nginx in the same run.",
    "simulator": "- Server: the simulator (`--server simulator`), in a separate process, speaking "
                 "HTTP/1.0 (one TCP connection per request, no keep-alive): every request of "
                 "ours and of the baselines pays a connect, which favours neither side but "
                 "inflates per-request costs compared to a real keep-alive CDN.",
}


def _report(rows: list[Row], command: str, seconds: float, long: bool,
            cases: list[str]) -> str:
    missed = [row.case for row in rows if row.met is False]
    lines = [
        "# Benchmark results (issues #10, #16, #17, #18)",
        "",
        f"- Date: {datetime.now(UTC):%Y-%m-%d %H:%M} UTC",
        f"- Machine: {machine()}",
        f"- Load average (1, 5, 15 min) at the end: {_load()}",
        f"- Command: `{command}` (took {seconds:.0f} s)",
    ]
    if "endpoints" in cases:
        lines.append(
            "- Many endpoints ran for "
            + ("10 minutes (`--long`)." if long else
               "150 s (2.5 min, the issue asks for flatness over 10 min: run `--long` for that).")
        )
    lines += [
        "- Medians over the repetitions shown; ratio = ours / baseline measured in the same run.",
        SERVER_NOTES[simproc.server_name()],
        "",
        table(rows),
        "",
        f"Goals missed: {len(missed)} of {sum(1 for r in rows if r.met is not None)}.",
        "",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Run the selected cases, print the table, maybe write RESULTS.md."""
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.split("\n")[0])
    parser.add_argument("--case", action="append", choices=CASE_NAMES + EXTRA_CASES,
                        help="run only this case (repeatable); default: all")
    parser.add_argument("--quick", action="store_true", help="small sizes, few repetitions")
    parser.add_argument("--long", action="store_true",
                        help="run the many-endpoints case for 10 minutes")
    parser.add_argument("--minutes", type=float, default=60.0,
                        help="length of the soak case in minutes (default 60)")
    parser.add_argument("--trace", action="store_true",
                        help="soak: tracemalloc diffs of the allocation sites after warm-up")
    parser.add_argument("--server", choices=simproc.SERVERS, default=simproc.SERVERS[0],
                        help="what serves the repositories (default: nginx)")
    parser.add_argument("--no-write", action="store_true", help="do not write bench/RESULTS.md")
    args = parser.parse_args(argv)
    selected = args.case or list(CASE_NAMES)
    simproc.use_server(args.server)
    if args.minutes <= 0:
        parser.error("--minutes must be positive")
    cases = _cases(args.long, args.minutes, args.trace)
    started = time.monotonic()
    rows: list[Row] = []
    for name in selected:
        case_started = time.monotonic()
        print(f"== {name} ...", file=sys.stderr, flush=True)
        new = cases[name](args.quick)
        rows += new
        print(table(new), file=sys.stderr)
        print(f"== {name} took {time.monotonic() - case_started:.0f} s", file=sys.stderr,
              flush=True)
    seconds = time.monotonic() - started
    command = "python -m bench " + shlex.join(argv if argv is not None else sys.argv[1:])
    report = _report(rows, command.strip(), seconds, args.long, selected)
    print(report)
    if not args.case and not args.quick and not args.no_write:
        RESULTS.write_text(report)
        print(f"written to {RESULTS}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
