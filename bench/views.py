"""Cases 9 to 12: what the client views cost (issue 16 deliverable 5, issue 17 deliverable 5).

* 9, the view ``new`` of the 100,000-target repository: one view pass
  (``Prober.probe_views`` with no bootstrap roots: a first-boot refresh from the trusted root in
  an empty cache, the canary downloaded) against a bare python-tuf cold client doing the same
  (``Updater(bootstrap=root).refresh()``, ``get_targetinfo`` and ``download_target`` of the
  canary), wall and CPU seconds (goal <= 1.2x, as for other cold refreshes); and its CPU as a
  share of one core at the default ``new_client_interval`` (one pass per 10 minutes).
* 10, a bootstrap view's chain walk: a repository whose root was rotated 20 times (root
  version 21), the view from root version 1 against a bare ``Updater`` bootstrapped from version
  1 doing the same refresh (both fetch and verify root versions 2 to 21 and ask for 22; counted
  in nginx's access log). The view is run alone (``probe_views`` with root version 1 as the
  trusted root: the code of a bootstrap view, with nothing shared from another view), goal
  <= 1.2x; and, for information, as ``bootstrap-root-v1`` in a pass after ``new``, where it
  gets timestamp, snapshot and targets from the pass's memo.
* 11, external clients: one run of a client through tuf-exporter
  (:func:`exporter.probe.external.run_client`: its directories, process groups, bounded
  output and the forwarder every request goes through, one :class:`Forwarder` for all runs as
  the service keeps it; the first run of each side is not measured) against the same adapter
  commands run
  alone with ``subprocess.run`` straight at the web server, same environment, same kind of
  metadata directory (goal <= 1.1x wall time), in ``new`` mode (``init``, ``refresh``,
  ``download`` every run) and ``returning`` mode (``refresh``, ``download``). The python-tuf
  adapter runs under this interpreter; the tuf-js adapter too when its ``node_modules`` is
  installed (``npm ci`` in ``exporter/adapters/tuf-js``) and ``node`` is found.
* 12, 20 external views every minute beside the python-tuf probes: the real ``Service`` in its
  own process (:mod:`bench.service_run`) probing 50 endpoints every 30 s and running the
  python-tuf adapter (``mode: new``, ``interval: 1m``, default ``client_concurrency`` 2) on
  20 of them, for 3 minutes after a 35 s warm-up; goal: every python-tuf probe on time (as
  case 4 counts it), no late probe. The views ``new`` and ``bootstrap-root-v<N>`` are off
  (``new_client_interval: 0``) so only the external clients are added to case 4's load.

Ours and every baseline use the same server (nginx by default) in the same run, alternately.
"""

from __future__ import annotations

import shutil
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

from bench.common import (
    INFO,
    Goal,
    Row,
    bare_refresh,
    median,
    paired,
    repository,
    scratch,
)
from bench.service_run import INTERVAL, run_service, write_config
from bench.simproc import SimProcess, Spec
from exporter.adapters import PYTHON_TUF_CLIENT, TUF_JS_CLIENT, TUF_JS_DIR
from exporter.config.model import Client, ClientMode, Repository
from exporter.probe.external import Forwarder, client_environment, run_client
from exporter.probe.prober import Prober
from exporter.probe.results import ProbeResult

#: The default ``new_client_interval``: one view pass per endpoint every 10 minutes.
VIEW_INTERVAL = 600.0
ROTATIONS = 20
SERVICE_WARMUP = INTERVAL + 5.0


def _label(count: int) -> str:
    return f"{count:,} targets"


def _measured(fn: Callable[[], object]) -> tuple[float, float]:
    """(wall seconds, CPU seconds of this process, every thread) of one call of ``fn``."""
    wall, cpu = time.perf_counter(), time.process_time()
    fn()
    return time.perf_counter() - wall, time.process_time() - cpu


def _views(prober: Prober, repo: Repository, root: bytes,
           bootstrap: dict[int, bytes]) -> list[ProbeResult]:
    """One view pass; fails loudly unless every view succeeded."""
    results = prober.probe_views(repo, repo.primary, root, bootstrap)
    for result in results:
        assert result.success, f"view {result.client}: {result.message}"
    assert len(results) == 1 + len(bootstrap)
    return results


def _bare_new(directory: Path, urls: tuple[str, str], root: bytes,
              canaries: tuple[str, ...]) -> None:
    """A bare python-tuf first install: a cold refresh, then each canary looked up and
    downloaded (``get_targetinfo``, ``download_target``) into ``directory``."""
    updater = bare_refresh(directory / "metadata", urls, root)
    for canary in canaries:
        info = updater.get_targetinfo(canary)
        assert info is not None, canary
        updater.download_target(info, str(directory / "canary"))


def new_view(count: int, reps: int) -> list[Row]:
    """Case 9: the view ``new`` of a ``count``-target repository against a bare cold client."""
    with SimProcess(Spec(targets=count)) as sim, scratch() as tmp:
        built = sim.built
        urls = built.urls["primary"]
        canaries = (built.canary,)
        repo = repository(urls, canaries=canaries)
        prober = Prober(tmp / "state")
        root = built.trusted_root
        _views(prober, repo, root, {})  # the session's connection, imports
        cpu_ours: list[float] = []
        cpu_bare: list[float] = []
        runs = [0]

        def ours() -> float:
            wall, cpu = _measured(lambda: _views(prober, repo, root, {}))
            cpu_ours.append(cpu)
            return wall

        def bare() -> float:
            runs[0] += 1
            directory = tmp / f"bare-{runs[0]}"
            wall, cpu = _measured(lambda: _bare_new(directory, urls, root, canaries))
            shutil.rmtree(directory)
            cpu_bare.append(cpu)
            return wall

        a, b = paired(reps, ours, bare)
    label = f"9 new-client view, {_label(count)}"
    base = "bare cold refresh() + canary download"
    share = 100.0 * median(cpu_ours) / VIEW_INTERVAL
    return [
        Row(f"{label}: one view pass, wall", median(a), "s", median(b), base,
            Goal("ratio<=", 1.2), reps),
        Row(f"{label}: one view pass, CPU", median(cpu_ours), "s", median(cpu_bare), base,
            Goal("ratio<=", 1.2), reps),
        Row(f"{label}: CPU share of one core at new_client_interval 10m", share, "%", None, "",
            INFO, reps, note="one pass per endpoint every 600 s"),
    ]


def _root_requests(sim: SimProcess, fn: Callable[[], object]) -> list[str]:
    """The root files ``fn`` asked the primary for (nginx's access log), sorted."""
    sim.reset_requests()
    fn()
    return sorted(name for name, n in sim.requests().items() for _ in range(n)
                  if name.endswith("root.json"))


def chain_walk(rotations: int, reps: int) -> list[Row]:
    """Case 10: the view from root version 1 after ``rotations`` root rotations."""
    with SimProcess(Spec(targets=10, root_rotations=rotations)) as sim, scratch() as tmp:
        built = sim.built
        urls = built.urls["primary"]
        repo = repository(urls)
        prober = Prober(tmp / "state")
        v1, current = built.trusted_root, built.current_root
        runs = [0]

        def bare_dir() -> Path:
            runs[0] += 1
            return tmp / f"bare-{runs[0]}"

        ours_roots = _root_requests(sim, lambda: _views(prober, repo, v1, {}))
        bare_roots = _root_requests(sim, lambda: bare_refresh(bare_dir(), urls, v1))
        assert ours_roots == bare_roots, (ours_roots, bare_roots)
        assert len(ours_roots) == rotations + 1, ours_roots  # 2 .. N+1, and N+2 (404)
        cpu_ours: list[float] = []
        cpu_bare: list[float] = []
        in_pass: list[float] = []

        def ours() -> float:
            wall, cpu = _measured(lambda: _views(prober, repo, v1, {}))
            cpu_ours.append(cpu)
            return wall

        def bare() -> float:
            wall, cpu = _measured(lambda: bare_refresh(bare_dir(), urls, v1))
            cpu_bare.append(cpu)
            return wall

        a, b = paired(reps, ours, bare)
        for _ in range(reps):
            results = _views(prober, repo, current, {1: v1})
            in_pass.append(results[1].duration_seconds)
    label = f"10 bootstrap view from root v1, {rotations} root rotations"
    base = "bare Updater(bootstrap=v1).refresh()"
    note = f"each fetched the same {len(ours_roots)} root files"
    return [
        Row(f"{label}: the view alone, wall", median(a), "s", median(b), base,
            Goal("ratio<=", 1.2), reps, note=note),
        Row(f"{label}: the view alone, CPU", median(cpu_ours), "s", median(cpu_bare), base,
            INFO, reps),
        Row(f"{label}: bootstrap-root-v1 in a pass after new", median(in_pass), "s",
            median(b), base, INFO, reps,
            note="timestamp, snapshot, targets from the pass's memo"),
    ]


def _adapters() -> list[tuple[str, tuple[str, ...]]]:
    """(name, command) of the adapters this machine can run."""
    adapters: list[tuple[str, tuple[str, ...]]] = [
        ("python-tuf", (sys.executable, str(PYTHON_TUF_CLIENT)))]
    node = shutil.which("node")
    if node is not None and (TUF_JS_DIR / "node_modules").is_dir():
        adapters.append(("tuf-js", (node, str(TUF_JS_CLIENT))))
    return adapters


def _alone(client: Client, run_dir: Path, metadata: Path, urls: tuple[str, str],
           root: bytes, canaries: tuple[str, ...]) -> None:
    """The commands ``run_client`` gives ``client``, run one after the other with
    ``subprocess.run`` straight at the server: ``init`` while ``metadata`` is empty,
    ``refresh``, a ``download`` per canary; the same environment and directories."""
    home, tmpdir, targets = run_dir / "home", run_dir / "tmp", run_dir / "targets"
    for path in (home, tmpdir, targets):
        path.mkdir(parents=True, exist_ok=True)
    env = client_environment(client, home, tmpdir)
    argv = [*client.command, "--metadata-dir", str(metadata)]
    steps: list[list[str]] = []
    if not metadata.is_dir() or not any(metadata.iterdir()):
        metadata.mkdir(parents=True, exist_ok=True)
        trusted = run_dir / "trusted-root.json"
        trusted.write_bytes(root)
        steps.append([*argv, "init", str(trusted)])
    remote = [*argv, "--metadata-url", urls[0]]
    steps.append([*remote, "refresh"])
    steps += [[*remote, "--target-name", canary, "--target-base-url", urls[1],
               "--target-dir", str(targets), "download"] for canary in canaries]
    for step in steps:
        subprocess.run(step, cwd=run_dir, env=env, stdin=subprocess.DEVNULL,
                       capture_output=True, check=True, timeout=120)


def _client_row(client: Client, tmp: Path, urls: tuple[str, str], root: bytes,
                canaries: tuple[str, ...], reps: int) -> Row:
    """Case 11 for one client: runs through tuf-exporter against its commands run alone."""
    with Forwarder() as forwarder:
        return _client_runs(client, tmp, urls, root, canaries, reps, forwarder)


def _client_runs(client: Client, tmp: Path, urls: tuple[str, str], root: bytes,
                 canaries: tuple[str, ...], reps: int, forwarder: Forwarder) -> Row:
    repo = repository(urls, canaries=canaries)
    state = tmp / f"state-{client.name}-{client.mode}"
    alone_dir = tmp / f"alone-{client.name}-{client.mode}"
    runs = [0]

    def ours() -> float:
        start = time.perf_counter()
        result = run_client(client, repo, repo.primary, root, state, forwarder=forwarder)
        seconds = time.perf_counter() - start
        assert result.success, result.message
        return seconds

    def alone() -> float:
        runs[0] += 1
        run_dir = alone_dir / f"run-{runs[0]}"
        new = client.mode is ClientMode.NEW
        metadata = run_dir / "metadata" if new else alone_dir / "metadata"
        start = time.perf_counter()
        _alone(client, run_dir, metadata, urls, root, canaries)
        seconds = time.perf_counter() - start
        shutil.rmtree(run_dir)
        return seconds

    ours()  # returning: the first run of each side initialises; both: warms up (the
    alone()  # forwarder starts at the first run, once for the service's life)
    a, b = paired(reps, ours, alone)
    steps = "init, refresh, download" if client.mode is ClientMode.NEW else "refresh, download"
    return Row(f"11 external client {client.name}, mode {client.mode} ({steps}), 10 targets: "
               "one run through tuf-exporter", median(a), "s", median(b),
               "the same commands alone", Goal("ratio<=", 1.1), reps)


def external(reps: int) -> list[Row]:
    """Case 11: a client run through tuf-exporter against its commands run alone."""
    with SimProcess(Spec(targets=10)) as sim, scratch() as tmp:
        built = sim.built
        urls = built.urls["primary"]
        return [
            _client_row(Client(name=name, command=command, mode=mode, timeout=120.0), tmp,
                        urls, built.trusted_root, (built.canary,), reps)
            for name, command in _adapters()
            for mode in (ClientMode.NEW, ClientMode.RETURNING)
        ]


def service(quick: bool) -> list[Row]:
    """Case 12: 50 endpoints every 30 s and 20 external client views every minute."""
    endpoints, views, repositories = (20, 4, 5) if quick else (50, 20, 5)
    duration = SERVICE_WARMUP + (60.0 if quick else 180.0)
    per_repo = endpoints // repositories
    client = {"name": "python-tuf", "command": [sys.executable, str(PYTHON_TUF_CLIENT)],
              "interval": "1m", "timeout": "60s", "mode": "new"}
    with SimProcess(Spec(targets=10, mirrors=endpoints - 1)) as sim, scratch() as tmp:
        config = write_config(tmp, sim.built, repositories=repositories, endpoints=endpoints,
                              clients=[client], client_repositories=views // per_repo,
                              new_client_interval=0)
        summary = run_service(config, duration, SERVICE_WARMUP, "clients")
    label = (f"12 {endpoints} endpoints every {INTERVAL:g} s + {summary.client_views} "
             f"python-tuf client views every 1 m ({summary.window_seconds:.0f} s window)")
    due = summary.on_time + summary.late + summary.failed + summary.skipped
    on_time = 100.0 * summary.on_time / due if due else 0.0
    runs = summary.client_runs
    failed = sum(1 for _, ok, _ in runs if not ok)
    reasons = sorted({reason for _, ok, reason in runs if not ok})
    seconds = statistics.median([s for s, _, _ in runs]) if runs else 0.0
    per_minute = 60.0 * len(runs) / summary.window_seconds if summary.window_seconds else 0.0
    detail = (f"{summary.probes} probes, {summary.late} late, {summary.failed} failed, "
              f"{summary.skipped} skipped")
    return [
        Row(f"{label}: python-tuf probes on time", on_time, "%", None, "",
            Goal("value>=", 100.0, "100 %"), 1, note=detail),
        Row(f"{label}: late python-tuf probes", float(summary.late), "", None, "",
            Goal("value<=", 0.0, "0"), 1),
        Row(f"{label}: client runs started", per_minute, "/min", None, "", INFO, 1,
            note=(f"{len(runs)} runs, {failed} failed{' ' + str(reasons) if reasons else ''}, "
                  f"median {seconds:.2f} s, {summary.client_views_idle} views without a run")),
        Row(f"{label}: CPU, share of one core", 100.0 * summary.cpu_share, "%", None, "",
            INFO, 1, note=f"exporter process; client processes "
                          f"{100.0 * summary.children_cpu_share:.1f} %"),
    ]


def run(quick: bool) -> list[Row]:
    """All rows of cases 9 to 12."""
    rows = new_view(20_000 if quick else 100_000, 3 if quick else 5)
    rows += chain_walk(ROTATIONS, 3 if quick else 7)
    rows += external(3 if quick else 7)
    rows += service(quick)
    return rows
