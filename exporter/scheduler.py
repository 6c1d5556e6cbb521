"""Runs every (repository, endpoint) probe on its own interval, with jitter, in a bounded pool.

apscheduler does the timing: one interval job per endpoint, ``max_instances=1`` so an endpoint
is never probed twice at once (a probe still running when the next is due is skipped and
counted), ``coalesce`` so a stalled clock does not cause a burst. Jobs run in a bounded thread
pool; each probe carries its own deadline (the repository's ``timeout``), so one repository that
never answers holds at most one worker for at most its timeout and never delays the others. A
probe's exception is logged and recorded as a failed probe; it never reaches the scheduler.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from apscheduler.events import EVENT_JOB_MAX_INSTANCES, JobExecutionEvent
from apscheduler.executors.pool import ThreadPoolExecutor
from apscheduler.schedulers.background import BackgroundScheduler
from apscheduler.triggers.interval import IntervalTrigger

from exporter.config import Config, Endpoint, Repository, Signer

log = logging.getLogger(__name__)

ProbeJob = Callable[[Repository, Endpoint], object]
SignerJob = Callable[[Signer], object]
SkipHook = Callable[[str, str], None]


def _job_id(repository: str, endpoint: str) -> str:
    return f"probe\x00{repository}\x00{endpoint}"


def _signer_job_id(name: str) -> str:
    return f"signer\x00{name}"


@dataclass(frozen=True)
class _Job:
    names: tuple[str, str]
    interval: float
    func: Callable[..., None]
    args: tuple[Any, ...]


class Scheduler:
    """Schedules probes for a configuration; ``apply()`` swaps in a new one on reload."""

    def __init__(
        self, run: ProbeJob, on_skip: SkipHook, workers: int, run_signer: SignerJob | None = None
    ) -> None:
        self._run = run
        self._run_signer = run_signer
        self._on_skip = on_skip
        self._scheduler = BackgroundScheduler(
            executors={"default": ThreadPoolExecutor(max_workers=workers)},
            job_defaults={"coalesce": True, "max_instances": 1, "misfire_grace_time": None},
            timezone=UTC,
        )
        self._scheduler.add_listener(self._skipped, EVENT_JOB_MAX_INSTANCES)
        self._jobs: dict[str, tuple[str, str]] = {}

    def start(self) -> None:
        """Start the scheduler thread."""
        self._scheduler.start()

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
                next_run_time=first,
            )
            self._jobs[job_id] = job.names

    def _guarded(self, repo: Repository, endpoint: Endpoint) -> None:
        try:
            self._run(repo, endpoint)
        except Exception:
            log.exception("probe of %s/%s crashed", repo.name, endpoint.name)

    def _guarded_signer(self, signer: Signer) -> None:
        assert self._run_signer is not None
        try:
            self._run_signer(signer)
        except Exception:
            log.exception("signer probe %s crashed", signer.name)

    def _skipped(self, event: JobExecutionEvent) -> None:
        names = self._jobs.get(event.job_id)
        if names is not None and names[0] != "signer":
            log.warning("probe of %s/%s skipped: the previous one still runs", *names)
            self._on_skip(*names)
