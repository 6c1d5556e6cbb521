"""Fingerprints of the keys and threshold a delegator sets for a role.

A verdict or a fact about a role's signatures holds only for the keys it was computed with:
the inspector caches facts, and the delegation sweep reuses verdicts, per fingerprint.
"""

from __future__ import annotations

import hashlib

from tuf.api.metadata import Root, Targets


class KeyFingerprints:
    """Memoized per role object (thousands of hash bins share one) and per key set of one
    delegator (thousands of classic bins each name the same keys), for one pass."""

    def __init__(self) -> None:
        self._cache: dict[int, tuple[object, str]] = {}
        self._sets: dict[tuple[int, int, tuple[str, ...]], tuple[object, str]] = {}

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
        keyids = tuple(sorted(role.keyids))
        key = (id(delegator), role.threshold, keyids)
        same = self._sets.get(key)
        if same is not None and same[0] is delegator:
            text = same[1]
        else:
            text = _fingerprint(delegator, role.threshold, keyids)
            self._sets[key] = (delegator, text)
        self._cache[id(role)] = (role, text)
        return text

    def of_child(self, delegator: Targets, name: str) -> str:
        """:meth:`of` for a role the caller listed from ``delegator.delegations`` itself
        (its ``roles``, or ``succinct_roles.get_roles()``): the same fingerprint, without
        python-tuf's test that ``name`` is delegated (for a hash bin, a parse of its name)
        once the delegator's role object is known. Raises what :meth:`of` raises."""
        delegations = delegator.delegations
        role: object = None
        if delegations is not None:
            if delegations.roles is not None:
                role = delegations.roles.get(name)
            else:
                role = delegations.succinct_roles
        hit = None if role is None else self._cache.get(id(role))
        if hit is not None and hit[0] is role:
            return hit[1]
        return self.of(delegator, name)


def _fingerprint(delegator: Root | Targets, threshold: int, keyids: tuple[str, ...]) -> str:
    keys = []
    for keyid in keyids:
        try:
            keys.append(f"{keyid}:{delegator.get_key(keyid).keyval}")
        except ValueError:
            keys.append(f"{keyid}:?")
    return hashlib.sha256(f"{threshold}|{'|'.join(keys)}".encode()).hexdigest()
