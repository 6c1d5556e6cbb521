"""Turn python-tuf's exceptions into the prober's fixed failure reasons and roles.

python-tuf raises one exception type per kind of failure, but does not say which file it was
working on. The role comes from what the probe fetched last (ngclient verifies a file right after
fetching it), except where python-tuf's message names the role itself ("Final root.json is
expired" is raised while loading timestamp).

Faults of this host are told apart from the repository's here, and only here
(:func:`host_fault`): an ``OSError`` whose errno says the disk is full or read-only, the
process or system is out of descriptors, or memory is short, anywhere in the exception's chain
(``raise ... from``, or raised while handling), is ours, whatever wraps it: EMFILE while
requests opens a socket arrives as a ``DownloadError`` caused by it. Errnos a peer can cause
(ECONNREFUSED, ECONNRESET, ETIMEDOUT, EHOSTUNREACH, ...) are not in the set, so a refused or
reset connection stays ``download_error``.
"""

from __future__ import annotations

import errno
import json
import sqlite3
from datetime import datetime

from securesystemslib.exceptions import FormatError
from tuf.api import exceptions

from exporter.catalogue import TOP_LEVEL_ROLES
from exporter.probe.fetcher import DeadlineExceeded
from exporter.probe.results import ErrorCause, FailedRole, ProbeResult, Reason, StoreError

#: errno -> the fault of this host it means. Only errnos a remote peer cannot cause.
_HOST_ERRNOS: dict[int, ErrorCause] = {
    errno.ENOSPC: ErrorCause.DISK,
    errno.EDQUOT: ErrorCause.DISK,
    errno.EROFS: ErrorCause.DISK,
    errno.EFBIG: ErrorCause.DISK,  # RLIMIT_FSIZE, or a file system's own file size limit
    errno.EIO: ErrorCause.DISK,
    errno.EMFILE: ErrorCause.DESCRIPTORS,
    errno.ENFILE: ErrorCause.DESCRIPTORS,
    errno.ENOMEM: ErrorCause.MEMORY,
    errno.ENOBUFS: ErrorCause.MEMORY,
}

#: SQLite's primary result code -> the fault of this host it means (``sqlite3.Error`` carries
#: no errno). Corruption (SQLITE_CORRUPT, SQLITE_NOTADB) is not in the set: the stores handle it.
_HOST_SQLITE_CODES: dict[int, ErrorCause] = {
    sqlite3.SQLITE_FULL: ErrorCause.DISK,
    sqlite3.SQLITE_IOERR: ErrorCause.DISK,
    sqlite3.SQLITE_READONLY: ErrorCause.DISK,
    sqlite3.SQLITE_NOMEM: ErrorCause.MEMORY,
}


def role_of(fetched: str | None) -> FailedRole | None:
    """The failure role for what the fetcher classified a URL as."""
    if fetched is None:
        return None
    if fetched in TOP_LEVEL_ROLES:
        return FailedRole(fetched)
    if fetched == "target":
        return FailedRole.TARGET
    return FailedRole.DELEGATED


def host_fault(exc: BaseException) -> ErrorCause | None:
    """The fault of this host behind ``exc``, or None when nothing in its chain is one.

    Looks through ``__cause__``/``__context__`` (and urllib3's ``reason``) for a
    ``MemoryError``, an ``OSError`` with an errno of ``_HOST_ERRNOS`` or a ``sqlite3.Error``
    with a result code of ``_HOST_SQLITE_CODES``.
    """
    for current in _chain(exc):
        if isinstance(current, MemoryError):
            return ErrorCause.MEMORY
        if isinstance(current, OSError) and current.errno in _HOST_ERRNOS:
            return _HOST_ERRNOS[current.errno]
        if isinstance(current, sqlite3.Error):
            code = getattr(current, "sqlite_errorcode", None)
            if code is not None and code & 0xFF in _HOST_SQLITE_CODES:
                return _HOST_SQLITE_CODES[code & 0xFF]
    return None


def exporter_fault(exc: BaseException) -> ErrorCause:
    """The cause to count for an exception raised by the exporter's own work: the one
    classifier of the exporter's faults, for ``tuf_exporter_errors_total{cause}`` and
    ``tuf_exporter_thread_errors_total{thread, cause}`` alike.

    The store whose error is in the chain (:class:`~exporter.probe.results.StoreError`'s ``cause``:
    ``history``, ``spool``), else a fault of this host (:func:`host_fault`), else
    ``internal``: an exception our code did not expect is a bug of ours, never the
    repository's.
    """
    for current in _chain(exc):
        if isinstance(current, StoreError):
            return current.cause
    return host_fault(exc) or ErrorCause.INTERNAL


def exporter_error_result(
    repository: str,
    endpoint: str,
    started_at: datetime,
    duration_seconds: float,
    exc: BaseException,
    role: FailedRole | None = None,
) -> ProbeResult:
    """The result of a probe that a fault of this host (or a bug of ours) cut short.

    ``success`` is False (no verdict was reached), ``reason`` is ``exporter_error`` and
    ``cause`` says which fault; ``role`` is what the probe was working on, where known.
    The consumers keep such a result out of the verdict: see :class:`ProbeStore.record`.
    """
    return ProbeResult(
        repository, endpoint, False, started_at, duration_seconds,
        reason=Reason.EXPORTER_ERROR, role=role, message=describe(exc),
        cause=exporter_fault(exc),
    )


def reason_of(exc: BaseException) -> Reason:
    """The fixed failure reason for an exception raised by ngclient or our fetcher.

    ``exporter_error`` when a fault of this host is behind it (:func:`host_fault`), checked
    first: a ``DownloadError`` caused by EMFILE is ours, not a download error.
    """
    if host_fault(exc) is not None:
        return Reason.EXPORTER_ERROR
    if isinstance(exc, exceptions.ExpiredMetadataError):
        return Reason.EXPIRED
    if isinstance(exc, exceptions.UnsignedMetadataError):
        return Reason.BAD_SIGNATURE
    if isinstance(exc, exceptions.BadVersionNumberError):
        return Reason.ROLLBACK
    if isinstance(
        exc, exceptions.LengthOrHashMismatchError | exceptions.DownloadLengthMismatchError
    ):
        return Reason.LENGTH_OR_HASH_MISMATCH
    if isinstance(exc, exceptions.SlowRetrievalError):
        return Reason.TIMEOUT
    if isinstance(exc, exceptions.DownloadHTTPError):
        return Reason.MISSING if exc.status_code == 404 else Reason.DOWNLOAD_ERROR
    if isinstance(exc, exceptions.DownloadError):
        return Reason.TIMEOUT if _caused_by(exc, DeadlineExceeded) else Reason.DOWNLOAD_ERROR
    if isinstance(exc, TimeoutError):
        return Reason.TIMEOUT
    if isinstance(
        exc,
        exceptions.RepositoryError
        | FormatError
        | json.JSONDecodeError
        | RecursionError
        | UnicodeDecodeError,
    ):
        return Reason.INVALID_METADATA
    return Reason.OTHER


#: python-tuf's expiry messages (``TrustedMetadataSet``) -> the role that expired. python-tuf
#: checks a role's expiry when the *next* role is loaded (an expired timestamp is found while
#: the snapshot is being updated), so the last request says the wrong role; the message is right.
_EXPIRED = {
    "Final root.json is expired": FailedRole.ROOT,
    "timestamp.json is expired": FailedRole.TIMESTAMP,
    "snapshot.json is expired": FailedRole.SNAPSHOT,
    "New targets is expired": FailedRole.TARGETS,
}


def role_from_message(exc: BaseException, fallback: FailedRole | None) -> FailedRole | None:
    """The role python-tuf's message names, where it names one; else ``fallback``."""
    if isinstance(exc, exceptions.ExpiredMetadataError):
        message = str(exc)
        if message in _EXPIRED:
            return _EXPIRED[message]
        if message.startswith("New ") and message.endswith(" is expired"):
            return FailedRole.DELEGATED  # "New <delegated role> is expired"
        if "root.json" in message:
            return FailedRole.ROOT
    return fallback


def _chain(exc: BaseException, limit: int = 10) -> list[BaseException]:
    """``exc`` and what caused it (``__cause__``, ``__context__``, urllib3's ``reason``)."""
    chain: list[BaseException] = []
    current: BaseException | None = exc
    while current is not None and len(chain) < limit and current not in chain:
        chain.append(current)
        following = current.__cause__ or current.__context__
        reason = getattr(current, "reason", None)
        if following is None and isinstance(reason, BaseException):
            following = reason
        current = following
    return chain


def _caused_by(exc: BaseException, kind: type[BaseException]) -> bool:
    return any(isinstance(current, kind) for current in _chain(exc))


def describe(exc: BaseException) -> str:
    """The one-line message of an exception, ``Type: text``, with its cause where that adds
    something (``(caused by Type: text)``), at most 2,000 characters. The one way the
    exporter words an exception (probes, signer probes, logs)."""
    text = f"{type(exc).__name__}: {exc}"
    cause = exc.__cause__
    if cause is not None and str(cause) and str(cause) not in text:
        text += f" (caused by {type(cause).__name__}: {cause})"
    return text[:2000]
