"""The one-hour soak (issue #18, deliverable 3): ``python -m bench --case soak [--minutes N]``.

1,000 endpoints (the primary and 999 mirrors of one simulated repository, served by nginx or
the simulator, see :mod:`bench.simproc`) probed every 30 s by the real ``Service`` in its own
process (:mod:`bench.service_run`), as 4 repositories of 250 endpoints with the defaults
(``workers`` 8, ``jitter`` 0.1, ``full_refresh_every`` 10). The repository does not change;
:data:`FAILING` endpoints (10 mirrors, spread over the 4 repositories) fail and recover on a
schedule: every :data:`CYCLE` seconds they fail from second :data:`FAIL_AT` to
:data:`RECOVER_AT` of the cycle, alternately with the simulator's ``unauthorized-key`` fault
(a timestamp signed by a key root does not list: ``UnsignedMetadataError``) and an outage (the
endpoint's directory taken away: 404 for every file). Neither leaves anything in the client's
trusted metadata, so each endpoint succeeds again once it recovers.

Every :data:`SAMPLE_EVERY` seconds the exporter process writes one CSV row (``bench/output/``):
resident memory (``/proc/self/statm``), ``Rss``, ``Anonymous`` and ``Private_Dirty`` of
``/proc/self/smaps_rollup``; the Python heap as ``sys.getallocatedblocks()`` (a count of
blocks, cheap: tracemalloc would add its own bookkeeping to the resident memory it is meant to
explain, so it runs only with ``--trace``); glibc's malloc in use and free (``mallinfo2``:
native allocations and fragmentation) and SQLite's own heap (``sqlite3_memory_used``: page
caches of the history and spool connections); threads, descriptors, CPU seconds, probes.

The first :func:`warmup` seconds (10 minutes of an hour) are warm-up: the recent-probe rings of
the endpoints fill in ``RECENT_PROBES`` intervals (5 minutes) and the caches of the first full
refreshes settle. Goal: resident memory at the end (median of the last 10 samples) at most 5 %
above resident memory after warm-up (median of the first 10 samples after it).

``--trace`` runs tracemalloc (one frame) from the end of warm-up and writes the top 20
allocation sites by line of two snapshot diffs (warm-up end -> middle, middle -> end) next to
the CSV: what still grows, and where.
"""

from __future__ import annotations

import csv
import ctypes
import ctypes.util
import itertools
import os
import statistics
import sys
import threading
import time
import tracemalloc
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from bench.common import INFO, Goal, Row, scratch
from bench.service_run import INTERVAL, JITTER, Summary, run_service, write_config
from bench.simproc import SimProcess, Spec

#: Default length of the soak, in minutes.
MINUTES = 60.0
#: Seconds between samples.
SAMPLE_EVERY = 30.0
#: The fault schedule: a cycle of 5 minutes, failing from 60 s to 180 s of it (4 probes).
CYCLE = 300.0
FAIL_AT = 60.0
RECOVER_AT = 180.0
#: The faults, alternately, one per cycle (``outage``: the endpoint's files taken away).
FAULTS = ("unauthorized-key", "outage")
#: Endpoints that fail and recover: every 100th mirror, so each repository has some.
FAILING = tuple(f"mirror{i:04d}" for i in range(50, 1000, 100))
#: Samples at each end compared for the growth goal.
ENDS = 10
#: Where the CSV and the tracemalloc diffs go (not committed).
OUTPUT = Path(__file__).resolve().parent / "output"

COLUMNS = (
    "t_s", "rss_mb", "smaps_rss_mb", "anonymous_mb", "private_dirty_mb", "py_blocks",
    "tracemalloc_mb", "malloc_used_mb", "malloc_free_mb", "malloc_mmap_mb", "sqlite_mb",
    "threads", "fds", "cpu_s", "probes", "failed", "load1",
)


def warmup(duration: float) -> float:
    """Seconds of warm-up: 10 minutes, or a fifth of a shorter run."""
    return min(600.0, duration / 5)


class _MallInfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in (
        "arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks",
        "fordblks", "keepcost")]


def _native() -> tuple[Callable[[], tuple[float, float, float]] | None,
                       Callable[[], float] | None]:
    """``mallinfo2`` (glibc >= 2.33: in use, free, mmapped MB) and ``sqlite3_memory_used``
    (MB) of the SQLite library the ``sqlite3`` module uses, or None where not available."""
    malloc: Callable[[], tuple[float, float, float]] | None = None
    try:
        libc = ctypes.CDLL(None)
        mallinfo2 = libc.mallinfo2
        mallinfo2.restype = _MallInfo2

        def malloc() -> tuple[float, float, float]:
            info = mallinfo2()
            return info.uordblks / 1e6, info.fordblks / 1e6, info.hblkhd / 1e6
    except (OSError, AttributeError):
        malloc = None
    sqlite: Callable[[], float] | None = None
    import sqlite3  # noqa: F401 - loads the library the exporter uses

    name = ctypes.util.find_library("sqlite3")
    try:
        lib = ctypes.CDLL(name) if name else None
        used = lib.sqlite3_memory_used if lib is not None else None
    except (OSError, AttributeError):
        used = None
    if used is not None:
        used.restype = ctypes.c_int64

        def sqlite() -> float:
            return float(used()) / 1e6
    return malloc, sqlite


def smaps_rollup() -> dict[str, float]:
    """``Rss``, ``Anonymous`` and ``Private_Dirty`` of this process, in MB."""
    out: dict[str, float] = {}
    with open("/proc/self/smaps_rollup") as handle:
        for line in handle:
            key, _, rest = line.partition(":")
            if key in ("Rss", "Anonymous", "Private_Dirty"):
                out[key] = int(rest.split()[0]) * 1024 / 1e6
    return out


class Timeliness:
    """Probe starts per endpoint, counted as they come (nothing kept per probe: the soak
    must not grow in the process it measures)."""

    def __init__(self, window_start: float, failing: set[str]) -> None:
        self.window_start = window_start
        self.failing = failing
        self.limit = INTERVAL * (1 + JITTER) + 2.0
        self.last: dict[tuple[str, str], tuple[float, bool]] = {}
        self.lock = threading.Lock()
        self.probes = self.reused = self.on_time = self.late = 0
        self.failed_faulted = self.failed_other = self.recovered = 0

    def add(self, key: tuple[str, str], at: float, ok: bool, reused: bool) -> None:
        """One probe of ``key`` started at ``at`` (epoch seconds) with verdict ``ok``."""
        with self.lock:
            before = self.last.get(key)
            self.last[key] = (at, ok)
            if before is None or at < self.window_start:
                return
            self.probes += 1
            self.reused += reused
            if not ok:
                if key[1].removeprefix("ep-") in self.failing:
                    self.failed_faulted += 1
                else:
                    self.failed_other += 1
            elif not before[1]:
                self.recovered += 1
            if at - before[0] <= self.limit:
                self.on_time += 1
            else:
                self.late += 1

    def missing(self, keys: set[tuple[str, str]], now: float) -> int:
        """Endpoints whose due probe never started."""
        with self.lock:
            return sum(1 for k in keys
                       if now - self.last.get(k, (self.window_start - self.limit, True))[0]
                       > self.limit)


def _top(older: tracemalloc.Snapshot, newer: tracemalloc.Snapshot, title: str) -> str:
    lines = [f"== {title}: top 20 by line (size diff, count diff)"]
    for stat in newer.compare_to(older, "lineno")[:20]:
        lines.append(f"{stat.size_diff / 1e3:+10.1f} kB {stat.count_diff:+8d} "
                     f"{stat.traceback[0].filename}:{stat.traceback[0].lineno} "
                     f"(now {stat.size / 1e3:.1f} kB)")
    return "\n".join(lines)


def _dump(path: Path, n: int) -> Path:
    """Take a snapshot, write it next to ``path`` and let it go."""
    file = path.with_suffix(f".{n}.snapshot")
    tracemalloc.take_snapshot().dump(str(file))
    return file


def sample_loop(
    service: Any,
    timeliness: Timeliness,
    summary: Summary,
    began: float,
    duration: float,
    options: dict[str, Any],
) -> None:
    """The exporter process's side: sample every :data:`SAMPLE_EVERY` s into the CSV."""
    malloc, sqlite = _native()
    trace = bool(options.get("trace"))
    path = Path(options["csv"])
    #: snapshot files (dumped, not kept: a snapshot holds a copy of every trace)
    snapshots: list[Path] = []
    page = os.sysconf("SC_PAGE_SIZE")
    warm = warmup(duration)
    expected = {(r.name, e.name) for r in service.config.repositories for e in r.endpoints}
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(COLUMNS)
        n = 0
        while True:
            now = time.time()
            t = now - began
            if trace and not snapshots and t >= warm:
                tracemalloc.start(1)
                snapshots.append(_dump(path, 0))
            elif trace and len(snapshots) == 1 and t >= warm + (duration - warm) / 2:
                snapshots.append(_dump(path, 1))
            with open("/proc/self/statm") as statm:
                rss = int(statm.read().split()[1]) * page / 1e6
            smaps = smaps_rollup()
            used, free, mapped = malloc() if malloc else (0.0, 0.0, 0.0)
            row = {
                "t_s": round(t, 1), "rss_mb": round(rss, 2),
                "smaps_rss_mb": round(smaps.get("Rss", 0.0), 2),
                "anonymous_mb": round(smaps.get("Anonymous", 0.0), 2),
                "private_dirty_mb": round(smaps.get("Private_Dirty", 0.0), 2),
                "py_blocks": sys.getallocatedblocks(),
                "tracemalloc_mb": round(tracemalloc.get_traced_memory()[0] / 1e6, 2)
                if tracemalloc.is_tracing() else "",
                "malloc_used_mb": round(used, 2), "malloc_free_mb": round(free, 2),
                "malloc_mmap_mb": round(mapped, 2),
                "sqlite_mb": round(sqlite(), 2) if sqlite else "",
                "threads": threading.active_count(), "fds": len(os.listdir("/proc/self/fd")),
                "cpu_s": round(time.process_time(), 1),
                "probes": timeliness.probes, "failed": timeliness.failed_faulted
                + timeliness.failed_other, "load1": round(os.getloadavg()[0], 2),
            }
            writer.writerow([row[c] for c in COLUMNS])
            handle.flush()
            summary.extra.setdefault("samples", []).append(row)
            n += 1
            if t >= duration:
                break
            time.sleep(max(0.0, min(began + n * SAMPLE_EVERY, began + duration) - time.time()))
    window_end = time.time()
    summary.window_seconds = window_end - timeliness.window_start
    summary.late = timeliness.late + timeliness.missing(expected, window_end)
    summary.on_time, summary.probes, summary.reused = (
        timeliness.on_time, timeliness.probes, timeliness.reused)
    summary.failed = timeliness.failed_faulted + timeliness.failed_other
    summary.extra.update(failed_faulted=timeliness.failed_faulted,
                         failed_other=timeliness.failed_other, recovered=timeliness.recovered)
    summary.skipped = sum(service.store.snapshot().skipped.values())
    if trace and snapshots:
        snapshots.append(_dump(path, 2))
        tracemalloc.stop()
        loaded = [tracemalloc.Snapshot.load(str(file)) for file in snapshots]
        parts = [_top(a, b, title) for (a, b), title in zip(
            itertools.pairwise(loaded), ("warm-up end -> middle", "middle -> end"),
            strict=False)]
        path.with_suffix(".tracemalloc.txt").write_text("\n\n".join(parts) + "\n")
        for file in snapshots:
            file.unlink()


def _schedule(
    sim: SimProcess, failing: list[str], began: float, duration: float
) -> Callable[[], None]:
    """The parent's side: fail and recover ``failing`` on the schedule until the end."""

    def run() -> None:
        cycle = 0
        while True:
            start = began + cycle * CYCLE
            if start + FAIL_AT >= began + duration:
                return
            fault = FAULTS[cycle % len(FAULTS)]
            _wait_until(start + FAIL_AT)
            sim.fail(failing, fault)
            _wait_until(min(start + RECOVER_AT, began + duration))
            sim.recover(failing)
            cycle += 1

    return run


def _wait_until(moment: float) -> None:
    time.sleep(max(0.0, moment - time.time()))


def _median(rows: list[dict[str, Any]], column: str) -> float:
    return float(statistics.median(float(r[column]) for r in rows))


def run(quick: bool, *, minutes: float = MINUTES, trace: bool = False) -> list[Row]:
    """The rows of the soak (``quick``: 100 endpoints instead of 1,000)."""
    count = 100 if quick else 1000
    duration = minutes * 60
    warm = warmup(duration)
    OUTPUT.mkdir(exist_ok=True)
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%MZ")
    csv_path = OUTPUT / f"soak-{stamp}-{count}x{duration / 60:g}min.csv"
    load_before = os.getloadavg()
    failing = [name for name in FAILING if int(name[-4:]) < count - 1]
    with SimProcess(Spec(targets=10, mirrors=count - 1)) as sim, scratch() as tmp:
        config = write_config(tmp, sim.built, repositories=4, endpoints=count)
        began = time.time()
        summary = run_service(
            config, duration, warm, "soak",
            during=_schedule(sim, failing, began, duration) if failing else None,
            options={"csv": str(csv_path), "trace": trace, "failing": failing},
        )
    load_after = os.getloadavg()
    samples: list[dict[str, Any]] = summary.extra["samples"]
    after = [r for r in samples if float(r["t_s"]) >= warm]
    first, last = after[:ENDS], after[-ENDS:]
    rss0, rss1 = _median(first, "rss_mb"), _median(last, "rss_mb")
    growth = 100.0 * (rss1 - rss0) / rss0 if rss0 else 0.0
    peak = max(float(r["rss_mb"]) for r in after)
    hours = (float(after[-1]["t_s"]) - float(after[0]["t_s"])) / 3600 or 1.0
    slope = statistics.linear_regression(
        [float(r["t_s"]) / 3600 for r in after], [float(r["rss_mb"]) for r in after]
    ).slope if len(after) >= 2 else 0.0

    def change(column: str, unit: str = "MB", scale: float = 1.0) -> str:
        a, b = _median(first, column) * scale, _median(last, column) * scale
        return f"{column.removesuffix('_mb')} {a:.1f} -> {b:.1f} {unit}"

    label = (f"9 soak, {count} endpoints every {INTERVAL:g} s for {duration / 60:.0f} min, "
             f"{len(failing)} failing and recovering (warm-up {warm / 60:.0f} min)")
    cpu = (float(samples[-1]["cpu_s"]) - float(after[0]["cpu_s"])) / (
        float(samples[-1]["t_s"]) - float(after[0]["t_s"]) or 1.0)
    due = summary.on_time + summary.late
    extra = summary.extra
    native = ", ".join([
        change("smaps_rss_mb"), change("anonymous_mb"), change("private_dirty_mb"),
        change("malloc_used_mb"), change("malloc_free_mb"), change("sqlite_mb"),
    ])
    heap = change("py_blocks", "k blocks", 1e-3)
    if trace:
        heap += ", " + change("tracemalloc_mb")
    return [
        Row(f"{label}: resident memory growth after warm-up", growth, "%", None, "",
            Goal("value<=", 5.0, "<= 5 %"), len(after),
            note=f"{rss0:.1f} MB -> {rss1:.1f} MB, medians of {ENDS} samples at each end; "
                 f"peak {peak:.1f} MB; trend {slope:+.1f} MB/h over {hours:.2f} h"),
        Row(f"{label}: Python heap", _median(last, "py_blocks") / 1e3, "k blocks", None, "",
            INFO, len(after), note=heap + " (sys.getallocatedblocks)"),
        Row(f"{label}: native memory", _median(last, "anonymous_mb"), "MB", None, "", INFO,
            len(after), note=native + " (smaps_rollup, mallinfo2, sqlite3_memory_used)"),
        Row(f"{label}: CPU after warm-up, share of one core", 100.0 * cpu, "%", None, "",
            INFO, 1),
        Row(f"{label}: probes on time", 100.0 * summary.on_time / due if due else 0.0, "%",
            None, "", Goal("value>=", 100.0, "100 % and no failure but the scheduled ones"), 1,
            verdict=due > 0 and summary.on_time == due and extra["failed_other"] == 0
            and extra["recovered"] > 0 if failing else None,
            note=(f"{summary.probes} probes, {summary.reused} reused, {summary.late} late, "
                  f"{summary.skipped} skipped; {extra['failed_faulted']} failed on the "
                  f"failing endpoints, {extra['failed_other']} on the others, "
                  f"{extra['recovered']} recoveries; load average "
                  f"{load_before[0]:.1f} before, {load_after[0]:.1f} after; {csv_path.name}")),
    ]
