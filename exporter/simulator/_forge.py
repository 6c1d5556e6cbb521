"""Forging metadata for the faults of the simulated repository: re-signing a role of an endpoint's
:class:`~exporter.simulator.faults.View` (mutated, a new version, signed validly, by too few or
unknown keys, or loosely) and re-pointing snapshot and timestamp at it, so the forged file is what
a client fetches. Used by the fault implementations of :mod:`exporter.simulator.faults`.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from securesystemslib.signer import Signer
from tuf.api.metadata import Metadata, MetaFile, Snapshot, Timestamp
from tuf.api.serialization.json import JSONSerializer

from exporter.simulator.repository import (
    ROOT,
    SNAPSHOT,
    TIMESTAMP,
    served_metadata_file,
    sign_metadata,
)

if TYPE_CHECKING:
    from exporter.simulator.faults import View

VALID = "valid"
UNKNOWN_ONLY = "unknown-only"
BELOW_THRESHOLD = "below-threshold"
EXTRA_UNKNOWN = "extra-unknown"


def forge(
    view: View,
    role: str,
    mutate: Callable[[Any], None] | None = None,
    *,
    bump: int = 1,
    signing: str = VALID,
    chain_bump: int = 1,
    padding: str | None = None,
    loose: bool = False,
) -> bytes:
    """Re-sign ``role`` in ``view`` (optionally mutated, version + ``bump``).

    ``signing`` chooses the signatures: all authorized keys (``valid``), only
    the never-authorized key (``unknown-only``), threshold - 1 authorized keys
    (``below-threshold``) or all plus the unknown key (``extra-unknown``).
    Snapshot and timestamp are re-signed validly (version + ``chain_bump``)
    so that the forged file is what a client will fetch. Returns the bytes.
    ``loose``: sign what the plain JSON encoder writes, not canonical JSON (for content
    canonical JSON cannot encode, as a careless signing tool would).
    """
    md = view.load(role)
    if mutate is not None:
        mutate(md.signed)
    md.signed.version += bump
    signers, threshold = view.authorized_signers(role)
    chosen: list[Signer] = list(signers)
    if signing == UNKNOWN_ONLY:
        chosen = [view.repo.unknown_signer]
    elif signing == BELOW_THRESHOLD:
        chosen = chosen[: threshold - 1]
    elif signing == EXTRA_UNKNOWN:
        chosen.append(view.repo.unknown_signer)
    data = _sign_loosely(md, chosen) if loose else sign_metadata(md, chosen, padding=padding)
    version = md.signed.version
    view.put(served_metadata_file(role, version, view.state.consistent_snapshot), data)
    if role != ROOT:  # a skipped root version would stop clients walking the root chain
        view.repo.reserve_version(role, version)

    if role in (ROOT, TIMESTAMP):
        return data
    if role == SNAPSHOT:

        def point_timestamp(ts: Timestamp) -> None:
            ts.snapshot_meta = _metafile(ts.snapshot_meta, version, data)

        forge(view, TIMESTAMP, point_timestamp, bump=chain_bump, chain_bump=chain_bump)
        return data

    def point_snapshot(snapshot: Snapshot) -> None:
        key = f"{role}.json"
        snapshot.meta[key] = _metafile(snapshot.meta.get(key, MetaFile(1)), version, data)

    forge(view, SNAPSHOT, point_snapshot, bump=chain_bump, chain_bump=chain_bump)
    return data


def _loose_canonical(value: Any) -> str:
    """Canonical JSON (OLPC: sorted keys, no spaces, only ``\\`` and ``"`` escaped in
    strings) that lets floats through, as a careless signing tool writes it."""
    if isinstance(value, dict):
        items = (f"{_loose_canonical(k)}:{_loose_canonical(v)}" for k, v in sorted(value.items()))
        return "{" + ",".join(items) + "}"
    if isinstance(value, list | tuple):
        return "[" + ",".join(_loose_canonical(v) for v in value) + "]"
    if isinstance(value, str):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    return json.dumps(value)


def _sign_loosely(md: Metadata[Any], signers: list[Signer]) -> bytes:
    """Sign :func:`_loose_canonical` of ``md.signed`` (floats and all); return the file."""
    payload = _loose_canonical(md.signed.to_dict()).encode()
    md.signatures.clear()
    for signer in signers:
        signature = signer.sign(payload)
        md.signatures[signature.keyid] = signature
    return JSONSerializer(compact=True).serialize(md)


def _metafile(old: MetaFile, version: int, data: bytes) -> MetaFile:
    """A MetaFile for ``data`` with the same fields (length/hashes) as ``old``."""
    if old.hashes:
        new = MetaFile.from_data(version, data, list(old.hashes))
        if old.length is None:
            new.length = None
        return new
    return MetaFile(version, len(data) if old.length is not None else None)
