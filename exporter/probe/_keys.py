"""The keys a repository authorizes for a role, as the signing probes need them: read from metadata
python-tuf verified (:func:`authorized_keys_from`, :class:`CachedKeySource` over a client cache),
read from a public key file (:func:`load_public_key`), and matched by key material
(:func:`match_authorized`). Parsed, never verified here: python-tuf verified the metadata.
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType

from securesystemslib.signer import Key
from securesystemslib.signer._utils import compute_default_keyid
from tuf.api.metadata import Metadata, Root, Targets

from exporter.catalogue import TOP_LEVEL_ROLES
from exporter.probe.classify import describe

# the signing probes' logger: these lines were logged by exporter.probe.signers before the split
logger = logging.getLogger("exporter.probe.signers")


@dataclass(frozen=True)
class AuthorizedKeys:
    """The keys a repository's current verified metadata authorizes for one role."""

    #: keyid -> public key, as the delegator lists them for the role.
    keys: Mapping[str, Key]
    threshold: int
    #: Version of the delegating metadata (root for top-level roles).
    version: int


#: ``(repository, role) -> AuthorizedKeys``, or None while no verified metadata is known.
KeySource = Callable[[str, str], AuthorizedKeys | None]


def authorized_keys_from(delegator_metadata: bytes, role: str) -> AuthorizedKeys:
    """The keys ``role`` is authorized to sign with, read from its delegator's metadata.

    ``delegator_metadata`` is the bytes of root (for top-level roles) or of the delegating
    targets role (for delegated roles, including succinct hash bins). The bytes are parsed,
    not verified: pass metadata the prober has already verified. ValueError when the
    metadata is neither root nor targets, or does not delegate to ``role``.
    """
    signed = Metadata.from_bytes(delegator_metadata).signed
    if not isinstance(signed, Root | Targets):
        raise ValueError(f"{signed.type} metadata delegates to no role")
    delegated = signed.get_delegated_role(role)
    keys = {keyid: signed.get_key(keyid) for keyid in delegated.keyids}
    return AuthorizedKeys(MappingProxyType(keys), delegated.threshold, signed.version)


class CachedKeySource:
    """A :data:`KeySource` reading the verified metadata python-tuf keeps in a client cache.

    ``metadata_dir_for(repository)`` names the cache's metadata directory (for the service:
    ``prober.cache_dir(repository, repository.primary) / "metadata"``), or None. ngclient
    and the prober only ever write metadata there after verifying it, atomically. Top-level
    roles are looked up in ``root.json``; delegated roles in ``targets.json`` first, then in
    the other cached targets roles. While a file is briefly missing (a cold-mode probe
    clears the cache) the last value read is returned; a role no cached metadata delegates to
    gives None.
    """

    def __init__(self, metadata_dir_for: Callable[[str], Path | None]) -> None:
        """See the class documentation."""
        self._dir_for = metadata_dir_for
        self._lock = threading.Lock()
        self._last: dict[tuple[str, str], AuthorizedKeys] = {}

    def __call__(self, repository: str, role: str) -> AuthorizedKeys | None:
        """The keys the cached metadata of ``repository`` authorizes for ``role``."""
        directory = self._dir_for(repository)
        if directory is None:
            return None
        try:
            keys = self._read(directory, role)
        except FileNotFoundError:
            with self._lock:
                return self._last.get((repository, role))
        except Exception as exc:  # noqa: BLE001 - unreadable metadata means "unknown"
            logger.warning("cannot read the %s keys of %s from %s: %s", role, repository,
                           directory, describe(exc))
            return None
        with self._lock:
            if keys is None:
                self._last.pop((repository, role), None)
            else:
                self._last[(repository, role)] = keys
        return keys

    def retain(self, repositories: Iterable[str]) -> None:
        """Forget the last values read for repositories other than ``repositories`` (the
        ones configured signers sign for), so removed repositories leave nothing behind."""
        keep = set(repositories)
        with self._lock:
            for key in [k for k in self._last if k[0] not in keep]:
                del self._last[key]

    @staticmethod
    def _read(directory: Path, role: str) -> AuthorizedKeys | None:
        if role in TOP_LEVEL_ROLES:
            return authorized_keys_from((directory / "root.json").read_bytes(), role)
        targets = directory / "targets.json"
        others = sorted(p for p in directory.glob("*.json")
                        if p.stem not in TOP_LEVEL_ROLES and p != targets)
        for path in (targets, *others):
            try:
                data = path.read_bytes()
            except FileNotFoundError:
                if path == targets:
                    raise
                continue
            signed: object = Metadata.from_bytes(data).signed
            if not isinstance(signed, Targets) or signed.delegations is None:
                continue
            try:
                return authorized_keys_from(data, role)
            except ValueError:
                continue
        return None


def load_public_key(path: Path) -> Key:
    """Read a securesystemslib public key JSON file.

    The file holds one key dict (``keytype``, ``scheme``, ``keyval``) with an optional
    ``keyid``; without it the default keyid (SHA-256 of the canonical key) is used.
    """
    data = json.loads(path.read_text(encoding="utf-8"))
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a JSON object with keytype, scheme and keyval")
    keyid = data.pop("keyid", None)
    if keyid is None:
        keyid = compute_default_keyid(data["keytype"], data["scheme"], data["keyval"])
    return Key.from_dict(str(keyid), data)


def _same_key(a: Key, b: Key) -> bool:
    return (a.keytype, a.scheme, a.keyval) == (b.keytype, b.scheme, b.keyval)


def match_authorized(key: Key, authorized: AuthorizedKeys) -> Key | None:
    """The authorized key with the same key material as ``key`` (whatever its keyid), if any."""
    found = authorized.keys.get(key.keyid)
    if found is not None and _same_key(found, key):
        return found
    return next((k for k in authorized.keys.values() if _same_key(k, key)), None)
