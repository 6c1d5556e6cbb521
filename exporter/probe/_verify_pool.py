"""python-tuf's verdicts on delegated roles in worker processes: a sweep's second core.

The delegation sweep (:mod:`exporter.probe.delegations`) of a large tree (thousands of hash
bins) spends about half of its CPU time in python-tuf's ``update_delegated_targets``, under
the GIL, while its download threads wait for it or it for them. This module moves that work
to a pool of worker processes, started lazily by the first sweep large enough to pay for it
(:data:`MIN_ROLES`) and kept for the life of the process: the forkserver start method (never
``fork``, which would copy the threads of the exporter in a state no one can vouch for), at
most :func:`configure`'s ``processes`` of them, closed by :func:`shutdown` (the service's
stop, and at exit).

python-tuf still decides. A worker builds python-tuf's own ``TrustedMetadataSet`` from the
very bytes the probe's ``Updater`` accepted (:class:`Context`: root, timestamp, snapshot and
top-level targets as ngclient cached them, then the delegating roles the sweep accepted, in
the order it loaded them, at the probe's reference time) and calls
``update_delegated_targets`` for each role of its batch. It returns python-tuf's verdict as a
value (:class:`Outcome`: accepted, or the exception python-tuf raised, with its causes) and
the facts the sweep needs of an accepted role (its expiry, whether it delegates further).

A worker that dies, or a pool that cannot start, is a fault of this host: the pool raises
:class:`PoolError` (never a repository's verdict), which the prober reports as
``exporter_error`` with cause ``workers``, and the next sweep starts a new pool.
"""

from __future__ import annotations

import atexit
import multiprocessing
import pickle
import threading
from collections.abc import Sequence
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import NamedTuple

from tuf.api import exceptions
from tuf.ngclient._internal.trusted_metadata_set import TrustedMetadataSet
from tuf.ngclient.config import EnvelopeType

from exporter.config import default_delegation_processes
from exporter.probe.results import ErrorCause, StoreError

#: A sweep verifies in worker processes only a level of at least this many roles to load:
#: below it, handing the bytes over costs more than it saves (measured on 2 cores, see
#: bench/RESULTS.md, "Delegation sweeps, 2026-11-30").
MIN_ROLES = 512

#: Roles in one batch handed to a worker.
BATCH = 256



class PoolError(StoreError):
    """The worker processes failed (a worker died, the pool could not start): a fault of this
    host, never of the repository (``exporter_error``, cause ``workers``)."""

    cause = ErrorCause.WORKERS


@dataclass(frozen=True)
class Context:
    """What a worker loads into python-tuf before a batch: the probe's trusted metadata.

    ``token`` names this exact content (one sweep, one level): a worker keeps the trusted set
    it built for the last token and builds a new one for another. ``versions`` are the
    versions of root, timestamp, snapshot and targets in the probe's trusted set: a worker
    whose bytes load as other versions raises (a bug of ours, never a verdict).
    """

    token: str
    envelope_type: EnvelopeType
    reference_time: datetime
    root: bytes
    timestamp: bytes
    snapshot: bytes
    targets: bytes
    versions: tuple[int, int, int, int]
    #: (role, delegator, bytes) of the delegating roles python-tuf accepted, in load order.
    chain: tuple[tuple[str, str, bytes], ...]


class Outcome(NamedTuple):
    """python-tuf's verdict on one role of a batch."""

    role: str
    #: The exception python-tuf raised (its ``__cause__`` chain restored), None: accepted.
    error: Exception | None
    #: The accepted role's expiry (None when rejected).
    expires: datetime | None
    #: Whether the accepted role delegates further (its children need it in the probe's set).
    delegates: bool


#: One role to verify: (role, delegator, its bytes or the path of the file holding them).
Job = tuple[str, str, bytes | str]


class _Pool:
    """The process-wide pool (see the module docstring)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._executor: ProcessPoolExecutor | None = None
        self.processes = default_delegation_processes()

    def submit(self, context: Context, jobs: list[Job]) -> Future[list[tuple[object, ...]]]:
        with self._lock:
            if self._executor is None:
                try:
                    self._executor = ProcessPoolExecutor(
                        max_workers=self.processes,
                        mp_context=multiprocessing.get_context("forkserver"),
                    )
                except OSError as exc:  # no descriptor, no memory for the processes
                    raise PoolError(f"cannot start delegation worker processes: {exc}") from exc
            executor = self._executor
        try:
            return executor.submit(_verify, context, jobs)
        except (BrokenProcessPool, RuntimeError) as exc:
            self.discard(executor)
            raise PoolError(f"delegation worker processes failed: {exc}") from exc

    def discard(self, executor: ProcessPoolExecutor | None = None) -> None:
        """Forget a broken pool (``executor``, or whichever is current), without waiting."""
        with self._lock:
            if executor is not None and executor is not self._executor:
                return
            executor, self._executor = self._executor, None
        if executor is not None:
            executor.shutdown(wait=False, cancel_futures=True)

    def shutdown(self) -> None:
        with self._lock:
            executor, self._executor = self._executor, None
        if executor is not None:
            executor.shutdown(wait=True, cancel_futures=True)

    def pids(self) -> list[int]:
        with self._lock:
            executor = self._executor
        processes = {} if executor is None else dict(executor._processes or {})  # noqa: SLF001
        return sorted(processes)


_POOL = _Pool()
atexit.register(_POOL.shutdown)


def configure(processes: int) -> None:
    """Use at most ``processes`` worker processes (0: verify in the probe's own thread).
    Takes effect for the next pool: a running pool is closed."""
    if processes < 0:
        raise ValueError("processes must be >= 0")
    if processes != _POOL.processes:
        _POOL.shutdown()
        _POOL.processes = processes


def processes() -> int:
    """The configured number of worker processes (see :func:`configure`)."""
    return _POOL.processes


def shutdown() -> None:
    """Stop the worker processes (they start again on the next large sweep)."""
    _POOL.shutdown()


def worker_pids() -> list[int]:
    """The process ids of the running workers (for their resident memory), none when idle."""
    return _POOL.pids()


def submit(context: Context, jobs: list[Job]) -> Future[list[tuple[object, ...]]]:
    """Have a worker verify ``jobs`` under ``context``; :func:`outcomes` of the result.

    Raises :class:`PoolError` when the pool cannot take it.
    """
    return _POOL.submit(context, jobs)


def outcomes(future: Future[list[tuple[object, ...]]]) -> list[Outcome]:
    """The verdicts of a finished :func:`submit`, in the order of its jobs.

    Raises :class:`PoolError` when a worker died (the pool is discarded; the next sweep
    starts a new one); re-raises what a worker raised outside python-tuf's verdict (a bug of
    ours).
    """
    try:
        raw = future.result()
    except BrokenProcessPool as exc:
        _POOL.discard()
        raise PoolError(f"a delegation worker process died: {exc}") from exc
    return [_outcome(item) for item in raw]


# -- in the worker process -------------------------------------------------------------------

_built: tuple[str, TrustedMetadataSet] | None = None


def _verify(context: Context, jobs: Sequence[Job]) -> list[tuple[object, ...]]:
    """Run in a worker: python-tuf's verdict on each job (as plain tuples, see :func:`_outcome`)."""
    trusted = _trusted(context)
    results: list[tuple[object, ...]] = []
    for role, parent, body in jobs:
        try:
            data = body if isinstance(body, bytes) else Path(body).read_bytes()
            loaded = trusted.update_delegated_targets(data, role, parent)
        except (exceptions.RepositoryError, OSError) as exc:
            results.append((role, _portable_chain(exc), None, False))
            continue
        delegates = loaded.delegations is not None and bool(
            loaded.delegations.roles or loaded.delegations.succinct_roles
        )
        results.append((role, None, loaded.expires, delegates))
    return results


def _trusted(context: Context) -> TrustedMetadataSet:
    """python-tuf's trusted set of ``context``, built once per token."""
    global _built  # one cache per worker process
    if _built is not None and _built[0] == context.token:
        return _built[1]
    _built = None
    trusted = TrustedMetadataSet(context.root, context.envelope_type)
    trusted.reference_time = context.reference_time
    trusted.update_timestamp(context.timestamp)
    trusted.update_snapshot(context.snapshot, trusted=True)  # as ngclient loads its cache
    trusted.update_targets(context.targets)
    versions = (trusted.root.version, trusted.timestamp.version, trusted.snapshot.version,
                trusted.targets.version)
    if versions != context.versions:
        raise RuntimeError(f"worker loaded versions {versions}, the probe {context.versions}")
    for role, parent, data in context.chain:
        trusted.update_delegated_targets(data, role, parent)
    _built = (context.token, trusted)
    return trusted


def _portable_chain(exc: BaseException) -> list[BaseException]:
    """``exc`` and its ``__cause__``s (up to 5), each one that pickles as it is, else as a
    ``RuntimeError`` with its text (the cause chain does not survive pickling: rebuilt by
    :func:`_outcome`)."""
    chain: list[BaseException] = []
    current: BaseException | None = exc
    while current is not None and len(chain) < 5:
        try:
            pickle.loads(pickle.dumps(current))  # noqa: S301 - our own bytes, just made
            chain.append(current)
        except Exception:  # noqa: BLE001 - anything that does not survive a round trip
            chain.append(RuntimeError(f"{type(current).__name__}: {current}"))
        current = current.__cause__
    return chain


def _outcome(item: tuple[object, ...]) -> Outcome:
    role, chain, expires, delegates = item
    assert isinstance(role, str)
    error: Exception | None = None
    if isinstance(chain, list) and chain:
        for inner, outer in zip(chain[1:], chain[:-1], strict=True):
            outer.__cause__ = inner
        error = chain[0] if isinstance(chain[0], Exception) else RuntimeError(str(chain[0]))
    assert expires is None or isinstance(expires, datetime)
    return Outcome(role, error, expires, bool(delegates))
