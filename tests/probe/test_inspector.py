"""The inspector: facts from bytes, the fast payload path never changes an answer."""

from __future__ import annotations

import hashlib
import json
import random
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from securesystemslib.formats import encode_canonical
from securesystemslib.signer import CryptoSigner, Signature
from support import counting_verifications
from tuf.api import exceptions
from tuf.api.metadata import Delegations, Metadata, Root, SuccinctRoles, Targets
from tuf.api.serialization import SerializationError
from tuf.api.serialization.json import CanonicalJSONSerializer

from exporter.probe.fingerprints import KeyFingerprints
from exporter.probe.inspector import CachedFile, Inspector, file_identity
from exporter.simulator import SimulatedRepository
from exporter.simulator.repository import metadata_file


def _files(repo: SimulatedRepository) -> dict[str, bytes]:
    state = repo.latest
    files = {role: state.metadata(role) for role in ("root", "timestamp", "snapshot", "targets")}
    for role in repo.delegated_roles:
        files[role] = state.metadata(role)
    return files


def _team_repository() -> SimulatedRepository:
    """A published repository delegating team/* to the role "team", which lists one target."""
    repo = SimulatedRepository()
    repo.delegate("team", ["team/*"])
    repo.add_target("team/a", b"a", role="team")
    repo.publish()
    return repo


def test_facts_match_what_tuf_api_metadata_says() -> None:
    repo = _team_repository()
    inspected = Inspector().inspect(_files(repo))
    for role, facts in {**inspected.roles, **inspected.delegated}.items():
        md = Metadata.from_bytes(_files(repo)[role])
        assert facts.version == md.signed.version
        assert facts.expires == md.signed.expires
        assert facts.signatures_valid == len(md.signatures)
    assert inspected.roles["targets"].threshold == 2
    assert inspected.declared_delegations == ("team",)


def test_a_payload_the_fast_encoder_gets_wrong_still_verifies() -> None:
    """A string with a control character: canonical JSON writes it raw, json.dumps escapes it,
    so the fast payload differs and the inspector must fall back to canonical JSON."""
    repo = SimulatedRepository()
    repo.add_target("odd", b"x")
    repo.publish()
    md = Metadata.from_bytes(repo.latest.metadata("targets"))
    md.signed.unrecognized_fields["note"] = "tab\there, unicode \u00e9"
    md.signatures.clear()
    for signer in repo.signers("targets"):
        md.sign(signer, append=True)
    data = md.to_bytes()
    signed = json.loads(data)["signed"]
    fast = json.dumps(signed, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    assert fast != encode_canonical(signed), "the case must exercise the fallback"
    files = _files(repo) | {"targets": data}
    facts = Inspector().inspect(files).roles["targets"]
    assert facts.signatures_valid == 2 and facts.unknown_signers == ()


def test_unreadable_bytes_give_no_facts_and_no_error() -> None:
    repo = SimulatedRepository()
    files = _files(repo) | {"timestamp": b"{not json", "snapshot": b"[" * 100_000}
    inspected = Inspector().inspect(files)
    assert set(inspected.roles) == {"root", "targets"}


def test_the_first_payload_is_the_canonical_one_for_ordinary_metadata() -> None:
    """The fast ASCII encoding is tried only when it equals the UTF-8 one, so with or without
    non-ASCII text the first payload tried is canonical JSON for ordinary metadata."""
    from exporter.probe.inspector import _payloads

    for signed in (
        {"b": [1, 2], "a": "plain", "c": {"z": "x", "y": True}},
        {"b": "caf\u00e9 \u2603", "a": "\U0001f600"},
        {"a": "a literal \\u0041 backslash-u"},
    ):
        first = next(iter(_payloads(signed)))
        assert first == encode_canonical(signed).encode(), signed


def test_non_ascii_metadata_verifies() -> None:
    repo = SimulatedRepository()
    repo.add_target("caf\u00e9/\u2603.txt", b"x")
    repo.publish()
    facts = Inspector().inspect(_files(repo)).roles["targets"]
    assert facts.signatures_valid == 2 and facts.unknown_signers == ()


def test_a_large_file_is_read_with_the_gc_paused_and_the_gc_state_restored(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import gc

    from exporter.probe import inspector

    repo = SimulatedRepository()
    repo.add_target("files/a", b"a")
    repo.publish()
    files = _files(repo)
    states: list[bool] = []
    real_loads = json.loads

    def loads(data: bytes, **options: Any) -> object:
        if options:  # the parse of a file for its facts (not the peek at a root's version)
            states.append(gc.isenabled())
        return real_loads(data, **options)

    monkeypatch.setattr(inspector, "_GC_PAUSE_BYTES", len(files["targets"]))
    monkeypatch.setattr(inspector.json, "loads", loads)
    assert gc.isenabled()
    facts = Inspector().inspect(files).roles
    assert gc.isenabled()
    # the GC was paused exactly for the files at least as large as the threshold
    order = ("root", "timestamp", "snapshot", "targets")
    assert states == [len(files[r]) < len(files["targets"]) for r in order]
    assert states[-1] is False
    assert facts["targets"].signatures_valid == 2
    gc.disable()
    try:
        states.clear()
        Inspector().inspect(files)
        assert not gc.isenabled(), "a GC disabled by someone else stays disabled"
        assert states == [False] * 4
    finally:
        gc.enable()


def _on_disk(tmp_path: Path, files: dict[str, bytes]) -> dict[str, bytes | CachedFile]:
    """``files`` written as a client cache (atomic replace, as the prober writes it)."""
    out: dict[str, bytes | CachedFile] = {}
    for role, data in files.items():
        path = tmp_path / f"{role}.json"
        tmp = tmp_path / f".{role}.json.tmp"
        tmp.write_bytes(data)
        tmp.replace(path)
        out[role] = CachedFile(str(path), file_identity(path.stat()))
    return out


def _counting_reads(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    from exporter.probe import inspector

    reads: list[str] = []
    real = inspector.read_file

    def read(path: str) -> tuple[bytes, tuple[int, int, int]] | None:
        reads.append(Path(path).name)
        return real(path)

    monkeypatch.setattr(inspector, "read_file", read)
    return reads


def test_unchanged_cache_files_are_not_read_again_and_changed_ones_are(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    repo = _team_repository()
    reads = _counting_reads(monkeypatch)
    inspector = Inspector()
    first = inspector.inspect(_on_disk(tmp_path, _files(repo)))
    assert sorted(reads) == sorted(f"{r}.json" for r in _files(repo))
    assert first.delegated["team"].signatures_valid == 1
    reads.clear()
    files = {r: CachedFile(str(tmp_path / f"{r}.json"),
                           file_identity((tmp_path / f"{r}.json").stat()))
             for r in _files(repo)}
    assert inspector.inspect(files) == first
    assert reads == []
    # the team role is re-signed: a new file (atomic replace), new facts
    repo.add_target("team/b", b"b", role="team")
    repo.set_expiry("team", datetime(2100, 1, 2, tzinfo=UTC))
    repo.publish()
    changed = _on_disk(tmp_path, {"team": repo.latest.metadata("team")})
    again = inspector.inspect(files | changed)
    assert reads == ["team.json"]
    md = Metadata.from_bytes(repo.latest.metadata("team"))
    facts = again.delegated["team"]
    assert (facts.version, facts.expires) == (md.signed.version, md.signed.expires)
    assert facts.version > first.delegated["team"].version
    assert facts.sha256 != first.delegated["team"].sha256


def test_the_facts_given_for_an_unchanged_cache_file_come_back_past_the_content_cache(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Facts by content hash are an LRU of ``max_entries``; the facts last given for a cache
    file stay with the file (as long as its identity), so a warm probe of more roles than
    that reads none of its unchanged files again."""
    repo = SimulatedRepository()
    repo.delegate_hash_bins(8, succinct=True)
    repo.publish()
    files = _on_disk(tmp_path, _files(repo))
    inspector = Inspector(max_entries=4)  # fewer than the 8 bins and 4 top-level roles
    first = inspector.inspect(files)
    assert len(first.delegated) == 8
    reads = _counting_reads(monkeypatch)
    assert inspector.inspect(files) == first
    assert reads == []


def test_a_file_whose_delegators_keys_changed_is_read_and_checked_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    repo = _team_repository()
    before = repo.latest.metadata("team")
    inspector = Inspector()
    files = _on_disk(tmp_path, _files(repo))
    assert inspector.inspect(files).delegated["team"].signatures_valid == 1
    # targets now names other keys for team; team itself is unchanged on disk
    md = Metadata[Targets].from_bytes(repo.latest.metadata("targets"))
    assert md.signed.delegations is not None and md.signed.delegations.roles is not None
    new_key = CryptoSigner.generate_ed25519().public_key
    md.signed.delegations.keys[new_key.keyid] = new_key
    md.signed.delegations.roles["team"].keyids = [new_key.keyid]
    md.signatures.clear()
    for signer in repo.signers("targets"):
        md.sign(signer, append=True)
    reads = _counting_reads(monkeypatch)
    after = inspector.inspect(files | {"targets": md.to_bytes()})
    assert repo.latest.metadata("team") == before
    assert reads == ["team.json"]
    facts = after.delegated["team"]
    assert facts.signatures_valid == 0 and facts.signed_by == ()
    assert facts.unknown_signers == tuple(sorted(repo.keyids("team")))


def test_bytes_handed_over_with_a_cached_file_are_used_and_remembered(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    repo = SimulatedRepository()
    repo.publish()
    files = _on_disk(tmp_path, _files(repo))
    reads = _counting_reads(monkeypatch)
    inspector = Inspector()
    handed = {
        r: CachedFile(f.path, f.identity, _files(repo)[r])
        for r, f in files.items() if isinstance(f, CachedFile)
    }
    first = inspector.inspect(handed)
    assert reads == []
    assert inspector.inspect(files) == first  # identities known: still nothing read
    assert reads == []
    assert Inspector().inspect(files) == first  # a new inspector reads them all
    assert len(reads) == len(files)


# ---------------------------------------------------------------------------------------------
# Root facts as python-tuf judges them: against the root's own keys and the previous version's


def _root(repo: SimulatedRepository, version: int) -> bytes:
    return repo.latest[metadata_file("root", version)]


def _rotated(**rotation: Any) -> tuple[SimulatedRepository, list[str]]:
    """A repository whose root v2 rotates the root keys as ``rotation`` says."""
    repo = SimulatedRepository()
    old = repo.keyids("root")
    repo.rotate_keys("root", **rotation)
    repo.publish()
    assert Metadata[Root].from_bytes(_root(repo, 2)).signed.version == 2
    return repo, old


@pytest.mark.parametrize(
    "rotation",
    [{"add": 1, "remove": 1}, {"add": 1, "threshold": 2}, {"add": 2, "remove": 1, "threshold": 2}],
    ids=["key-replaced", "threshold-raised", "keys-and-threshold"],
)
def test_a_rotated_root_is_counted_against_its_own_keys_and_the_previous_roots(
    rotation: dict[str, Any],
) -> None:
    repo, old = _rotated(**rotation)
    v1, v2 = Metadata[Root].from_bytes(_root(repo, 1)), Metadata[Root].from_bytes(_root(repo, 2))
    facts = Inspector().inspect(_files(repo), root_history={1: _root(repo, 1)}).roles["root"]
    assert facts.version == 2
    assert facts.unknown_signers == ()  # the old key signs v2 as the spec requires: not unknown
    assert facts.signed_by == tuple(sorted(v2.signed.roles["root"].keyids))
    assert facts.threshold == v2.signed.roles["root"].threshold
    assert facts.previous_root_signed_by == tuple(sorted(old))
    assert facts.previous_root_threshold == v1.signed.roles["root"].threshold == 1
    # python-tuf's own verdict agrees: both thresholds are met
    payload = CanonicalJSONSerializer().serialize(v2.signed)
    assert v2.signed.get_root_verification_result(v1.signed, payload, v2.signatures).verified
    shown = facts.to_json()
    assert (shown["previous_root_signatures_valid"], shown["previous_root_threshold"]) == (1, 1)
    assert shown["rejected_root"] is None


def test_the_first_root_has_no_previous_version() -> None:
    repo = SimulatedRepository()
    facts = Inspector().inspect(_files(repo), root_history={1: _root(repo, 1)}).roles["root"]
    assert facts.version == 1 and facts.signatures_valid == facts.threshold == 1
    assert facts.previous_root_signed_by is None and facts.previous_root_threshold is None
    assert facts.to_json()["previous_root_signatures_valid"] is None


def test_a_root_signed_by_a_key_neither_version_authorizes_has_an_unknown_signer() -> None:
    repo = SimulatedRepository()
    repo.rotate_keys("root", add=1, remove=1)
    repo.publish(extra_signers=["root"])
    facts = Inspector().inspect(_files(repo), root_history={1: _root(repo, 1)}).roles["root"]
    assert facts.unknown_signers == (repo.unknown_signer.public_key.keyid,)
    assert facts.signatures_valid == facts.previous_root_signatures_valid == 1


def test_a_root_python_tuf_refused_is_reported_as_rejected_not_as_the_trusted_root() -> None:
    """Root v2 names new root keys and is signed by them only, not by v1's key: its own
    threshold is met, v1's is not, and python-tuf refuses it."""
    repo = SimulatedRepository()
    trusted = _root(repo, 1)
    md = Metadata[Root].from_bytes(trusted)
    new = CryptoSigner.generate_ed25519()
    for keyid in list(md.signed.roles["root"].keyids):
        md.signed.revoke_key(keyid, "root")
    md.signed.add_key(new.public_key, "root")
    md.signed.version = 2
    md.sign(new)
    refused = md.to_bytes()
    with pytest.raises(exceptions.UnsignedMetadataError):
        Metadata[Root].from_bytes(trusted).signed.verify_delegate(
            "root", CanonicalJSONSerializer().serialize(md.signed), md.signatures
        )
    inspected = Inspector().inspect(
        _files(repo) | {"root": trusted},
        root_history={1: trusted},
        fetched_roots=[trusted, refused],
    )
    facts = inspected.roles["root"]
    assert facts.version == 1 and facts.sha256 == hashlib.sha256(trusted).hexdigest()
    rejected = facts.rejected_root
    assert rejected is not None and rejected.version == 2
    assert (rejected.signatures_valid, rejected.threshold) == (1, 1)  # its own keys: met
    assert (rejected.previous_root_signatures_valid, rejected.previous_root_threshold) == (0, 1)
    assert rejected.unknown_signers == ()  # signed by a key it authorizes itself
    assert facts.to_json()["rejected_root"]["version"] == 2
    # the other roles are still judged against the trusted root
    assert inspected.roles["timestamp"].signatures_valid == 1


def test_root_facts_are_cached_per_previous_version_and_cache_files_are_not_read_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    repo, _ = _rotated(add=1, remove=1)
    files = _on_disk(tmp_path, _files(repo))
    history = _on_disk(tmp_path, {"1.root": _root(repo, 1)})
    inspector = Inspector()
    first = inspector.inspect(files, root_history={1: history["1.root"]})
    reads = _counting_reads(monkeypatch)
    assert inspector.inspect(files, root_history={1: history["1.root"]}) == first
    assert reads == []
    assert first.roles["root"].previous_root_signatures_valid == 1
    # without the previous version the counts are the root's own only
    alone = inspector.inspect(files).roles["root"]
    assert alone.previous_root_signed_by is None
    assert alone.unknown_signers != ()  # the old root key is unknown to v2 alone


# ---------------------------------------------------------------------------------------------
# Hostile metadata: python-tuf's verdict, no facts, never an exception


def _float_targets(repo: SimulatedRepository, value: object) -> bytes:
    """targets with custom data canonical JSON cannot encode, signed over what the fast C
    encoder writes (the payload a careless signing tool produces)."""
    signed = Metadata.from_bytes(repo.latest.metadata("targets")).signed.to_dict()
    signed["custom_blob"] = {"score": value}
    payload = json.dumps(signed, sort_keys=True, separators=(",", ":")).encode()
    signatures = [
        {"keyid": s.public_key.keyid, "sig": s.sign(payload).signature}
        for s in repo.signers("targets")
    ]
    return json.dumps({"signed": signed, "signatures": signatures}).encode()


@pytest.mark.parametrize("value", [0.5, float("nan"), float("inf"), 1e3])
def test_a_float_in_signed_metadata_counts_no_valid_signature(value: float) -> None:
    """python-tuf cannot build the canonical payload (securesystemslib "I cannot encode"), so
    no signature can verify, however well it verifies over the C encoder's output."""
    repo = SimulatedRepository()
    data = _float_targets(repo, value)
    with pytest.raises(SerializationError):
        md = Metadata.from_bytes(data)
        Metadata.from_bytes(repo.latest.metadata("root")).signed.verify_delegate(
            "targets", CanonicalJSONSerializer().serialize(md.signed), md.signatures
        )
    facts = Inspector().inspect(_files(repo) | {"targets": data}).roles["targets"]
    assert facts.signatures_valid == 0 and facts.threshold == 2
    assert facts.version == 1


_HOSTILE: dict[str, Any] = {
    "huge-int": lambda d: d["signed"].__setitem__("version", int("9" * 5000)),
    "huge-int-text": lambda d: d["signed"].__setitem__("version", 10**400),
    "version-string": lambda d: d["signed"].__setitem__("version", "1"),
    "version-bool": lambda d: d["signed"].__setitem__("version", True),
    "signed-list": lambda d: d.__setitem__("signed", []),
    "signatures-dict": lambda d: d.__setitem__("signatures", {"a": "b"}),
    "signature-not-hex": lambda d: d["signatures"][0].__setitem__("sig", "zz"),
    "signature-int": lambda d: d["signatures"][0].__setitem__("sig", 7),
    "expires-int": lambda d: d["signed"].__setitem__("expires", 7),
    "keys-wrong": lambda d: d["signed"].get("keys", {}).update({"k": {"keytype": 1}}),
    "roles-missing": lambda d: d["signed"].pop("roles", None),
    "deep": lambda d: d["signed"].__setitem__("x", json.loads("[" * 5000 + "]" * 5000)),
    "nan": lambda d: d["signed"].__setitem__("x", float("nan")),
}


@pytest.mark.parametrize("role", ["root", "timestamp", "targets"])
@pytest.mark.parametrize("mutation", sorted(_HOSTILE))
def test_hostile_metadata_never_raises(role: str, mutation: str) -> None:
    repo = _team_repository()
    document = json.loads(_files(repo)[role])
    try:
        _HOSTILE[mutation](document)
        data = json.dumps(document).encode()
    except (ValueError, RecursionError):
        data = b'{"signed": ' + b"[" * 100_000  # what could not even be written
    roots: dict[str, Any] = {"fetched_roots": [data]} if role == "root" else {}
    inspected = Inspector().inspect(_files(repo) | {role: data}, **roots)
    assert role not in inspected.roles or inspected.roles[role].version >= 1


def _mutate(rng: random.Random, value: Any, depth: int = 0) -> Any:
    """One random change somewhere inside a parsed JSON document."""
    if isinstance(value, dict) and value and rng.random() < 0.8:
        key = rng.choice(sorted(value))
        out = dict(value)
        if rng.random() < 0.1:
            del out[key]
        else:
            out[key] = _mutate(rng, value[key], depth + 1)
        return out
    if isinstance(value, list) and value and rng.random() < 0.8:
        i = rng.randrange(len(value))
        return [*value[:i], _mutate(rng, value[i], depth + 1), *value[i + 1:]]
    return rng.choice([
        None, True, 0, -1, 2**64, 10**30, 0.5, "", "x", "2030-01-01T00:00:00Z", [], {},
        [value], {"x": value}, "00" * 32, {"keytype": "ed25519", "scheme": "x", "keyval": {}},
    ])


def test_randomly_mutated_metadata_never_raises_and_never_counts_more_than_python_tuf() -> None:
    """Seeded random mutations of every file of a repository with a delegation: the inspector
    never raises, and never counts a threshold of valid signatures on a file python-tuf
    refuses to verify against the same delegator."""
    rng = random.Random(1311)
    repo = _team_repository()
    files = _files(repo)
    documents = {role: json.loads(data) for role, data in files.items()}
    root = Metadata[Root].from_bytes(files["root"]).signed
    for _ in range(400):
        role = rng.choice(sorted(documents))
        mutated = documents[role]
        for _ in range(rng.randint(1, 3)):
            mutated = _mutate(rng, mutated)
        data = json.dumps(mutated).encode()
        roots: dict[str, Any] = {"fetched_roots": [data]} if role == "root" else {}
        inspected = Inspector().inspect(files | {role: data}, **roots)
        facts = inspected.roles.get(role)
        top = role in ("timestamp", "snapshot", "targets")
        if top and facts is not None and facts.signatures_valid >= facts.threshold:
            md = Metadata.from_bytes(data)  # python-tuf must accept it as well
            root.verify_delegate(
                role, CanonicalJSONSerializer().serialize(md.signed), md.signatures
            )


def test_a_huge_succinct_delegation_is_walked_only_up_to_the_limit() -> None:
    """2^32 hash bins is valid metadata (python-tuf's SuccinctRoles allows bit_length 32, and a
    client only ever computes the one bin it needs); listing them all would never end."""
    repo = SimulatedRepository()
    md = Metadata[Targets].from_bytes(repo.latest.metadata("targets"))
    key = CryptoSigner.generate_ed25519().public_key
    md.signed.delegations = Delegations(
        keys={key.keyid: key},
        succinct_roles=SuccinctRoles([key.keyid], 1, bit_length=32, name_prefix="bin"),
    )
    md.signatures.clear()
    for signer in repo.signers("targets"):
        md.sign(signer, append=True)
    files = _files(repo) | {"targets": md.to_bytes()}
    started = time.monotonic()
    inspected = Inspector().inspect(files, max_delegations=1000)
    assert time.monotonic() - started < 5
    assert len(inspected.declared_delegations) == 1000
    assert inspected.declared_delegations[0] == "bin-00000000"
    assert inspected.roles["targets"].signatures_valid == 2


@pytest.mark.parametrize(
    ("role", "path", "value"),
    [
        ("targets", ("delegations", "roles", 0, "keyids"), [1, "a"]),
        ("targets", ("delegations", "roles", 0, "name"), 5),
        ("root", ("roles", "timestamp", "keyids"), [1, "a"]),
        ("root", ("roles", "root", "threshold"), 10**100),
    ],
)
def test_hostile_delegations_give_no_facts_for_the_role_concerned(
    role: str, path: tuple[str | int, ...], value: object
) -> None:
    repo = _team_repository()
    document = json.loads(_files(repo)[role])
    node = document["signed"]
    for step in path[:-1]:
        node = node[step]
    node[path[-1]] = value
    data = json.dumps(document).encode()
    inspected = Inspector().inspect(
        _files(repo) | {role: data}, root_history={1: _files(repo)["root"]}
    )
    for facts in {**inspected.roles, **inspected.delegated}.values():
        json.dumps(facts.to_json())
    assert "timestamp" in inspected.roles


# ---------------------------------------------------------------------------------------------
# Files python-tuf accepted in this probe (CachedFile.accepted): no second signature count


def _accepted(files: dict[str, bytes | CachedFile], role: str, data: bytes, keys: str
              ) -> dict[str, bytes | CachedFile]:
    cached = files[role]
    assert isinstance(cached, CachedFile)
    return files | {role: CachedFile(cached.path, cached.identity, data, keys)}


def test_a_role_python_tuf_accepted_under_the_same_keys_is_not_counted_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    repo = _team_repository()
    expected = Inspector().inspect(_files(repo)).delegated["team"]
    assert expected.signatures_valid == 1
    targets = Metadata[Targets].from_bytes(_files(repo)["targets"]).signed
    keys = KeyFingerprints().of(targets, "team")
    files = _on_disk(tmp_path, _files(repo))
    calls = counting_verifications(monkeypatch)
    facts = Inspector().inspect(_accepted(files, "team", _files(repo)["team"], keys))
    assert facts.delegated["team"] == expected
    assert "team" not in calls
    # accepted under other keys (the delegator changed since): counted by python-tuf again
    facts = Inspector().inspect(_accepted(files, "team", _files(repo)["team"], "other"))
    assert facts.delegated["team"] == expected
    assert calls.count("team") == 1


def test_an_accepted_role_with_more_authorized_signatures_than_its_threshold_is_counted(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    repo = _team_repository()
    files = _files(repo)
    # team: two authorized keys, threshold 1; the second key's signature does not verify
    extra = CryptoSigner.generate_ed25519()
    targets = Metadata[Targets].from_bytes(files["targets"])
    delegations = targets.signed.delegations
    assert delegations is not None and delegations.roles is not None
    delegations.keys[extra.public_key.keyid] = extra.public_key
    delegations.roles["team"].keyids.append(extra.public_key.keyid)
    targets.signatures.clear()
    for signer in repo.signers("targets"):
        targets.sign(signer, append=True)
    team = Metadata[Targets].from_bytes(files["team"])
    bad = Signature(extra.public_key.keyid, "00" * 64)
    team.signatures[bad.keyid] = bad
    files = files | {"targets": targets.to_bytes(), "team": team.to_bytes()}
    keys = KeyFingerprints().of(targets.signed, "team")
    calls = counting_verifications(monkeypatch)
    facts = Inspector().inspect(
        _accepted(_on_disk(tmp_path, files), "team", files["team"], keys)
    ).delegated["team"]
    assert calls.count("team") >= 1
    assert facts.signed_by == tuple(repo.keyids("team"))
    assert facts.threshold == 1
