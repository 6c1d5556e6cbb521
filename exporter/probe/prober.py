"""A full TUF client refresh of one endpoint of one repository, judged by python-tuf.

``Prober.probe(repository, endpoint)`` is one function from target to result, in the manner of
blackbox_exporter. python-tuf's ngclient ``Updater`` makes the verdict (root chain, timestamp,
snapshot, targets, every delegated role, canary target downloads); the inspector then reads the
facts from the bytes that were fetched or cached. The prober keeps, per endpoint, a client
cache (in ``warm`` mode), an HTTP session and the last verdict.

A changed repository is cheap too: ngclient tries the cached copy of ``targets.json`` before
downloading the version the new snapshot names, and parses and verifies the whole stale file
only to reject it on its version. The prober knows which version its cache holds and sees the
snapshot go by (the fetcher's ``on_metadata`` hook), so it removes a cached targets file that
the snapshot shows to be stale before ngclient reads it (see ``_Run._on_metadata``).

The steady state is cheap: when the timestamp fetched is byte-identical to the last verified one,
there is no new root, the verdict-relevant configuration is unchanged and no role read last time
has expired, python-tuf would load exactly what it accepted last time, so the last verdict and
facts are reused; the canaries of the current configuration are still downloaded by ngclient, and
the result is built as a full refresh's (see ``_Run._try_reuse``). Anything else is a full
refresh, which happens at least every ``full_refresh_every`` probes.

That is the client view ``returning``. ``Prober.probe_views`` answers for the other views of an
endpoint (issue 16): ``new``, a first install (an empty cache and the configured trusted root),
and ``bootstrap-root-v<N>``, a client whose embedded root is version N (python-tuf walks the root
chain from it, then refreshes as a new client). Each view is a full refresh by its own ngclient
``Updater`` in its own empty cache; a pass downloads each URL once (:class:`FetchMemo`) and never
touches the returning view's cache, verdict, reuse state or delegation memo.

What the prober reads of and writes to the client cache is in ``exporter.probe._client_cache``.
The rest stays one module of about 870 lines because it is one job: one probe run (``_Run``),
full or reused, whose steps (fetch hook, ngclient refresh, delegation sweep, canaries, reuse
test, inspection, verdict) share the run's state and are only correct together; splitting
``_Run`` would spread that state over modules, not shorten the job.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import tempfile
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import cast
from urllib.parse import quote, unquote

import requests
from tuf.api import exceptions
from tuf.api.metadata import TargetFile
from tuf.ngclient import Updater, UpdaterConfig

from exporter.catalogue import TOP_LEVEL_ROLES
from exporter.config.model import Endpoint, Mode, Policy, Repository, safe_name
from exporter.probe import delegations
from exporter.probe._client_cache import (
    _cache_files,
    _cached_file,
    _CachedFile,
    _meta_versions,
    _persist,
    _root_history,
)
from exporter.probe.classify import (
    describe,
    exporter_error_result,
    host_fault,
    reason_of,
    role_from_message,
    role_of,
)
from exporter.probe.fetcher import Fetcher, FetchMemo, new_session, url_role
from exporter.probe.inspector import CachedFile, Inspected, Inspector, file_identity
from exporter.probe.results import (
    CLIENT_NEW,
    CLIENT_RETURNING,
    DelegationSummary,
    FailedRole,
    Failure,
    PhaseTiming,
    ProbeResult,
    Reason,
    RoleFacts,
    TargetResult,
    bootstrap_client_name,
)
from exporter.probe.roots import TrustedRootError, load_trusted_root

log = logging.getLogger(__name__)


def temporary_directory(state_dir: Path) -> Path:
    """Where the exporter's temporary files go: ``<state_dir>/tmp``, created (mode 0700).

    Probes put cold caches and ngclient's download buffers there; the service also makes it
    ``tempfile``'s default directory (``tempfile.tempdir``) for the life of the process, so
    no temporary file of the exporter or a library it calls lands in ``$TMPDIR``.
    """
    path = state_dir / "tmp"
    path.mkdir(parents=True, exist_ok=True, mode=0o700)
    return path


@dataclass
class _EndpointState:
    """What the prober remembers about one endpoint between probes."""

    session: requests.Session
    lock: threading.Lock = field(default_factory=threading.Lock)
    last: ProbeResult | None = None
    last_timestamp: bytes | None = None
    #: What the configuration said that decides a verdict, at the last full refresh
    #: (:func:`_verdict_config`); a reused verdict needs the same.
    last_config: Repository | None = None
    #: Canary path -> the target info python-tuf returned for it in the last full refresh, in
    #: the order of ``canary_targets`` (only canaries it found within the length limit).
    last_targetinfo: dict[str, TargetFile] = field(default_factory=dict)
    delegation_memo: delegations.Memo = field(default_factory=dict)
    #: Role -> its file in the client cache, as python-tuf last accepted it (warm mode; only
    #: what is known for certain, empty after a failed refresh).
    cached_files: dict[str, _CachedFile] = field(default_factory=dict)
    probes_since_full: int = 0


@dataclass
class _ViewState:
    """What the prober keeps for the view passes of one endpoint: an HTTP session of their own
    and the lock that lets one pass of the endpoint run at a time. No verdict, no cache."""

    session: requests.Session
    lock: threading.Lock = field(default_factory=threading.Lock)


class Prober:
    """Probes endpoints; keeps per-endpoint client caches and the last verdict."""

    def __init__(self, state_dir: Path, inspector: Inspector | None = None) -> None:
        self._cache_root = state_dir / "cache"
        self.state_dir = state_dir
        #: Temporary files of probes (cold caches, ngclient's download buffers).
        self.tmp_dir = state_dir / "tmp"
        self._inspector = inspector or Inspector()
        self._states: dict[tuple[str, str], _EndpointState] = {}
        self._view_states: dict[tuple[str, str], _ViewState] = {}
        self._lock = threading.Lock()

    def cache_dir(self, repository: Repository, endpoint: Endpoint) -> Path:
        """The client cache directory of one endpoint (names sanitized)."""
        return self._cache_root / safe_name(repository.name) / safe_name(endpoint.name)

    def forget(self, keep: set[tuple[str, str]]) -> None:
        """Drop the state of endpoints no longer configured (after a reload)."""
        with self._lock:
            for key in list(self._states):
                if key not in keep:
                    self._states.pop(key).session.close()
            for key in list(self._view_states):
                if key not in keep:
                    self._view_states.pop(key).session.close()

    def _state(self, repository: Repository, endpoint: Endpoint) -> _EndpointState:
        key = (repository.name, endpoint.name)
        with self._lock:
            state = self._states.get(key)
            if state is None:
                state = _EndpointState(new_session(max(10, repository.delegation_workers)))
                self._states[key] = state
            return state

    def probe(
        self,
        repository: Repository,
        endpoint: Endpoint,
        trusted_root: bytes | None = None,
    ) -> ProbeResult:
        """Run one full client refresh of ``endpoint`` of ``repository``; never raises.

        In: the configured repository (its mode, limits, canary targets, policy) and one of
        its endpoints; ``trusted_root``, the bytes of the root to start from (default: read
        ``repository.trusted_root`` from disk). Probes of one endpoint run one at a time
        (a second call waits); probes of different endpoints run in parallel.

        Out: a :class:`~exporter.probe.results.ProbeResult`: ``success`` and, on failure, the
        :class:`~exporter.probe.results.Reason` and failed role as python-tuf decided; the facts
        of every role read (versions, expiry as aware UTC datetimes, sizes in bytes, signature
        counts), every HTTP request, and durations in seconds (``duration_seconds``, phases).

        Errors: none raised. A fault of this host (disk full, no descriptors, out of memory)
        or an exception of our own code cuts the probe short: the result is
        ``exporter_error`` with its cause (:func:`exporter.probe.classify.exporter_error_result`),
        never a repository reason, and the endpoint's last verdict is left as it was.
        """
        started_at, t0 = datetime.now(UTC), time.monotonic()
        run: _Run | None = None
        try:
            state = self._state(repository, endpoint)
            with state.lock:  # never two probes of one endpoint at once
                run = _Run(self, repository, endpoint, state, trusted_root)
                return run.run()
        except Exception as exc:
            log.warning("probe of %s/%s stopped by a fault of the exporter: %s",
                        repository.name, endpoint.name, describe(exc), exc_info=True)
            role = None if run is None else role_of(run.fetcher.last_started)
            return exporter_error_result(repository.name, endpoint.name, started_at,
                                         time.monotonic() - t0, exc, role)

    def probe_views(
        self,
        repository: Repository,
        endpoint: Endpoint,
        trusted_root: bytes,
        bootstrap_roots: Mapping[int, bytes],
    ) -> list[ProbeResult]:
        """One view pass of ``endpoint``: the view ``new``, then ``bootstrap-root-v<N>`` for
        each bootstrap root (by version); one result per view, in that order. Never raises.

        ``trusted_root`` and ``bootstrap_roots`` (root version -> root.json bytes) are the
        roots of the configuration, already accepted by python-tuf
        (:mod:`exporter.probe.roots`). Each view is a full refresh of python-tuf's ngclient
        from that root in a fresh, empty cache below ``<state_dir>/tmp`` (removed after the
        view): the root chain, timestamp, snapshot, targets, the delegation sweep when
        ``verify_delegations``, the canaries downloaded and verified by ``download_target``;
        python-tuf decides every verdict. What one view downloaded completely is handed to the
        later views of the pass from a :class:`FetchMemo` (each still verifies it with its own
        ``Updater``); a download that failed is tried again. The returning view's cache, last
        verdict, reuse state and delegation memo are not touched; one pass of an endpoint runs
        at a time. A fault of this host ends a view as ``exporter_error`` (as :meth:`probe`),
        and the pass goes on with the next view.
        """
        views = [(CLIENT_NEW, trusted_root)]
        views += [(bootstrap_client_name(v), bootstrap_roots[v]) for v in sorted(bootstrap_roots)]
        started_at, t0 = datetime.now(UTC), time.monotonic()
        try:
            with self._lock:
                state = self._view_states.get((repository.name, endpoint.name))
                if state is None:
                    state = _ViewState(new_session(max(10, repository.delegation_workers)))
                    self._view_states[(repository.name, endpoint.name)] = state
        except Exception as exc:  # no descriptor for a session: no view can run
            log.warning("view pass of %s/%s stopped by a fault of the exporter: %s",
                        repository.name, endpoint.name, describe(exc), exc_info=True)
            failed = exporter_error_result(repository.name, endpoint.name, started_at,
                                           time.monotonic() - t0, exc)
            return [replace(failed, client=client) for client, _ in views]
        cold = replace(repository, mode=Mode.COLD)  # nothing of a returning client's
        results = []
        with state.lock:
            memo = FetchMemo(self.tmp_dir)
            try:
                for client, root in views:
                    results.append(self._view(cold, endpoint, state, client, root, memo))
            finally:
                try:
                    memo.close()
                except OSError as exc:  # the verdicts stand; the files stay below tmp/
                    log.warning("cannot remove the fetch memo of %s/%s: %s", repository.name,
                                endpoint.name, describe(exc))
        return results

    def _view(
        self,
        repository: Repository,
        endpoint: Endpoint,
        state: _ViewState,
        client: str,
        root: bytes,
        memo: FetchMemo,
    ) -> ProbeResult:
        started_at, t0 = datetime.now(UTC), time.monotonic()
        run: _Run | None = None
        try:
            scratch = _EndpointState(state.session)  # thrown away with the view
            run = _Run(self, repository, endpoint, scratch, root, client=client, memo=memo)
            return run.run_view()
        except Exception as exc:
            log.warning("view %s of %s/%s stopped by a fault of the exporter: %s", client,
                        repository.name, endpoint.name, describe(exc), exc_info=True)
            role = None if run is None else role_of(run.fetcher.last_started)
            return replace(exporter_error_result(repository.name, endpoint.name, started_at,
                                                 time.monotonic() - t0, exc, role), client=client)


class _Run:
    """One probe of one endpoint."""

    def __init__(
        self,
        prober: Prober,
        repository: Repository,
        endpoint: Endpoint,
        state: _EndpointState,
        trusted_root: bytes | None,
        *,
        client: str = CLIENT_RETURNING,
        memo: FetchMemo | None = None,
    ) -> None:
        self.prober = prober
        self.client = client
        self.repo = repository
        self.endpoint = endpoint
        self.state = state
        self.trusted_root = trusted_root
        self.started_at = datetime.now(UTC)
        self.t0 = time.monotonic()
        self.fetcher = Fetcher(
            state.session,
            self._classify,
            connect_timeout=repository.connect_timeout,
            read_timeout=repository.read_timeout,
            deadline=self.t0 + repository.timeout,
            retries=repository.retries,
            allowed_redirect_hosts=repository.allowed_redirect_hosts,
            on_metadata=self._on_metadata,
            tmp_dir=prober.tmp_dir,
            memo=memo,
        )
        self.marks: dict[str, float] = {}
        #: Role -> version, as named by the snapshot fetched in this probe (None: none fetched).
        self.snapshot_versions: dict[str, int] | None = None

    # -- classification of URLs -------------------------------------------------------------

    def _classify(self, url: str) -> str:
        return url_role(url, self.endpoint.targets_url)

    # -- stale cache files ----------------------------------------------------------------------

    def _on_metadata(self, role: str, body: bytes) -> None:
        """Remove cached targets files that a snapshot just fetched shows to be stale.

        Called by the fetcher when a snapshot has arrived, before ngclient verifies it and
        before ngclient tries its cached ``targets.json``. python-tuf accepts a cached targets
        file only if its version equals the one the (verified) snapshot names
        (``TrustedMetadataSet.update_delegated_targets``), after parsing it and checking its
        signatures; a file whose known version differs is certain to be rejected, so removing
        it first changes no verdict and saves that work. A file changed since (its
        ``FileIdentity``: inode, size or modification time), by anything but this prober, is
        left to python-tuf. It loses no
        protection either: the
        rollback protection of targets comes from the trusted snapshot's meta, never from the
        cached targets file. The snapshot is not verified here: a forged one can at worst
        remove a good cache file, which costs one download, and python-tuf then rejects the
        forged snapshot anyway.
        """
        if role != "snapshot" or self.repo.mode is not Mode.WARM:
            return
        versions = _meta_versions(body)
        self.snapshot_versions = versions
        known = self.state.cached_files
        if versions is None or not known:
            return
        metadata_dir = self.prober.cache_dir(self.repo, self.endpoint) / "metadata"
        for name, cached in list(known.items()):
            named = versions.get(name)
            if named is None or named == cached.version:
                continue
            del known[name]
            path = metadata_dir / f"{quote(name, '')}.json"
            try:
                if _cached_file(path, cached.version) == cached:
                    path.unlink()
            except OSError as exc:  # ngclient then rejects it itself, at some cost
                log.debug("cannot remove stale cached %s: %s", name, exc)

    def _note_cached_targets(self, metadata_dir: Path, refreshed: bool) -> None:
        """After a refresh, remember which targets version the client cache holds.

        After a successful refresh the cached ``targets.json`` is exactly the version the
        trusted snapshot names: the snapshot fetched in this probe if one was (python-tuf
        accepted it, or the refresh would have failed), else the cached snapshot, unchanged.
        After a failed refresh nothing is assumed.
        """
        known = self.state.cached_files
        if not refreshed:
            known.clear()
            return
        versions = self.snapshot_versions
        if versions is None:
            if "targets" in known:
                return  # snapshot and targets unchanged
            try:
                versions = _meta_versions((metadata_dir / "snapshot.json").read_bytes())
            except OSError:
                versions = None
        known.pop("targets", None)
        if versions is not None and "targets" in versions:
            with contextlib.suppress(OSError):  # no file: nothing known
                known["targets"] = _cached_file(metadata_dir / "targets.json", versions["targets"])

    # -- the probe ----------------------------------------------------------------------------

    def run(self) -> ProbeResult:
        tmp_dir = temporary_directory(self.prober.state_dir)  # also ngclient's download buffers
        try:
            trusted = self.trusted_root or load_trusted_root(self.repo.trusted_root, tmp_dir)
        except TrustedRootError as exc:
            return self._result(False, Reason.INVALID_METADATA, FailedRole.ROOT, str(exc))
        state = self.state
        reuse = (
            self.repo.mode is Mode.WARM
            and state.last is not None
            and state.last.success
            and state.last_timestamp is not None
            and state.probes_since_full + 1 < self.repo.full_refresh_every
            and state.last_config == _verdict_config(self.repo, self.endpoint)
        )
        if reuse:
            reused = self._try_reuse()
            if reused is not None:
                state.probes_since_full += 1
                return reused
        state.probes_since_full = 0
        if self.repo.mode is Mode.COLD:
            with tempfile.TemporaryDirectory(prefix="cold-", dir=self.prober.tmp_dir) as tmp:
                return self._full(Path(tmp), trusted)
        return self._full(self.prober.cache_dir(self.repo, self.endpoint), trusted)

    def run_view(self) -> ProbeResult:
        """A first-boot refresh from ``trusted_root`` in an empty cache that is removed after."""
        assert self.trusted_root is not None and self.repo.mode is Mode.COLD
        tmp_dir = temporary_directory(self.prober.state_dir)
        with tempfile.TemporaryDirectory(prefix="view-", dir=tmp_dir) as tmp:
            return self._full(Path(tmp), self.trusted_root)

    def _updater_config(self) -> UpdaterConfig:
        limits = self.repo.limits
        return UpdaterConfig(
            max_root_rotations=limits.max_root_rotations,
            max_delegations=limits.max_delegations,
            root_max_length=limits.root_max_length,
            timestamp_max_length=limits.timestamp_max_length,
            snapshot_max_length=limits.snapshot_max_length,
            targets_max_length=limits.targets_max_length,
        )

    def _full(self, cache: Path, trusted_root: bytes) -> ProbeResult:
        metadata_dir = cache / "metadata"
        download_dir = cache / "download"
        metadata_dir.mkdir(parents=True, exist_ok=True)
        updater: Updater | None = None
        failure: Failure | None = None
        sweep: delegations.SweepResult | None = None
        targets: list[TargetResult] = []
        self.marks["refresh"] = time.monotonic()
        try:
            updater = self._updater(metadata_dir, trusted_root)
            updater.refresh()
        except Exception as exc:  # noqa: BLE001 - every failure is classified, none escapes
            failure = self._classified(exc)
        self.marks["refreshed"] = time.monotonic()
        if self.repo.mode is Mode.WARM:
            self._note_cached_targets(metadata_dir, failure is None)
        if failure is None and updater is not None and self.repo.verify_delegations:
            sweep = delegations.sweep(
                updater,
                self.fetcher,
                self.endpoint.metadata_url,
                metadata_dir,
                spool_dir=cache / "incoming",
                workers=self.repo.delegation_workers,
                max_roles=self.repo.limits.max_delegations,
                default_length=self.repo.limits.targets_max_length,
                persist=lambda role, path: _persist(metadata_dir, role, path),
                memo=self.state.delegation_memo if self.repo.mode is Mode.WARM else None,
            )
            if sweep.truncated:
                log.warning(
                    "delegation tree of %s/%s has more roles than limits.max_delegations (%d);"
                    " the rest were not verified", self.repo.name, self.endpoint.name,
                    self.repo.limits.max_delegations,
                )
            if sweep.failures:
                for error in sweep.failures.values():
                    if reason_of(error) is Reason.EXPORTER_ERROR:
                        raise error  # ours, whichever role it hit first
                name, error = next(iter(sweep.failures.items()))
                classified = self._classified(error)
                failure = Failure(classified.reason, FailedRole.DELEGATED,
                                  f"delegated role {name!r}: {classified.message}")
        self.marks["swept"] = time.monotonic()
        self.state.last_targetinfo = {}
        if updater is not None and (failure is None or failure.role is FailedRole.DELEGATED):
            targets = self._canaries(updater, download_dir)
        self.marks["downloaded"] = time.monotonic()
        updater = None  # python-tuf's parsed metadata is not needed past this point
        inspected = self._inspect(metadata_dir, sweep)
        if sweep is not None:
            sweep.discard()
        result = self._verdict(
            failure, targets, inspected.roles, inspected.delegated, _summary(inspected, sweep)
        )
        self._remember(result)
        return result

    def _updater(self, metadata_dir: Path, trusted_root: bytes | None) -> Updater:
        """An updater on the client cache; ``trusted_root`` None: the cached root or nothing."""
        bootstrap: bytes | None = trusted_root
        if trusted_root is None or (metadata_dir / "root.json").exists():
            bootstrap = None  # a returning client starts from the root it trusts already
        kwargs = {
            "metadata_dir": str(metadata_dir),
            "metadata_base_url": self.endpoint.metadata_url,
            "target_base_url": self.endpoint.targets_url,
            "fetcher": self.fetcher,
            "config": self._updater_config(),
        }
        try:
            return Updater(**kwargs, bootstrap=bootstrap)  # type: ignore[arg-type]
        except (OSError, exceptions.RepositoryError) as exc:
            if bootstrap is not None or trusted_root is None or host_fault(exc) is not None:
                raise  # a full disk or no descriptor says nothing about the cache
            log.warning(
                "client cache of %s/%s is unusable (%s); starting again from the trusted root",
                self.repo.name, self.endpoint.name, exc,
            )
            shutil.rmtree(metadata_dir, ignore_errors=True)
            metadata_dir.mkdir(parents=True, exist_ok=True)
            return Updater(**kwargs, bootstrap=trusted_root)  # type: ignore[arg-type]

    def _canaries(
        self,
        updater: Updater,
        download_dir: Path,
        known: Mapping[str, TargetFile] | None = None,
    ) -> list[TargetResult]:
        """Look up and download every canary of the configuration; one result each, in order.

        The target info is python-tuf's ``get_targetinfo`` of a refreshed updater (remembered
        in ``last_targetinfo``), or for a reused verdict ``known``: what ``get_targetinfo``
        returned for the same path under the same metadata. Either way the download and its
        verification are ngclient's ``download_target`` (:meth:`_download`).
        """
        results = []
        lookup = updater.get_targetinfo if known is None else known.get
        for path in self.repo.canary_targets:
            start = time.monotonic()
            try:
                info = lookup(path)
                if info is None:
                    results.append(
                        TargetResult(path, False, Reason.TARGET_NOT_FOUND,
                                     f"no role delegated for {path!r} lists it",
                                     duration_seconds=time.monotonic() - start,
                                     role=FailedRole.TARGET)
                    )
                    continue
                limit = self.repo.limits.target_max_length
                if info.length > limit:
                    results.append(TargetResult(
                        path, False, Reason.LENGTH_OR_HASH_MISMATCH,
                        f"{path}: {info.length} bytes, more than target_max_length ({limit})",
                        length=info.length, duration_seconds=time.monotonic() - start,
                        role=FailedRole.TARGET))
                    continue
                if known is None:
                    self.state.last_targetinfo[path] = info
                results.append(self._download(updater, info, download_dir, start))
            except Exception as exc:  # noqa: BLE001 - classified below
                failed = self._classified(exc)
                role = failed.role or FailedRole.TARGET
                message = f"{path}: {failed.message}"
                if role is not FailedRole.TARGET:
                    message = f"{role.value}: {message}"
                if role is FailedRole.DELEGATED and failed.reason is Reason.TARGET_NOT_FOUND:
                    role = FailedRole.TARGET  # no delegated role lists it: the target's
                results.append(
                    TargetResult(path, False, failed.reason, message,
                                 duration_seconds=time.monotonic() - start, role=role)
                )
        return results

    def _download(
        self, updater: Updater, info: TargetFile, download_dir: Path, start: float
    ) -> TargetResult:
        """Download one canary and verify it with python-tuf's ``Updater.download_target``.

        ngclient builds the URL (hash-prefixed only when the trusted root says
        ``consistent_snapshot``), downloads into a private temporary file (never a path
        derived from the target's name), checks length and hashes; the file is removed at once.
        """
        name: str | None = None
        try:
            download_dir.mkdir(parents=True, exist_ok=True)
            fd, name = tempfile.mkstemp(dir=download_dir, prefix="canary-")
            os.close(fd)
            updater.download_target(info, filepath=name)
            return TargetResult(info.path, True, length=info.length,
                                duration_seconds=time.monotonic() - start)
        except Exception as exc:  # noqa: BLE001 - classified
            failed = self._classified(exc)
            return TargetResult(info.path, False, failed.reason, f"{info.path}: {failed.message}",
                                length=info.length, duration_seconds=time.monotonic() - start,
                                role=FailedRole.TARGET)
        finally:
            if name is not None:
                Path(name).unlink(missing_ok=True)

    def _classified(self, exc: BaseException) -> Failure:
        """python-tuf's reason and the role for a failure; a fault of this host is raised
        again, to end the probe as ``exporter_error`` (see :meth:`Prober.probe`)."""
        reason = reason_of(exc)
        if reason is Reason.EXPORTER_ERROR:
            raise exc
        role = role_from_message(exc, role_of(self.fetcher.last_started))
        if role is None:
            role = FailedRole.ROOT
        return Failure(reason, role, describe(exc))

    # -- reuse of the last verdict --------------------------------------------------------------

    def _try_reuse(self) -> ProbeResult | None:
        """The last verdict, if python-tuf would reach it again now; None: refresh fully.

        With the timestamp served byte-identical to the one last verified, no new root, the
        same configuration (:func:`_verdict_config`) and a client cache only this prober
        writes, a full refresh would load exactly the metadata the last one accepted, and the
        facts read from it are the same. What could still differ is left to python-tuf: when
        any role the last probe read has expired by now (python-tuf's own words and roles
        for that case come from a full refresh) or the cached root cannot be loaded, this
        returns None. The canaries of the current configuration are looked up in what the last
        refresh found for them and downloaded by ngclient as in a full refresh
        (:meth:`_canaries`), and the result is built by the same :meth:`_verdict`.
        """
        state = self.state
        last = state.last
        assert last is not None
        root = last.roles.get("root")
        if root is None or tuple(state.last_targetinfo) != self.repo.canary_targets:
            return None
        if _any_expired(last, datetime.now(UTC)):
            return None
        self.marks["refresh"] = time.monotonic()
        try:
            self.fetcher.download_bytes(
                f"{self.endpoint.metadata_url}{root.version + 1}.root.json",
                self.repo.limits.root_max_length,
            )
            return None  # a new root exists: full refresh
        except exceptions.DownloadHTTPError as exc:
            if exc.status_code not in (403, 404):
                return None
        except exceptions.DownloadError:
            return None
        try:
            data = self.fetcher.download_bytes(
                f"{self.endpoint.metadata_url}timestamp.json",
                self.repo.limits.timestamp_max_length,
            )
        except exceptions.DownloadError:
            return None
        if data != state.last_timestamp:
            return None
        targets: list[TargetResult] = []
        if state.last_targetinfo:
            cache = self.prober.cache_dir(self.repo, self.endpoint)
            try:
                # the root python-tuf trusts after the last refresh, loaded as a returning
                # client loads it: all download_target needs
                updater = self._updater(cache / "metadata", None)
            except Exception:  # noqa: BLE001 - python-tuf says why in the full refresh
                return None
            self.marks["refreshed"] = self.marks["swept"] = time.monotonic()
            targets = self._canaries(updater, cache / "download", state.last_targetinfo)
        else:
            self.marks["refreshed"] = self.marks["swept"] = time.monotonic()
        self.marks["downloaded"] = time.monotonic()
        return self._verdict(
            None, targets, last.roles, last.delegated, last.delegations, reused=True
        )

    # -- facts and results ----------------------------------------------------------------------

    def _inspect(
        self, metadata_dir: Path, sweep: delegations.SweepResult | None = None
    ) -> Inspected:
        """Facts from the bytes fetched in this probe, else from the client cache.

        A role fetched in this probe is never read from the cache as well: a changed 12 MB
        targets file is held once, not twice. In warm mode, cache files are handed to the
        inspector by path and identity (:class:`CachedFile`), with the bytes the delegation
        sweep loaded or wrote for the file of that identity, and the inspector opens only the
        files whose content it does not know: a warm probe does not re-read thousands of
        unchanged hash bins. A cold cache is read as before (its paths are never seen again).

        Root is always the cache's ``root.json``, the root python-tuf trusts after the refresh;
        the roots fetched in this probe go to the inspector apart (a newer one is one python-tuf
        refused), and so do the earlier root versions python-tuf keeps (``root_history``).
        """
        files: dict[str, bytes | CachedFile] = {}
        fetched_roots: list[bytes] = []
        for record in self.fetcher.records:
            body = self.fetcher.bodies.get(record.url)
            if body is None or record.role == "target":
                continue
            if record.role == "root":
                fetched_roots.append(body)
                continue
            files[record.role] = body
        for name, path in ({} if sweep is None else sweep.rejected).items():
            with contextlib.suppress(OSError):  # the body python-tuf rejected, for its facts
                files.setdefault(name, CachedFile(str(path), file_identity(path.stat())))
        if self.repo.mode is Mode.WARM:
            # a new dict of ours: it may take bytes as well
            found = cast(dict[str, bytes | CachedFile],
                         _cache_files(metadata_dir, {} if sweep is None else sweep.cached))
            for name, other in files.items():  # the few fetched in this probe or rejected
                cached = found.get(name)
                if not isinstance(cached, CachedFile) or cached.data is None:  # else: the bytes
                    # python-tuf accepted, as cached
                    found[name] = other
            files = found
        else:
            for path in metadata_dir.glob("*.json"):
                name = unquote(path.name).removesuffix(".json")
                if name in files:
                    continue
                try:
                    files[name] = path.read_bytes()
                except OSError as exc:
                    if host_fault(exc) is not None:
                        raise  # facts we cannot read for our own fault: no verdict shown
                    continue
        return self.prober._inspector.inspect(  # noqa: SLF001 - same module family
            files,
            root_history=_root_history(metadata_dir),
            fetched_roots=fetched_roots,
            max_delegations=self.repo.limits.max_delegations,
        )

    def _remember(self, result: ProbeResult) -> None:
        state = self.state
        state.last = result
        state.last_config = _verdict_config(self.repo, self.endpoint)
        body = None
        for record in reversed(self.fetcher.records):
            if record.role == "timestamp" and record.url in self.fetcher.bodies:
                body = self.fetcher.bodies[record.url]
                break
        if body is None and result.success:
            cached = self.prober.cache_dir(self.repo, self.endpoint) / "metadata" / "timestamp.json"
            try:
                body = cached.read_bytes()
            except OSError:
                body = None
        state.last_timestamp = body if result.success else None

    def _phases(self) -> tuple[PhaseTiming, ...]:
        records = self.fetcher.records
        marks = self.marks
        refresh_start = marks.get("refresh", self.t0)
        refreshed = marks.get("refreshed", refresh_start)
        firsts: dict[str, float] = {"root": refresh_start}
        for record in records:
            if record.role in TOP_LEVEL_ROLES and refresh_start <= record.started <= refreshed:
                firsts.setdefault(record.role, record.started)
        # a phase runs from its first request to the next phase's first request; a phase
        # that needed no request (a warm cache still valid) took no time of its own
        present = sorted((start, role) for role, start in firsts.items())
        bounds: list[tuple[str, float, float]] = []
        for i, (begin, role) in enumerate(present):
            end = present[i + 1][0] if i + 1 < len(present) else refreshed
            bounds.append((role, begin, max(begin, end)))
        bounds += [(role, refreshed, refreshed) for role in TOP_LEVEL_ROLES if role not in firsts]
        bounds.sort(key=lambda b: TOP_LEVEL_ROLES.index(b[0]))
        bounds.append(("delegations", refreshed, marks.get("swept", refreshed)))
        swept = marks.get("swept", refreshed)
        bounds.append(("download", swept, marks.get("downloaded", swept)))
        phases = []
        for phase, begin, end in bounds:
            network = sum(
                r.duration_seconds
                for r in records
                if begin <= r.started < end or (phase == "download" and r.role == "target")
            )
            phases.append(PhaseTiming(phase, end - begin, min(network, end - begin)))
        return tuple(phases)

    def _verdict(
        self,
        failure: Failure | None,
        targets: list[TargetResult],
        roles: Mapping[str, RoleFacts],
        delegated: Mapping[str, RoleFacts],
        summary: DelegationSummary,
        *,
        reused: bool = False,
    ) -> ProbeResult:
        """The result of a full refresh or a reused verdict: one way to build both.

        ``failure`` is python-tuf's (refresh or delegation sweep); without one, the first
        failing canary decides.
        """
        if failure is None:
            failure = _first_target_failure(targets)
        return self._result(
            failure is None,
            None if failure is None else failure.reason,
            None if failure is None else failure.role,
            None if failure is None else failure.message,
            roles=roles,
            delegated=delegated,
            summary=summary,
            targets=targets,
            reused=reused,
        )

    def _result(
        self,
        success: bool,
        reason: Reason | None,
        role: FailedRole | None,
        message: str | None,
        *,
        roles: Mapping[str, RoleFacts] | None = None,
        delegated: Mapping[str, RoleFacts] | None = None,
        summary: DelegationSummary | None = None,
        targets: list[TargetResult] | None = None,
        reused: bool = False,
    ) -> ProbeResult:
        dates = [r.server_date for r in self.fetcher.records if r.server_date is not None]
        return ProbeResult(
            repository=self.repo.name,
            endpoint=self.endpoint.name,
            success=success,
            started_at=self.started_at,
            duration_seconds=time.monotonic() - self.t0,
            reason=reason,
            role=role,
            message=message,
            roles=dict(roles or {}),
            delegated=dict(delegated or {}),
            delegations=summary or DelegationSummary(),
            targets=tuple(targets or ()),
            phases=self._phases(),
            requests=tuple(self.fetcher.records),
            reused_verdict=reused,
            server_date=max(dates) if dates else None,
            client=self.client,
        )

def _summary(inspected: Inspected, sweep: delegations.SweepResult | None) -> DelegationSummary:
    expiries = [facts.expires for facts in inspected.delegated.values()]
    failures = {} if sweep is None else {n: describe(exc) for n, exc in sweep.failures.items()}
    count = len(sweep.visited) if sweep is not None else len(inspected.declared_delegations)
    return DelegationSummary(
        count=count,
        failing=len(failures),
        min_expires=min(expiries) if expiries else None,
        failures=failures,
        truncated=sweep is not None and sweep.truncated,
    )


def _any_expired(last: ProbeResult, now: datetime) -> bool:
    """Whether any role the last probe read has expired at ``now`` (python-tuf's test:
    ``Metadata.is_expired``, expired once the reference time reaches ``expires``)."""
    return any(
        facts.expires <= now for facts in (*last.roles.values(), *last.delegated.values())
    )


def _verdict_config(repository: Repository, endpoint: Endpoint) -> Repository:
    """What of the configuration of ``endpoint`` can change python-tuf's verdict or the facts.

    Everything but the schedule (``interval``, ``full_refresh_every``), the history policy
    and the other endpoints: a reload that changes anything else (canaries, limits, mode,
    delegation verification, timeouts, redirects, the trusted root's path) makes the next
    probe a full refresh.
    """
    return replace(repository, interval=0.0, full_refresh_every=1, policy=Policy(), mirrors=(),
                   primary=endpoint)


def _first_target_failure(targets: list[TargetResult]) -> Failure | None:
    """The first failing canary's failure, with the role its result carries."""
    for target in targets:
        if not target.success:
            return Failure(target.reason or Reason.OTHER, target.role or FailedRole.TARGET,
                           target.message or "")
    return None
