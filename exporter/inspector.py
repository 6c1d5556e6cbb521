"""Facts about metadata files, read with ``tuf.api.metadata``.

The inspector never decides whether a client can update: python-tuf's ngclient does that. It
reports what the bytes say (version, expiry, size, content hash, which authorized keys signed
validly against the delegator's threshold, signatures by keys the delegator does not know), and
it reads whatever it can even when the verdict failed.

It is built to stay cheap on package-index-sized files:

* a role is read as plain JSON; only what delegates (root, and targets roles with
  ``delegations``) becomes a ``tuf.api.metadata`` object, built without its targets list;
* the signed payload is serialized with the C JSON encoder (sorted keys, no spaces), which is
  byte-identical to canonical JSON for ordinary metadata; only when a present signature by an
  authorized key does not verify over it is the payload rebuilt with securesystemslib's
  canonical encoder and checked again, so the facts never depend on the shortcut;
* facts are cached per content hash and delegator key set, so an unchanged 12 MB targets file
  is never read twice, and no parsed targets list is kept in memory;
* a file of a client cache is handed over as a :class:`CachedFile` (path and file identity)
  rather than as bytes: the inspector remembers the content hash of every file it read, by
  identity, so an unchanged file whose facts are known is not even opened (a warm probe of
  4,096 hash bins where one changed reads one file, not 4,096).
"""

from __future__ import annotations

import copy
import gc
import hashlib
import json
import os
import threading
from collections import OrderedDict
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, NamedTuple, TypeVar

from securesystemslib.formats import encode_canonical
from securesystemslib.signer import Signature
from tuf.api.metadata import Delegations, Root, Targets

from exporter.fingerprints import KeyFingerprints
from exporter.results import RoleFacts, RoleKeys

#: What identifies one version of a file without reading it: inode, size, mtime (ns); the
#: same as ``exporter.delegations.FileIdentity``.
FileIdentity = tuple[int, int, int]

#: From this size on a file is parsed with the cyclic GC paused (see ``_gc_paused``).
_GC_PAUSE_BYTES = 1 << 20

K = TypeVar("K")
V = TypeVar("V")


@dataclass(frozen=True)
class Inspected:
    """What the inspector read from the files of one endpoint."""

    roles: Mapping[str, RoleFacts]
    delegated: Mapping[str, RoleFacts]
    #: Delegated role names the targets tree declares (whether or not their file was read).
    declared_delegations: tuple[str, ...]


class CachedFile(NamedTuple):
    """A metadata file on disk, read only if the inspector does not know its content already.

    ``identity`` is the file's :func:`file_identity` when it was listed (or as the delegation
    sweep found it in the same probe). The client cache is written only by atomic replace (a
    new file, so a new inode while the old one is still held, and a new modification time),
    never in place, so a file with an identity the inspector has read before holds the bytes it
    read then: their content hash, and so their facts, are reused (a later file could reuse
    an inode number only with the same size and the same nanosecond mtime as well; the
    delegation sweep's verdict memo rests on the same identity). Signature facts are still
    cached per delegator key set, so a file whose delegator's keys or threshold changed is
    read and checked again; expiry is an absolute time, judged against now by the reader.

    ``data``, when given, is the file's content, already in memory: whoever read or wrote the
    file with this identity vouches for it (the delegation sweep, for the bins it loaded).
    """

    path: str
    identity: FileIdentity
    data: bytes | None = None


def file_identity(st: os.stat_result) -> FileIdentity:
    """The identity of a file as ``os.stat`` (or ``DirEntry.stat``) reports it."""
    return (st.st_ino, st.st_size, st.st_mtime_ns)


def _read_file(path: str) -> tuple[bytes, FileIdentity] | None:
    """The bytes of ``path`` and the identity of the very file they were read from."""
    try:
        with open(path, "rb") as handle:
            identity = file_identity(os.fstat(handle.fileno()))
            return handle.read(), identity
    except OSError:
        return None


@dataclass(frozen=True)
class _Doc:
    """One metadata file, read as JSON: what the facts need, nothing of its targets list."""

    sha256: str
    size: int
    type: str
    version: int
    expires: datetime
    signatures: dict[str, Signature]
    signed: dict[str, Any] | None  #: kept only until the facts are computed
    #: The file as a delegator (Root, or Targets with only its delegations), when it delegates.
    delegator: Root | Targets | None


class Inspector:
    """Reads facts from metadata bytes; thread safe; caches by content hash (LRU)."""

    def __init__(self, max_entries: int = 8192) -> None:
        self._max = max_entries
        self._lock = threading.Lock()
        self._delegators: OrderedDict[str, Root | Targets | None] = OrderedDict()
        self._facts: OrderedDict[tuple[str, str, str], RoleFacts] = OrderedDict()
        #: Path -> identity and content hash of the file last read there (one entry a path,
        #: LRU, room for the cache files of several endpoints of ``max_entries`` roles).
        self._files: OrderedDict[str, tuple[FileIdentity, str]] = OrderedDict()

    def inspect(self, files: Mapping[str, bytes | CachedFile]) -> Inspected:
        """Facts for every readable file in ``files`` (role name -> bytes, or a file on disk).

        ``files`` holds the newest root as ``root``, the other top-level roles by name, and
        delegated targets roles by their role names. Signatures are checked against the keys
        of the delegating role as found in ``files``. A :class:`CachedFile` is opened only
        when the facts of its content under its delegator's keys are not known.
        """
        roles: dict[str, RoleFacts] = {}
        delegated: dict[str, RoleFacts] = {}
        contexts = KeyFingerprints()
        root_facts, root = self._role("root", files.get("root"), None, "root", contexts)
        if root_facts is not None and isinstance(root, Root):
            roles["root"] = root_facts
        else:
            root = None
        targets: Root | Targets | None = None
        for name in ("timestamp", "snapshot", "targets"):
            facts, as_delegator = self._role(name, files.get(name), root, "root", contexts)
            if facts is not None:
                roles[name] = facts
                if name == "targets":
                    targets = as_delegator
        declared: list[str] = []
        if isinstance(targets, Targets):
            self._walk(targets, files, delegated, declared, contexts)
        return Inspected(roles, delegated, tuple(declared))

    def _walk(
        self,
        top: Targets,
        files: Mapping[str, bytes | CachedFile],
        out: dict[str, RoleFacts],
        declared: list[str],
        contexts: KeyFingerprints,
    ) -> None:
        stack: list[tuple[Targets, str]] = [(top, "targets")]
        seen: set[str] = set()
        while stack:
            parent, parent_name = stack.pop()
            for child in _child_roles(parent.delegations):
                if child in seen:
                    continue
                seen.add(child)
                declared.append(child)
                facts, as_delegator = self._role(
                    child, files.get(child), parent, parent_name, contexts
                )
                if facts is None:
                    continue
                out[child] = facts
                if isinstance(as_delegator, Targets):
                    stack.append((as_delegator, child))

    def _role(
        self,
        name: str,
        data: bytes | CachedFile | None,
        delegator: Root | Targets | None,
        delegator_name: str,
        contexts: KeyFingerprints,
    ) -> tuple[RoleFacts | None, Root | Targets | None]:
        """The facts of one file and the file as a delegator (None when it delegates nothing)."""
        if data is None:
            return None, None
        context = contexts.of(delegator, name) if name != "root" else "self"
        if isinstance(data, CachedFile):
            with self._lock:
                seen = self._files.get(data.path)
                if seen is not None and seen[0] == data.identity:
                    hit = self._known(name, seen[1], context)
                    if hit is not None:
                        self._files.move_to_end(data.path)
                        return hit
            if data.data is not None:
                body, identity = data.data, data.identity
            else:
                read = _read_file(data.path)
                if read is None:
                    return None, None
                body, identity = read
            digest = hashlib.sha256(body).hexdigest()
            with self._lock:
                self._files[data.path] = (identity, digest)
                self._files.move_to_end(data.path)
                _trim(self._files, 4 * self._max)
        else:
            body = data
            digest = hashlib.sha256(body).hexdigest()
        hit = self._cached(name, digest, context)
        if hit is not None:
            return hit
        with _gc_paused(len(body)):
            facts, read_as = _read_facts(name, body, digest, delegator, delegator_name)
        if facts is None:
            return None, None
        with self._lock:
            self._facts[(name, digest, context)] = facts
            self._delegators[digest] = read_as
            _trim(self._facts, self._max)
            _trim(self._delegators, self._max)
        return facts, read_as

    def _cached(
        self, name: str, digest: str, context: str
    ) -> tuple[RoleFacts, Root | Targets | None] | None:
        """The known facts of content ``digest`` under delegator keys ``context``, if any."""
        with self._lock:
            return self._known(name, digest, context)

    def _known(
        self, name: str, digest: str, context: str
    ) -> tuple[RoleFacts, Root | Targets | None] | None:
        """:meth:`_cached`, with the lock held."""
        key = (name, digest, context)
        facts = self._facts.get(key)
        if facts is None or digest not in self._delegators:
            return None
        self._facts.move_to_end(key)
        self._delegators.move_to_end(digest)
        return facts, self._delegators[digest]


def _is_type(found: str, name: str) -> bool:
    expected = name if name in ("root", "timestamp", "snapshot") else "targets"
    return found == expected


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


def _read(data: bytes, digest: str) -> _Doc | None:
    """Read a metadata file as JSON; None when it is not readable metadata."""
    try:
        document = json.loads(data)
        signed = document["signed"]
        kind = signed["_type"]
        version = signed["version"]
        expires = datetime.strptime(signed["expires"], "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC)
        signatures = {s["keyid"]: Signature.from_dict(dict(s)) for s in document["signatures"]}
        if not isinstance(version, int) or isinstance(version, bool):
            return None
        delegator: Root | Targets | None = None
        if kind == "root":
            delegator = Root.from_dict(copy.deepcopy(signed))
        elif kind == "targets" and signed.get("delegations") is not None:
            delegator = Targets(
                version=version,
                spec_version=signed.get("spec_version"),
                expires=expires,
                targets={},
                delegations=Delegations.from_dict(copy.deepcopy(signed["delegations"])),
            )
    except (ValueError, TypeError, KeyError, AttributeError, RecursionError):
        return None
    return _Doc(digest, len(data), kind, version, expires, signatures, signed, delegator)


@contextmanager
def _gc_paused(size: int) -> Iterator[None]:
    """Pause the cyclic GC while a file of ``size`` bytes, if large, is read.

    Parsing a package-index-sized file creates hundreds of thousands of containers, none of
    them garbage, and the collections they trigger cost as much as the parse itself (measured:
    240 ms instead of 110 ms for 100,000 targets). The parsed document is freed before the
    pause ends (``_read_facts`` keeps nothing of it), so no collection is merely deferred. The
    pause is process-wide; the GC is re-enabled only by the call that paused it.
    """
    if size < _GC_PAUSE_BYTES or not gc.isenabled():
        yield
        return
    gc.disable()
    try:
        yield
    finally:
        gc.enable()


def _read_facts(
    name: str, data: bytes, digest: str, delegator: Root | Targets | None, delegator_name: str
) -> tuple[RoleFacts | None, Root | Targets | None]:
    """Facts of one file and the file as a delegator; nothing else of the parse survives."""
    doc = _read(data, digest)
    if doc is None or not _is_type(doc.type, name):
        return None, None
    facts = _facts(name, doc, doc.delegator if name == "root" else delegator, delegator_name)
    return facts, doc.delegator


def _payloads(signed: dict[str, Any]) -> Iterable[bytes]:
    """The signed payload: the fast C encoder first, then canonical JSON proper.

    The ASCII-only encoding is a third faster; it is used only when it holds no ``\\u``
    escape, that is when it is byte-identical to the UTF-8 encoding. A parsed JSON document
    has no reference cycles, so the encoder's cycle check (a quarter of its time) is skipped.
    """
    ascii_only = json.dumps(
        signed, sort_keys=True, separators=(",", ":"), check_circular=False
    ).encode()
    if b"\\u" not in ascii_only:
        yield ascii_only
    else:
        yield json.dumps(
            signed, sort_keys=True, separators=(",", ":"), ensure_ascii=False,
            check_circular=False,
        ).encode()
    yield (encode_canonical(signed) or "").encode()


def _facts(
    name: str, doc: _Doc, delegator: Root | Targets | None, delegator_name: str
) -> RoleFacts:
    signed_by: tuple[str, ...] = ()
    unknown: tuple[str, ...] = tuple(sorted(doc.signatures))
    threshold = 0
    if delegator is not None and doc.signed is not None:
        try:
            role = delegator.get_delegated_role(name)
        except ValueError:  # the delegator does not delegate this role
            role = None
        if role is not None:
            authorized = set(role.keyids)
            unknown = tuple(sorted(k for k in doc.signatures if k not in authorized))
            threshold = role.threshold
            present = {k for k in doc.signatures if k in authorized}
            for payload in _payloads(doc.signed):
                result = delegator.get_verification_result(name, payload, doc.signatures)
                signed_by = tuple(sorted(result.signed))
                if set(result.signed) == present:
                    break  # every present authorized signature verified: nothing to retry
    role_keys = None
    if isinstance(doc.delegator, Root) and name == "root":
        role_keys = {
            role_name: RoleKeys(tuple(sorted(role.keyids)), role.threshold)
            for role_name, role in doc.delegator.roles.items()
        }
    return RoleFacts(
        name=name,
        version=doc.version,
        expires=doc.expires,
        size_bytes=doc.size,
        sha256=doc.sha256,
        signed_by=signed_by,
        unknown_signers=unknown,
        threshold=threshold,
        role_keys=role_keys,
        delegator=delegator_name,
    )
