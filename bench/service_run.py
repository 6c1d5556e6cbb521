"""The real ``Service`` in its own process, probing many endpoints of a simulator process.

Used by case 4 (many endpoints: CPU, timeliness, memory) and case 5 (scrape). The parent starts
a simulator process (:mod:`bench.simproc`) with ``N - 1`` mirrors, writes a configuration file
that spreads the ``N`` endpoints over a few repositories, and runs :func:`worker` in a spawned
child. The child is the exporter process: it configures JSON logging (to ``/dev/null``) as the
CLI does, starts the ``Service`` (scheduler, prober, history, spool, shipper to the JSON Lines
file), measures itself and sends a summary back over a pipe.
"""

from __future__ import annotations

import itertools
import json
import multiprocessing
import multiprocessing.connection
import os
import socket
import statistics
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry, Gauge, generate_latest

from bench.simproc import Built

INTERVAL = 30.0
JITTER = 0.1
WORKERS = 8


def write_config(
    directory: Path,
    built: Built,
    *,
    repositories: int,
    endpoints: int,
    canary: bool = True,
    hung_url: str | None = None,
    clients: Sequence[Mapping[str, Any]] = (),
    client_repositories: int = 0,
    new_client_interval: float | None = None,
) -> Path:
    """Write ``config.yaml`` for ``endpoints`` endpoints spread over ``repositories``.

    ``clients`` are top-level external client entries (``clients:``), run against every
    endpoint of the first ``client_repositories`` repositories (the others list none);
    ``new_client_interval`` is set on every repository when given (0 turns the views
    ``new`` and ``bootstrap-root-v<N>`` off).
    """
    root = directory / "root.json"
    root.write_bytes(built.trusted_root)
    names = list(built.urls)[:endpoints]
    if len(names) < endpoints:
        raise ValueError(f"the simulator serves {len(names)} endpoints, {endpoints} wanted")
    per_repo = -(-endpoints // repositories)
    repos: list[dict[str, Any]] = []
    for r in range(repositories):
        group = names[r * per_repo:(r + 1) * per_repo]
        if not group:
            break
        first = built.urls[group[0]]
        repos.append({
            "name": f"repo{r}",
            "metadata_url": first[0],
            "targets_url": first[1],
            "trusted_root": str(root),
            "interval": INTERVAL,
            "timeout": 10,
            "canary_targets": [built.canary] if canary and built.canary else [],
            "mirrors": [
                {"name": f"ep-{name}", "metadata_url": built.urls[name][0],
                 "targets_url": built.urls[name][1]}
                for name in group[1:]
            ],
            "clients": [c["name"] for c in clients] if r < client_repositories else [],
        })
        if new_client_interval is not None:
            repos[-1]["new_client_interval"] = new_client_interval
    if hung_url is not None:
        repos.append({
            "name": "hung", "metadata_url": hung_url, "trusted_root": str(root),
            "interval": 600, "timeout": 90, "connect_timeout": 5, "read_timeout": 90,
        })
    config = {
        "state_dir": str(directory / "state"),
        "workers": WORKERS,
        "jitter": JITTER,
        "repositories": repos,
    }
    if clients:
        config["clients"] = [dict(c) for c in clients]
    path = directory / "config.yaml"
    path.write_text(json.dumps(config, indent=1))  # JSON is YAML
    return path


def peak_rss_mb(pid: int | str = "self") -> float:
    """Peak resident memory of this process (or of process ``pid``) (VmHWM), in MB; 0 for a
    process that is gone.

    Not ``getrusage``'s ``ru_maxrss``: that survives ``execve``, so a spawned child would
    report its parent's peak.
    """
    try:
        with open(f"/proc/{pid}/status") as handle:
            for line in handle:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024 / 1e6
    except OSError:
        pass
    return 0.0


def rss_mb() -> float:
    """Resident memory of this process now, in MB."""
    with open("/proc/self/statm") as handle:
        pages = int(handle.read().split()[1])
    return pages * os.sysconf("SC_PAGE_SIZE") / 1e6


@dataclass
class Summary:
    """What the service child measured."""

    endpoints: int
    window_seconds: float
    cpu_share: float  #: CPU seconds per wall second over the window (1.0 = one core)
    on_time: int
    late: int
    failed: int
    skipped: int
    probes: int
    reused: int
    rss_samples: list[tuple[float, float]] = field(default_factory=list)
    max_rss_mb: float = 0.0
    scrape_ours: list[float] = field(default_factory=list)
    scrape_plain: list[float] = field(default_factory=list)
    scrape_samples: int = 0
    scrape_during_hang: list[float] = field(default_factory=list)
    hang_pending: bool = False
    #: CPU of the exited child processes (external clients) per wall second over the window.
    children_cpu_share: float = 0.0
    #: External client runs that started in the window: (seconds, success, reason).
    client_runs: list[tuple[float, bool, str]] = field(default_factory=list)
    #: External client views configured, and those without a run in the window.
    client_views: int = 0
    client_views_idle: int = 0
    #: What a mode measures beyond these (the soak's samples and failure counts).
    extra: dict[str, Any] = field(default_factory=dict)


def plain_registry(registry: CollectorRegistry) -> CollectorRegistry:
    """A registry of plain Gauges with the same families and sample counts as ``registry``."""
    plain = CollectorRegistry(auto_describe=False)
    for i, metric in enumerate(registry.collect()):
        if not metric.samples:
            continue
        labelnames = sorted({name for s in metric.samples for name in s.labels})
        several = len({s.name for s in metric.samples}) > 1
        if several:  # e.g. a histogram: keep its samples apart
            labelnames.append("sample")
        gauge = Gauge(f"plain_{i}_{metric.name}", metric.documentation or "plain",
                      labelnames, registry=plain)
        for sample in metric.samples:
            labels = {name: sample.labels.get(name, "") for name in labelnames}
            if several:
                labels["sample"] = sample.name
            if labelnames:
                gauge.labels(**labels).set(sample.value)
            else:
                gauge.set(sample.value)
    return plain


def _samples(registry: CollectorRegistry) -> int:
    return sum(len(metric.samples) for metric in registry.collect())


def _scrapes(registry: CollectorRegistry, reps: int) -> tuple[list[float], list[float], int]:
    plain = plain_registry(registry)
    ours: list[float] = []
    base: list[float] = []
    for i in range(reps):
        for side in ((registry, ours), (plain, base)) if i % 2 == 0 else (
            (plain, base), (registry, ours)
        ):
            start = time.perf_counter()
            generate_latest(side[0])
            side[1].append(time.perf_counter() - start)
    ours_samples, plain_samples = _samples(registry), _samples(plain)
    assert ours_samples == plain_samples, (ours_samples, plain_samples)
    return ours, base, ours_samples


def worker(
    config_path: str,
    duration: float,
    warmup: float,
    mode: str,
    conn: multiprocessing.connection.Connection,
    options: dict[str, Any] | None = None,
) -> None:
    """The exporter process. ``mode`` is ``endpoints`` (measure a steady run), ``clients`` (the
    same, and the external client runs noted too), ``scrape`` or ``soak``
    (:func:`bench.soak.sample_loop`, with ``options``)."""
    from bench import soak
    from exporter import logs
    from exporter.config.model import Client, Endpoint, Repository
    from exporter.probe.results import ProbeResult
    from exporter.serve import service as service_module
    from exporter.serve.service import Service

    devnull = open(os.devnull, "w")  # noqa: SIM115 - lives as long as the process
    logs.setup("info", devnull)
    steady = mode in ("endpoints", "clients")
    service = Service(Path(config_path), first_run_within=INTERVAL if steady else 5)
    runs: list[tuple[float, float, bool, str, tuple[str, str, str]]] = []
    from exporter.probe.external import Forwarder, run_client  # what the service calls

    def observed_client(client: Client, repository: Repository, endpoint: Endpoint,
                        trusted_root: bytes, state_dir: Path,
                        slots: threading.Semaphore | None = None,
                        cancel: threading.Event | None = None,
                        forwarder: Forwarder | None = None) -> ProbeResult:
        """The service's own client run, with each result noted."""
        result = run_client(client, repository, endpoint, trusted_root, state_dir, slots,
                            cancel, forwarder)
        runs.append((result.started_at.timestamp(), result.duration_seconds, result.success,
                     str(result.reason or ""), (client.name, repository.name, endpoint.name)))
        return result

    service_module.run_client = observed_client  # type: ignore[attr-defined]
    expected = {(r.name, e.name) for r in service.config.repositories for e in r.endpoints
                if r.name != "hung"}
    starts: dict[tuple[str, str], list[tuple[float, bool, bool]]] = {}
    timeliness = soak.Timeliness(time.time() + warmup, set((options or {}).get("failing", ())))

    probe = service.prober.probe

    def observed(repo: Any, endpoint: Any, trusted_root: bytes | None = None) -> Any:
        """The service's own probe, with each result noted for the on-time check."""
        result = probe(repo, endpoint, trusted_root)
        key = (result.repository, result.endpoint)
        if mode == "soak":  # counted, not kept: the soak measures this process's memory
            timeliness.add(key, result.started_at.timestamp(), result.success,
                           result.reused_verdict)
        else:
            starts.setdefault(key, []).append(
                (result.started_at.timestamp(), result.success, result.reused_verdict))
        return result

    service.prober.probe = observed  # type: ignore[method-assign,assignment]
    service.start()
    began = time.time()
    summary = Summary(len(expected), 0.0, 0.0, 0, 0, 0, 0, 0, 0)
    try:
        if steady:
            window_start = _steady(service, starts, summary, began, duration, warmup)
            views = {(c, r.name, e.name) for r in service.config.repositories
                     for c in r.clients for e in r.endpoints}
            seen = {key for at, _, _, _, key in runs if at >= window_start}
            summary.client_views = len(views)
            summary.client_views_idle = len(views - seen)
            summary.client_runs = [(seconds, ok, reason) for at, seconds, ok, reason, _ in
                                   list(runs) if at >= window_start]
        elif mode == "soak":
            soak.sample_loop(service, timeliness, summary, began, duration, options or {})
        else:
            _scrape(service, starts, expected, summary, duration)
        summary.max_rss_mb = peak_rss_mb()
        conn.send(summary)  # before stopping: stop() waits for a hung probe to time out
    finally:
        conn.close()
        service.stop()


def _steady(
    service: Any,
    starts: dict[tuple[str, str], list[tuple[float, bool, bool]]],
    summary: Summary,
    began: float,
    duration: float,
    warmup: float,
) -> float:
    """Measure from ``warmup`` seconds after ``began`` to ``duration``; the window's start."""
    time.sleep(warmup)
    window_start = time.time()
    cpu_start = time.process_time()
    children_start = _children_cpu()
    while time.time() < began + duration:
        summary.rss_samples.append((time.time() - began, rss_mb()))
        time.sleep(min(5.0, max(0.0, began + duration - time.time())))
    window_end = time.time()
    cpu = time.process_time() - cpu_start
    children = _children_cpu() - children_start
    summary.rss_samples.append((window_end - began, rss_mb()))
    summary.window_seconds = window_end - window_start
    summary.cpu_share = cpu / summary.window_seconds
    summary.children_cpu_share = children / summary.window_seconds
    limit = INTERVAL * (1 + JITTER) + 2.0
    for key in {(r.name, e.name) for r in service.config.repositories for e in r.endpoints}:
        runs = sorted(starts.get(key, []))
        times = [t for t, _, _ in runs]
        for (before, _, _), (at, ok, reused) in itertools.pairwise(runs):
            if at < window_start:
                continue
            summary.probes += 1
            summary.reused += reused
            if not ok:
                summary.failed += 1
            elif at - before <= limit:
                summary.on_time += 1
            else:
                summary.late += 1
        last = times[-1] if times else window_start - limit
        if window_end - last > limit:  # a probe that was due never started
            summary.late += 1
    summary.skipped = sum(service.store.snapshot().skipped.values())
    return window_start


def _children_cpu() -> float:
    """CPU seconds of the child processes of this process that have exited (external clients)."""
    times = os.times()
    return times.children_user + times.children_system


def _scrape(
    service: Any,
    starts: dict[tuple[str, str], list[tuple[float, bool, bool]]],
    expected: set[tuple[str, str]],
    summary: Summary,
    timeout: float,
) -> None:
    deadline = time.time() + timeout
    while not expected <= set(starts) and time.time() < deadline:
        time.sleep(0.5)
    if not expected <= set(starts):
        raise RuntimeError(f"only {len(set(starts) & expected)} of {len(expected)} probed")
    ours, plain, samples = _scrapes(service.registry, 7)
    summary.scrape_ours, summary.scrape_plain, summary.scrape_samples = ours, plain, samples
    hung = next((r, e) for r in service.config.repositories if r.name == "hung"
                for e in r.endpoints)
    during: list[float] = []
    for _ in range(5):
        start = time.perf_counter()
        generate_latest(service.registry)
        during.append(time.perf_counter() - start)
    summary.scrape_during_hang = during
    summary.hang_pending = (hung[0].name, hung[1].name) not in starts
    summary.probes = sum(len(v) for v in starts.values())


def hung_listener() -> tuple[socket.socket, str]:
    """A socket that accepts connections (kernel backlog) and never answers: a hung server."""
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.bind(("127.0.0.1", 0))
    listener.listen(64)
    return listener, f"http://127.0.0.1:{listener.getsockname()[1]}/metadata/"


def run_service(
    config: Path,
    duration: float,
    warmup: float,
    mode: str,
    release: Callable[[], None] | None = None,
    *,
    during: Callable[[], None] | None = None,
    options: dict[str, Any] | None = None,
) -> Summary:
    """Run :func:`worker` in a spawned process and return its summary.

    ``during()`` runs in this process while the child runs (the soak's fault schedule);
    ``options`` go to the worker. ``release()`` is called once the summary arrived, before
    waiting for the child to stop (closing a hung server there lets the hung probe, and so the
    service, end at once).
    """
    context = multiprocessing.get_context("spawn")
    parent, child = context.Pipe()
    process = context.Process(target=worker,
                              args=(str(config), duration, warmup, mode, child, options))
    process.start()
    child.close()
    try:
        if during is not None:
            during()
        if not parent.poll(duration + 300):
            raise RuntimeError("the service process did not report")
        summary: Summary = parent.recv()
    finally:
        if release is not None:
            release()
        process.join(30)
        if process.is_alive():
            process.kill()
    return summary


def rss_growth(samples: list[tuple[float, float]], warmup: float) -> tuple[float, float]:
    """(median RSS of the first third, of the last third) of the samples after warm-up."""
    values = [mb for t, mb in samples if t >= warmup] or [mb for _, mb in samples]
    third = max(1, len(values) // 3)
    return statistics.median(values[:third]), statistics.median(values[-third:])
