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
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path

from prometheus_client import CollectorRegistry, GCCollector, PlatformCollector, ProcessCollector
from prometheus_client.core import Metric

from exporter.catalogue import family
from exporter.config.model import (
    Client,
    Config,
    ConfigError,
    Endpoint,
    Repository,
    Signer,
    check_client_programs,
    field_error,
    load_config,
)
from exporter.events.model import Event, EventKind, signer_probe_event
from exporter.events.shipper import Shipper
from exporter.events.spool import Spool
from exporter.generate.alerts import AlertOptions
from exporter.history import Finding, HistoryStore, configured_endpoints
from exporter.history.cadence import CadenceTracker, online_roles
from exporter.probe import delegations
from exporter.probe.classify import exporter_error_result
from exporter.probe.external import Forwarder, run_client
from exporter.probe.prober import Prober, temporary_directory
from exporter.probe.results import (
    CLIENT_NEW,
    ErrorCause,
    ProbeResult,
    Reason,
    bootstrap_client_name,
)
from exporter.probe.roots import TrustedRootError, load_bootstrap_roots, load_trusted_root
from exporter.probe.signers import CachedKeySource, SignerMonitor
from exporter.serve import sharding
from exporter.serve.collector import ExporterCollector, ProbeStore
from exporter.serve.scheduler import Scheduler
from exporter.serve.status_page import StatusPage

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
    """A validated configuration and the roots it names, read once: the trusted root of each
    repository and its bootstrap roots (root version -> bytes)."""

    config: Config
    trusted_roots: dict[str, bytes]
    bootstrap_roots: dict[str, dict[int, bytes]] = field(default_factory=dict)


def load(
    path: Path, shard: tuple[int, int] | None = None, tmp_dir: Path | None = None
) -> Loaded:
    """Load and validate everything a configuration needs; ConfigError or TrustedRootError
    (a trusted or bootstrap root python-tuf cannot start from, or two bootstrap roots of one
    version).

    ``shard`` (INDEX, COUNT), from the command line, overrides the file's ``shard``; the
    configuration is then reduced to what this shard probes. python-tuf's check of the trusted
    roots writes into ``tmp_dir`` (default: the new configuration's ``<state_dir>/tmp``).
    """
    config = load_config(path)
    if shard is not None:
        config = replace(config, shard_index=shard[0], shard_count=shard[1])
    positions = {repo.name: i for i, repo in enumerate(config.repositories)}
    config = sharding.select(config)
    return load_files(config, tmp_dir or temporary_directory(config.state_dir), positions)


def load_files(
    config: Config, tmp_dir: Path | None, positions: Mapping[str, int] | None = None
) -> Loaded:
    """Check the files ``config`` names: every repository's trusted and bootstrap roots
    (python-tuf must start from each, :func:`~exporter.probe.roots.load_trusted_root`, which
    writes a scratch client directory in ``tmp_dir``, None: ``tempfile``'s default) and every
    external client's program (:func:`~exporter.config.check_client_programs`).

    Errors name the configuration file, the line and the key (``config.yml:5:
    repositories[0].trusted_root: cannot read trusted root ...``): ConfigError, or
    TrustedRootError for a root. ``positions``: repository name -> its index in the file,
    when ``config`` is a shard's part of it.
    """
    check_client_programs(config)
    roots: dict[str, bytes] = {}
    bootstrap: dict[str, dict[int, bytes]] = {}
    for index, repo in enumerate(config.repositories):
        where = f"repositories[{positions[repo.name] if positions else index}]"
        try:
            roots[repo.name] = load_trusted_root(repo.trusted_root, tmp_dir)
        except TrustedRootError as exc:
            raise TrustedRootError(str(field_error(config, f"{where}.trusted_root", str(exc)))) \
                from None
        try:
            bootstrap[repo.name] = load_bootstrap_roots(repo.bootstrap_roots, tmp_dir)
        except TrustedRootError as exc:
            raise TrustedRootError(
                str(field_error(config, f"{where}.bootstrap_roots", str(exc)))) from None
    return Loaded(config, roots, bootstrap)


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
                 "client": result.client,
                 **({} if result.cause is None else {"cause": str(result.cause)}),
                 "delegations": result.delegations.count,
                 "delegations_failing": result.delegations.failing},
    )


def _verdict(result: ProbeResult | None) -> tuple[bool, str | None, str | None] | None:
    if result is None or result.reason is Reason.EXPORTER_ERROR:
        return None
    return (result.success, None if result.reason is None else str(result.reason),
            None if result.role is None else str(result.role))


def client_view_event(previous: ProbeResult | None, result: ProbeResult) -> Event | None:
    """The event of a change of a client view's verdict (issue 16), None when it did not
    change: success <-> failure, or another reason or role. ``previous`` is the view's verdict
    in force before ``result`` (None: none since start, when a failure is a change and a
    success is not). A result stopped by a fault of this host is no verdict: no event."""
    now, before = _verdict(result), _verdict(previous)
    if now is None or now == before or (before is None and result.success):
        return None
    return Event(
        kind=EventKind.CLIENT_VIEW,
        time=result.started_at,
        repository=result.repository,
        endpoint=result.endpoint,
        role=now[2],
        versions={name: facts.version for name, facts in result.roles.items()},
        reason=now[1],
        message=(f"client view {result.client}: "
                 + ("ok" if result.success else result.message or str(result.reason))),
        details={"client": result.client, "success": result.success,
                 "previous": None if before is None else {
                     "success": before[0], "reason": before[1], "role": before[2]}},
    )


def _client_views(config: Config, roots: dict[str, dict[int, bytes]]) -> set[tuple[str, str, str]]:
    """(repository, endpoint, client) of every view ``config`` asks for besides returning: the
    python-tuf views ``new`` and ``bootstrap-root-v<N>`` (unless ``new_client_interval`` is 0)
    and the external clients the repository lists."""
    views = set()
    for repo in config.repositories:
        clients = list(repo.clients)
        if repo.new_client_interval > 0:
            clients += [CLIENT_NEW, *map(bootstrap_client_name, roots.get(repo.name, {}))]
        views |= {(repo.name, e.name, c) for e in repo.endpoints for c in clients}
    return views


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
    """The running exporter, minus its HTTP front (see :mod:`exporter.serve.web`).

    In: the path of the configuration file (read at construction, then on :meth:`reload`);
    ``first_run_within`` (seconds) spreads the first probes; ``history_on_corrupt`` is
    ``"raise"`` or ``"rename"`` (move a corrupt history database aside and start afresh);
    ``shard`` (index, count) probes only this replica's share of the endpoints;
    ``alert_options`` are the thresholds the status page shows. :meth:`start` starts the
    shipper and the scheduler; :meth:`stop` stops them and closes the stores.

    Out: ``registry`` for ``/metrics`` and ``status_page`` for ``/``; events go to the spool
    in ``state_dir``. Errors at construction: :class:`~exporter.config.ConfigError` (file,
    line, key), :class:`~exporter.config.TrustedRootError`, :class:`~exporter.history.HistoryError`.
    :meth:`reload` never raises: a bad file gives ``(False, reason)`` and the configuration in
    force stays.

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
        delegations.use_processes(config.delegation_processes)  # a change: on restart
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
        self.registry = CollectorRegistry(auto_describe=True)
        self.registry.register(self.collector)
        # each subsystem is its own collector (a duplicate family name fails here, at start)
        for subsystem in (self.history, self.signers, self.cadence, self.shipper):
            self.registry.register(subsystem)
        ProcessCollector(registry=self.registry)
        PlatformCollector(registry=self.registry)
        GCCollector(registry=self.registry)
        self.status_page = StatusPage(
            self.store, lambda: self.config, history_metrics=self.history.metrics,
            signer_results=self.signers.results, options=alert_options,
        )
        #: Bounds external client processes (``client_concurrency``, sized at start).
        self.client_slots = threading.Semaphore(config.client_concurrency)
        #: The cancel event of every running external client run, by its view; set by
        #: :meth:`stop` (all) and a reload (the views it removes), under ``_runs_lock``.
        self._client_runs: dict[threading.Event, tuple[str, str, str]] = {}
        self._runs_lock = threading.Lock()
        self._stopping = False
        #: The external clients' loopback forwarder: started at the first client run, kept
        #: alive between runs, closed by :meth:`stop`.
        self.forwarder = Forwarder()
        self.scheduler = Scheduler(
            self._probe, self.store.skipped, config.workers, run_signer=self._probe_signer,
            run_views=self._probe_views,
            run_client=self._probe_client, client_workers=config.client_concurrency,
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
        self._apply(self._loaded.config, self._loaded.bootstrap_roots)
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
        """Stop probing, then flush events. Running python-tuf probes end by their deadlines;
        running external client runs are ended at once (their process groups killed within
        :data:`~exporter.probe.external.KILL_GRACE` seconds, nothing recorded), so stop does
        not wait for a hung client's timeout."""
        with self._runs_lock:
            self._stopping = True
            for cancel in self._client_runs:
                cancel.set()
        self.scheduler.stop(wait=True)
        delegations.stop_processes()
        self.forwarder.close()
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
            self._apply(loaded.config, loaded.bootstrap_roots)
            self._reload_ok = True
            self._reload_time = time.time()
            log.info("configuration reloaded",
                     extra={"repositories": len(loaded.config.repositories)})
            return True, "configuration reloaded"

    def _apply(self, config: Config, bootstrap_roots: dict[str, dict[int, bytes]]) -> None:
        """Make ``config`` the one in force: everything of a repository, endpoint, client view
        or signer it no longer names (probe, view, history, cadence and signer series) goes
        now; the history stays on disk for ``history_retention`` (see
        ``HistoryStore.configure``)."""
        keys = _endpoint_keys(config)
        with self.members.changing(keys):
            self.store.expect(keys, _client_views(config, bootstrap_roots))
            self.prober.forget(keys)
            self.forwarder.forget(keys)
            self.signers.configure(config.signers)
            self.keys.retain({s.repository for s in config.signers})
            self.cadence.retain({r.name for r in config.repositories})
            self.history.configure(configured_endpoints(config))
        self.scheduler.apply(config, self._first_run_within)
        views = _client_views(config, bootstrap_roots)
        with self._runs_lock:  # end the runs of the views removed now
            for cancel, view in self._client_runs.items():
                if view not in views:
                    cancel.set()

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
        self._announce(findings)
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

    def _announce(self, findings: list[Finding]) -> None:
        """Log each finding (its events are in the spool already) and wake the shipper."""
        for finding in findings:
            level = logging.WARNING if str(finding.severity) != "info" else logging.INFO
            log.log(level, "finding: %s", finding.message, extra={"finding": finding.to_json()})
        if findings:
            self.shipper.wake()

    def _emit_view_events(self, previous: ProbeResult | None, result: ProbeResult) -> None:
        """Spool a view's verification event, and a ``client_view`` event when its verdict
        changed since ``previous``; a spool that cannot take them is counted as ours."""
        events = [verification_event(result)]
        change = client_view_event(previous, result)
        if change is not None:
            events.append(change)
        for event in events:
            if not self.spool.emit(event):
                self.store.exporter_error(ErrorCause.SPOOL)

    def _probe_views(self, repo: Repository, endpoint: Endpoint) -> list[ProbeResult]:
        """One view pass of an endpoint (issue 16), recorded as :meth:`_probe` records a probe:
        store, history (what the views fetched is held to the equivocation rule), events (each
        view's verification, and a ``client_view`` event when a view's verdict changed)."""
        self.store.started()
        loaded = self._loaded
        root = loaded.trusted_roots.get(repo.name)
        bootstrap = loaded.bootstrap_roots.get(repo.name, {})
        started_at, t0 = datetime.now(UTC), time.monotonic()
        try:
            if root is None:
                raise KeyError(f"no trusted root loaded for {repo.name!r}")
            results = self.prober.probe_views(repo, endpoint, root, bootstrap)
        except Exception as exc:  # Prober.probe_views never raises: a bug of ours if it does
            log.exception("view pass of %s/%s raised", repo.name, endpoint.name)
            failed = exporter_error_result(repo.name, endpoint.name, started_at,
                                           time.monotonic() - t0, exc)
            results = [replace(failed, client=CLIENT_NEW)]
        findings: list[Finding] = []
        with self.members.recording(repo.name, endpoint.name) as configured:
            if not configured:
                self.store.discard()
                return results
            previous = {r.client: self.store.endpoint_log(repo.name, endpoint.name,
                                                          r.client).latest for r in results}
            self.store.record_view(results)
            for result in results:
                self._emit_view_events(previous[result.client], result)
                if result.reason is Reason.EXPORTER_ERROR:
                    continue
                try:
                    findings += self.history.observe(result, repo.policy)
                except Exception:
                    log.exception("recording the view %s of %s/%s in the history failed",
                                  result.client, repo.name, endpoint.name)
                    self.store.exporter_error(ErrorCause.HISTORY)
        self._announce(findings)
        for result in results:
            log.log(logging.INFO if result.success else logging.WARNING, "client view %s",
                    "succeeded" if result.success else "failed", extra={
                        "repository": repo.name, "endpoint": endpoint.name,
                        "client": result.client,
                        "reason": None if result.reason is None else str(result.reason),
                        "role": None if result.role is None else str(result.role),
                        "detail": result.message,
                        "duration_seconds": round(result.duration_seconds, 4),
                        "requests": len(result.requests),
                        "memo_requests": sum(1 for r in result.requests if r.memo)})
        return results

    def _probe_client(self, client: Client, repo: Repository, endpoint: Endpoint) -> ProbeResult:
        """Run an external client against one endpoint and record its verdict: the store
        (``tuf_client_*``) and an event; the history and cadence are python-tuf's alone.

        The run is ended at once by :meth:`stop` or by a reload that removes its view; such a
        run records nothing (as a probe finishing after its endpoint's removal), so the view
        keeps its last verdict."""
        loaded = self._loaded
        root = loaded.trusted_roots[repo.name]
        view = (repo.name, endpoint.name, client.name)
        cancel = threading.Event()
        with self._runs_lock:
            current = self._loaded
            self._client_runs[cancel] = view
            if self._stopping or view not in _client_views(current.config,
                                                           current.bootstrap_roots):
                cancel.set()  # stopping, or removed by a reload since this job was due
        self.store.started()
        try:
            result = run_client(client, repo, endpoint, root, self.config.state_dir,
                                self.client_slots, cancel, self.forwarder)
        finally:
            with self._runs_lock:
                del self._client_runs[cancel]
        with self.members.recording(repo.name, endpoint.name) as configured:
            if cancel.is_set() and result.reason is Reason.EXPORTER_ERROR:
                log.info("client %s on %s/%s ended by the exporter's stop or a reload; "
                         "not recorded", client.name, repo.name, endpoint.name)
                self.store.discard()
                return result
            if not configured or view not in _client_views(loaded.config,
                                                           loaded.bootstrap_roots):
                log.info("client %s on %s/%s finished after its removal; not recorded",
                         client.name, repo.name, endpoint.name)
                self.store.discard()
                return result
            previous = self.store.endpoint_log(repo.name, endpoint.name, client.name).latest
            self.store.record_view([result])
            self._emit_view_events(previous, result)
        level = logging.INFO if result.success else logging.WARNING
        log.log(level, "client %s", "succeeded" if result.success else "failed", extra={
            "repository": repo.name, "endpoint": endpoint.name, "client": client.name,
            "reason": None if result.reason is None else str(result.reason),
            "cause": None if result.cause is None else str(result.cause),
            "role": None if result.role is None else str(result.role),
            "detail": result.message, "duration_seconds": round(result.duration_seconds, 4),
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
        self.spool.emit(signer_probe_event(result))
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
