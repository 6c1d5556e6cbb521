"""Key fingerprints: equal for equal keys and threshold, different otherwise, memoized safely."""

from __future__ import annotations

from securesystemslib.signer import CryptoSigner
from tuf.api.metadata import DelegatedRole, Delegations, SuccinctRoles, Targets

from exporter.probe.fingerprints import KeyFingerprints


def _targets(threshold_of_c: int = 1) -> Targets:
    a, b = (CryptoSigner.generate_ed25519().public_key for _ in range(2))
    roles = {
        "a": DelegatedRole("a", [a.keyid], 1, True, paths=["a/*"]),
        "b": DelegatedRole("b", [a.keyid], 1, True, paths=["b/*"]),  # same keys as "a"
        "c": DelegatedRole("c", [a.keyid], threshold_of_c, True, paths=["c/*"]),
        "d": DelegatedRole("d", [b.keyid], 1, True, paths=["d/*"]),
        "e": DelegatedRole("e", [b.keyid, a.keyid], 1, True, paths=["e/*"]),
        "f": DelegatedRole("f", [a.keyid, b.keyid], 1, True, paths=["f/*"]),
    }
    return Targets(delegations=Delegations({a.keyid: a, b.keyid: b}, roles=roles))


def test_fingerprints_follow_keys_and_threshold_only() -> None:
    targets = _targets(threshold_of_c=2)
    keys = KeyFingerprints()
    of = {name: keys.of(targets, name) for name in "abcdef"}
    assert of["a"] == of["b"]  # same keys and threshold, other role
    assert of["c"] != of["a"]  # other threshold
    assert of["d"] != of["a"]  # other key
    assert of["e"] == of["f"]  # key order does not matter
    assert of["e"] != of["a"]
    assert keys.of(targets, "zzz") == "undelegated"
    assert keys.of(None, "a") == "-"


def test_fingerprints_of_another_delegator_are_not_taken_from_the_memo() -> None:
    keys = KeyFingerprints()
    first, second = _targets(), _targets()  # same role names and keyids layout, new keys
    assert keys.of(first, "a") != keys.of(second, "a")
    assert keys.of(first, "a") == KeyFingerprints().of(first, "a")


def test_the_fingerprint_of_a_listed_child_is_that_of_its_role() -> None:
    classic = _targets(threshold_of_c=2)
    succinct = Targets(delegations=Delegations(
        classic.delegations.keys if classic.delegations else {},
        succinct_roles=SuccinctRoles(sorted(classic.delegations.keys if classic.delegations
                                            else {})[:1], 1, 4, "bin"),
    ))
    keys = KeyFingerprints()
    for name in "abcdef":
        assert keys.of_child(classic, name) == KeyFingerprints().of(classic, name)
    bins = list(succinct.delegations.succinct_roles.get_roles())  # type: ignore[union-attr]
    assert [keys.of_child(succinct, b) for b in bins] == [keys.of(succinct, b) for b in bins]
    assert keys.of_child(classic, "zzz") == "undelegated"  # not listed: as of() says
