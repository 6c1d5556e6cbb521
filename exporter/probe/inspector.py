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
  4,096 hash bins where one changed reads one file, not 4,096), and the facts it last gave
  for that file, so they come back with one look-up (not a content-hash look-up and a key
  fingerprint parse a bin).

It is longer than most modules (about 640 lines) because its one job is reading those facts
cheaply: the plain-JSON reads, the canonical-encoding shortcut and its check, and the caches by
content hash and file identity are how the facts are read, not a separate concern.
"""

from __future__ import annotations

import copy
import functools
import gc
import hashlib
import json
import os
import threading
from collections import OrderedDict
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import Any, NamedTuple, TypeVar

from securesystemslib import exceptions as sslib_exceptions
from securesystemslib.formats import encode_canonical
from securesystemslib.signer import Signature
from tuf.api.metadata import Delegations, Root, RootVerificationResult, Targets

from exporter.catalogue import TOP_LEVEL_ROLES
from exporter.config import Limits
from exporter.probe.fingerprints import KeyFingerprints
from exporter.probe.results import RoleFacts, RoleKeys

#: What identifies one version of a file without reading it: inode, size, mtime (ns). Every
#: write of the client cache (python-tuf's, the sweep's) replaces the file, a new inode, so a
#: rewrite changes it even within the modification time's resolution. The one definition,
#: used by the inspector, the delegation sweep and the prober.
FileIdentity = tuple[int, int, int]

#: From this size on a file is parsed with the cyclic GC paused (see ``_gc_paused``).
_GC_PAUSE_BYTES = 1 << 20

K = TypeVar("K")
V = TypeVar("V")

#: What reading and checking hostile metadata can raise: from the JSON parser (malformed text,
#: numbers past the int digit limit, deep nesting), python-tuf's ``from_dict`` (wrong types,
#: missing fields), securesystemslib (unencodable canonical JSON, keys it cannot use) and the
#: encoders. Any of them means "no facts for that role", never an exception out of the
#: inspector: the verdict is python-tuf's, and it has its own reason for refusing the file.
_UNREADABLE: tuple[type[BaseException], ...] = (
    ValueError,
    TypeError,
    KeyError,
    AttributeError,
    IndexError,
    RecursionError,
    OverflowError,
    sslib_exceptions.Error,
)

#: The root facts given no previous root version (the context part of their cache key).
_NO_PREVIOUS = "-"


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

    ``accepted``, when given, is the key fingerprint (:class:`KeyFingerprints`) of the
    delegator's keys and threshold under which python-tuf accepted this file's bytes (the
    delegation sweep's ``Swept.accepted``: in this probe, or in an earlier one whose verdict
    the sweep reused because it stands unchanged). When it is the fingerprint the inspector
    finds for the delegator, and the file carries signatures by exactly ``threshold`` of the
    authorized keys, python-tuf's acceptance (at least ``threshold`` authorized keys signed
    validly, each counted once) means all of them verified: they are not checked again.
    """

    path: str
    identity: FileIdentity
    data: bytes | None = None
    accepted: str | None = None


def file_identity(st: os.stat_result) -> FileIdentity:
    """The identity of a file as ``os.stat`` (or ``DirEntry.stat``) reports it."""
    return (st.st_ino, st.st_size, st.st_mtime_ns)


def read_file(path: str | os.PathLike[str]) -> tuple[bytes, FileIdentity] | None:
    """The bytes of ``path`` and the identity of the very file they were read from; None when
    it cannot be read (any ``OSError``)."""
    try:
        with open(path, "rb") as handle:
            identity = file_identity(os.fstat(handle.fileno()))
            return handle.read(), identity
    except OSError:
        return None


def _version(body: bytes) -> int | None:
    """The ``signed.version`` of a metadata file read as plain JSON, None when it has none."""
    try:
        version = json.loads(body)["signed"]["version"]
    except _UNREADABLE:
        return None
    return version if isinstance(version, int) and not isinstance(version, bool) else None


class _NotCanonicalError(ValueError):
    """A JSON number canonical JSON cannot encode (a float, NaN or an infinity)."""


def _no_float(text: str) -> Any:
    raise _NotCanonicalError(text)


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
    #: False when the signed part holds a number canonical JSON cannot encode (a float, NaN,
    #: an infinity): python-tuf cannot build the payload its signatures are over, so no
    #: signature on it can verify (the C encoder would write ``0.5`` and might verify).
    canonical: bool


class _Seen(NamedTuple):
    """A file of a client cache the inspector has read: its identity and content hash, and
    the facts it last gave for it, with what they were read under."""

    identity: FileIdentity
    digest: str
    #: (role name, delegator key context, facts, the file as a delegator), once given
    given: tuple[str, str, RoleFacts, Root | Targets | None] | None = None


class Inspector:
    """Reads facts from metadata bytes; thread safe; caches by content hash (LRU)."""

    def __init__(self, max_entries: int = 8192) -> None:
        self._max = max_entries
        self._lock = threading.Lock()
        self._delegators: OrderedDict[str, Root | Targets | None] = OrderedDict()
        self._facts: OrderedDict[tuple[str, str, str], RoleFacts] = OrderedDict()
        #: Path -> identity and content hash of the file last read there, and the facts last
        #: given for it (one entry a path, LRU, room for the cache files of several endpoints
        #: of ``max_entries`` roles).
        self._files: OrderedDict[str, _Seen] = OrderedDict()

    def inspect(
        self,
        files: Mapping[str, bytes | CachedFile],
        *,
        root_history: Mapping[int, bytes | CachedFile] | None = None,
        fetched_roots: Sequence[bytes] = (),
        max_delegations: int = Limits.max_delegations,
    ) -> Inspected:
        """Facts for every readable file in ``files`` (role name -> bytes, or a file on disk).

        ``files`` holds the root python-tuf trusts as ``root``, the other top-level roles by
        name, and delegated targets roles by their role names. Signatures are checked against
        the keys of the delegating role as found in ``files``. A :class:`CachedFile` is opened
        only when the facts of its content under its delegator's keys are not known.

        ``root_history`` (root version -> file, as python-tuf's client cache keeps them) gives
        the previous root version, against whose root keys and threshold the trusted root's
        signatures are counted too (python-tuf's rule: a new root is signed by a threshold of
        the previous root's keys and of its own). ``fetched_roots`` are the root files
        downloaded in this probe: one newer than the trusted root is one python-tuf refused,
        reported as the trusted root's ``rejected_root``.

        At most ``max_delegations`` delegated roles are declared and read (a succinct
        delegation may name 2^32 hash bins; the delegation sweep reports the truncation).
        Never raises on the content of the files: what cannot be read gives no facts.
        """
        roles: dict[str, RoleFacts] = {}
        delegated: dict[str, RoleFacts] = {}
        contexts = KeyFingerprints()
        root_facts, root = self._roots(files.get("root"), root_history or {}, fetched_roots)
        if root_facts is not None and root is not None:
            roles["root"] = root_facts
        targets: Root | Targets | None = None
        for name in TOP_LEVEL_ROLES[1:]:  # what root delegates, in update order
            try:
                context = contexts.of(root, name)
            except _UNREADABLE:  # the delegator's keyids for the role cannot even be sorted
                continue
            facts, as_delegator = self._role(name, files.get(name), root, "root", context)
            if facts is not None:
                roles[name] = facts
                if name == "targets":
                    targets = as_delegator
        declared: list[str] = []
        if isinstance(targets, Targets):
            self._walk(targets, files, delegated, declared, contexts, max_delegations)
        return Inspected(roles, delegated, tuple(declared))

    def _roots(
        self,
        data: bytes | CachedFile | None,
        history: Mapping[int, bytes | CachedFile],
        fetched: Sequence[bytes],
    ) -> tuple[RoleFacts | None, Root | None]:
        """The facts of the trusted root (with its previous version's counts and the newer
        root python-tuf refused, if any) and the trusted root as a delegator."""
        trusted = self._identify(data, read=False)
        version = None if trusted is None else self._root_version(trusted, data)
        if trusted is None or version is None:
            return None, None
        previous: tuple[str, Root] | None = None
        source = history.get(version - 1)
        earlier = self._identify(source, read=False)
        if earlier is not None:
            _, as_root = self._root(earlier, source, None)
            if isinstance(as_root, Root) and as_root.version == version - 1:
                previous = (earlier[0], as_root)
        facts, root = self._root(trusted, data, previous)
        if facts is None or not isinstance(root, Root):
            return None, None
        newer = sorted(
            ((v, body) for body in fetched if (v := _version(body)) is not None and v > version),
            key=lambda item: item[0],
        )
        if newer:  # python-tuf walks the versions up and stops at the first it refuses
            body = newer[0][1]
            refused, _ = self._root(
                (hashlib.sha256(body).hexdigest(), body), body, (facts.sha256, root)
            )
            if refused is not None:
                facts = replace(facts, rejected_root=refused)
        return facts, root

    def _root_version(
        self, known: tuple[str, bytes | None], source: bytes | CachedFile | None
    ) -> int | None:
        """The version of a root file: from its parsed form when known, else read."""
        digest, body = known
        with self._lock:
            parsed = self._delegators.get(digest)
        if isinstance(parsed, Root):
            return parsed.version
        given = None if not isinstance(source, CachedFile) else self._given(source, "root")
        if given is not None:
            return given[0].version
        if body is None:
            again = self._identify(source, read=True)
            body = None if again is None else again[1]
        return None if body is None else _version(body)

    def _root(
        self,
        known: tuple[str, bytes | None],
        source: bytes | CachedFile | None,
        previous: tuple[str, Root] | None,
    ) -> tuple[RoleFacts | None, Root | Targets | None]:
        """The facts of one root file, counted against ``previous`` (digest, Root) as well.

        ``known`` is the file's digest and, when read already, its bytes; ``source`` is where
        to read them otherwise.
        """
        context = "previous:" + (_NO_PREVIOUS if previous is None else previous[0])
        before = None if previous is None else previous[1]
        given = None if not isinstance(source, CachedFile) else self._given(source, "root", context)
        if given is not None:
            return given
        return self._compute(
            "root", known, source, context,
            lambda body, digest: _read_facts("root", body, digest, None, "root", before),
        )

    def _identify(
        self, data: bytes | CachedFile | None, *, read: bool
    ) -> tuple[str, bytes | None] | None:
        """Content hash of ``data`` and its bytes; None when it cannot be read.

        A :class:`CachedFile` whose identity was read before is not opened unless ``read``:
        its remembered hash comes back with no bytes.
        """
        if data is None:
            return None
        if not isinstance(data, CachedFile):
            return hashlib.sha256(data).hexdigest(), data
        if not read:
            with self._lock:
                seen = self._files.get(data.path)
                if seen is not None and seen.identity == data.identity:
                    self._files.move_to_end(data.path)
                    return seen.digest, None
        if data.data is not None:
            body, identity = data.data, data.identity
        else:
            loaded = read_file(data.path)
            if loaded is None:
                return None
            body, identity = loaded
        digest = hashlib.sha256(body).hexdigest()
        with self._lock:
            self._files[data.path] = _Seen(identity, digest)
            self._files.move_to_end(data.path)
            _trim(self._files, 4 * self._max)
        return digest, body

    def _walk(
        self,
        top: Targets,
        files: Mapping[str, bytes | CachedFile],
        out: dict[str, RoleFacts],
        declared: list[str],
        contexts: KeyFingerprints,
        limit: int,
    ) -> None:
        stack: list[tuple[Targets, str]] = [(top, "targets")]
        seen: set[str] = set()
        while stack:
            parent, parent_name = stack.pop()
            for child in _child_roles(parent.delegations):
                if child in seen:
                    continue
                if len(seen) >= limit:
                    return
                seen.add(child)
                declared.append(child)
                try:
                    context = contexts.of_child(parent, child)
                except _UNREADABLE:  # the delegator's keyids for the role cannot even be sorted
                    continue
                facts, as_delegator = self._role(
                    child, files.get(child), parent, parent_name, context
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
        context: str,
    ) -> tuple[RoleFacts | None, Root | Targets | None]:
        """The facts of one file and the file as a delegator (None when it delegates nothing),
        its signatures counted against ``delegator``'s keys (fingerprint ``context``).

        Not for root (see :meth:`_roots`). A cache file of an identity the inspector gave
        facts for under the same context gets those facts back at once (a warm probe of 4,096
        unchanged hash bins looks each up once, see :meth:`_given`).
        """
        if isinstance(data, CachedFile):
            given = self._given(data, name, context)
            if given is not None:
                return given
        known = self._identify(data, read=False)
        if known is None:
            return None, None
        accepted = isinstance(data, CachedFile) and data.accepted == context
        return self._compute(
            name, known, data, context,
            lambda body, digest: _read_facts(
                name, body, digest, delegator, delegator_name, accepted=accepted
            ),
        )

    def _given(
        self, data: CachedFile, name: str, context: str | None = None
    ) -> tuple[RoleFacts, Root | Targets | None] | None:
        """The facts last given for the file ``data`` as role ``name`` under ``context`` (None:
        whichever), if it is still the file they were read from (same identity, see
        :class:`CachedFile`)."""
        with self._lock:
            seen = self._files.get(data.path)
            if seen is None or seen.given is None or seen.identity != data.identity:
                return None
            given_name, given_context, facts, as_delegator = seen.given
            if given_name != name or context not in (None, given_context):
                return None
            self._files.move_to_end(data.path)
        return facts, as_delegator

    def _compute(
        self,
        name: str,
        known: tuple[str, bytes | None],
        source: bytes | CachedFile | None,
        context: str,
        read: Callable[[bytes, str], tuple[RoleFacts | None, Root | Targets | None]],
    ) -> tuple[RoleFacts | None, Root | Targets | None]:
        """The cached facts of content ``known`` (digest, bytes if read) under ``context``, or
        ``read(bytes, digest)``'s, remembered; the bytes are read from ``source`` only then."""
        digest, body = known
        hit = self._cached(name, digest, context)
        if hit is None and body is None:
            again = self._identify(source, read=True)
            if again is None or again[1] is None:
                return None, None
            digest, body = again[0], again[1]
            hit = self._cached(name, digest, context)
        if hit is not None:
            self._give(source, digest, name, context, hit)
            return hit
        assert body is not None
        if len(body) < _GC_PAUSE_BYTES:  # no context manager a hash bin: it cost 15 %
            facts, read_as = read(body, digest)
        else:
            with _gc_paused(len(body)):
                facts, read_as = read(body, digest)
        if facts is None:
            return None, None
        with self._lock:
            self._facts[(name, digest, context)] = facts
            self._delegators[digest] = read_as
            _trim(self._facts, self._max)
            _trim(self._delegators, self._max)
        self._give(source, digest, name, context, (facts, read_as))
        return facts, read_as

    def _give(
        self,
        source: bytes | CachedFile | None,
        digest: str,
        name: str,
        context: str,
        given: tuple[RoleFacts, Root | Targets | None],
    ) -> None:
        """Remember the facts given for a cache file of content ``digest`` (see :meth:`_given`)."""
        if not isinstance(source, CachedFile):
            return
        with self._lock:
            seen = self._files.get(source.path)
            if seen is not None and seen.identity == source.identity and seen.digest == digest:
                self._files[source.path] = seen._replace(given=(name, context, *given))

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
    """The delegated role names, in order; hash bins generated one by one, never listed."""
    if delegations is None:
        return ()
    if delegations.roles is not None:
        return list(delegations.roles)
    if delegations.succinct_roles is not None:
        return delegations.succinct_roles.get_roles()
    return ()


def _read(data: bytes, digest: str) -> _Doc | None:
    """Read a metadata file as JSON; None when it is not readable metadata."""
    canonical = True
    try:
        try:
            document = json.loads(data, parse_float=_no_float, parse_constant=_no_float)
        except _NotCanonicalError:  # rare: read it again, floats and all, and count no signature
            canonical = False
            document = json.loads(data)
        signed = document["signed"]
        kind = signed["_type"]
        version = signed["version"]
        expires = _expires(signed["expires"])
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
    except _UNREADABLE:
        return None
    return _Doc(
        digest, len(data), kind, version, expires, signatures, signed, delegator, canonical
    )


@functools.lru_cache(maxsize=256)
def _expires(text: str) -> datetime:
    """An ``expires`` string as python-tuf reads it (``Signed._common_fields_from_dict``);
    memoized: thousands of hash bins signed in one go share one expiry string. Raises
    ``ValueError`` (not cached) for a string python-tuf would refuse, ``TypeError`` for a
    non-string."""
    return datetime.strptime(text, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC)


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
    name: str,
    data: bytes,
    digest: str,
    delegator: Root | Targets | None,
    delegator_name: str,
    previous: Root | None = None,
    *,
    accepted: bool = False,
) -> tuple[RoleFacts | None, Root | Targets | None]:
    """Facts of one file and the file as a delegator; nothing else of the parse survives.

    For root, ``delegator`` is ignored (a root is its own delegator) and ``previous`` is the
    previous root version, if known. ``accepted``: python-tuf accepted these bytes under
    ``delegator``'s keys and threshold in this probe (see ``CachedFile.accepted``). (None,
    None) when the file cannot be read or checked.
    """
    doc = _read(data, digest)
    if doc is None or not _is_type(doc.type, name):
        return None, None
    try:
        if name == "root":
            if not isinstance(doc.delegator, Root):
                return None, None
            facts = _root_facts(doc, doc.delegator, previous)
        else:
            facts = _facts(name, doc, delegator, delegator_name, accepted=accepted)
    except _UNREADABLE:
        return None, None
    return facts, doc.delegator


def _payloads(signed: dict[str, Any] | None, *, canonical: bool = True) -> Iterable[bytes]:
    """The signed payload: the fast C encoder first, then canonical JSON proper.

    The ASCII-only encoding is a third faster; it is used only when it holds no ``\\u``
    escape, that is when it is byte-identical to the UTF-8 encoding. A parsed JSON document
    has no reference cycles, so the encoder's cycle check (a quarter of its time) is skipped.
    Nothing for a document canonical JSON cannot encode: python-tuf verifies no signature on
    it (``canonical`` False: its canonical serializer refuses floats, securesystemslib's
    "I cannot encode").
    """
    if signed is None or not canonical:
        return
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
    name: str,
    doc: _Doc,
    delegator: Root | Targets | None,
    delegator_name: str,
    *,
    accepted: bool = False,
) -> RoleFacts:
    """Facts of a role other than root, its signatures counted against ``delegator``.

    The count is python-tuf's ``get_verification_result``, except when python-tuf accepted
    these very bytes under ``delegator``'s keys and threshold (``accepted``) and exactly
    ``threshold`` authorized keys signed: ``verify_delegate`` passed only because at least
    ``threshold`` of them verified, so every one did (TUF specification 5.6.3/5.7.3, counted
    by python-tuf; a hash bin signed by its one key is not verified a second time).
    """
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
            if accepted and len(present) == threshold:
                signed_by = tuple(sorted(present))
            for payload in () if signed_by else _payloads(doc.signed, canonical=doc.canonical):
                result = delegator.get_verification_result(name, payload, doc.signatures)
                signed_by = tuple(sorted(result.signed))
                if set(result.signed) == present:
                    break  # every present authorized signature verified: nothing to retry
    return RoleFacts(
        name=name,
        version=doc.version,
        expires=doc.expires,
        size_bytes=doc.size,
        sha256=doc.sha256,
        signed_by=signed_by,
        unknown_signers=unknown,
        threshold=threshold,
        delegator=delegator_name,
    )


def _root_facts(doc: _Doc, root: Root, previous: Root | None) -> RoleFacts:
    """Facts of a root version, counted as python-tuf counts them: against its own root keys
    and threshold and against those of the previous version (``previous``, when known).

    The counts come from python-tuf's ``Root.get_root_verification_result`` (TUF specification
    5.3.4: a new root is signed by a threshold of the previous root's keys and of its own); a
    signature by a key either version authorizes for root is never an unknown signer.
    Raises what python-tuf and securesystemslib raise on hostile keys (see ``_UNREADABLE``).
    """
    authorized = set(root.roles[Root.type].keyids)
    if previous is not None:
        authorized |= set(previous.roles[Root.type].keyids)
    present = {k for k in doc.signatures if k in authorized}
    own: tuple[str, ...] = ()
    earlier: tuple[str, ...] = ()
    for payload in _payloads(doc.signed, canonical=doc.canonical):
        result = _root_verification(root, previous, payload, doc.signatures)
        own = tuple(sorted(result.second.signed))
        earlier = tuple(sorted(result.first.signed))
        if set(result.signed) == present:
            break  # every present authorized signature verified: nothing to retry
    return RoleFacts(
        name=Root.type,
        version=doc.version,
        expires=doc.expires,
        size_bytes=doc.size,
        sha256=doc.sha256,
        signed_by=own,
        unknown_signers=tuple(sorted(k for k in doc.signatures if k not in authorized)),
        threshold=root.roles[Root.type].threshold,
        role_keys={
            role_name: RoleKeys(tuple(sorted(role.keyids)), role.threshold)
            for role_name, role in root.roles.items()
        },
        previous_root_signed_by=None if previous is None else earlier,
        previous_root_threshold=None if previous is None else previous.roles[Root.type].threshold,
    )


def _root_verification(
    root: Root, previous: Root | None, payload: bytes, signatures: dict[str, Signature]
) -> RootVerificationResult:
    """python-tuf's two-sided count; ``first`` is the previous version's (``root``'s own when
    there is none), ``second`` the root's own."""
    if previous is None or root.version == previous.version + 1:
        return root.get_root_verification_result(previous, payload, signatures)
    # A refused root that does not even carry the next version number: python-tuf refuses it
    # for that, before counting; both counts are still shown.
    return RootVerificationResult(
        previous.get_verification_result(Root.type, payload, signatures),
        root.get_verification_result(Root.type, payload, signatures),
    )
