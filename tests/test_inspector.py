"""The inspector: facts from bytes, the fast payload path never changes an answer."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from securesystemslib.formats import encode_canonical
from securesystemslib.signer import CryptoSigner
from tuf.api.metadata import Metadata, Targets

from exporter.inspector import CachedFile, Inspector, file_identity
from exporter.simulator import SimulatedRepository


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
    from exporter.inspector import _payloads

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

    from exporter import inspector

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
    from exporter import inspector

    reads: list[str] = []
    real = inspector._read_file

    def read(path: str) -> tuple[bytes, tuple[int, int, int]] | None:
        reads.append(Path(path).name)
        return real(path)

    monkeypatch.setattr(inspector, "_read_file", read)
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
