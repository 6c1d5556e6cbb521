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

from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import quote

from tuf.api import exceptions
from tuf.api.metadata import Delegations, Targets
from tuf.ngclient import Updater
from tuf.ngclient._internal.trusted_metadata_set import TrustedMetadataSet

from exporter.fetcher import Fetcher


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
) -> SweepResult:
    """Load and verify every delegated role below ``targets``; never raises for one role.

    ``persist(role, data)`` stores a freshly verified role in the client cache.
    """
    trusted: TrustedMetadataSet = updater._trusted_set  # noqa: SLF001 - see module docstring
    result = SweepResult()
    level = [(child, "targets") for child in _children(trusted["targets"])]
    seen: set[str] = set()
    verified: list[str] = []
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
                if trusted.contains(role, parent) or _load_cached(trusted, cache_dir, role, parent):
                    verified.append(role)
                    continue
                todo.append((role, parent))
            downloads = {
                role: pool.submit(
                    _download, trusted, fetcher, metadata_url, role, default_length
                )
                for role, _ in todo
            }
            for role, parent in todo:
                try:
                    data = downloads[role].result()
                    trusted.update_delegated_targets(data, role, parent)
                    persist(role, data)
                    verified.append(role)
                except (exceptions.RepositoryError, exceptions.DownloadError, OSError) as exc:
                    result.failures[role] = exc
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


def _load_cached(trusted: TrustedMetadataSet, cache_dir: Path, role: str, parent: str) -> bool:
    path = cache_dir / f"{quote(role, '')}.json"
    try:
        data = path.read_bytes()
        trusted.update_delegated_targets(data, role, parent)
    except (OSError, exceptions.RepositoryError):
        return False
    return True


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
