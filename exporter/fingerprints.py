"""Fingerprints of the keys and threshold a delegator sets for a role.

A verdict or a fact about a role's signatures holds only for the keys it was computed with:
the inspector caches facts, and the delegation sweep reuses verdicts, per fingerprint.
"""

from __future__ import annotations

import hashlib

from tuf.api.metadata import Root, Targets


class KeyFingerprints:
    """Memoized per role object (thousands of hash bins share one), for one pass."""

    def __init__(self) -> None:
        self._cache: dict[int, tuple[object, str]] = {}

    def of(self, delegator: Root | Targets | None, name: str) -> str:
        """The fingerprint of the keys and threshold ``delegator`` sets for role ``name``."""
        if delegator is None:
            return "-"
        try:
            role = delegator.get_delegated_role(name)
        except ValueError:
            return "undelegated"
        hit = self._cache.get(id(role))
        if hit is not None and hit[0] is role:
            return hit[1]
        keys = []
        for keyid in sorted(role.keyids):
            try:
                keys.append(f"{keyid}:{delegator.get_key(keyid).keyval}")
            except ValueError:
                keys.append(f"{keyid}:?")
        text = hashlib.sha256(f"{role.threshold}|{'|'.join(keys)}".encode()).hexdigest()
        self._cache[id(role)] = (role, text)
        return text
