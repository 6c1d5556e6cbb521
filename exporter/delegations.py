"""Verify every delegated targets role of a repository, the way ngclient would load each one.

ngclient loads a delegated role only when a target lookup walks into it. A monitor wants the
verdict on all of them, so this sweep visits the whole delegation tree level by level. For each
role it does what ``Updater._load_targets`` does: try the cached copy, otherwise download the
version the snapshot names, and hand the bytes to python-tuf's trusted metadata set, which
makes the verdict (signatures against the delegator's keys and threshold, version against
snapshot, expiry). Downloads of one level run in parallel on the probe's fetcher; verification
stays sequential, in python-tuf.

This is the one module that touches ngclient internals (``Updater._trusted_set``): python-tuf
has no public API to load an arbitrary delegated role. The use is confined here and pinned by
tests.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from urllib.parse import quote

from tuf.api import exceptions
from tuf.api.metadata import Delegations, MetaFile, Targets
from tuf.ngclient import Updater
from tuf.ngclient._internal.trusted_metadata_set import TrustedMetadataSet

from exporter.fetcher import Fetcher
from exporter.fingerprints import KeyFingerprints

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Verdict:
    """python-tuf accepted these bytes for a role, under this snapshot entry and these keys."""

    sha256: str
    meta: MetaFile
    keys: str
    expires: datetime


#: Verdicts of the last sweep of one endpoint, by role name.
Memo = dict[str, Verdict]


@dataclass
class SweepResult:
    """Every delegated role visited; failures by role name with the exception raised."""

    visited: list[str] = field(default_factory=list)
    failures: dict[str, Exception] = field(default_factory=dict)
    #: True when the tree holds more roles than the configured maximum.
    truncated: bool = False


def sweep(
    updater: Updater,
    fetcher: Fetcher,
    metadata_url: str,
    cache_dir: Path,
    *,
    workers: int,
    max_roles: int,
    default_length: int,
    persist: Callable[[str, bytes], None],
    memo: Memo | None = None,
) -> SweepResult:
    """Load and verify every delegated role below ``targets``; never raises for one role.

    ``persist(role, data)`` stores a freshly verified role in the client cache.

    ``memo`` holds the verdicts of the last sweep of the same endpoint. A leaf role (one that
    delegates nothing) whose cached bytes, snapshot entry and delegating keys are all unchanged
    since python-tuf accepted them would be accepted again except for expiry: its verdict is
    reused after an expiry check, so a sweep of 4,096 hash bins where one changed verifies one.
    Roles that delegate further are always loaded into python-tuf, which verifies them.
    """
    trusted: TrustedMetadataSet = updater._trusted_set  # noqa: SLF001 - see module docstring
    result = SweepResult()
    level = [(child, "targets") for child in _children(trusted["targets"])]
    seen: set[str] = set()
    verified: list[str] = []
    keys = KeyFingerprints()
    with ThreadPoolExecutor(max_workers=max(1, workers), thread_name_prefix="delegation") as pool:
        while level:
            todo: list[tuple[str, str]] = []
            verified = []
            for role, parent in level:
                if role in seen:
                    continue
                if len(seen) >= max_roles:
                    result.truncated = True
                    break
                seen.add(role)
                result.visited.append(role)
                if trusted.contains(role, parent):
                    verified.append(role)
                    continue
                cached = _read_cached(cache_dir, role)
                if cached is not None and memo is not None and _reusable(
                    memo.get(role), trusted, role, parent, cached, keys
                ):
                    continue
                if cached is not None and _load(trusted, role, parent, cached):
                    _remember(memo, trusted, role, parent, cached, keys)
                    verified.append(role)
                    continue
                todo.append((role, parent))
            downloads = {
                role: pool.submit(
                    _download, trusted, fetcher, metadata_url, role, default_length
                )
                for role, _ in todo
            }
            # Three phases per level, never overlapping: parallel downloads, then python-tuf's
            # verification on this thread, then the cache writes. Overlapping CPU-bound
            # verification with busy download threads costs far more in GIL hand-offs than
            # it saves (measured: 13x slower signature checks).
            wait(downloads.values())
            verified_data: list[tuple[str, bytes]] = []
            for role, parent in todo:
                try:
                    data = downloads[role].result()
                    trusted.update_delegated_targets(data, role, parent)
                    _remember(memo, trusted, role, parent, data, keys)
                    verified.append(role)
                    verified_data.append((role, data))  # only verified bytes reach the cache
                except (exceptions.RepositoryError, exceptions.DownloadError, OSError) as exc:
                    result.failures[role] = exc
            for role, data in verified_data:
                try:
                    persist(role, data)
                except OSError as exc:  # a full disk costs a re-download, not the verdict
                    log.warning("cannot cache verified delegated metadata: %s", exc)
            level = [(child, role) for role in verified for child in _children(trusted[role])]
    return result


def _children(targets: object) -> list[str]:
    if not isinstance(targets, Targets):
        return []
    delegations: Delegations | None = targets.delegations
    if delegations is None:
        return []
    if delegations.roles is not None:
        return list(delegations.roles)
    if delegations.succinct_roles is not None:
        return list(delegations.succinct_roles.get_roles())
    return []


def _read_cached(cache_dir: Path, role: str) -> bytes | None:
    try:
        return (cache_dir / f"{quote(role, '')}.json").read_bytes()
    except OSError:
        return None


def _load(trusted: TrustedMetadataSet, role: str, parent: str, data: bytes) -> bool:
    try:
        trusted.update_delegated_targets(data, role, parent)
    except exceptions.RepositoryError:
        return False
    return True


def _fingerprint(
    keys: KeyFingerprints, trusted: TrustedMetadataSet, role: str, parent: str
) -> str:
    delegator = trusted[parent]
    return keys.of(delegator if isinstance(delegator, Targets) else None, role)


def _reusable(
    verdict: Verdict | None,
    trusted: TrustedMetadataSet,
    role: str,
    parent: str,
    data: bytes,
    keys: KeyFingerprints,
) -> bool:
    if verdict is None or verdict.expires <= datetime.now(UTC):
        return False
    meta = trusted.snapshot.meta.get(f"{role}.json")
    return (
        meta == verdict.meta
        and hashlib.sha256(data).hexdigest() == verdict.sha256
        and _fingerprint(keys, trusted, role, parent) == verdict.keys
    )


def _remember(
    memo: Memo | None,
    trusted: TrustedMetadataSet,
    role: str,
    parent: str,
    data: bytes,
    keys: KeyFingerprints,
) -> None:
    if memo is None:
        return
    loaded = trusted[role]
    meta = trusted.snapshot.meta.get(f"{role}.json")
    if not isinstance(loaded, Targets) or meta is None or _children(loaded):
        memo.pop(role, None)  # only leaves are ever reused
        return
    memo[role] = Verdict(
        hashlib.sha256(data).hexdigest(),
        meta,
        _fingerprint(keys, trusted, role, parent),
        loaded.expires,
    )


def _download(
    trusted: TrustedMetadataSet,
    fetcher: Fetcher,
    metadata_url: str,
    role: str,
    default_length: int,
) -> bytes:
    meta = trusted.snapshot.meta.get(f"{role}.json")
    if meta is None:
        raise exceptions.RepositoryError(f"Role {role} was delegated but is not part of snapshot")
    length = meta.length or default_length
    name = quote(role, "")
    if trusted.root.consistent_snapshot:
        url = f"{metadata_url}{meta.version}.{name}.json"
    else:
        url = f"{metadata_url}{name}.json"
    return fetcher.download_bytes(url, length)
