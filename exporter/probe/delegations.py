"""Verify every delegated targets role of a repository, the way ngclient would load each one.

ngclient loads a delegated role only when a target lookup walks into it. A monitor wants the
verdict on all of them, so this sweep visits the whole delegation tree level by level. For each
role it does what ``Updater._load_targets`` does: try the cached copy, otherwise download the
version the snapshot names, and hand the bytes to python-tuf's trusted metadata set, which
makes the verdict (signatures against the delegator's keys and threshold, version against
snapshot, expiry). Downloads of one level run in parallel on the probe's fetcher, streamed to
files and bounded by the bytes waiting for verification; verification stays sequential, in
python-tuf, one large body in memory at a time (small ones, see :data:`KEEP_BODY`,
come back from their download in memory as well). A role delegated by several roles is
verified under each of them.

A warm sweep reuses the verdicts of the last one (:data:`Memo`) for leaf roles whose snapshot
entry, delegating keys and cached file are all unchanged: those are not even read from disk,
only checked for expiry against python-tuf's reference time (see :func:`sweep`).

This is the one module that touches ngclient internals (``Updater._trusted_set``): python-tuf
has no public API to load an arbitrary delegated role. The use is confined here and pinned by
tests.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import queue
import re
import uuid
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime
from itertools import islice
from pathlib import Path
from typing import Any, BinaryIO, NamedTuple
from urllib.parse import quote, unquote

from tuf.api import exceptions
from tuf.api.metadata import Delegations, MetaFile, Targets
from tuf.ngclient import Updater
from tuf.ngclient._internal.trusted_metadata_set import TrustedMetadataSet

from exporter.probe import _verify_pool
from exporter.probe.fetcher import Fetcher
from exporter.probe.fingerprints import KeyFingerprints
from exporter.probe.inspector import FileIdentity, file_identity, read_file

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Verdict:
    """python-tuf accepted a role under this snapshot entry and these delegating keys; the
    accepted bytes are the cached file with identity ``file``."""

    meta: MetaFile
    keys: str
    expires: datetime
    file: FileIdentity


#: Verdicts of the last sweep of one endpoint, by role name.
Memo = dict[str, Verdict]


class _Stale:
    """The type of :data:`_STALE`."""


#: A cached file python-tuf accepted as a version other than the one the snapshot names now.
_STALE = _Stale()


#: Accepted bodies a sweep hands to the inspector in memory (``SweepResult.cached``): each at
#: most ``KEEP_BODY`` bytes, ``KEEP_BYTES`` in all; the inspector reads any other from the
#: cache file. Thousands of small hash bins are not read twice; large roles never pile up in
#: memory.
KEEP_BODY = 256 << 10
KEEP_BYTES = 8 << 20


class Swept(NamedTuple):
    """What a sweep knows of the cache file of a role python-tuf accepted (or whose verdict it
    reused) in this sweep."""

    #: The file's bytes when the sweep had them in memory (within :data:`KEEP_BODY` and
    #: :data:`KEEP_BYTES`), else None.
    data: bytes | None
    #: The identity of the cache file holding the accepted bytes.
    identity: FileIdentity
    #: The key fingerprint (:class:`KeyFingerprints`) of the delegator's keys and threshold
    #: python-tuf accepted those bytes under, for the inspector (``CachedFile.accepted``).
    accepted: str


class _Download(NamedTuple):
    """A finished download: in the spool file ``path`` (None: held in memory only, the spool
    could not be written), ``size`` bytes, the file's identity as written (a rename into the
    cache keeps inode, size and mtime), and its bytes when small enough to keep at hand."""

    path: Path | None
    size: int
    identity: FileIdentity | None
    body: bytes | None


class _Tee:
    """A download's sink: writes to ``out`` and keeps the bytes while they fit in
    :data:`KEEP_BODY` (``parts`` None past that)."""

    def __init__(self, out: BinaryIO) -> None:
        self.out = out
        self.parts: list[bytes] | None = []
        self.size = 0

    def write(self, data: bytes, /) -> int:
        written = self.out.write(data)
        self.size += len(data)
        if self.parts is not None:
            if self.size <= KEEP_BODY:
                self.parts.append(bytes(data))
            else:
                self.parts = None
        return written


@dataclass
class SweepResult:
    """Every delegated role visited; failures by role name with the exception raised."""

    visited: list[str] = field(default_factory=list)
    #: Failing delegation paths: by role name for the first delegator the sweep reached the
    #: role through, ``"<role> (via <delegator>)"`` for each further delegator.
    failures: dict[str, Exception] = field(default_factory=dict)
    #: True when the tree holds more roles than the configured maximum (or more further
    #: delegation paths, see :func:`sweep`).
    truncated: bool = False
    #: Role -> what the sweep knows of the cache file that holds the bytes python-tuf accepted
    #: (or whose verdict was reused) in this sweep (:class:`Swept`). For the inspector: it need
    #: not stat these files, nor read the ones given with their bytes, nor check again the
    #: signatures python-tuf just counted.
    cached: dict[str, Swept] = field(default_factory=dict)
    #: Role -> the downloaded file python-tuf rejected, for the inspector's facts, kept up to
    #: the sweep's byte budget until :meth:`discard`.
    rejected: dict[str, Path] = field(default_factory=dict)

    def discard(self) -> None:
        """Remove the files of :attr:`rejected` (call once the inspector has read them)."""
        for path in self.rejected.values():
            path.unlink(missing_ok=True)
        self.rejected.clear()


def sweep(
    updater: Updater,
    fetcher: Fetcher,
    metadata_url: str,
    cache_dir: Path,
    *,
    spool_dir: Path,
    workers: int,
    max_roles: int,
    default_length: int,
    persist: Callable[[str, Path], None],
    memo: Memo | None = None,
) -> SweepResult:
    """Load and verify every delegated role below ``targets``; never raises for one role.

    Every delegation path is checked: a role delegated by several roles is verified by
    python-tuf under each of its delegators (their keys and threshold), not only under the
    first one the sweep reached it through; a failing path is a failure (see
    :attr:`SweepResult.failures`). ``max_roles`` bounds the roles visited, and separately the
    further paths checked.

    Memory does not grow with the number of roles. Downloads stream to files in
    ``spool_dir`` (below ``state_dir``, on the file system of ``cache_dir``), at most
    ``workers`` at a time, and the bytes downloaded but not yet verified are bounded by
    ``workers x default_length`` (a download reserves the length the snapshot gives, else
    ``default_length``, until it is done, then counts what it wrote): when the budget is
    reached, what is spooled is verified and the downloads go on. python-tuf verifies one
    role at a time, read from its file (a body of at most :data:`KEEP_BODY` comes back from
    its download in memory as well, at most :data:`KEEP_BYTES` of them awaiting verification,
    and is not read back); a verified file is moved into the cache by ``persist(role, path)``
    (``<quoted role>.json`` in ``cache_dir``, replacing the file: a rename, which keeps the
    inode, size and mtime the sweep recorded when it wrote the file), and the sweep drops its
    bytes (unless small, see :data:`KEEP_BODY`). When a spool file cannot
    be written (a fault of this host), that role is downloaded again into memory, so the
    verdict stands and only the memory bound is lost while the disk fails.

    ``memo`` holds the verdicts of the last sweep of the same endpoint. A leaf role (one that
    delegates nothing) is not read again when, since python-tuf accepted it,

    * its snapshot entry (version, and length and hashes when listed) is unchanged: that pins
      the role's version, which is all python-tuf checks of the bytes besides signatures;
    * the keys and threshold its delegator sets for it are unchanged (a key fingerprint):
      the signatures python-tuf checked would be checked against the same keys;
    * its cached file is the one python-tuf accepted (same inode, size and mtime): the bytes
      a warm ngclient would load are the same bytes;
    * it has not expired at python-tuf's reference time (checked anew every sweep).

    python-tuf's verdict on such a role can only be the one it gave, so it is reused; a
    sweep of 4,096 hash bins where one changed reads, fetches and verifies that one. A role
    failing any condition is loaded into python-tuf as on a cold sweep, except that a cached
    file that is still the one python-tuf accepted, as a version other than the snapshot names
    now, is not read: python-tuf would refuse it for its version, so the new one is downloaded.
    Roles that delegate further are always loaded, so their children are verified against
    keys python-tuf holds.
    A role's further delegators are checked every sweep, from its cached file.
    """
    run = _Sweep(updater, fetcher, metadata_url, cache_dir, spool_dir, workers, default_length,
                 persist, memo)
    return run.run(max_roles)


def use_processes(processes: int) -> None:
    """Verify large sweeps in at most ``processes`` worker processes (0: on the probe's own
    thread); the ``delegation_processes`` setting. A running pool is stopped first."""
    _verify_pool.configure(processes)


def stop_processes() -> None:
    """Stop the worker processes, if any (the service's stop; a later large sweep starts
    them again)."""
    _verify_pool.shutdown()


def process_ids() -> list[int]:
    """The process ids of the running worker processes (none until a large sweep)."""
    return _verify_pool.worker_pids()


class _Sweep:
    """One sweep (see :func:`sweep`)."""

    def __init__(
        self,
        updater: Updater,
        fetcher: Fetcher,
        metadata_url: str,
        cache_dir: Path,
        spool_dir: Path,
        workers: int,
        default_length: int,
        persist: Callable[[str, Path], None],
        memo: Memo | None,
    ) -> None:
        self.trusted: TrustedMetadataSet = updater._trusted_set  # noqa: SLF001 - see module doc
        self.envelope_type = updater.config.envelope_type
        #: the trusted snapshot's meta (a sweep runs after a successful refresh: it has one)
        self.meta = self.trusted.snapshot.meta
        self.delegators: dict[str, Targets] = {}
        self.fetcher = fetcher
        self.metadata_url = metadata_url
        self.cache_dir = cache_dir
        self.spool_dir = spool_dir
        self.workers = max(1, workers)
        self.default_length = default_length
        self.budget = self.workers * default_length
        self.persist = persist
        self.memo = memo
        self.result = SweepResult()
        self.keys = KeyFingerprints()
        self.kept = 0  # bytes handed over in result.cached
        self.rejected_bytes = 0  # bytes of the files in result.rejected
        self.spooled = 0  # spool files made so far (their names)
        #: roles and further paths (``failures`` keys) in the order the sweep reached them
        self.reached: list[str] = []
        #: (role, delegator, bytes) of every delegating role python-tuf accepted in this
        #: sweep, in load order: what a worker process loads before a level's roles
        self.chain: list[tuple[str, str, bytes]] = []
        self.context: _verify_pool.Context | None = None
        #: leaf roles a worker process accepted (this probe's python-tuf does not hold them)
        self.leaves: set[str] = set()

    def run(self, max_roles: int) -> SweepResult:
        trusted, result, memo = self.trusted, self.result, self.memo
        _empty(self.spool_dir)
        level = [(child, "targets") for child in _children(trusted["targets"], max_roles + 1)]
        seen: set[str] = set()
        further_paths = 0
        cached_files = _listing(self.cache_dir)
        with ThreadPoolExecutor(max_workers=self.workers, thread_name_prefix="delegation") as pool:
            while level:
                todo: list[tuple[str, str]] = []
                further: list[tuple[str, str]] = []
                verified: set[str] = set()
                order: list[str] = []  # the roles of this level, in the order they were reached
                for role, parent in level:
                    if role in seen:
                        if further_paths >= max_roles:
                            result.truncated = True
                            continue
                        further_paths += 1
                        self.reached.append(f"{role} (via {parent})")
                        further.append((role, parent))
                        order.append(role)
                        continue
                    if len(seen) >= max_roles:
                        result.truncated = True
                        break
                    seen.add(role)
                    result.visited.append(role)
                    self.reached.append(role)
                    order.append(role)
                    if trusted.contains(role, parent):
                        verified.add(role)
                        continue
                    entry = cached_files.get(role)
                    if entry is None:
                        todo.append((role, parent))
                        continue
                    verdict = None if memo is None else memo.get(role)
                    if verdict is not None:
                        known = self._memoised(verdict, role, parent, entry)
                        if isinstance(known, _Stale):
                            todo.append((role, parent))
                            continue
                        if known is not None:
                            result.cached[role] = Swept(None, known, verdict.keys)
                            continue
                    cached = read_file(entry.path)
                    if cached is not None and _load(trusted, role, parent, cached[0]):
                        self._loaded(role, parent, cached[0])
                        self._accept(role, parent, cached[1], cached[0])
                        verified.add(role)
                        continue
                    todo.append((role, parent))
                verified.update(self._download_and_verify(pool, todo))
                verified.update(role for role, parent in further if self._further(role, parent))
                # children in the order of the tree, whichever download finished first
                level = [
                    (child, role)
                    for role in dict.fromkeys(order)
                    if role in verified and role not in self.leaves
                    for child in _children(trusted[role], max_roles + 1)
                ]
        if memo is not None:
            for gone in memo.keys() - seen:  # no longer delegated (or past max_roles)
                del memo[gone]
        result.failures = _in_tree_order(result.failures, self.reached)
        return result

    def _delegator(self, parent: str) -> Targets:
        """The trusted delegator ``parent`` (looked up once a sweep: python-tuf adds a role
        to its trusted set once, and a further delegation path loads the same bytes)."""
        delegator = self.delegators.get(parent)
        if delegator is None:
            delegator = self.delegators[parent] = _delegator(self.trusted, parent)
        return delegator

    def _memoised(
        self, verdict: Verdict, role: str, parent: str, entry: os.DirEntry[str]
    ) -> FileIdentity | _Stale | None:
        """What the memo says of the cached file of ``role`` (see :func:`sweep`): its identity
        when python-tuf's verdict on it stands unchanged (reuse it); :data:`_STALE` when the
        file is the one python-tuf accepted but the snapshot now names another version, which
        python-tuf would reject it for (download the new one without reading the old); None
        when python-tuf must load it."""
        meta = self.meta.get(f"{role}.json")
        if meta is None:
            return None  # python-tuf says why
        try:
            identity = file_identity(entry.stat())
        except OSError:
            return None
        if identity != verdict.file:
            return None  # changed on disk since python-tuf accepted it
        if meta.version != verdict.meta.version:
            # update_delegated_targets refuses a version other than the snapshot's (or,
            # before that, its length or hashes): the same outcome as loading it
            return _STALE
        if (
            meta == verdict.meta
            and verdict.expires > self.trusted.reference_time
            and self.keys.of_child(self._delegator(parent), role) == verdict.keys
        ):
            return identity
        return None

    # -- downloads of a level, bounded by bytes -------------------------------------------------

    def _download_and_verify(
        self, pool: ThreadPoolExecutor, todo: list[tuple[str, str]]
    ) -> list[str]:
        """Download ``todo`` (at most ``workers`` at a time and ``budget`` bytes spooled) and
        have python-tuf verify each; the roles it accepted.

        Without worker processes, downloads and verification never overlap: overlapping
        CPU-bound verification with busy download threads costs far more in GIL hand-offs
        than it saves (measured: 13x slower signature checks). So downloads run until the
        budget is reached or the level is done, then what was spooled is verified on this
        thread, then the next downloads. A level of at least :data:`_verify_pool.MIN_ROLES`
        roles, when worker processes are configured, is verified by python-tuf in those
        processes instead (:mod:`exporter.probe._verify_pool`), in batches of
        :data:`_verify_pool.BATCH` handed over as they are downloaded: verification then
        runs on another core while the downloads go on, the bytes handed over still count
        against the budget until their verdicts are back. Finished downloads and verdicts
        come back on a queue (one ``get`` each, not a ``wait`` over every running future).
        Small bodies (:data:`KEEP_BODY`) come back in memory as well as in their spool file,
        at most :data:`KEEP_BYTES` of them awaiting verification, so they are not read back
        from disk.
        """
        verified: list[str] = []
        pending = deque(todo)
        finished: queue.SimpleQueue[Future[Any]] = queue.SimpleQueue()
        running: dict[Future[_Download], tuple[str, str, int]] = {}
        done: list[tuple[str, str, _Download | BaseException]] = []
        in_workers = len(todo) >= _verify_pool.MIN_ROLES and _verify_pool.processes() > 0
        batch: list[tuple[str, str, _Download]] = []  # downloaded, for a worker
        verifying: dict[Future[Any], list[tuple[str, str, _Download]]] = {}
        reserved = 0  # lengths reserved by running downloads
        spooled = 0  # bytes of finished downloads not yet verified
        held = 0  # bytes of those held in memory
        while pending or running or done or batch or verifying:
            while pending and len(running) < self.workers:
                role, parent = pending[0]
                try:
                    url, length = _location(self.trusted, self.metadata_url, role,
                                            self.default_length)
                except exceptions.RepositoryError as exc:
                    pending.popleft()
                    self._failed(role, exc)
                    continue
                if (running or done or verifying) and spooled + reserved + length > self.budget:
                    break
                pending.popleft()
                self.spooled += 1
                path = self.spool_dir / f"{self.spooled}.part"
                future = pool.submit(self._download, url, length, path)
                running[future] = (role, parent, length)
                future.add_done_callback(finished.put)
                reserved += length
            if batch and (len(batch) >= _verify_pool.BATCH or not running):
                handed = _verify_pool.submit(self._context(), [
                    (role, parent, got.body if got.body is not None else str(got.path))
                    for role, parent, got in batch
                ])
                verifying[handed] = batch
                handed.add_done_callback(finished.put)
                batch = []
            if running or verifying:
                ready = finished.get()
                if ready in verifying:
                    jobs = verifying.pop(ready)
                    verified += self._verdicts(jobs, _verify_pool.outcomes(ready))
                    for _, _, got in jobs:
                        spooled -= got.size
                        held -= got.size if got.body is not None else 0
                    continue
                role, parent, length = running.pop(ready)
                reserved -= length
                error = ready.exception()
                if error is not None:
                    done.append((role, parent, error))
                    continue
                got = ready.result()
                spooled += got.size
                if got.body is not None and got.path is not None:
                    if held + got.size > KEEP_BYTES:
                        got = got._replace(body=None)  # read back from its file when verified
                    else:
                        held += got.size
                if in_workers and got.path is not None:
                    batch.append((role, parent, got))
                else:
                    done.append((role, parent, got))
                continue
            verified += self._verify(done)
            done = []
            spooled = held = 0
        return verified

    def _context(self) -> _verify_pool.Context:
        """What a worker process loads before verifying roles of this level: the bytes
        ngclient cached for the top-level roles (the ones python-tuf accepted in this
        probe's refresh) and the delegating roles accepted so far."""
        chain = tuple(self.chain)
        if self.context is None or self.context.chain != chain:
            trusted = self.trusted
            names = ("root", "timestamp", "snapshot", "targets")
            files = [(self.cache_dir / f"{name}.json").read_bytes() for name in names]
            self.context = _verify_pool.Context(
                token=f"{os.getpid()}-{uuid.uuid4().hex}",
                envelope_type=self.envelope_type,
                reference_time=trusted.reference_time,
                root=files[0], timestamp=files[1], snapshot=files[2], targets=files[3],
                versions=(trusted.root.version, trusted.timestamp.version,
                          trusted.snapshot.version, trusted.targets.version),
                chain=chain,
            )
        return self.context

    def _verdicts(
        self, jobs: list[tuple[str, str, _Download]], outcomes: list[_verify_pool.Outcome]
    ) -> list[str]:
        """Record the verdicts a worker process returned for ``jobs``; the roles accepted.

        A role that delegates further is loaded into this probe's python-tuf as well (its
        children are verified against keys python-tuf holds here, and in the next level's
        worker context)."""
        verified = []
        for (role, parent, got), outcome in zip(jobs, outcomes, strict=True):
            if outcome.error is not None:
                self._failed(role, outcome.error)
                if got.path is not None:
                    self._reject(role, got.path)
                continue
            data = got.body
            if outcome.delegates:
                data = _read_spooled(got)
                try:
                    self.trusted.update_delegated_targets(data, role, parent)
                except (exceptions.RepositoryError, OSError) as exc:
                    self._failed(role, exc)
                    if got.path is not None:
                        self._reject(role, got.path)
                    continue
                self._loaded(role, parent, data)
                self._store(role, parent, data, got)
            else:
                assert outcome.expires is not None
                self.leaves.add(role)
                self._store(role, parent, data, got, leaf_expires=outcome.expires)
            verified.append(role)
        return verified

    def _download(self, url: str, length: int, path: Path) -> _Download:
        """The body of ``url`` in the file ``path`` (and in memory if small), or in memory
        only if that file cannot be written."""
        try:
            with open(path, "wb") as out:
                tee = _Tee(out)
                self.fetcher.download_into(url, length, tee)
                out.flush()
                identity = file_identity(os.fstat(out.fileno()))
        except OSError as exc:  # writing the spool file: this host's disk, not the repository
            path.unlink(missing_ok=True)
            log.warning("cannot spool delegated metadata to %s (%s); holding it in memory",
                        path, exc)
            buffer = io.BytesIO()
            self.fetcher.download_into(url, length, buffer)
            held = buffer.getvalue()
            return _Download(None, len(held), None, held)
        except BaseException:
            path.unlink(missing_ok=True)
            raise
        kept = None if tee.parts is None else b"".join(tee.parts)
        return _Download(path, tee.size, identity, kept)

    def _verify(self, done: list[tuple[str, str, _Download | BaseException]]) -> list[str]:
        """python-tuf's verdict on each finished download, one body read from disk at a time."""
        verified = []
        for role, parent, got in done:
            try:
                if isinstance(got, BaseException):
                    raise got
                data = got.body if got.body is not None else _read_spooled(got)
                self.trusted.update_delegated_targets(data, role, parent)
            except (exceptions.RepositoryError, exceptions.DownloadError, OSError) as exc:
                self._failed(role, exc)
                if isinstance(got, _Download) and got.path is not None:
                    self._reject(role, got.path)
                continue
            verified.append(role)
            self._loaded(role, parent, data)
            self._store(role, parent, data, got)
            del data
        return verified

    def _loaded(self, role: str, parent: str, data: bytes) -> None:
        """python-tuf here accepted ``data`` as ``role``: a delegating role joins the chain a
        worker process loads (:meth:`_context`)."""
        if _children(self.trusted[role], 1):
            self.chain.append((role, parent, data))

    def _store(
        self,
        role: str,
        parent: str,
        data: bytes | None,
        got: _Download,
        *,
        leaf_expires: datetime | None = None,
    ) -> None:
        """Cache a role python-tuf accepted (only verified bytes are cached) and remember it.

        ``leaf_expires``: a leaf role a worker process accepted, which this probe's
        python-tuf does not hold (its expiry, as python-tuf read it there); ``data`` may then
        be None (not in memory: the inspector reads the cache file)."""
        memo = self.memo
        if got.path is None:  # the spool could not be written: nor can the cache
            if memo is not None:
                memo.pop(role, None)  # the cache may hold an older file: no reuse
            return
        try:
            self.persist(role, got.path)
        except OSError as exc:  # a full disk costs a re-download, not the verdict
            got.path.unlink(missing_ok=True)
            log.warning("cannot cache verified delegated metadata: %s", exc)
            if memo is not None:
                memo.pop(role, None)  # the cache may hold an older file: no reuse
            return
        # the spool file was renamed into the cache: same inode, size and mtime
        self._accept(role, parent, got.identity, data, leaf_expires)

    def _accept(
        self,
        role: str,
        parent: str,
        identity: FileIdentity | None,
        data: bytes | None,
        leaf_expires: datetime | None = None,
    ) -> None:
        """Record that python-tuf accepted ``data``, cached as the file with ``identity``
        (``leaf_expires``: see :meth:`_store`)."""
        keys = _fingerprint(self.keys, self.trusted, role, parent)
        _remember(self.memo, self.trusted, role, parent, identity, keys, leaf_expires)
        if identity is not None:
            kept = None if data is None else self._keep(data)
            self.result.cached[role] = Swept(kept, identity, keys)

    def _failed(self, role: str, exc: Exception) -> None:
        self.result.failures[role] = exc
        if self.memo is not None:
            self.memo.pop(role, None)

    def _reject(self, role: str, path: Path) -> None:
        """Keep a rejected download for the inspector while within the budget, else drop it."""
        size = _size(path)
        if self.rejected_bytes + size <= self.budget:
            self.rejected_bytes += size
            self.result.rejected[role] = path
        else:
            path.unlink(missing_ok=True)

    def _keep(self, data: bytes) -> bytes | None:
        if len(data) > KEEP_BODY or self.kept + len(data) > KEEP_BYTES:
            return None
        self.kept += len(data)
        return data

    # -- further delegators of a role -----------------------------------------------------------

    def _further(self, role: str, parent: str) -> bool:
        """python-tuf's verdict on ``role`` under one more delegator, ``parent``.

        The bytes are the ones python-tuf accepted in this sweep (the cache file the sweep
        loaded, wrote or reused), else (the role failed under its other delegators, or could
        not be cached) downloaded again. True when this is the first path under which
        python-tuf accepted the role (its children are then visited from here).
        """
        trusted, result = self.trusted, self.result
        if trusted.contains(role, parent):
            return False
        accepted = role in result.cached
        key = f"{role} (via {parent})"
        got: _Download | None = None
        try:
            if accepted:
                data = (self.cache_dir / _file_name(role)).read_bytes()
            else:
                url, length = _location(trusted, self.metadata_url, role, self.default_length)
                self.spooled += 1
                got = self._download(url, length, self.spool_dir / f"{self.spooled}.part")
                data = got.body if got.body is not None else _read_spooled(got)
            trusted.update_delegated_targets(data, role, parent)
        except (exceptions.RepositoryError, exceptions.DownloadError, OSError) as exc:
            result.failures[key] = exc
            if got is not None and got.path is not None:
                got.path.unlink(missing_ok=True)
            return False
        self._loaded(role, parent, data)
        if accepted:
            return False
        if got is not None:
            self._store(role, parent, data, got)
        return True


def _read_spooled(got: _Download) -> bytes:
    """The bytes of a finished download that were not kept in memory."""
    if got.body is not None:
        return got.body
    assert got.path is not None  # a download without a file always has its body
    return got.path.read_bytes()


def _empty(directory: Path) -> None:
    """Create ``directory``, or remove what a sweep left there (a crash, a kill)."""
    directory.mkdir(parents=True, exist_ok=True)
    with os.scandir(directory) as entries:
        for entry in entries:
            with contextlib.suppress(OSError):
                Path(entry.path).unlink()


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except OSError:
        return 0


def _children(targets: object, limit: int) -> list[str]:
    """The first ``limit`` roles ``targets`` delegates to, in order.

    Bounded because succinct hash bins are generated: a delegation may declare 2**32 bins,
    and listing them all would never end (the sweep visits at most ``max_roles`` anyway).
    """
    if not isinstance(targets, Targets):
        return []
    delegations: Delegations | None = targets.delegations
    if delegations is None:
        return []
    if delegations.roles is not None:
        return list(islice(delegations.roles, limit))
    if delegations.succinct_roles is not None:
        return list(islice(delegations.succinct_roles.get_roles(), limit))
    return []


def _in_tree_order(failures: dict[str, Exception], reached: list[str]) -> dict[str, Exception]:
    """``failures`` in the order the sweep reached their roles (level by level, each level in
    the order of the tree), not the order downloads and cache reads happened to finish: the
    first failure, which the probe reports, must not depend on what the cache held."""
    rank = {key: i for i, key in enumerate(reached)}
    return dict(sorted(failures.items(), key=lambda item: rank.get(item[0], len(rank))))


#: Role names ``quote(name, "")`` leaves as they are (hash bins, most role names).
_PLAIN_NAME = re.compile(r"[A-Za-z0-9_.~-]+")


def _file_name(role: str) -> str:
    """The cache file name of ``role``, as ngclient names it (``quote(role, "")``)."""
    if _PLAIN_NAME.fullmatch(role):
        return f"{role}.json"  # what quote gives, at a fraction of its cost (one a role a sweep)
    return f"{quote(role, '')}.json"


def _listing(cache_dir: Path) -> dict[str, os.DirEntry[str]]:
    """The cached files by role name (see :func:`_file_name`), in one directory read (no
    per-role ``open`` of absent files)."""
    try:
        with os.scandir(cache_dir) as entries:
            return {
                unquote(entry.name[:-5]) if "%" in entry.name else entry.name[:-5]: entry
                for entry in entries
                if entry.name.endswith(".json")  # no escape can end in ".json"
            }
    except OSError:
        return {}


def _load(trusted: TrustedMetadataSet, role: str, parent: str, data: bytes) -> bool:
    try:
        trusted.update_delegated_targets(data, role, parent)
    except exceptions.RepositoryError:
        return False
    return True


def _delegator(trusted: TrustedMetadataSet, parent: str) -> Targets:
    delegator = trusted[parent]
    assert isinstance(delegator, Targets)  # only targets roles delegate below targets
    return delegator


def _fingerprint(
    keys: KeyFingerprints, trusted: TrustedMetadataSet, role: str, parent: str
) -> str:
    """The fingerprint of the keys and threshold ``parent`` sets for ``role``, one of the
    roles the sweep listed from ``parent``'s delegations."""
    return keys.of_child(_delegator(trusted, parent), role)


def _remember(
    memo: Memo | None,
    trusted: TrustedMetadataSet,
    role: str,
    parent: str,
    identity: FileIdentity | None,
    keys: str,
    leaf_expires: datetime | None = None,
) -> None:
    """Record python-tuf's acceptance of ``role`` under the delegating keys with fingerprint
    ``keys``, cached as the file with ``identity`` (None: not cached, nothing to reuse).
    ``leaf_expires``: the role is a leaf a worker process accepted with this expiry (this
    probe's python-tuf does not hold it); None: python-tuf here holds the role."""
    if memo is None:
        return
    meta = trusted.snapshot.meta.get(f"{role}.json")
    if leaf_expires is not None:
        expires = leaf_expires
    else:
        loaded = trusted[role]
        if not isinstance(loaded, Targets) or _children(loaded, 1):
            memo.pop(role, None)  # only leaves are ever reused
            return
        expires = loaded.expires
    if identity is None or meta is None:
        memo.pop(role, None)
        return
    memo[role] = Verdict(meta, keys, expires, identity)


def _location(
    trusted: TrustedMetadataSet, metadata_url: str, role: str, default_length: int
) -> tuple[str, int]:
    """The URL of ``role``'s file (as ngclient names it) and the most bytes it may have."""
    meta = trusted.snapshot.meta.get(f"{role}.json")
    if meta is None:
        raise exceptions.RepositoryError(f"Role {role} was delegated but is not part of snapshot")
    length = meta.length or default_length
    name = quote(role, "")
    if trusted.root.consistent_snapshot:
        return f"{metadata_url}{meta.version}.{name}.json", length
    return f"{metadata_url}{name}.json", length
