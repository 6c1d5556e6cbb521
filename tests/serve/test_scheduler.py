"""The scheduler's threads survive their own errors; one that dies anyway is visible."""

from __future__ import annotations

import errno
import sqlite3
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from support import poll

from exporter import catalogue
from exporter.config.model import Config, Endpoint, Repository
from exporter.events.spool import SpoolError
from exporter.history.store import HistoryError
from exporter.probe.classify import exporter_fault
from exporter.serve.scheduler import Scheduler


def _sqlite_error(code: int) -> sqlite3.Error:
    """A ``sqlite3.Error`` as SQLite raises it, with its result code."""
    exc = sqlite3.OperationalError("database or disk is full")
    exc.sqlite_errorcode = code
    return exc


def _config(tmp_path: Path, interval: float = 0.2) -> Config:
    repo = Repository(name="r", trusted_root=tmp_path / "root.json",
                      primary=Endpoint("primary", "http://127.0.0.1:9/m/", "http://127.0.0.1:9/t/"),
                      interval=interval)
    return Config(repositories=(repo,), state_dir=tmp_path, jitter=0)


@pytest.fixture
def calls() -> list[str]:
    return []


@pytest.fixture
def scheduler(calls: list[str]) -> Iterator[Scheduler]:
    def run(repo: Repository, endpoint: Endpoint) -> None:
        calls.append(endpoint.name)
        if len(calls) <= 2:
            raise _sqlite_error(sqlite3.SQLITE_FULL)

    sched = Scheduler(run, lambda *_: None, workers=2)
    try:
        yield sched
    finally:
        sched.stop(wait=True)


def test_a_probe_job_that_raises_is_counted_and_runs_again(
    scheduler: Scheduler, calls: list[str], tmp_path: Path
) -> None:
    scheduler.apply(_config(tmp_path), first_run_within=0.0)
    scheduler.start()
    poll(lambda: len(calls) >= 4, timeout=10)
    assert scheduler.running
    assert scheduler.errors() == {("probe_worker", "disk"): 2}
    samples = {tuple(s.labels.values()): s.value for f in scheduler.metrics() for s in f.samples}
    assert samples[("probe_worker", "disk")] == 2
    assert len(samples) == len(catalogue.JOB_THREADS) * len(catalogue.EXPORTER_ERROR_CAUSES)


def test_the_scheduler_loop_survives_its_own_exception(
    scheduler: Scheduler, calls: list[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    loop = scheduler._scheduler
    real = loop._process_jobs
    failures = threading.Semaphore(1)

    def process_jobs() -> float | None:
        if failures.acquire(blocking=False):
            raise RuntimeError("a job store error")
        return real()

    monkeypatch.setattr(loop, "_process_jobs", process_jobs)
    monkeypatch.setattr("exporter.serve.scheduler.LOOP_BACKOFF", (0.05, 0.1))
    scheduler.apply(_config(tmp_path), first_run_within=0.0)
    scheduler.start()
    poll(lambda: len(calls) >= 3, timeout=10)
    assert scheduler.running
    assert scheduler.errors()[("scheduler", "internal")] == 1


def test_running_is_false_before_start_and_once_the_thread_died(
    scheduler: Scheduler, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert not scheduler.running

    class Fatal(BaseException):
        pass

    def die() -> None:
        raise Fatal

    monkeypatch.setattr(threading, "excepthook", lambda args: None)
    monkeypatch.setattr(scheduler._scheduler, "_process_jobs", die)
    scheduler.start()
    poll(lambda: not scheduler.running, timeout=10)


def _wrapped(outer: BaseException, inner: BaseException) -> BaseException:
    outer.__cause__ = inner
    return outer


@pytest.mark.parametrize(("exc", "cause"), [
    (HistoryError("x"), "history"), (SpoolError("closed"), "spool"),
    (_wrapped(SpoolError("cannot write"), OSError(errno.ENOSPC, "full")), "spool"),
    (_wrapped(RuntimeError("x"), HistoryError("y")), "history"),
    (OSError(errno.EMFILE, "Too many open files"), "descriptors"),
    (OSError(errno.ENOSPC, "No space left"), "disk"), (MemoryError(), "memory"),
    (_sqlite_error(sqlite3.SQLITE_FULL), "disk"), (_sqlite_error(sqlite3.SQLITE_NOMEM), "memory"),
    (sqlite3.OperationalError("no such table"), "internal"),
    (OSError(errno.ENOENT, "missing"), "internal"), (KeyError("x"), "internal"),
])
def test_thread_errors_count_the_one_vocabulary_of_exporter_faults(
    scheduler: Scheduler, exc: BaseException, cause: str
) -> None:
    """tuf_exporter_thread_errors_total's ``cause`` comes from the one classifier of the
    exporter's faults, with the values of tuf_exporter_errors_total."""
    assert str(exporter_fault(exc)) == cause
    assert cause in catalogue.EXPORTER_ERROR_CAUSES
    scheduler._count("probe_worker", exc)
    assert scheduler.errors() == {("probe_worker", cause): 1}


def test_view_passes_run_on_their_own_interval_one_at_a_time(tmp_path: Path) -> None:
    """Issue 16: one view-pass job per endpoint every new_client_interval, never two passes of
    an endpoint at once, none when the interval is 0 (a reload turns them off)."""
    from dataclasses import replace
    from datetime import UTC, datetime, timedelta

    probes: list[str] = []
    passes: list[datetime] = []
    running = threading.Semaphore(1)
    overlapped = threading.Event()
    release = threading.Event()

    def run_views(repo: Repository, endpoint: Endpoint) -> None:
        if not running.acquire(blocking=False):
            overlapped.set()
            return
        try:
            passes.append(datetime.now(UTC))
            if len(passes) == 2:
                release.wait(10)  # a slow pass: what falls due meanwhile is skipped
        finally:
            running.release()

    sched = Scheduler(lambda repo, endpoint: probes.append(endpoint.name), lambda *_: None,
                      workers=4, run_views=run_views)
    config = _config(tmp_path, interval=60)
    repo = replace(config.repositories[0], new_client_interval=0.2)
    job = "views\x00r\x00primary"
    try:
        sched.apply(replace(config, repositories=(repo,)), first_run_within=0.0)
        sched.start()
        poll(lambda: len(passes) >= 2, timeout=10)

        def due_twice_meanwhile() -> bool:
            scheduled = sched._scheduler.get_job(job)
            return scheduled.next_run_time > passes[1] + timedelta(seconds=0.5)

        poll(due_twice_meanwhile, timeout=10)
        release.set()
        poll(lambda: len(passes) >= 3, timeout=10)
        assert not overlapped.is_set()
        assert probes == ["primary"]  # the probe keeps its own interval
        sched.apply(replace(config, repositories=(replace(repo, new_client_interval=0),)))
        assert sched._scheduler.get_job(job) is None
        assert sched._scheduler.get_job("probe\x00r\x00primary") is not None
    finally:
        release.set()
        sched.stop(wait=True)


def test_view_passes_never_hold_a_worker_of_the_probes(tmp_path: Path) -> None:
    """The views of every endpoint are due together after a start and each is a cold refresh:
    they run in a pool of their own, so even views that never end leave the probes' workers
    free (sharing the pool, 1,000 endpoints' views made 442 of 3,800 probes late)."""
    from collections import Counter
    from dataclasses import replace

    probes: Counter[str] = Counter()
    hanging = threading.Event()
    views: list[str] = []

    def run_views(repo: Repository, endpoint: Endpoint) -> None:
        views.append(endpoint.name)
        hanging.wait(20)

    config = _config(tmp_path, interval=0.1)
    mirrors = tuple(Endpoint(f"m{i}", f"http://127.0.0.1:9/{i}/m/", f"http://127.0.0.1:9/{i}/t/")
                    for i in range(3))
    repo = replace(config.repositories[0], mirrors=mirrors, new_client_interval=600)
    sched = Scheduler(lambda repo, endpoint: probes.update([endpoint.name]), lambda *_: None,
                      workers=2, run_views=run_views)
    try:
        sched.apply(replace(config, repositories=(repo,)), first_run_within=0.0)
        sched.start()
        poll(lambda: views, timeout=10)
        poll(lambda: len(probes) == 4 and min(probes.values()) >= 5, timeout=10)
        assert len(views) == 1  # one view thread for 2 workers, held by the hung view
    finally:
        hanging.set()
        sched.stop(wait=True)
