"""The prober's view of an endpoint's client cache (the ``metadata_dir`` python-tuf's ngclient
writes): which file of each role it holds and as which version python-tuf accepted it, the roles a
snapshot names, the roots python-tuf accepted, and moving a verified delegated role into it.

Nothing here decides a verdict; the files are python-tuf's. A fault of this host reading the cache
(:func:`~exporter.probe.classify.host_fault`) is raised, never taken for an empty cache.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote, unquote

from exporter.probe.classify import host_fault
from exporter.probe.delegations import Swept
from exporter.probe.inspector import CachedFile, FileIdentity, file_identity


@dataclass(frozen=True)
class _CachedFile:
    """A file of the client cache: the version python-tuf accepted, and the file as it was."""

    version: int
    identity: FileIdentity


def _persist(metadata_dir: Path, role: str, source: Path) -> None:
    """Move a verified delegated role, downloaded to ``source``, into the client cache.

    An atomic replace, as ngclient writes its cache; ``source`` is in the sweep's spool
    directory, on the same file system (a sibling of ``metadata_dir``), so it is a rename:
    the bytes are not written twice.
    """
    source.replace(metadata_dir / f"{quote(role, '')}.json")


def _cache_files(metadata_dir: Path, swept: Mapping[str, Swept]) -> dict[str, CachedFile]:
    """Role name -> file of every ``*.json`` file of the client cache, in one directory read.

    ``swept`` is what the delegation sweep of this probe knows of the cache
    (``SweepResult.cached``): the identity of the file of each role it loaded, wrote or
    reused, the bytes it holds when the sweep had them, and the delegating keys python-tuf
    accepted them under (the inspector then need not count their signatures again, see
    ``CachedFile.accepted``). The sweep checked that identity in
    this probe, and nothing rewrites those files after it (a probe of an endpoint never runs
    twice at once), so they are not stat'ed again.
    """
    found: dict[str, CachedFile] = {}
    try:
        with os.scandir(metadata_dir) as entries:
            for entry in entries:
                file = entry.name
                if not file.endswith(".json"):
                    continue
                # a file name is its role name quoted (no escape can end in ".json")
                name = unquote(file[:-5]) if "%" in file else file[:-5]
                known = swept.get(name)
                if known is not None:
                    found[name] = CachedFile(entry.path, known.identity, known.data, known.accepted)
                    continue
                try:
                    identity = file_identity(entry.stat())
                except OSError as exc:
                    if host_fault(exc) is not None:
                        raise
                    continue
                found[name] = CachedFile(entry.path, identity)
    except OSError as exc:
        if host_fault(exc) is not None:
            raise  # no descriptor for the directory: facts missing for our own fault
        return {}
    return found


def _cached_file(path: Path, version: int) -> _CachedFile:
    return _CachedFile(version, file_identity(path.stat()))


def _meta_versions(body: bytes) -> dict[str, int] | None:
    """Role -> version as a snapshot's ``meta`` names them, read as plain JSON, unverified."""
    try:
        meta = json.loads(body)["signed"]["meta"]
        return {
            name.removesuffix(".json"): info["version"]
            for name, info in meta.items()
            if type(info.get("version")) is int
        }
    except (ValueError, TypeError, KeyError, AttributeError, RecursionError):
        return None


def _root_history(metadata_dir: Path) -> dict[int, CachedFile]:
    """Root version -> file of every root python-tuf accepted into this cache.

    python-tuf's ngclient keeps each root it accepts (and the bootstrap root) as
    ``root_history/<version>.root.json``; ``root.json`` links to the trusted one.
    """
    found: dict[int, CachedFile] = {}
    try:
        with os.scandir(metadata_dir / "root_history") as entries:
            for entry in entries:
                head, _, rest = entry.name.partition(".")
                if rest != "root.json" or not head.isdigit():
                    continue
                try:
                    found[int(head)] = CachedFile(entry.path, file_identity(entry.stat()))
                except OSError:
                    continue
    except OSError:
        return {}
    return found
