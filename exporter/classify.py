"""Turn python-tuf's exceptions into the prober's fixed failure reasons and roles.

python-tuf raises one exception type per kind of failure, but does not say which file it was
working on. The role comes from what the probe fetched last (ngclient verifies a file right after
fetching it), except where python-tuf's message names the role itself ("Final root.json is
expired" is raised while loading timestamp).
"""

from __future__ import annotations

import json

from securesystemslib.exceptions import FormatError
from tuf.api import exceptions

from exporter.fetcher import DeadlineExceeded
from exporter.results import FailedRole, Reason

_TOP_LEVEL = {"root", "timestamp", "snapshot", "targets"}


def role_of(fetched: str | None) -> FailedRole | None:
    """The failure role for what the fetcher classified a URL as."""
    if fetched is None:
        return None
    if fetched in _TOP_LEVEL:
        return FailedRole(fetched)
    if fetched == "target":
        return FailedRole.TARGET
    return FailedRole.DELEGATED


def reason_of(exc: BaseException) -> Reason:
    """The fixed failure reason for an exception raised by ngclient or our fetcher."""
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


def _caused_by(exc: BaseException, kind: type[BaseException]) -> bool:
    seen = 0
    current: BaseException | None = exc
    while current is not None and seen < 10:
        if isinstance(current, kind):
            return True
        current = current.__cause__ or current.__context__
        seen += 1
    return False


def describe(exc: BaseException) -> str:
    """A one-line message for an exception, with its cause where that adds something."""
    text = f"{type(exc).__name__}: {exc}"
    cause = exc.__cause__
    if cause is not None and str(cause) and str(cause) not in text:
        text += f" (caused by {type(cause).__name__}: {cause})"
    return text[:2000]
