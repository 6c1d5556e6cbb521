"""What one probe learns about one endpoint of a repository: the verdict and the facts.

These are plain immutable values. The prober produces them; the history store, the metrics
collector, the event pipeline and the ``probe --json`` output consume them.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any, ClassVar, Literal, overload

from exporter.catalogue import CLIENT_NEW as CLIENT_NEW
from exporter.catalogue import CLIENT_RETURNING as CLIENT_RETURNING
from exporter.catalogue import bootstrap_client_name as bootstrap_client_name

#: Precision of :func:`rfc3339` (the ``timespec`` of :meth:`datetime.isoformat`).
TimeSpec = Literal["auto", "seconds", "milliseconds", "microseconds"]


class Reason(StrEnum):
    """Why a probe failed. A fixed set: it becomes the ``reason`` label."""

    EXPIRED = "expired"
    BAD_SIGNATURE = "bad_signature"
    ROLLBACK = "rollback"
    LENGTH_OR_HASH_MISMATCH = "length_or_hash_mismatch"
    MISSING = "missing"
    DOWNLOAD_ERROR = "download_error"
    TIMEOUT = "timeout"
    INVALID_METADATA = "invalid_metadata"
    TARGET_NOT_FOUND = "target_not_found"
    OTHER = "other"
    #: A fault of this host, not of the repository (disk full, no descriptors left, out of
    #: memory, a bug of ours): the probe reached no verdict. See :class:`ErrorCause`.
    EXPORTER_ERROR = "exporter_error"
    #: An external client (issue 17) refused the repository: a protocol command exited 1.
    CLIENT_REJECTED = "client_rejected"
    #: An external client did not finish within its ``timeout``; its process group was killed.
    CLIENT_TIMEOUT = "client_timeout"
    #: An external client could not be started, exited with a status other than 0 and 1, or
    #: was killed by a signal: the program failed, no verdict of it on the repository.
    CLIENT_ERROR = "client_error"


class ErrorCause(StrEnum):
    """Which fault of this host stopped the exporter's own work. A fixed set: it becomes the
    ``cause`` label of ``tuf_exporter_errors_total``. Decided by :mod:`exporter.probe.classify`."""

    #: Writing below ``state_dir`` failed: ENOSPC, EDQUOT, EROFS, EFBIG (``RLIMIT_FSIZE``), EIO.
    DISK = "disk"
    #: No file descriptor left: EMFILE, ENFILE ("Too many open files").
    DESCRIPTORS = "descriptors"
    #: Out of memory: MemoryError, ENOMEM, ENOBUFS.
    MEMORY = "memory"
    #: The history store failed to record a probe.
    HISTORY = "history"
    #: The event spool failed to take a probe's events.
    SPOOL = "spool"
    #: A configured external client program could not be started (missing, not executable):
    #: the exporter host's setup, never the repository (issue 17).
    CLIENT = "client"
    #: A worker process verifying a delegation sweep died, or the workers could not start.
    WORKERS = "workers"
    #: Anything else raised by the exporter's own code (a bug of ours).
    INTERNAL = "internal"


class StoreError(RuntimeError):
    """Base of the errors of the exporter's own stores (the history, the event spool) and
    worker processes (the delegation sweep's): a fault of this host, never of a repository.
    ``cause`` is the :class:`ErrorCause` that :func:`exporter.probe.classify.exporter_fault`
    counts it as; each store's error sets its own, so the classifier needs no import of the
    stores."""

    cause: ClassVar[ErrorCause] = ErrorCause.INTERNAL


class FailedRole(StrEnum):
    """The role a failure is attributed to; delegated role names are folded into ``delegated``."""

    ROOT = "root"
    TIMESTAMP = "timestamp"
    SNAPSHOT = "snapshot"
    TARGETS = "targets"
    DELEGATED = "delegated"
    TARGET = "target"


@overload
def rfc3339(moment: datetime, timespec: TimeSpec = "auto") -> str: ...
@overload
def rfc3339(moment: None, timespec: TimeSpec = "auto") -> None: ...
def rfc3339(moment: datetime | None, timespec: TimeSpec = "auto") -> str | None:
    """The one RFC 3339 formatter: an aware datetime in UTC with a ``Z`` suffix, None for None.

    ``timespec`` as :meth:`datetime.isoformat`: ``"auto"`` gives ``2027-01-01T00:00:00Z``
    (microseconds only when there are some), ``"microseconds"`` the fixed width of event
    documents, ``2027-01-01T00:00:00.000000Z``. ValueError for a naive datetime (its zone
    would be a guess).
    """
    if moment is None:
        return None
    if moment.tzinfo is None or moment.utcoffset() is None:
        raise ValueError("times must be timezone-aware")
    text = moment.astimezone(UTC).isoformat(timespec=timespec)
    return text.replace("+00:00", "Z")


@dataclass(frozen=True)
class RoleKeys:
    """The keys and threshold a delegator sets for one role."""

    keyids: tuple[str, ...]
    threshold: int


@dataclass(frozen=True)
class RoleFacts:
    """What the inspector read from one metadata file (fetched or cached)."""

    name: str
    version: int
    expires: datetime
    size_bytes: int
    sha256: str
    #: Keyids whose signatures verify with keys the delegator authorizes for this role.
    signed_by: tuple[str, ...]
    #: Keyids of signatures by keys the delegator does not authorize for this role (for root:
    #: by keys neither the root itself nor the previous root version authorizes for root).
    unknown_signers: tuple[str, ...]
    threshold: int
    #: For root only: keys and threshold of every top-level role.
    role_keys: Mapping[str, RoleKeys] | None = None
    #: The role that delegates to this one ("root" for top-level roles).
    delegator: str = "root"
    #: For root only, the second half of python-tuf's rule (``Root.get_root_verification_result``,
    #: TUF specification 5.3.4): keyids whose signatures verify with the root keys of the previous
    #: root version. None when no previous version is known (version 1, the bootstrap root).
    #: ``signed_by`` and ``threshold`` are always the root's own keys and threshold.
    previous_root_signed_by: tuple[str, ...] | None = None
    #: For root only: the root threshold of the previous root version (None as above).
    previous_root_threshold: int | None = None
    #: For the trusted root only: the facts of the newer root python-tuf refused in this probe
    #: (its ``previous_root_*`` are counted against the trusted root), None when there was none.
    rejected_root: RoleFacts | None = None

    @property
    def signatures_valid(self) -> int:
        """Number of valid signatures by authorized keys."""
        return len(self.signed_by)

    @property
    def previous_root_signatures_valid(self) -> int | None:
        """For root: valid signatures by root keys of the previous root version (None: unknown)."""
        if self.previous_root_signed_by is None:
            return None
        return len(self.previous_root_signed_by)

    def to_json(self) -> dict[str, Any]:
        """JSON-ready facts, times as RFC 3339 UTC."""
        out: dict[str, Any] = {
            "version": self.version,
            "expires": rfc3339(self.expires),
            "signatures_valid": self.signatures_valid,
            "threshold": self.threshold,
            "size_bytes": self.size_bytes,
            "sha256": self.sha256,
            "signed_by": list(self.signed_by),
            "unknown_signers": list(self.unknown_signers),
        }
        if self.name == "root":
            out["previous_root_signatures_valid"] = self.previous_root_signatures_valid
            out["previous_root_threshold"] = self.previous_root_threshold
            out["previous_root_signed_by"] = (
                None if self.previous_root_signed_by is None else list(self.previous_root_signed_by)
            )
            out["rejected_root"] = (
                None if self.rejected_root is None else self.rejected_root.to_json()
            )
        if self.role_keys is not None:
            out["role_keys"] = {
                role: {"keyids": list(keys.keyids), "threshold": keys.threshold}
                for role, keys in sorted(self.role_keys.items())
            }
        return out


@dataclass(frozen=True)
class DelegationSummary:
    """The delegated targets roles of an endpoint, summarized (names stay out of labels)."""

    count: int = 0
    failing: int = 0
    min_expires: datetime | None = None
    #: The tree is larger than ``limits.max_delegations``: roles past it were not verified.
    truncated: bool = False
    #: Names of failing roles with their reasons, for logs and JSON (never labels); a role that
    #: fails under a further delegator of it only as ``"<role> (via <delegator>)"``.
    failures: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class TargetResult:
    """The download and verification of one canary target."""

    path: str
    success: bool
    reason: Reason | None = None
    message: str | None = None
    length: int | None = None
    duration_seconds: float = 0.0
    #: The role a failure is attributed to: ``target`` (the download or its hashes), or the
    #: metadata role python-tuf failed on while looking the target up (``delegated`` for a
    #: delegated role, a top-level role by name). None on success.
    role: FailedRole | None = None


@dataclass(frozen=True)
class Failure:
    """Why a refresh or a canary failed, as a value: python-tuf's reason, the role the failure
    is attributed to and python-tuf's words (``message``, shown to people, never parsed)."""

    reason: Reason
    role: FailedRole | None
    message: str


@dataclass(frozen=True)
class RequestRecord:
    """One HTTP request a probe made, as the fetcher saw it."""

    url: str
    #: What was fetched: a role name, or "target" for target files.
    role: str
    status: int | None
    bytes: int
    started: float  #: monotonic seconds
    duration_seconds: float
    server_date: datetime | None = None
    error: str | None = None
    retries: int = 0
    #: True: the body came from the fetch memo of a view pass (another view of the same pass
    #: downloaded it, :class:`exporter.probe.fetcher.FetchMemo`); no HTTP request was made.
    memo: bool = False


@dataclass(frozen=True)
class PhaseTiming:
    """How long one phase took and how much of that was spent in HTTP requests."""

    phase: str
    seconds: float
    network_seconds: float


@dataclass(frozen=True)
class ProbeResult:
    """The verdict of python-tuf for one endpoint, and what the inspector saw there."""

    repository: str
    endpoint: str
    success: bool
    started_at: datetime
    duration_seconds: float
    reason: Reason | None = None
    role: FailedRole | None = None
    message: str | None = None
    #: Top-level roles by name (root, timestamp, snapshot, targets), what could be read.
    roles: Mapping[str, RoleFacts] = field(default_factory=dict)
    #: Delegated targets roles by name.
    delegated: Mapping[str, RoleFacts] = field(default_factory=dict)
    delegations: DelegationSummary = field(default_factory=DelegationSummary)
    targets: tuple[TargetResult, ...] = ()
    phases: tuple[PhaseTiming, ...] = ()
    requests: tuple[RequestRecord, ...] = ()
    #: True when the timestamp was byte-identical to the last verified one and the previous
    #: verdict was reused (nothing expired since, same configuration; the canaries of the
    #: current configuration downloaded again). Everything else equals a full refresh's.
    reused_verdict: bool = False
    #: Newest ``Date`` header the endpoint sent, for clock-skew checks.
    server_date: datetime | None = None
    #: For ``reason == EXPORTER_ERROR`` only: which fault of this host stopped the probe.
    cause: ErrorCause | None = None
    #: The client view this verdict belongs to (``client`` label): :data:`CLIENT_RETURNING`,
    #: :data:`CLIENT_NEW`, :func:`bootstrap_client_name`, or a configured external client's name.
    client: str = CLIENT_RETURNING

    @property
    def finished_at(self) -> float:
        """Unix time when the probe finished."""
        return self.started_at.timestamp() + self.duration_seconds

    @property
    def target_download_seconds(self) -> float:
        """Total time spent downloading canary targets."""
        return sum(t.duration_seconds for t in self.targets)

    def to_json(self) -> dict[str, Any]:
        """The ``probe --json`` shape of one endpoint."""
        return {
            "name": self.endpoint,
            "client": self.client,
            "success": self.success,
            "reason": None if self.reason is None else str(self.reason),
            "role": None if self.role is None else str(self.role),
            "cause": None if self.cause is None else str(self.cause),
            "message": self.message,
            "started_at": rfc3339(self.started_at),
            "duration_seconds": round(self.duration_seconds, 6),
            "reused_verdict": self.reused_verdict,
            "roles": {name: facts.to_json() for name, facts in self.roles.items()},
            "delegations": {
                "count": self.delegations.count,
                "failing": self.delegations.failing,
                "min_expires": rfc3339(self.delegations.min_expires),
                "failures": dict(self.delegations.failures),
                "roles": {name: facts.to_json() for name, facts in sorted(self.delegated.items())},
            },
            "targets": [
                {
                    "path": t.path,
                    "success": t.success,
                    "reason": None if t.reason is None else str(t.reason),
                    "message": t.message,
                    "length": t.length,
                    "duration_seconds": round(t.duration_seconds, 6),
                }
                for t in self.targets
            ],
            "phases": {
                p.phase: {
                    "seconds": round(p.seconds, 6),
                    "network_seconds": round(p.network_seconds, 6),
                }
                for p in self.phases
            },
            "requests": len(self.requests),
            "server_date": rfc3339(self.server_date),
        }
