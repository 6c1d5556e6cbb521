"""Verify every delegated targets role of a repository, the way ngclient would load each one.

ngclient loads a delegated role only when a target lookup walks into it. A monitor wants the
verdict on all of them, so this sweep visits the whole delegation tree level by level. For each
role it does what ``Updater._load_targets`` does: try the cached copy, otherwise download the
version the snapshot names, and hand the bytes to python-tuf's trusted metadata set, which
makes the verdict (signatures against the delegator's keys and threshold, version against
snapshot, expiry). Downloads of one level run in parallel on the probe's fetcher; verification
stays sequential, in python-tuf.

A warm sweep reuses the verdicts of the last one (:data:`Memo`) for leaf roles whose snapshot
entry, delegating keys and cached file are all unchanged: those are not even read from disk,
only checked for expiry against python-tuf's reference time (see :func:`sweep`).

This is the one module that touches ngclient internals (``Updater._trusted_set``): python-tuf
has no public API to load an arbitrary delegated role. The use is confined here and pinned by
tests.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from urllib.parse import quote

from tuf.api import exceptions
from tuf.api.metadata import Delegations, MetaFile, Targets
from tuf.ngclient import Updater
from tuf.ngclient._internal.trusted_metadata_set import TrustedMetadataSet

from exporter.fetcher import Fetcher
from exporter.fingerprints import KeyFingerprints

log = logging.getLogger(__name__)


#: What identifies one version of a cached file without reading it: inode, size, mtime (ns).
#: Every write of the cache replaces the file (a new inode), so a rewrite changes it.
FileIdentity = tuple[int, int, int]


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


@dataclass
class SweepResult:
    """Every delegated role visited; failures by role name with the exception raised."""

    visited: list[str] = field(default_factory=list)
    failures: dict[str, Exception] = field(default_factory=dict)
    #: True when the tree holds more roles than the configured maximum.
    truncated: bool = False
    #: Role -> the identity of the cache file that holds the bytes python-tuf accepted (or whose
    #: verdict was reused) in this sweep, and those bytes when the sweep had them in memory
    #: (read from the file, or written to it by ``persist``; None for a reused verdict). For
    #: the inspector: it need not stat these files, nor read the ones given with their bytes.
    cached: dict[str, tuple[bytes | None, FileIdentity]] = field(default_factory=dict)


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

    ``persist(role, data)`` stores a freshly verified role in ``cache_dir`` (the client cache,
    as ``<quoted role>.json``, replacing the file).

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
    failing any condition is loaded into python-tuf as on a cold sweep. Roles that delegate
    further are always loaded, so their children are verified against keys python-tuf holds.
    """
    trusted: TrustedMetadataSet = updater._trusted_set  # noqa: SLF001 - see module docstring
    result = SweepResult()
    level = [(child, "targets") for child in _children(trusted["targets"])]
    seen: set[str] = set()
    verified: list[str] = []
    keys = KeyFingerprints()
    cached_files = _listing(cache_dir)
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
                entry = cached_files.get(_file_name(role))
                if entry is None:
                    todo.append((role, parent))
                    continue
                if memo is not None:
                    reused = _reusable(memo.get(role), trusted, role, parent, entry, keys)
                    if reused is not None:
                        result.cached[role] = (None, reused)
                        continue
                cached = _read_cached(cache_dir, role)
                if cached is not None and _load(trusted, role, parent, cached[0]):
                    _remember(memo, trusted, role, parent, cached[1], keys)
                    result.cached[role] = cached
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
            verified_data: list[tuple[str, str, bytes]] = []
            for role, parent in todo:
                try:
                    data = downloads[role].result()
                    trusted.update_delegated_targets(data, role, parent)
                    verified.append(role)
                    verified_data.append((role, parent, data))  # only verified bytes are cached
                except (exceptions.RepositoryError, exceptions.DownloadError, OSError) as exc:
                    result.failures[role] = exc
                    if memo is not None:
                        memo.pop(role, None)
            for role, parent, data in verified_data:
                try:
                    persist(role, data)
                except OSError as exc:  # a full disk costs a re-download, not the verdict
                    log.warning("cannot cache verified delegated metadata: %s", exc)
                    if memo is not None:
                        memo.pop(role, None)  # the cache may hold an older file: no reuse
                    continue
                identity = _stat(cache_dir, role)
                _remember(memo, trusted, role, parent, identity, keys)
                if identity is not None:
                    result.cached[role] = (data, identity)
            level = [(child, role) for role in verified for child in _children(trusted[role])]
    if memo is not None:
        for gone in memo.keys() - seen:  # no longer delegated (or past max_roles)
            del memo[gone]
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


def _file_name(role: str) -> str:
    return f"{quote(role, '')}.json"


def _listing(cache_dir: Path) -> dict[str, os.DirEntry[str]]:
    """The cached files by name, in one directory read (no per-role ``open`` of absent files)."""
    try:
        with os.scandir(cache_dir) as entries:
            return {entry.name: entry for entry in entries}
    except OSError:
        return {}


def _identity(st: os.stat_result) -> FileIdentity:
    return (st.st_ino, st.st_size, st.st_mtime_ns)


def _stat(cache_dir: Path, role: str) -> FileIdentity | None:
    try:
        return _identity((cache_dir / _file_name(role)).stat())
    except OSError:
        return None


def _read_cached(cache_dir: Path, role: str) -> tuple[bytes, FileIdentity] | None:
    """The cached bytes of ``role`` and the identity of the file they were read from."""
    try:
        with open(cache_dir / _file_name(role), "rb") as handle:
            identity = _identity(os.fstat(handle.fileno()))
            return handle.read(), identity
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
    entry: os.DirEntry[str],
    keys: KeyFingerprints,
) -> FileIdentity | None:
    """The identity of the cached file of ``role`` if python-tuf's verdict on it stands
    unchanged (see :func:`sweep`), else None."""
    if verdict is None or verdict.expires <= trusted.reference_time:
        return None
    try:
        identity = _identity(entry.stat())
    except OSError:
        return None
    if (
        identity == verdict.file
        and trusted.snapshot.meta.get(f"{role}.json") == verdict.meta
        and _fingerprint(keys, trusted, role, parent) == verdict.keys
    ):
        return identity
    return None


def _remember(
    memo: Memo | None,
    trusted: TrustedMetadataSet,
    role: str,
    parent: str,
    identity: FileIdentity | None,
    keys: KeyFingerprints,
) -> None:
    """Record python-tuf's acceptance of ``role``, cached as the file with ``identity``
    (None: not cached, nothing to reuse)."""
    if memo is None:
        return
    loaded = trusted[role]
    meta = trusted.snapshot.meta.get(f"{role}.json")
    if identity is None or not isinstance(loaded, Targets) or meta is None or _children(loaded):
        memo.pop(role, None)  # only leaves are ever reused
        return
    memo[role] = Verdict(meta, _fingerprint(keys, trusted, role, parent), loaded.expires, identity)


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
