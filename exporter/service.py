"""``tuf-exporter serve``: configuration -> scheduler -> prober -> store -> /metrics and events.

The service owns the long-lived parts and wires them one way: the scheduler runs probes; each
result goes to the probe store (read by the collector at scrape time), to the history store
(which returns findings) and, as events, to the durable spool that the shipper drains to
OpenSearch or a local file. A reload (SIGHUP or ``POST /-/reload``) validates the new file
completely before anything changes; a bad file is refused with a log line and the old
configuration keeps running.
"""

from __future__ import annotations

import ctypes
import logging
import tempfile
import threading
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path

from prometheus_client import CollectorRegistry, GCCollector, PlatformCollector, ProcessCollector
from prometheus_client.core import Metric

from exporter import sharding
from exporter.alerts import AlertOptions
from exporter.cadence import CadenceTracker, online_roles
from exporter.catalogue import family
from exporter.classify import exporter_error_result
from exporter.collector import ExporterCollector, ProbeStore
from exporter.config import Config, ConfigError, Endpoint, Repository, Signer, load_config
from exporter.events import Event, EventKind
from exporter.history import Finding, HistoryStore, configured_endpoints
from exporter.prober import Prober, TrustedRootError, load_trusted_root, temporary_directory
from exporter.results import ErrorCause, ProbeResult, Reason
from exporter.scheduler import Scheduler
from exporter.shipper import Shipper
from exporter.signers import CachedKeySource, SignerMonitor
from exporter.spool import Spool
from exporter.status_page import StatusPage

log = logging.getLogger(__name__)

#: glibc's ``M_MMAP_THRESHOLD`` parameter of ``mallopt``, and the threshold this process keeps.
_M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD = 128 * 1024


def fix_mmap_threshold() -> bool:
    """Keep glibc's malloc from holding freed large blocks: every allocation of
    :data:`MMAP_THRESHOLD` bytes (128 KiB) or more is its own mapping, returned to the system
    when freed. Returns False where the C library has no ``mallopt`` (not glibc) or refuses.

    By default glibc raises that threshold to the size of any mapped block freed (up to 32 MiB,
    "dynamic mmap threshold", malloc(3) ``M_MMAP_THRESHOLD``): after that, blocks of a few
    hundred KiB (metadata bodies, SQLite's and our batches) come from the heaps of the arenas,
    and what they leave free there stays resident. Over the one-hour soak of 1,000 endpoints
    (``python -m bench --case soak``) that free memory (``mallinfo2().fordblks``) went from 8.7
    to 20.7 MB in steps while memory in use stayed flat; with the threshold fixed, 4-7 MB. A
    threshold set this way is no longer dynamic, and the trim threshold stays at its default
    (128 KiB) instead of following it.
    """
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
    mallopt.restype = ctypes.c_int
    return bool(mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD))


@dataclass(frozen=True)
class Loaded:
    """A validated configuration and the trusted roots it names, read once."""

    config: Config
    trusted_roots: dict[str, bytes]


def load(
    path: Path, shard: tuple[int, int] | None = None, tmp_dir: Path | None = None
) -> Loaded:
    """Load and validate everything a configuration needs; ConfigError or TrustedRootError.

    ``shard`` (INDEX, COUNT), from the command line, overrides the file's ``shard``; the
    configuration is then reduced to what this shard probes. python-tuf's check of the trusted
    roots writes into ``tmp_dir`` (default: the new configuration's ``<state_dir>/tmp``).
    """
    config = load_config(path)
    if shard is not None:
        config = replace(config, shard_index=shard[0], shard_count=shard[1])
    config = sharding.select(config)
    tmp = tmp_dir or temporary_directory(config.state_dir)
    roots = {repo.name: load_trusted_root(repo.trusted_root, tmp) for repo in config.repositories}
    return Loaded(config, roots)


def verification_event(result: ProbeResult) -> Event:
    """The event recording one probe's verdict."""
    return Event(
        kind=EventKind.VERIFICATION,
        time=result.started_at,
        repository=result.repository,
        endpoint=result.endpoint,
        role=None if result.role is None else str(result.role),
        versions={name: facts.version for name, facts in result.roles.items()},
        hashes={f"{name}.sha256": facts.sha256 for name, facts in result.roles.items()},
        reason=None if result.reason is None else str(result.reason),
        message=result.message or ("ok" if result.success else ""),
        durations={"probe": result.duration_seconds,
                   **{f"phase.{p.phase}": p.seconds for p in result.phases}},
        details={"success": result.success, "reused_verdict": result.reused_verdict,
                 **({} if result.cause is None else {"cause": str(result.cause)}),
                 "delegations": result.delegations.count,
                 "delegations_failing": result.delegations.failing},
    )


def _endpoint_keys(config: Config) -> set[tuple[str, str]]:
    """(repository, endpoint) of every endpoint ``config`` names."""
    return {(r.name, e.name) for r in config.repositories for e in r.endpoints}


class Membership:
    """The configured endpoints, and the gate that probe results are recorded through.

    A finished probe records its result (probe series, history, cadence, events) only when
    its endpoint is configured (:meth:`recording`); a reload changes the configured set
    (:meth:`changing`) only when no result is being recorded, and results wait for the
    change to finish. So a probe that finishes after its endpoint was removed records
    nothing, and what one recorded before is cleared by the reload. Recordings run side by
    side; only a reload excludes them.
    """

    def __init__(self, keys: Iterable[tuple[str, str]] = ()) -> None:
        self._cond = threading.Condition()
        self._keys: frozenset[tuple[str, str]] = frozenset(keys)
        self._recording = 0
        self._changing = False

    @contextmanager
    def recording(self, repository: str, endpoint: str) -> Iterator[bool]:
        """Yield whether the endpoint is configured; while True, no reload changes that."""
        with self._cond:
            self._cond.wait_for(lambda: not self._changing)
            member = (repository, endpoint) in self._keys
            if member:
                self._recording += 1
        try:
            yield member
        finally:
            if member:
                with self._cond:
                    self._recording -= 1
                    self._cond.notify_all()

    @contextmanager
    def changing(self, keys: Iterable[tuple[str, str]]) -> Iterator[None]:
        """Make ``keys`` the configured endpoints once no result is being recorded; no
        result is recorded until the block (which drops the state of the others) ends."""
        with self._cond:
            self._cond.wait_for(lambda: not self._changing)
            self._changing = True
            self._cond.wait_for(lambda: self._recording == 0)
            self._keys = frozenset(keys)
        try:
            yield
        finally:
            with self._cond:
                self._changing = False
                self._cond.notify_all()


class Service:
    """The running exporter, minus its HTTP front (see :mod:`exporter.web`).

    ``registry`` holds the exporter's families plus prometheus_client's process (``process_*``:
    memory, CPU, open and max descriptors, start time), platform (``python_info``) and
    garbage-collector (``python_gc_*``) collectors; ``status_page`` renders ``/`` from the same
    in-memory state, with the runbook URL and thresholds of ``alert_options``.
    """

    def __init__(
        self,
        config_path: Path,
        *,
        first_run_within: float = 5.0,
        history_on_corrupt: str = "raise",
        shard: tuple[int, int] | None = None,
        alert_options: AlertOptions | None = None,
    ) -> None:
        fix_mmap_threshold()  # before the threads and their arenas allocate
        self.config_path = config_path
        self._first_run_within = first_run_within
        self._shard = shard
        self._loaded = load(config_path, shard)
        config = self._loaded.config
        config.state_dir.mkdir(parents=True, exist_ok=True)
        self.store = ProbeStore()
        self.prober = Prober(config.state_dir)
        # every temporary file of this process below state_dir (ours carry dir= as well),
        # until stop()
        self._tempdir = (tempfile.tempdir, str(temporary_directory(config.state_dir)))
        tempfile.tempdir = self._tempdir[1]
        self.history = HistoryStore.for_config(
            config, on_corrupt="rename" if history_on_corrupt == "rename" else "raise"
        )
        self.members = Membership(_endpoint_keys(config))
        self.spool = Spool.from_settings(config.state_dir, config.events)
        self.shipper = Shipper.from_config(config, self.spool, outbox=self.history)
        self._reload_lock = threading.Lock()
        self._reload_ok = True
        self._reload_time = time.time()
        self.collector = ExporterCollector(self.store, config_status=self._config_status)
        self.signers = SignerMonitor(config.signers)
        self.keys = CachedKeySource(self._verified_metadata_dir)
        self.cadence = CadenceTracker()
        self.collector.add_source(self.history.metrics)
        self.collector.add_source(self.signers.metrics)
        self.collector.add_source(self.cadence.metrics)
        self.collector.add_source(self.shipper.metrics)
        self.registry = CollectorRegistry(auto_describe=True)
        self.registry.register(self.collector)
        ProcessCollector(registry=self.registry)
        PlatformCollector(registry=self.registry)
        GCCollector(registry=self.registry)
        self.status_page = StatusPage(
            self.store, lambda: self.config, history_metrics=self.history.metrics,
            signer_results=self.signers.results, options=alert_options,
        )
        self.scheduler = Scheduler(
            self._probe, self.store.skipped, config.workers, run_signer=self._probe_signer
        )
        self.collector.add_source(self.scheduler.metrics)
        self.collector.add_source(self._thread_metrics)
        self._started = threading.Event()

    @property
    def config(self) -> Config:
        """The configuration in force."""
        return self._loaded.config

    def start(self) -> None:
        """Start shipping events and probing."""
        self.shipper.start()
        self._apply(self._loaded.config)
        self.scheduler.start()
        self._started.set()
        log.info("started", extra={"config": str(self.config_path),
                                   "repositories": len(self.config.repositories)})

    def ready(self) -> bool:
        """True once probing has started, while every long-running thread runs."""
        return self._started.is_set() and all(self.threads().values())

    def threads(self) -> dict[str, bool]:
        """Whether each long-running thread (catalogue.THREADS) runs: False before start
        and once it died."""
        return {"scheduler": self.scheduler.running, "shipper": self.shipper.running}

    def _thread_metrics(self) -> Iterator[Metric]:
        """tuf_exporter_thread_up{thread}, once started (before, nothing has died)."""
        up = family("tuf_exporter_thread_up")
        if self._started.is_set():
            for thread, alive in self.threads().items():
                up.add_metric([thread], 1 if alive else 0)
        yield up

    def stop(self) -> None:
        """Stop probing (running probes end by their deadlines), then flush events."""
        self.scheduler.stop(wait=True)
        self.shipper.stop(timeout=5.0)
        self.spool.close()
        self.history.close()
        if tempfile.tempdir == self._tempdir[1]:
            tempfile.tempdir = self._tempdir[0]
        log.info("stopped")

    def reload(self) -> tuple[bool, str]:
        """Load the configuration file again; keep the old one if the new one is bad."""
        with self._reload_lock:
            try:
                loaded = load(self.config_path, self._shard, self.prober.tmp_dir)
            except (ConfigError, TrustedRootError) as exc:
                self._reload_ok = False
                log.error("configuration reload refused; the old configuration keeps running",
                          extra={"error": str(exc)})
                return False, str(exc)
            if loaded.config.state_dir != self.config.state_dir:
                log.warning("state_dir changes take effect on restart only")
            self._loaded = loaded
            self._apply(loaded.config)
            self._reload_ok = True
            self._reload_time = time.time()
            log.info("configuration reloaded",
                     extra={"repositories": len(loaded.config.repositories)})
            return True, "configuration reloaded"

    def _apply(self, config: Config) -> None:
        """Make ``config`` the one in force: everything of a repository, endpoint or signer
        it no longer names (probe, history, cadence and signer series) goes now; the history
        stays on disk for ``history_retention`` (see ``HistoryStore.configure``)."""
        keys = _endpoint_keys(config)
        with self.members.changing(keys):
            self.store.expect(keys)
            self.prober.forget(keys)
            self.signers.configure(config.signers)
            self.keys.retain({s.repository for s in config.signers})
            self.cadence.retain({r.name for r in config.repositories})
            self.history.configure(configured_endpoints(config))
        self.scheduler.apply(config, self._first_run_within)

    def _config_status(self) -> tuple[bool, float]:
        return self._reload_ok, self._reload_time

    def _probe(self, repo: Repository, endpoint: Endpoint) -> ProbeResult:
        """Probe one endpoint and record the result: store, history, cadence, events.

        A fault of this host is the exporter's, never the repository's: a probe it stopped is
        ``exporter_error`` (kept out of the verdict by the store, not shown to the history),
        and a failure to record a verdict in the history or the spool is counted in
        ``tuf_exporter_errors_total{cause="history"|"spool"}`` while the verdict stands.
        """
        self.store.started()
        root = self._loaded.trusted_roots.get(repo.name)
        started_at, t0 = datetime.now(UTC), time.monotonic()
        try:
            result = self.prober.probe(repo, endpoint, root)
        except Exception as exc:  # Prober.probe never raises: a bug of ours if it does
            log.exception("probe of %s/%s raised", repo.name, endpoint.name)
            result = exporter_error_result(repo.name, endpoint.name, started_at,
                                           time.monotonic() - t0, exc)
        findings: list[Finding] = []
        with self.members.recording(repo.name, endpoint.name) as configured:
            if not configured:  # removed while it was probed: record nothing
                self.store.discard()
                log.info("probe of %s/%s finished after its removal; not recorded",
                         repo.name, endpoint.name)
                return result
            self.store.record(result)
            # the verdict is spooled first; the findings' events commit with the findings (the
            # history's outbox) and the shipper moves them to the spool: all or none
            if not self.spool.emit(verification_event(result)):
                self.store.exporter_error(ErrorCause.SPOOL)
            if result.reason is not Reason.EXPORTER_ERROR:  # no verdict: nothing to remember
                try:
                    findings = self.history.observe(result, repo.policy)
                    if endpoint.name == repo.primary.name:
                        self._update_cadence(repo)
                except Exception:  # the verdict's event is already spooled
                    log.exception("recording the probe of %s/%s in the history failed",
                                  repo.name, endpoint.name)
                    self.store.exporter_error(ErrorCause.HISTORY)
        for finding in findings:
            level = logging.WARNING if str(finding.severity) != "info" else logging.INFO
            log.log(level, "finding: %s", finding.message, extra={"finding": finding.to_json()})
        if findings:
            self.shipper.wake()
        level = logging.INFO if result.success else logging.WARNING
        log.log(level, "probe %s", "succeeded" if result.success else "failed", extra={
            "repository": repo.name, "endpoint": endpoint.name,
            "reason": None if result.reason is None else str(result.reason),
            "cause": None if result.cause is None else str(result.cause),
            "role": None if result.role is None else str(result.role),
            "detail": result.message, "duration_seconds": round(result.duration_seconds, 4),
            "reused_verdict": result.reused_verdict,
        })
        return result

    def _verified_metadata_dir(self, repository: str) -> Path | None:
        """Where python-tuf keeps the metadata it verified last for the repository's primary."""
        try:
            repo = self.config.repository(repository)
        except KeyError:
            return None
        return self.prober.cache_dir(repo, repo.primary) / "metadata"

    def _probe_signer(self, signer: Signer) -> None:
        result = self.signers.probe(signer.name, self.keys)
        if not self.signers.configured(signer.name):
            return  # removed while it was probed: its result was not recorded either
        self.spool.emit(result.to_event())
        level = logging.INFO if result.up and result.authorized is not False else logging.WARNING
        log.log(level, "signer probe", extra={"signer_probe": result.to_event_fields()})

    def _update_cadence(self, repo: Repository) -> None:
        now = datetime.now(UTC)
        for role in online_roles(repo.policy):
            self.cadence.update(
                repo.name, role, self.history.last_change(repo.name, "primary", role),
                repo.policy, self.history.observed_cadence(repo.name, role), now,
                self.history.age(repo.name, "primary", role),
            )
