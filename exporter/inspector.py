"""Facts about metadata files, read with ``tuf.api.metadata``.

The inspector never decides whether a client can update: python-tuf's ngclient does that. It
reports what the bytes say (version, expiry, size, content hash, which authorized keys signed
validly against the delegator's threshold, signatures by keys the delegator does not know), and
it reads whatever it can even when the verdict failed.

Results are cached per content hash and delegator key set, so an unchanged 12 MB targets file
is never parsed twice.
"""

from __future__ import annotations

import hashlib
import threading
from collections import OrderedDict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, TypeVar

from tuf.api.metadata import (
    Delegations,
    Metadata,
    Root,
    Targets,
)

from exporter.results import RoleFacts, RoleKeys

TOP_LEVEL = ("root", "timestamp", "snapshot", "targets")


@dataclass(frozen=True)
class Inspected:
    """What the inspector read from the files of one endpoint."""

    roles: Mapping[str, RoleFacts]
    delegated: Mapping[str, RoleFacts]
    #: Delegated role names the targets tree declares (whether or not their file was read).
    declared_delegations: tuple[str, ...]


@dataclass(frozen=True)
class _Parsed:
    metadata: Metadata[Any]
    size: int
    sha256: str


class Inspector:
    """Reads facts from metadata bytes; thread safe; caches by content hash (LRU)."""

    def __init__(self, max_entries: int = 8192) -> None:
        self._max = max_entries
        self._lock = threading.Lock()
        self._parsed: OrderedDict[str, _Parsed | None] = OrderedDict()
        self._facts: OrderedDict[tuple[str, str, str], RoleFacts] = OrderedDict()

    def inspect(self, files: Mapping[str, bytes]) -> Inspected:
        """Facts for every readable file in ``files`` (role name -> bytes).

        ``files`` holds the newest root as ``root``, the other top-level roles by name, and
        delegated targets roles by their role names. Signatures are checked against the keys
        of the delegating role as found in ``files``.
        """
        roles: dict[str, RoleFacts] = {}
        delegated: dict[str, RoleFacts] = {}
        root_parsed = self._parse(files.get("root"))
        root: Root | None = None
        if root_parsed is not None and isinstance(root_parsed.metadata.signed, Root):
            root = root_parsed.metadata.signed
            roles["root"] = self._facts_for("root", root_parsed, root, "root")
        for name in ("timestamp", "snapshot", "targets"):
            parsed = self._parse(files.get(name))
            if parsed is None or parsed.metadata.signed.type != name:
                continue
            roles[name] = self._facts_for(name, parsed, root, "root")

        declared: list[str] = []
        targets_parsed = self._parse(files.get("targets"))
        if targets_parsed is not None and isinstance(targets_parsed.metadata.signed, Targets):
            self._walk(targets_parsed.metadata.signed, "targets", files, delegated, declared)
        return Inspected(roles, delegated, tuple(declared))

    def _walk(
        self,
        delegator: Targets,
        delegator_name: str,
        files: Mapping[str, bytes],
        out: dict[str, RoleFacts],
        declared: list[str],
    ) -> None:
        stack: list[tuple[Targets, str]] = [(delegator, delegator_name)]
        seen: set[str] = set()
        while stack:
            parent, parent_name = stack.pop()
            for child in _child_roles(parent.delegations):
                if child in seen:
                    continue
                seen.add(child)
                declared.append(child)
                parsed = self._parse(files.get(child))
                if parsed is None or not isinstance(parsed.metadata.signed, Targets):
                    continue
                out[child] = self._facts_for(child, parsed, parent, parent_name)
                stack.append((parsed.metadata.signed, child))

    def _parse(self, data: bytes | None) -> _Parsed | None:
        if data is None:
            return None
        digest = hashlib.sha256(data).hexdigest()
        with self._lock:
            if digest in self._parsed:
                self._parsed.move_to_end(digest)
                return self._parsed[digest]
        try:
            parsed: _Parsed | None = _Parsed(Metadata.from_bytes(data), len(data), digest)
        except Exception:  # noqa: BLE001 - unreadable bytes simply yield no facts
            parsed = None
        with self._lock:
            self._parsed[digest] = parsed
            _trim(self._parsed, self._max)
        return parsed

    def _facts_for(
        self,
        name: str,
        parsed: _Parsed,
        delegator: Root | Targets | None,
        delegator_name: str,
    ) -> RoleFacts:
        context = _key_context(delegator, name)
        cache_key = (name, parsed.sha256, context)
        with self._lock:
            cached = self._facts.get(cache_key)
            if cached is not None:
                self._facts.move_to_end(cache_key)
                return cached
        facts = _read_facts(name, parsed, delegator, delegator_name)
        with self._lock:
            self._facts[cache_key] = facts
            _trim(self._facts, self._max)
        return facts


K = TypeVar("K")
V = TypeVar("V")


def _trim(cache: OrderedDict[K, V], size: int) -> None:
    while len(cache) > size:
        cache.popitem(last=False)


def _child_roles(delegations: Delegations | None) -> Iterable[str]:
    if delegations is None:
        return ()
    if delegations.roles is not None:
        return list(delegations.roles)
    if delegations.succinct_roles is not None:
        return list(delegations.succinct_roles.get_roles())
    return ()


def _key_context(delegator: Root | Targets | None, name: str) -> str:
    """A fingerprint of the keys and threshold ``delegator`` sets for ``name``."""
    if delegator is None:
        return "-"
    try:
        role = delegator.get_delegated_role(name)
    except ValueError:
        return "undelegated"
    keys = []
    for keyid in sorted(role.keyids):
        try:
            keys.append(f"{keyid}:{delegator.get_key(keyid).keyval}")
        except ValueError:
            keys.append(f"{keyid}:?")
    text = f"{role.threshold}|{'|'.join(keys)}"
    return hashlib.sha256(text.encode()).hexdigest()


def _read_facts(
    name: str, parsed: _Parsed, delegator: Root | Targets | None, delegator_name: str
) -> RoleFacts:
    md = parsed.metadata
    signed = md.signed
    if name == "root" and isinstance(signed, Root):
        delegator = signed  # root is checked against its own keys and threshold
    signed_by: tuple[str, ...] = ()
    unknown: tuple[str, ...] = tuple(sorted(md.signatures))
    threshold = 0
    if delegator is not None:
        try:
            result = delegator.get_verification_result(name, md.signed_bytes, md.signatures)
            authorized = set(delegator.get_delegated_role(name).keyids)
            signed_by = tuple(sorted(result.signed))
            unknown = tuple(sorted(k for k in md.signatures if k not in authorized))
            threshold = result.threshold
        except ValueError:  # the delegator does not delegate this role
            pass
    role_keys = None
    if isinstance(signed, Root):
        role_keys = {
            role_name: RoleKeys(tuple(sorted(role.keyids)), role.threshold)
            for role_name, role in signed.roles.items()
        }
    return RoleFacts(
        name=name,
        version=signed.version,
        expires=signed.expires,
        size_bytes=parsed.size,
        sha256=parsed.sha256,
        signed_by=signed_by,
        unknown_signers=unknown,
        threshold=threshold,
        role_keys=role_keys,
        delegator=delegator_name,
    )
