"""Shared pieces: result rows, timing, the bare python-tuf baselines and the table."""

from __future__ import annotations

import gc
import statistics
import tempfile
import time
import tracemalloc
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from tuf.api.metadata import Metadata
from tuf.ngclient import Updater, UpdaterConfig

from exporter.config import Endpoint, Limits, Mode, Repository
from exporter.probe import Prober, ProbeResult


@dataclass(frozen=True)
class Goal:
    """A goal: ``kind`` is ``ratio<=``, ``value<=``, ``value>=`` or ``info`` (no goal)."""

    kind: str
    limit: float = 0.0
    text: str = ""

    def met(self, value: float, ratio: float | None) -> bool | None:
        """Whether ``value`` (or ``ratio``) meets the goal; None for an informational row."""
        if self.kind == "ratio<=":
            return ratio is not None and ratio <= self.limit
        if self.kind == "value<=":
            return value <= self.limit
        if self.kind == "value>=":
            return value >= self.limit
        return None

    def describe(self) -> str:
        """The goal as printed in the table."""
        if self.text:
            return self.text
        if self.kind == "ratio<=":
            return f"<= {self.limit:g}x"
        if self.kind == "value<=":
            return f"<= {self.limit:g}"
        if self.kind == "value>=":
            return f">= {self.limit:g}"
        return "info"


INFO = Goal("info")


@dataclass(frozen=True)
class Row:
    """One line of the results table."""

    case: str
    ours: float
    unit: str
    baseline: float | None
    baseline_name: str
    goal: Goal
    reps: int
    #: Overrides the computed verdict (for goals judged on several numbers at once).
    verdict: bool | None = None
    note: str = ""

    @property
    def ratio(self) -> float | None:
        """ours / baseline, when there is a baseline."""
        if self.baseline is None or self.baseline == 0:
            return None
        return self.ours / self.baseline

    @property
    def met(self) -> bool | None:
        """True, False, or None (informational)."""
        if self.verdict is not None:
            return self.verdict
        return self.goal.met(self.ours, self.ratio)


def median(values: list[float]) -> float:
    """The median of ``values``."""
    return float(statistics.median(values))


def timed(fn: Callable[[], object]) -> float:
    """Wall seconds of one call of ``fn``."""
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def timed_probe(
    prober: Prober, repo: Repository, root: bytes
) -> tuple[float, ProbeResult]:
    """Wall seconds of one probe of ``repo``'s primary, and its result."""
    start = time.perf_counter()
    result = prober.probe(repo, repo.primary, root)
    return time.perf_counter() - start, result


def paired(
    reps: int, ours: Callable[[], float], baseline: Callable[[], float]
) -> tuple[list[float], list[float]]:
    """Run ours and the baseline alternately ``reps`` times; each returns its own seconds.

    Alternating keeps slow drifts of a noisy machine from favouring either side.
    """
    a: list[float] = []
    b: list[float] = []
    for i in range(reps):
        if i % 2 == 0:
            a.append(ours())
            b.append(baseline())
        else:
            b.append(baseline())
            a.append(ours())
    return a, b


def peak_memory(fn: Callable[[], object]) -> int:
    """Peak bytes allocated by Python (tracemalloc) while ``fn`` runs, all threads included."""
    gc.collect()
    tracemalloc.start()
    try:
        tracemalloc.reset_peak()
        base = tracemalloc.get_traced_memory()[0]
        fn()
        return tracemalloc.get_traced_memory()[1] - base
    finally:
        tracemalloc.stop()


@contextmanager
def scratch(prefix: str = "tuf-bench-") -> Iterator[Path]:
    """A temporary directory, removed afterwards."""
    with tempfile.TemporaryDirectory(prefix=prefix) as tmp:
        yield Path(tmp)


LIMITS = Limits()


def updater_config() -> UpdaterConfig:
    """The limits our prober uses, so the bare Updater accepts the same repositories."""
    return UpdaterConfig(
        max_root_rotations=LIMITS.max_root_rotations,
        root_max_length=LIMITS.root_max_length,
        timestamp_max_length=LIMITS.timestamp_max_length,
        snapshot_max_length=LIMITS.snapshot_max_length,
        targets_max_length=LIMITS.targets_max_length,
    )


def bare_refresh(
    metadata_dir: Path, urls: tuple[str, str], trusted_root: bytes
) -> Updater:
    """A bare python-tuf client: ``Updater(...).refresh()`` with its default fetcher.

    A populated ``metadata_dir`` makes it a returning (warm) client; an empty one a cold one.
    """
    metadata_dir.mkdir(parents=True, exist_ok=True)
    bootstrap = None if (metadata_dir / "root.json").exists() else trusted_root
    updater = Updater(
        str(metadata_dir), urls[0], target_base_url=urls[1], bootstrap=bootstrap,
        config=updater_config(),
    )
    updater.refresh()
    return updater


def raw_verify(files: dict[str, bytes]) -> None:
    """The raw cost of the same bytes: ``Metadata.from_bytes`` + ``verify_delegate`` for the
    top-level roles (root verifies itself; the others are verified by root)."""
    root = Metadata.from_bytes(files["root"])
    root.verify_delegate("root", root)
    for role in ("timestamp", "snapshot", "targets"):
        md = Metadata.from_bytes(files[role])
        root.verify_delegate(role, md)


def repository(
    urls: tuple[str, str],
    name: str = "bench",
    *,
    canaries: tuple[str, ...] = (),
    mirrors: tuple[Endpoint, ...] = (),
    verify_delegations: bool = True,
    full_refresh_every: int = 10,
) -> Repository:
    """A warm-mode repository configuration for the prober (trusted root passed as bytes)."""
    return Repository(
        name=name,
        trusted_root=Path("/nonexistent/root.json"),
        primary=Endpoint("primary", *urls),
        mirrors=mirrors,
        interval=30.0,
        timeout=60.0,
        connect_timeout=5.0,
        read_timeout=30.0,
        mode=Mode.WARM,
        canary_targets=canaries,
        full_refresh_every=full_refresh_every,
        verify_delegations=verify_delegations,
    )


def fmt(value: float | None, unit: str) -> str:
    """A number with its unit, compactly."""
    if value is None:
        return "-"
    if unit == "s":
        if value < 1e-3:
            return f"{value * 1e6:.0f} us"
        if value < 1:
            return f"{value * 1e3:.2f} ms"
        return f"{value:.2f} s"
    if unit == "MB":
        return f"{value:.1f} MB"
    if unit == "%":
        return f"{value:.1f} %"
    if unit == "/s":
        return f"{value:,.0f}/s"
    if unit == "/min":
        return f"{value:.1f}/min"
    return f"{value:g} {unit}".strip()


def table(rows: list[Row]) -> str:
    """The results as a Markdown table."""
    header = ("case", "ours (median)", "baseline (median)", "ratio", "goal", "met", "reps")
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row in rows:
        baseline = "-" if row.baseline is None else (
            f"{fmt(row.baseline, row.unit)} ({row.baseline_name})"
        )
        ratio = "-" if row.ratio is None else f"{row.ratio:.3f}x"
        met = {True: "met", False: "**MISSED**", None: "-"}[row.met]
        note = f" ({row.note})" if row.note else ""
        lines.append(
            f"| {row.case}{note} | {fmt(row.ours, row.unit)} | {baseline} | {ratio} | "
            f"{row.goal.describe()} | {met} | {row.reps} |"
        )
    return "\n".join(lines)
