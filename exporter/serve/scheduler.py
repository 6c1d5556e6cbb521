"""Runs every (repository, endpoint) probe on its own interval, with jitter, in a bounded pool.

apscheduler does the timing: one interval job per endpoint, ``max_instances=1`` so an endpoint
is never probed twice at once (a probe still running when the next is due is skipped and
counted), ``coalesce`` so a stalled clock does not cause a burst. Jobs run in a bounded thread
pool; each probe carries its own deadline (the repository's ``timeout``), so one repository that
never answers holds at most one worker for at most its timeout and never delays the others.
External clients (issue 17) run as one job per (client, repository, endpoint) every client
``interval`` in a pool of their own (:data:`CLIENTS_EXECUTOR`, ``client_concurrency`` threads,
sized at start), so a client that hangs until its timeout never delays a python-tuf probe; their
exceptions are counted as ``thread="probe_worker"``.

Each endpoint of a repository with ``new_client_interval`` above 0 has a second job on that
interval, the view pass (the client views ``new`` and ``bootstrap-root-v<N>``, issue 16), with
the same jitter and ``max_instances=1``, in a pool of its own (:data:`VIEWS_EXECUTOR`, a quarter
of ``workers``, at least one): at most one pass of an endpoint runs at a time, and the cold
refreshes of every endpoint's views, all due together after a start, never hold a worker of the
returning probes (on 1,000 endpoints sharing the probes' pool they made 442 of 3,800 probes late,
``python -m bench --case endpoints``).

Survival: an exception of a probe or signer job is logged and counted in
``tuf_exporter_thread_errors_total{thread="probe_worker"|"signer_worker", cause}`` (the
``cause`` by :func:`exporter.probe.classify.exporter_fault`, as for ``tuf_exporter_errors_total``);
it never reaches apscheduler, the worker goes on with the next job and the endpoint is probed
again at its next interval (the interval is the backoff). An exception of the scheduler's own loop
(apscheduler's job store or a trigger) is logged, counted as ``thread="scheduler"`` and waited
out with exponential backoff (``LOOP_BACKOFF``) before the loop looks at its jobs again. If the
scheduler thread dies all the same, :attr:`Scheduler.running` turns False, which the service
exports as ``tuf_exporter_thread_up{thread="scheduler"} 0`` and answers on ``/-/ready``.
"""

from __future__ import annotations

import logging
import random
import threading
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from apscheduler.events import EVENT_JOB_MAX_INSTANCES, JobExecutionEvent
from apscheduler.executors.pool import ThreadPoolExecutor
from apscheduler.schedulers.background import BackgroundScheduler
from apscheduler.schedulers.base import STATE_STOPPED
from apscheduler.triggers.interval import IntervalTrigger
from prometheus_client.core import Metric

from exporter import catalogue
from exporter.config.model import Client, Config, Endpoint, Repository, Signer
from exporter.probe.classify import exporter_fault

log = logging.getLogger(__name__)

ProbeJob = Callable[[Repository, Endpoint], object]
ViewJob = Callable[[Repository, Endpoint], object]
SignerJob = Callable[[Signer], object]
ClientJob = Callable[[Client, Repository, Endpoint], object]
SkipHook = Callable[[str, str], None]


#: Seconds the scheduler loop waits after its n-th consecutive failure: min(max, first * 2**n).
LOOP_BACKOFF: tuple[float, float] = (1.0, 60.0)


class _SurvivingScheduler(BackgroundScheduler):  # type: ignore[misc]
    """apscheduler's BackgroundScheduler whose main loop survives its own exceptions.

    apscheduler 3's ``BlockingScheduler._main_loop`` (which the background thread runs) lets an
    exception of ``_process_jobs`` end the thread, and with it every probe. This loop is the
    same (wait until woken or until the next job is due, then process the due jobs) with the
    exception logged, reported to ``on_error`` and waited out with backoff.
    """

    def __init__(self, on_error: Callable[[BaseException], None], **options: Any) -> None:
        self._on_error = on_error
        super().__init__(**options)

    def _main_loop(self) -> None:
        wait_seconds: float | None = threading.TIMEOUT_MAX
        failures = 0
        while self.state != STATE_STOPPED:
            self._event.wait(wait_seconds)
            self._event.clear()
            try:
                wait_seconds = self._process_jobs()
                failures = 0
            except Exception as exc:  # the scheduler thread must survive
                first, maximum = LOOP_BACKOFF
                wait_seconds = min(maximum, first * 2 ** min(failures, 16))
                failures += 1
                log.exception("the scheduler loop failed; trying again in %.0f s", wait_seconds)
                self._on_error(exc)

    def thread_alive(self) -> bool:
        """True while the scheduler thread runs."""
        thread = getattr(self, "_thread", None)
        return thread is not None and bool(thread.is_alive())


def _job_id(repository: str, endpoint: str) -> str:
    return f"probe\x00{repository}\x00{endpoint}"


def _view_job_id(repository: str, endpoint: str) -> str:
    return f"views\x00{repository}\x00{endpoint}"


def _signer_job_id(name: str) -> str:
    return f"signer\x00{name}"


def _client_job_id(client: str, repository: str, endpoint: str) -> str:
    return f"client\x00{client}\x00{repository}\x00{endpoint}"


#: The executor of external client runs: its own pool (``client_concurrency`` threads), so a
#: client that hangs until its timeout never holds a worker of the python-tuf probes.
CLIENTS_EXECUTOR = "clients"
#: The executor of view passes (issue 16): its own pool of :func:`view_workers` threads, so the
#: views' cold refreshes never hold a worker of the returning probes.
VIEWS_EXECUTOR = "views"


def view_workers(workers: int) -> int:
    """Threads of :data:`VIEWS_EXECUTOR` for ``workers`` probe workers: a quarter, at least 1."""
    return max(1, workers // 4)


@dataclass(frozen=True)
class _Job:
    names: tuple[str, ...]
    interval: float
    func: Callable[..., None]
    args: tuple[Any, ...]
    executor: str = "default"


class Scheduler:
    """Schedules probes for a configuration; ``apply()`` swaps in a new one on reload."""

    def __init__(
        self,
        run: ProbeJob,
        on_skip: SkipHook,
        workers: int,
        run_signer: SignerJob | None = None,
        run_views: ViewJob | None = None,
        run_client: ClientJob | None = None,
        client_workers: int = 2,
    ) -> None:
        self._run = run
        self._run_signer = run_signer
        self._run_views = run_views
        self._run_client = run_client
        self._on_skip = on_skip
        self._errors_lock = threading.Lock()
        self._errors: Counter[tuple[str, str]] = Counter()
        self._scheduler = _SurvivingScheduler(
            lambda exc: self._count("scheduler", exc),
            executors={"default": ThreadPoolExecutor(max_workers=workers),
                       VIEWS_EXECUTOR: ThreadPoolExecutor(max_workers=view_workers(workers)),
                       CLIENTS_EXECUTOR: ThreadPoolExecutor(max_workers=client_workers)},
            job_defaults={"coalesce": True, "max_instances": 1, "misfire_grace_time": None},
            timezone=UTC,
        )
        self._scheduler.add_listener(self._skipped, EVENT_JOB_MAX_INSTANCES)
        self._jobs: dict[str, tuple[str, ...]] = {}

    def start(self) -> None:
        """Start the scheduler thread."""
        self._scheduler.start()

    @property
    def running(self) -> bool:
        """True while the scheduler thread runs (False before start and after it died)."""
        return self._scheduler.thread_alive()

    def stop(self, wait: bool = True) -> None:
        """Stop scheduling; with ``wait``, let running probes finish (they have deadlines)."""
        if self._scheduler.running:
            self._scheduler.shutdown(wait=wait)

    def apply(self, config: Config, first_run_within: float = 5.0) -> None:
        """Schedule exactly the endpoints of ``config`` that belong to this shard.

        New endpoints are first probed within ``first_run_within`` seconds (spread at random
        so a restart does not probe everything in one burst); existing ones keep their rhythm
        unless their interval changed.
        """
        wanted: dict[str, _Job] = {}
        for repo in config.repositories:
            for endpoint in repo.endpoints:
                wanted[_job_id(repo.name, endpoint.name)] = _Job(
                    (repo.name, endpoint.name), repo.interval, self._guarded, (repo, endpoint)
                )
                if self._run_views is not None and repo.new_client_interval > 0:
                    wanted[_view_job_id(repo.name, endpoint.name)] = _Job(
                        ("views", repo.name, endpoint.name), repo.new_client_interval,
                        self._guarded_views, (repo, endpoint), VIEWS_EXECUTOR,
                    )
        if self._run_client is not None:
            for repo in config.repositories:
                for name in repo.clients:
                    client = config.client(name)
                    for endpoint in repo.endpoints:
                        wanted[_client_job_id(name, repo.name, endpoint.name)] = _Job(
                            ("client", f"{name} on {repo.name}/{endpoint.name}"),
                            client.interval, self._guarded_client, (client, repo, endpoint),
                            CLIENTS_EXECUTOR,
                        )
        if self._run_signer is not None:
            for signer in config.signers:
                wanted[_signer_job_id(signer.name)] = _Job(
                    ("signer", signer.name), signer.interval, self._guarded_signer, (signer,)
                )
        for job_id in list(self._jobs):
            if job_id not in wanted:
                self._scheduler.remove_job(job_id)
                del self._jobs[job_id]
        now = datetime.now(UTC)
        for job_id, job in wanted.items():
            trigger = IntervalTrigger(
                seconds=job.interval, jitter=job.interval * config.jitter or None, timezone=UTC
            )
            if job_id in self._jobs:
                self._scheduler.modify_job(job_id, args=list(job.args))
                current = self._scheduler.get_job(job_id)
                if current is not None and getattr(current.trigger, "interval", None) != (
                    trigger.interval
                ):
                    self._scheduler.reschedule_job(job_id, trigger=trigger)
                continue
            first = now + timedelta(seconds=random.uniform(0, first_run_within))
            self._scheduler.add_job(
                job.func, trigger, args=list(job.args), id=job_id, name="/".join(job.names),
                next_run_time=first, executor=job.executor,
            )
            self._jobs[job_id] = job.names

    def _count(self, thread: str, exc: BaseException) -> None:
        with self._errors_lock:
            self._errors[(thread, str(exporter_fault(exc)))] += 1

    def _guarded(self, repo: Repository, endpoint: Endpoint) -> None:
        try:
            self._run(repo, endpoint)
        except Exception as exc:  # the worker survives; probed again next time
            log.exception("probe of %s/%s crashed", repo.name, endpoint.name)
            self._count("probe_worker", exc)

    def _guarded_views(self, repo: Repository, endpoint: Endpoint) -> None:
        assert self._run_views is not None
        try:
            self._run_views(repo, endpoint)
        except Exception as exc:  # the worker survives; passed again next time
            log.exception("view pass of %s/%s crashed", repo.name, endpoint.name)
            self._count("probe_worker", exc)

    def _guarded_signer(self, signer: Signer) -> None:
        assert self._run_signer is not None
        try:
            self._run_signer(signer)
        except Exception as exc:  # the worker survives; probed again next time
            log.exception("signer probe %s crashed", signer.name)
            self._count("signer_worker", exc)

    def _guarded_client(self, client: Client, repo: Repository, endpoint: Endpoint) -> None:
        assert self._run_client is not None
        try:
            self._run_client(client, repo, endpoint)
        except Exception as exc:  # the worker survives; run again next time
            log.exception("client %s on %s/%s crashed", client.name, repo.name, endpoint.name)
            self._count("probe_worker", exc)

    def errors(self) -> dict[tuple[str, str], int]:
        """Exceptions survived, by (thread, cause)."""
        with self._errors_lock:
            return dict(self._errors)

    def metrics(self) -> Iterator[Metric]:
        """tuf_exporter_thread_errors_total{thread, cause}: every (thread, cause) pair of the
        catalogue from 0, so a first error is an increase Prometheus can see."""
        counts = self.errors()
        family = catalogue.family("tuf_exporter_thread_errors_total")
        for thread in catalogue.JOB_THREADS:
            for cause in catalogue.EXPORTER_ERROR_CAUSES:
                family.add_metric([thread, cause], counts.get((thread, cause), 0))
        yield family

    def _skipped(self, event: JobExecutionEvent) -> None:
        names = self._jobs.get(event.job_id)
        if names is None or names[0] == "signer":
            return
        if names[0] == "views":
            log.warning("view pass of %s/%s skipped: the previous one still runs", *names[1:])
            return
        if names[0] == "client":
            log.warning("client %s skipped: the previous run still runs", names[1])
            return
        log.warning("probe of %s/%s skipped: the previous one still runs", *names)
        self._on_skip(*names)
