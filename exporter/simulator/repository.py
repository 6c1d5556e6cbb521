"""A real, in-memory TUF repository built with python-tuf's Metadata API.

The repository keeps the signed-part ``Metadata`` objects of every role as the
source of truth and turns them into immutable :class:`RepositoryState` objects
on :meth:`SimulatedRepository.publish`. A state maps every file a client could
fetch (``metadata/N.root.json``, ``metadata/timestamp.json``,
``metadata/N.snapshot.json``, ``metadata/N.<role>.json`` and
``targets/<dir>/<sha256>.<name>``) to its bytes. Files are cumulative: old
versions stay fetchable, like on a real consistent-snapshot repository.

With ``consistent_snapshot`` off (``SimulatedRepository(consistent_snapshot=False)``
or :meth:`SimulatedRepository.set_consistent_snapshot`, which publishes a new root
saying so) a state serves what such a repository serves: ``metadata/N.root.json``,
``metadata/timestamp.json``, unversioned ``metadata/<role>.json`` of the current
versions and targets at their plain path ``targets/<dir>/<name>``; no versioned
non-root metadata and no hash-prefixed targets.

It is longer than most modules (about 770 lines) because a repository a test can drive is one
job: every operation a test needs (keys and rotations, delegations, targets, expiry, consistent
snapshot on or off, publishing) is a method of :class:`SimulatedRepository` and works on the
same metadata and keys.
"""

from __future__ import annotations

import hashlib
import math
import re
import threading
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import MappingProxyType
from typing import Any

from securesystemslib.signer import CryptoSigner, Key, Signer
from tuf.api.metadata import (
    DelegatedRole,
    Delegations,
    Metadata,
    MetaFile,
    Root,
    Snapshot,
    SuccinctRoles,
    TargetFile,
    Targets,
    Timestamp,
)
from tuf.api.serialization.json import CanonicalJSONSerializer, JSONSerializer

from exporter.catalogue import TOP_LEVEL_ROLES

ROOT = "root"
TIMESTAMP = "timestamp"
SNAPSHOT = "snapshot"
TARGETS = "targets"

DEFAULT_EXPIRY: Mapping[str, timedelta] = MappingProxyType(
    {
        ROOT: timedelta(days=365),
        TARGETS: timedelta(days=90),
        SNAPSHOT: timedelta(days=7),
        TIMESTAMP: timedelta(days=1),
    }
)
DEFAULT_DELEGATED_EXPIRY = timedelta(days=90)
DEFAULT_THRESHOLDS: Mapping[str, int] = MappingProxyType(
    {ROOT: 1, TIMESTAMP: 1, SNAPSHOT: 1, TARGETS: 2}
)

Expiry = datetime | timedelta

#: The signing schemes :meth:`SimulatedRepository.rotate_keys` can make keys for: securesystemslib's
#: names (``Key.scheme``), each with the key type and curve or padding it implies. ``ed25519`` is
#: every key's default; the others are what hardware and cloud signers give (e.g. cloud KMS RSA
#: keys sign ``rsa-pkcs1v15-sha256``), and clients do not all verify them (docs/clients.md).
KEY_SCHEMES: tuple[str, ...] = (
    "ed25519",
    "ecdsa-sha2-nistp256",
    "ecdsa-sha2-nistp384",
    "rsassa-pss-sha256",
    "rsa-pkcs1v15-sha256",
)
#: RSA key size in bits (what cloud KMS RSA_SIGN_*_2048 keys have; quicker to make than 3072).
RSA_KEY_BITS = 2048

_SERIALIZER = JSONSerializer(compact=True)
_CANONICAL = CanonicalJSONSerializer()
_VERSIONED = re.compile(r"^metadata/(\d+)\.(.+)\.json$")


def utcnow() -> datetime:
    """Return the current UTC time truncated to whole seconds (TUF precision)."""
    return datetime.now(UTC).replace(microsecond=0)


def metadata_file(role: str, version: int | None = None) -> str:
    """Return the state key of a metadata file (``version=None``: unversioned)."""
    if version is None:
        return f"metadata/{role}.json"
    return f"metadata/{version}.{role}.json"


def served_metadata_file(role: str, version: int, consistent_snapshot: bool) -> str:
    """Return the state key under which ``version`` of ``role`` is served, as ngclient asks
    for it: root always versioned, timestamp never, the others versioned only with
    ``consistent_snapshot``."""
    if role == TIMESTAMP or (role != ROOT and not consistent_snapshot):
        return metadata_file(role)
    return metadata_file(role, version)


def target_file(path: str, sha256: str, consistent_snapshot: bool = True) -> str:
    """Return the state key of a target as ``Updater.download_target`` asks for it."""
    if not consistent_snapshot:
        return f"targets/{path}"
    dirname, sep, basename = path.rpartition("/")
    return f"targets/{dirname}{sep}{sha256}.{basename}"


def generate_signer(scheme: str = "ed25519") -> CryptoSigner:
    """Return a new private key (a :class:`CryptoSigner`) whose public key has ``scheme``, one
    of :data:`KEY_SCHEMES` (``ecdsa-sha2-nistp384`` is a P-384 key, the RSA schemes
    :data:`RSA_KEY_BITS`-bit keys). ValueError names the schemes for any other."""
    _check_scheme(scheme)
    if scheme == "ed25519":
        return CryptoSigner.generate_ed25519()
    if scheme.startswith("ecdsa-"):
        return CryptoSigner.generate_ecdsa(scheme=scheme)
    return CryptoSigner.generate_rsa(scheme=scheme, size=RSA_KEY_BITS)


def _check_scheme(scheme: str) -> None:
    if scheme not in KEY_SCHEMES:
        raise ValueError(f"unknown key scheme {scheme!r}: expected one of "
                         f"{', '.join(KEY_SCHEMES)}")


def sign_metadata(
    md: Metadata[Any], signers: Iterable[Signer], *, padding: str | None = None
) -> bytes:
    """Replace the signatures of ``md`` by ones of ``signers``; return file bytes.

    The canonical form is computed once, whatever the number of signers.
    ``padding`` adds an unsigned top-level field so the file bytes (and length)
    change while all signatures stay valid.
    """
    payload = _CANONICAL.serialize(md.signed)
    md.signatures.clear()
    for signer in signers:
        sig = signer.sign(payload)
        md.signatures[sig.keyid] = sig
    if padding is not None:
        md.unrecognized_fields["x-simulator-padding"] = padding
    try:
        return _SERIALIZER.serialize(md)
    finally:
        md.unrecognized_fields.pop("x-simulator-padding", None)


class RepositoryState(Mapping[str, bytes]):
    """An immutable, published view of the repository: file name -> bytes."""

    __slots__ = ("_files", "consistent_snapshot", "published_at", "serial", "versions")

    def __init__(
        self,
        serial: int,
        files: Mapping[str, bytes],
        versions: Mapping[str, int],
        published_at: datetime,
        consistent_snapshot: bool = True,
    ) -> None:
        """Create a state; ``serial`` is its index in the publish history."""
        self.serial = serial
        self._files = files
        self.versions = versions
        self.published_at = published_at
        self.consistent_snapshot = consistent_snapshot

    def __getitem__(self, key: str) -> bytes:
        """Return the bytes of file ``key`` (e.g. ``metadata/timestamp.json``)."""
        return self._files[key]

    def __iter__(self) -> Iterator[str]:
        """Iterate over all file names."""
        return iter(self._files)

    def __len__(self) -> int:
        """Return the number of files."""
        return len(self._files)

    def __repr__(self) -> str:
        """Short representation with versions."""
        top = {r: v for r, v in self.versions.items() if r in TOP_LEVEL_ROLES}
        return f"RepositoryState(serial={self.serial}, versions={top})"

    def filename(self, role: str) -> str:
        """Return the file name of the current version of ``role``."""
        return served_metadata_file(role, self.versions[role], self.consistent_snapshot)

    def metadata(self, role: str) -> bytes:
        """Return the bytes of the current version of ``role``."""
        return self._files[self.filename(role)]

    def signed(self, role: str) -> Metadata[Any]:
        """Parse and return the current metadata of ``role``."""
        return Metadata.from_bytes(self.metadata(role))

    def root_versions(self) -> list[int]:
        """Return all root versions present in this state, ascending."""
        out = []
        for name in self._files:
            m = _VERSIONED.match(name)
            if m and m.group(2) == ROOT:
                out.append(int(m.group(1)))
        return sorted(out)


class SimulatedRepository:
    """A TUF repository with real keys (ed25519; :meth:`rotate_keys` makes others),
    published as immutable states.

    Mutators (``add_target``, ``delegate``, ``rotate_keys``, ``set_expiry``,
    ``bump_version`` ...) only change the in-memory model; ``publish()`` (or
    ``resign()``) signs what changed and appends a new :class:`RepositoryState`.
    All methods are thread-safe; servers read ``latest`` without locking.
    """

    def __init__(
        self,
        *,
        thresholds: Mapping[str, int] | None = None,
        key_counts: Mapping[str, int] | None = None,
        expiry: Mapping[str, Expiry] | None = None,
        timestamp_hashes: bool = True,
        snapshot_hashes: bool = False,
        consistent_snapshot: bool = True,
    ) -> None:
        """Create the four top-level roles and publish state 0 (all version 1).

        Args:
            thresholds: per top-level role threshold (default root/timestamp/
                snapshot 1, targets 2).
            key_counts: keys per role (default: equal to the threshold).
            expiry: per role lifetime (timedelta, re-applied at every signing)
                or fixed expiry date (datetime); defaults in ``DEFAULT_EXPIRY``.
            timestamp_hashes: timestamp's snapshot MetaFile has length + sha256.
            snapshot_hashes: snapshot's MetaFiles have length + sha256.
            consistent_snapshot: what root says (see the module docstring for the files).
        """
        self._lock = threading.RLock()
        self.timestamp_hashes = timestamp_hashes
        self.snapshot_hashes = snapshot_hashes
        self._expiry: dict[str, Expiry] = dict(DEFAULT_EXPIRY)
        self._expiry.update(expiry or {})
        self._keyring: dict[str, CryptoSigner] = {}
        self._signers: dict[str, dict[str, CryptoSigner]] = {}
        self._unknown = CryptoSigner.generate_ed25519()
        self._delegator: dict[str, str] = {}
        self._routers: dict[str, Callable[[str], str]] = {}
        self._dirty: set[str] = set(TOP_LEVEL_ROLES)
        self._bumps: dict[str, int] = {}
        self._reserved: dict[str, int] = {}
        self._root_cosigners: dict[str, CryptoSigner] = {}
        self._published: set[str] = set()
        self._pending_files: dict[str, bytes] = {}
        self._files: dict[str, bytes] = {}
        self._states: list[RepositoryState] = []

        now = utcnow()
        thr = dict(DEFAULT_THRESHOLDS)
        thr.update(thresholds or {})
        root = Root(expires=now, consistent_snapshot=consistent_snapshot)
        for role in TOP_LEVEL_ROLES:
            root.roles[role].threshold = thr[role]
            for _ in range((key_counts or {}).get(role, thr[role])):
                signer = self._new_signer()
                root.add_key(signer.public_key, role)
                self._signers.setdefault(role, {})[signer.public_key.keyid] = signer
        self._md: dict[str, Metadata[Any]] = {
            ROOT: Metadata(root),
            TIMESTAMP: Metadata(Timestamp(expires=now)),
            SNAPSHOT: Metadata(Snapshot(expires=now)),
            TARGETS: Metadata(Targets(expires=now)),
        }
        self.publish()

    # ----------------------------------------------------------------- access

    @property
    def states(self) -> list[RepositoryState]:
        """All published states, oldest first (a copy of the list)."""
        with self._lock:
            return list(self._states)

    @property
    def latest(self) -> RepositoryState:
        """The most recently published state."""
        return self._states[-1]

    @property
    def roles(self) -> list[str]:
        """All role names: top-level first, then delegated roles."""
        with self._lock:
            return list(self._md)

    @property
    def delegated_roles(self) -> list[str]:
        """Names of all delegated targets roles."""
        with self._lock:
            return list(self._delegator)

    def delegator_of(self, role: str) -> str:
        """Return the name of the role delegating to ``role`` (root for top-level)."""
        return ROOT if role in TOP_LEVEL_ROLES else self._delegator[role]

    def trusted_root_bytes(self) -> bytes:
        """Return ``1.root.json``: the root a client bootstraps from."""
        return self._states[0][metadata_file(ROOT, 1)]

    def write_trusted_root(self, path: str | Path) -> Path:
        """Write the trusted (version 1) root to ``path`` and return the path."""
        p = Path(path)
        p.write_bytes(self.trusted_root_bytes())
        return p

    def keyids(self, role: str) -> list[str]:
        """Key ids currently authorized for ``role`` (in the working model)."""
        with self._lock:
            return list(self._signers[role])

    def root_keys(self, role: str) -> list[Key]:
        """Public keys currently authorized for ``role``."""
        with self._lock:
            return [s.public_key for s in self._signers[role].values()]

    def signers(self, role: str) -> list[CryptoSigner]:
        """Signers (private keys) currently authorized for ``role``."""
        with self._lock:
            return list(self._signers[role].values())

    def signer_for(self, keyid: str) -> CryptoSigner | None:
        """Return the signer of any key this repository ever created."""
        return self._keyring.get(keyid)

    @property
    def unknown_signer(self) -> CryptoSigner:
        """A key that is never authorized for any role."""
        return self._unknown

    def export_private_key(self, role: str, path: str | Path, keyid: str | None = None) -> Key:
        """Write a role key as unencrypted PKCS8 PEM to ``path``; return its public key.

        The file can be loaded with ``Signer.from_priv_key_uri("file2:<path>", key)``.
        """
        with self._lock:
            signers = self._signers[role]
            signer = signers[keyid] if keyid else next(iter(signers.values()))
        Path(path).write_bytes(signer.private_bytes)
        return signer.public_key

    def role_for_target(self, path: str) -> str:
        """Return the role ``add_target(path, data)`` puts ``path`` in (a hash bin or targets)."""
        with self._lock:
            return self._route(path, None)

    @property
    def consistent_snapshot(self) -> bool:
        """What root says in the working model (published or not)."""
        with self._lock:
            root: Root = self._md[ROOT].signed
            return bool(root.consistent_snapshot)

    def target_filename(self, path: str, role: str | None = None) -> str:
        """Return the state key (``targets/...``) under which target ``path`` is served."""
        with self._lock:
            tf = self._md[self._route(path, role)].signed.targets[path]
            return target_file(path, tf.hashes["sha256"], self.consistent_snapshot)

    # --------------------------------------------------------------- mutation

    def add_target(self, path: str, data: bytes, role: str | None = None) -> TargetFile:
        """Add (or replace) target ``path`` in ``role``.

        ``role=None`` means "targets", or the right hash bin if ``targets``
        delegates to hash bins.
        """
        with self._lock:
            name = self._route(path, role)
            tf = TargetFile.from_data(path, data, ["sha256"])
            self._md[name].signed.targets[path] = tf
            self._pending_files[target_file(path, tf.hashes["sha256"])] = data
            self._dirty.add(name)
            return tf

    def add_targets(self, targets: Mapping[str, bytes], role: str | None = None) -> None:
        """Add many targets at once (see :meth:`add_target`)."""
        with self._lock:
            for path, data in targets.items():
                self.add_target(path, data, role)

    def remove_target(self, path: str, role: str | None = None) -> None:
        """Remove target ``path`` from ``role`` (its file stays fetchable)."""
        with self._lock:
            name = self._route(path, role)
            del self._md[name].signed.targets[path]
            self._dirty.add(name)

    def delegate(
        self,
        name: str,
        paths: Sequence[str] | None = None,
        *,
        threshold: int = 1,
        keys: int = 1,
        terminating: bool = True,
        delegator: str = TARGETS,
    ) -> list[str]:
        """Add a named delegation ``name`` from ``delegator``; return its key ids.

        ``paths`` defaults to ``["<name>/*"]``.
        """
        with self._lock:
            parent = self._md[delegator].signed
            if name in self._md:
                raise ValueError(f"role {name!r} already exists")
            if parent.delegations is None:
                parent.delegations = Delegations(keys={}, roles={})
            if parent.delegations.roles is None:
                raise ValueError(f"{delegator} already delegates to succinct hash bins")
            signers = [self._new_signer() for _ in range(keys)]
            keyids = [s.public_key.keyid for s in signers]
            for s in signers:
                parent.delegations.keys[s.public_key.keyid] = s.public_key
            parent.delegations.roles[name] = DelegatedRole(
                name, keyids, threshold, terminating, paths=list(paths or [f"{name}/*"])
            )
            self._signers[name] = {s.public_key.keyid: s for s in signers}
            self._add_role(name, delegator)
            return keyids

    def delegate_also(
        self,
        name: str,
        delegator: str,
        *,
        keyids: Sequence[str] | None = None,
        threshold: int | None = None,
        paths: Sequence[str] | None = None,
    ) -> None:
        """Delegate the existing role ``name`` from one more role, ``delegator``.

        By default with the role's own keys and a threshold of all of them (a valid second
        path); ``keyids`` (any keys of the keyring, e.g. another role's) and ``threshold``
        make an invalid one. ``paths`` defaults to ``["<name>/*"]``.
        """
        with self._lock:
            if name not in self._delegator:
                raise KeyError(f"no delegated role {name!r}")
            parent = self._md[delegator].signed
            if parent.delegations is None:
                parent.delegations = Delegations(keys={}, roles={})
            if parent.delegations.roles is None:
                raise ValueError(f"{delegator} already delegates to succinct hash bins")
            ids = list(keyids if keyids is not None else self._signers[name])
            for keyid in ids:
                parent.delegations.keys[keyid] = self._keyring[keyid].public_key
            parent.delegations.roles[name] = DelegatedRole(
                name, ids, threshold if threshold is not None else len(ids), True,
                paths=list(paths or [f"{name}/*"]),
            )
            self._dirty.add(delegator)

    def delegate_hash_bins(
        self,
        count: int,
        *,
        succinct: bool = True,
        prefix: str = "bin",
        keys: int = 1,
        threshold: int = 1,
    ) -> list[str]:
        """Delegate all of ``targets`` to ``count`` hash bins; return the bin names.

        ``count`` must be a power of two. Succinct bins use ``SuccinctRoles``;
        classic bins are ``DelegatedRole``s with ``path_hash_prefixes``. Bin
        names are ``<prefix>-<hex>`` in both cases. All bins share one key set.
        Afterwards ``add_target(path, data)`` routes to the right bin.
        """
        if count < 2 or count & (count - 1) or count > 2**32:
            raise ValueError("count must be a power of two between 2 and 2**32")
        with self._lock:
            parent = self._md[TARGETS].signed
            if parent.delegations is not None:
                raise ValueError("targets already has delegations")
            bits = count.bit_length() - 1
            signers = [self._new_signer() for _ in range(keys)]
            keyids = [s.public_key.keyid for s in signers]
            pubkeys: dict[str, Key] = {s.public_key.keyid: s.public_key for s in signers}
            width = math.ceil(bits / 4)
            names = [f"{prefix}-{i:0{width}x}" for i in range(count)]
            if succinct:
                sr = SuccinctRoles(keyids, threshold, bits, prefix)
                parent.delegations = Delegations(pubkeys, succinct_roles=sr)
                self._routers[TARGETS] = sr.get_role_for_target
            else:
                per_bin = (1 << (4 * width)) // count
                roles = {
                    n: DelegatedRole(
                        n,
                        keyids,
                        threshold,
                        True,
                        path_hash_prefixes=[
                            f"{p:0{width}x}" for p in range(i * per_bin, (i + 1) * per_bin)
                        ],
                    )
                    for i, n in enumerate(names)
                }
                parent.delegations = Delegations(pubkeys, roles=roles)

                def route(path: str) -> str:
                    digest = hashlib.sha256(path.encode()).hexdigest()
                    return names[int(digest[:width], 16) // per_bin]

                self._routers[TARGETS] = route
            for n in names:
                self._signers[n] = {s.public_key.keyid: s for s in signers}
                self._add_role(n, TARGETS)
            return names

    def rotate_keys(
        self,
        role: str,
        *,
        add: int = 1,
        remove: Sequence[str] | int = 0,
        threshold: int | None = None,
        scheme: str = "ed25519",
    ) -> list[str]:
        """Add ``add`` new keys to ``role`` and revoke ``remove`` (key ids, or the
        N oldest); optionally set a new threshold. Returns the new key ids.

        ``scheme`` is the signing scheme of the new keys, one of :data:`KEY_SCHEMES` (see
        :func:`generate_signer`); ValueError for another, before anything changes.

        For top-level roles this changes root (next publish writes a new root
        version, signed by the old and the new root keys when root itself is
        rotated); for named delegations it changes the delegator. The rotated
        role is re-signed with its new keys on the next publish.
        """
        _check_scheme(scheme)
        with self._lock:
            current = self._signers[role]
            revoke = list(current)[:remove] if isinstance(remove, int) else list(remove)
            if role in TOP_LEVEL_ROLES:
                delegator: Root | Targets = self._md[ROOT].signed
                if role == ROOT:
                    self._root_cosigners.update(current)
            else:
                parent = self._md[self._delegator[role]].signed
                if parent.delegations is None or parent.delegations.roles is None:
                    raise ValueError("keys of succinct hash bins cannot be rotated")
                delegator = parent
            new = [self._new_signer(scheme) for _ in range(add)]
            for s in new:
                delegator.add_key(s.public_key, role)
                current[s.public_key.keyid] = s
            for keyid in revoke:
                delegator.revoke_key(keyid, role)
                del current[keyid]
            role_obj = delegator.get_delegated_role(role)
            if threshold is not None:
                role_obj.threshold = threshold
            if role_obj.threshold > len(current):
                raise ValueError(f"{role}: threshold {role_obj.threshold} > {len(current)} keys")
            self._dirty.update({role, self.delegator_of(role)})
            return [s.public_key.keyid for s in new]

    def set_consistent_snapshot(self, value: bool) -> None:
        """Set root's ``consistent_snapshot``; the next publish writes a new root version
        and serves files as that root says (see the module docstring)."""
        with self._lock:
            root: Root = self._md[ROOT].signed
            if root.consistent_snapshot != value:
                root.consistent_snapshot = value
                self._dirty.add(ROOT)

    def set_expiry(self, role: str, value: Expiry | None) -> None:
        """Set ``role``'s expiry: a timedelta is re-applied relative to each
        signing (negative = already expired), a datetime is fixed; ``None``
        restores the default. The role is re-signed on the next publish."""
        with self._lock:
            if value is None:
                self._expiry.pop(role, None)
                if role in DEFAULT_EXPIRY:
                    self._expiry[role] = DEFAULT_EXPIRY[role]
            else:
                self._expiry[role] = value
            self._dirty.add(role)

    def bump_version(self, role: str, by: int = 1) -> None:
        """Make ``role``'s next version ``current + by`` (a version jump)."""
        if by < 1:
            raise ValueError("by must be >= 1")
        with self._lock:
            self._bumps[role] = by
            self._dirty.add(role)

    def reserve_version(self, role: str, version: int) -> None:
        """Make the next published version of ``role`` exceed ``version``.

        Fault injection calls this for versions it used in forged files, so
        that after the fault is cleared the next publish moves past them and
        warm clients (which cached forged timestamp / snapshot) recover: the
        role is re-signed on the next publish even if its content is unchanged.
        """
        with self._lock:
            if version >= self._md[role].signed.version:
                self._reserved[role] = max(version, self._reserved.get(role, 0))
                self._dirty.add(role)

    def publish(self, *, extra_signers: Iterable[str] = ()) -> RepositoryState:
        """Sign every changed role, bump snapshot and timestamp, append a state.

        ``extra_signers``: roles that get an additional signature by
        :attr:`unknown_signer` (valid metadata carrying an unauthorized signature).
        """
        return self._publish(force=True, extra=set(extra_signers))

    def resign(self, role: str, *, extra_signer: bool = False) -> RepositoryState:
        """Publish a new version of just ``role`` (and whatever must follow:
        snapshot and timestamp for targets roles, timestamp for snapshot)."""
        with self._lock:
            self._dirty.add(role)
            return self._publish(force=False, extra={role} if extra_signer else set())

    # -------------------------------------------------------------- internals

    def _new_signer(self, scheme: str = "ed25519") -> CryptoSigner:
        signer = generate_signer(scheme)
        self._keyring[signer.public_key.keyid] = signer
        return signer

    def _add_role(self, name: str, delegator: str) -> None:
        now = utcnow()
        self._md[name] = Metadata(Targets(expires=now))
        self._delegator[name] = delegator
        self._dirty.update({name, delegator})

    def _route(self, path: str, role: str | None) -> str:
        if role is not None:
            if role not in self._md or role in (ROOT, TIMESTAMP, SNAPSHOT):
                raise KeyError(f"no targets role {role!r}")
            return role
        router = self._routers.get(TARGETS)
        return router(path) if router else TARGETS

    def _expires(self, role: str, now: datetime) -> datetime:
        value = self._expiry.get(role, DEFAULT_DELEGATED_EXPIRY)
        if isinstance(value, timedelta):
            return now + value
        return value

    def _sign_role(self, role: str, now: datetime, extra: set[str]) -> bytes:
        md = self._md[role]
        if role in self._published:
            md.signed.version += self._bumps.pop(role, 1)
            md.signed.version = max(md.signed.version, self._reserved.pop(role, 0) + 1)
        self._bumps.pop(role, None)
        self._published.add(role)
        md.signed.expires = self._expires(role, now)
        signers: dict[str, Signer] = dict(self._signers[role])
        if role == ROOT:
            signers.update(self._root_cosigners)
            self._root_cosigners.clear()
        if role in extra:
            signers[self._unknown.public_key.keyid] = self._unknown
        data = sign_metadata(md, signers.values())
        if role == TIMESTAMP:
            self._pending_files[metadata_file(TIMESTAMP)] = data
        else:
            self._pending_files[metadata_file(role, md.signed.version)] = data
        return data

    def _plain_files(
        self, files: Mapping[str, bytes], versions: Mapping[str, int]
    ) -> dict[str, bytes]:
        """What a repository without consistent snapshots serves: every root version, the
        timestamp, the current version of every other role unversioned, and the targets
        the current roles list at their plain paths."""
        plain = {
            name: data for name, data in files.items()
            if not name.startswith("targets/")
            and not ((m := _VERSIONED.match(name)) and m.group(2) != ROOT)
        }
        for role, version in versions.items():
            if role in (ROOT, TIMESTAMP):
                continue
            plain[metadata_file(role)] = files[metadata_file(role, version)]
            if role != SNAPSHOT:
                targets: Targets = self._md[role].signed
                for path, tf in targets.targets.items():
                    data = files.get(target_file(path, tf.hashes.get("sha256", "")))
                    if data is not None:
                        plain[target_file(path, "", False)] = data
        return plain

    def _publish(self, *, force: bool, extra: set[str]) -> RepositoryState:
        with self._lock:
            now = utcnow()
            dirty = self._dirty
            snapshot: Snapshot = self._md[SNAPSHOT].signed
            timestamp: Timestamp = self._md[TIMESTAMP].signed
            if ROOT in dirty:
                self._sign_role(ROOT, now, extra)
            for role in self._md:
                if (role in TOP_LEVEL_ROLES and role != TARGETS) or role not in dirty:
                    continue
                data = self._sign_role(role, now, extra)
                version = self._md[role].signed.version
                if self.snapshot_hashes:
                    snapshot.meta[f"{role}.json"] = MetaFile.from_data(version, data, ["sha256"])
                else:
                    snapshot.meta[f"{role}.json"] = MetaFile(version)
                dirty.add(SNAPSHOT)
            if force:
                dirty.update({SNAPSHOT, TIMESTAMP})
            if SNAPSHOT in dirty:
                data = self._sign_role(SNAPSHOT, now, extra)
                if self.timestamp_hashes:
                    timestamp.snapshot_meta = MetaFile.from_data(
                        snapshot.version, data, ["sha256"]
                    )
                else:
                    timestamp.snapshot_meta = MetaFile(snapshot.version)
                dirty.add(TIMESTAMP)
            if TIMESTAMP in dirty:
                self._sign_role(TIMESTAMP, now, extra)
            dirty.clear()
            files = dict(self._files)
            files.update(self._pending_files)
            self._pending_files.clear()
            self._files = files
            versions = {role: md.signed.version for role, md in self._md.items()}
            consistent = self.consistent_snapshot
            served = files if consistent else self._plain_files(files, versions)
            state = RepositoryState(
                len(self._states), MappingProxyType(served), MappingProxyType(versions), now,
                consistent,
            )
            self._states.append(state)
            return state


__all__ = [
    "DEFAULT_EXPIRY",
    "KEY_SCHEMES",
    "ROOT",
    "SNAPSHOT",
    "TARGETS",
    "TIMESTAMP",
    "TOP_LEVEL_ROLES",
    "RepositoryState",
    "SimulatedRepository",
    "generate_signer",
    "metadata_file",
    "served_metadata_file",
    "sign_metadata",
    "target_file",
    "utcnow",
]
