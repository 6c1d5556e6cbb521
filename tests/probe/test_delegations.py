"""The delegation sweep over hash bins: warm sweeps reuse python-tuf's verdicts only while they
would be given again (snapshot entry, delegating keys and cached file unchanged, not expired)."""

from __future__ import annotations

import io
import time
import tracemalloc
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import IO, Any

import pytest
from securesystemslib.signer import CryptoSigner
from support import Sim, counting_verifications, hash_bins, serve
from tuf.api.metadata import SuccinctRoles, Targets
from tuf.ngclient._internal.trusted_metadata_set import TrustedMetadataSet

from exporter.config import Limits, Mode
from exporter.probe import Prober, ProbeResult, delegations
from exporter.probe.fetcher import Fetcher
from exporter.simulator import SimulatedRepository

BINS = 16


def _sim(tmp_path: Path, *, succinct: bool) -> Iterator[Sim]:
    yield from hash_bins(tmp_path, BINS, succinct=succinct, targets=64)  # targets in most bins


@pytest.fixture(params=[True, False], ids=["succinct", "classic"])
def bins(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Sim]:
    yield from _sim(tmp_path, succinct=request.param)


@pytest.fixture
def classic(tmp_path: Path) -> Iterator[Sim]:
    yield from _sim(tmp_path, succinct=False)


def _probe(sim: Sim, prober: Prober, **changes: Any) -> ProbeResult:
    # every probe a full one (no reuse of the last verdict on an unchanged timestamp); a
    # loaded machine may make the simulator slow to accept parallel connections
    config = sim.config(
        canary_targets=(), full_refresh_every=1, timeout=60.0, connect_timeout=10.0,
        read_timeout=10.0, **changes,
    )
    return prober.probe(config, config.primary)


def _bins_fetched(result: ProbeResult) -> set[str]:
    return {r.role for r in result.requests if r.role.startswith("bin-")}


def _cached(sim: Sim, prober: Prober, role: str) -> Path:
    config = sim.config()
    return prober.cache_dir(config, config.primary) / "metadata" / f"{role}.json"


def test_cold_sweep_fetches_every_bin_and_a_warm_one_only_the_changed_bin(bins: Sim) -> None:
    prober = Prober(bins.state_dir)
    cold = _probe(bins, prober)
    assert cold.success, cold.message
    assert cold.delegations.count == BINS
    assert len(_bins_fetched(cold)) == BINS

    changed = bins.repo.role_for_target("bins/file-0.txt")
    bins.repo.add_target("bins/file-0.txt", b"changed\n")
    bins.repo.publish()
    warm = _probe(bins, prober)
    assert warm.success, warm.message
    assert warm.delegations.count == BINS
    assert _bins_fetched(warm) == {changed}
    # the re-fetched bin was verified and cached: the next sweep fetches nothing
    assert _cached(bins, prober, changed).read_bytes() == bins.repo.latest.metadata(changed)
    bins.repo.publish()
    again = _probe(bins, prober)
    assert again.success, again.message
    assert _bins_fetched(again) == set()


def test_a_tampered_bin_fails_after_a_warm_sweep_and_keeps_failing(bins: Sim) -> None:
    prober = Prober(bins.state_dir)
    assert _probe(bins, prober).success
    victim = bins.repo.role_for_target("bins/file-1.txt")
    bins.server.inject("broken-delegation", role=victim)
    for _ in range(2):  # the failure is not memoised away on the next sweep either
        result = _probe(bins, prober)
        assert not result.success
        assert (str(result.reason), str(result.role)) == ("bad_signature", "delegated")
        assert victim in result.message
        assert result.delegations.failures.keys() == {victim}


def test_a_bin_changed_in_the_local_cache_is_verified_again_and_repaired(bins: Sim) -> None:
    prober = Prober(bins.state_dir)
    assert _probe(bins, prober).success
    victim = bins.repo.role_for_target("bins/file-2.txt")
    cached = _cached(bins, prober, victim)
    cached.write_bytes(b"{}")  # same inode, other bytes: the memoised verdict does not apply
    result = _probe(bins, prober)
    assert result.success, result.message
    assert _bins_fetched(result) == {victim}
    assert cached.read_bytes() == bins.repo.latest.metadata(victim)


def test_an_expired_unchanged_bin_fails_although_its_verdict_was_memoised(bins: Sim) -> None:
    victim = bins.repo.role_for_target("bins/file-3.txt")
    expires = datetime.now(UTC).replace(microsecond=0) + timedelta(seconds=2)
    bins.repo.set_expiry(victim, expires)
    bins.repo.publish()
    prober = Prober(bins.state_dir)
    first = _probe(bins, prober)
    assert first.success, first.message
    time.sleep(max(0.0, (expires - datetime.now(UTC)).total_seconds()) + 0.2)
    result = _probe(bins, prober)  # nothing republished: snapshot, keys and file unchanged
    assert not result.success
    assert (str(result.reason), str(result.role)) == ("expired", "delegated")
    assert result.delegations.failures.keys() == {victim}


def test_revoking_a_bins_key_in_the_delegator_invalidates_its_memoised_verdict(
    classic: Sim,
) -> None:
    prober = Prober(classic.state_dir)
    assert _probe(classic, prober).success
    victim = classic.repo.role_for_target("bins/file-4.txt")
    # targets revokes the bin's key and names a new one; the bin itself is not re-signed,
    # so its snapshot entry and bytes are unchanged but python-tuf must now reject it
    new_key = CryptoSigner.generate_ed25519().public_key
    repo = classic.repo
    # the simulator has no "revoke without re-signing" API: change its targets directly
    with repo._lock:
        targets = repo._md["targets"].signed
        assert isinstance(targets, Targets) and targets.delegations is not None
        assert targets.delegations.roles is not None
        # a new list: the simulator's classic bins share one keyids list
        targets.delegations.roles[victim].keyids = [new_key.keyid]
        targets.delegations.keys[new_key.keyid] = new_key
        repo._dirty.add("targets")
    before = repo.latest.metadata(victim)
    repo.publish()
    assert repo.latest.metadata(victim) == before
    result = _probe(classic, prober)
    assert not result.success
    assert (str(result.reason), str(result.role)) == ("bad_signature", "delegated")
    assert result.delegations.failures.keys() == {victim}


def test_the_memo_keeps_only_roles_the_last_sweep_visited(bins: Sim) -> None:
    prober = Prober(bins.state_dir)
    config = bins.config()
    memo = prober._state(config, config.primary).delegation_memo
    assert _probe(bins, prober).success
    assert len(memo) == BINS
    bins.repo.publish()
    truncated = _probe(bins, prober, limits=Limits(max_delegations=4))
    assert truncated.delegations.count == 4
    assert len(memo) == 4


def test_a_bin_that_could_not_be_cached_is_not_memoised(
    bins: Sim, monkeypatch: pytest.MonkeyPatch
) -> None:
    prober = Prober(bins.state_dir)
    assert _probe(bins, prober).success
    changed = bins.repo.role_for_target("bins/file-5.txt")
    bins.repo.add_target("bins/file-5.txt", b"changed\n")
    bins.repo.publish()

    def full_disk(metadata_dir: Path, role: str, source: Path) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr("exporter.probe.prober._persist", full_disk)
    assert _probe(bins, prober).success  # the verdict stands; the cache keeps the old file
    monkeypatch.undo()
    bins.repo.publish()
    again = _probe(bins, prober)  # the old cached file is not taken for the verified one
    assert again.success, again.message
    assert _bins_fetched(again) == {changed}
    assert _cached(bins, prober, changed).read_bytes() == bins.repo.latest.metadata(changed)


# -- every delegation path ---------------------------------------------------------------------


def _two_delegators(tmp_path: Path, second: str = "valid") -> Iterator[Sim]:
    """targets -> a, b; a -> shared; b -> shared: with shared's own key and threshold
    ("valid"), a threshold its keys cannot meet ("threshold") or another role's key
    ("keyids": a valid signature by a key b does not trust for shared)."""
    repo = SimulatedRepository()
    repo.delegate("a")
    repo.delegate("b")
    repo.delegate("shared", delegator="a")
    if second == "threshold":
        repo.delegate_also("shared", "b", threshold=2)
    elif second == "keyids":
        repo.delegate_also("shared", "b", keyids=repo.keyids("a"))
    else:
        repo.delegate_also("shared", "b")
    repo.add_target("shared/file.txt", b"shared\n", role="shared")
    yield from serve(repo, tmp_path)


def test_a_role_delegated_by_two_roles_is_verified_under_both(tmp_path: Path) -> None:
    for sim in _two_delegators(tmp_path):
        result = _probe(sim, Prober(sim.state_dir))
        assert result.success, result.message
        assert result.delegations.count == 3 and result.delegations.failing == 0


@pytest.mark.parametrize("second", ["threshold", "keyids"])
def test_an_invalid_second_delegation_path_fails_cold_and_warm(
    tmp_path: Path, second: str
) -> None:
    for sim in _two_delegators(tmp_path, second):
        prober = Prober(sim.state_dir)
        for mode in (Mode.COLD, Mode.WARM, Mode.WARM):  # a warm sweep reuses the first verdict
            result = _probe(sim, prober, mode=mode)
            assert not result.success
            assert result.delegations.failing == 1
            assert set(result.delegations.failures) == {"shared (via b)"}
            assert "UnsignedMetadataError" in result.delegations.failures["shared (via b)"]
            assert result.message is not None and "shared (via b)" in result.message


def test_an_invalid_first_path_fails_and_the_valid_second_one_still_verifies_the_role(
    tmp_path: Path,
) -> None:
    repo = SimulatedRepository()
    repo.delegate("a")
    repo.delegate("b")
    repo.delegate("shared", delegator="b")
    repo.delegate_also("shared", "a", threshold=2)  # a comes first: the invalid path
    repo.delegate("below", delegator="shared")
    for sim in serve(repo, tmp_path):
        result = _probe(sim, Prober(sim.state_dir))
        assert set(result.delegations.failures) == {"shared"}
        assert result.delegations.count == 4  # "below" reached through the valid path
        assert "below" in result.delegated


# -- memory and disk bounded by what is in flight -----------------------------------------------

ROLE_SIZE = 1_000_000
CAP = 1_100_000


def _many_padded_roles(tmp_path: Path, count: int) -> Iterator[Sim]:
    repo = SimulatedRepository()
    for i in range(count):
        repo.delegate(f"r{i}")
    for sim in serve(repo, tmp_path):
        sim.server.inject("padded-delegations", size=ROLE_SIZE)
        sim.server.view()  # the padded bodies are made now, not while measuring
        yield sim


def _spool(sim: Sim) -> Path:
    config = sim.config()
    return Prober(sim.state_dir).cache_dir(config, config.primary) / "incoming"


def test_a_hostile_mirror_padding_every_role_to_the_cap_costs_memory_of_what_is_in_flight(
    tmp_path: Path,
) -> None:
    workers = 2
    for sim in _many_padded_roles(tmp_path, 16):
        prober = Prober(sim.state_dir)
        tracemalloc.start()
        try:
            result = _probe(sim, prober, delegation_workers=workers,
                            limits=Limits(targets_max_length=CAP))
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
        assert result.success, result.message
        assert result.delegations.count == 16
        assert result.delegated["r3"].size_bytes == ROLE_SIZE
        # 16 roles of 1 MB were held at once, twice over (34 MB measured before); now one
        # body verified and parsed at a time (3.2 MB measured), nothing in memory in flight
        assert peak < workers * CAP + 3_000_000, peak


def test_bytes_spooled_for_verification_stay_within_workers_times_the_cap(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    workers = 3
    held: list[int] = []
    verify = delegations._Sweep._verify  # the hook: what is spooled when verification starts

    def counting(self: delegations._Sweep, done: Any) -> list[str]:
        held.append(sum(p.stat().st_size for p in self.spool_dir.iterdir()))
        return verify(self, done)

    monkeypatch.setattr(delegations._Sweep, "_verify", counting)
    for sim in _many_padded_roles(tmp_path, 16):
        result = _probe(sim, Prober(sim.state_dir), delegation_workers=workers,
                        limits=Limits(targets_max_length=CAP))
        assert result.success, result.message
        assert len(held) >= 16 * ROLE_SIZE // (workers * CAP)  # verified in several rounds
        assert 0 < max(held) <= workers * CAP
        assert list(_spool(sim).iterdir()) == []  # verified files were moved into the cache


def test_a_role_past_the_cap_fails_and_leaves_no_file(tmp_path: Path) -> None:
    for sim in _many_padded_roles(tmp_path, 2):
        result = _probe(sim, Prober(sim.state_dir),
                        limits=Limits(targets_max_length=ROLE_SIZE - 1))
        assert set(result.delegations.failures) == {"r0", "r1"}
        assert "DownloadLengthMismatchError" in result.delegations.failures["r0"]
        assert list(_spool(sim).iterdir()) == []


def test_a_spool_that_cannot_be_written_costs_memory_not_the_verdict(
    bins: Sim, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    into = Fetcher.download_into

    def disk_full(self: Fetcher, url: str, max_length: int, out: IO[bytes]) -> int:
        if not isinstance(out, io.BytesIO):
            out.write(b"{")
            raise OSError(28, "No space left on device")
        return into(self, url, max_length, out)

    monkeypatch.setattr(Fetcher, "download_into", disk_full)
    result = _probe(bins, Prober(bins.state_dir))
    assert result.success, result.message  # this host's disk is not the repository's fault
    assert result.delegations.count == BINS and result.delegations.failing == 0
    assert "holding it in memory" in caplog.text


def test_a_delegation_declaring_2_to_the_32_hash_bins_is_swept_within_the_limit(
    tmp_path: Path,
) -> None:
    # A hostile (or mistaken) targets role may declare 2**32 succinct bins: the sweep must
    # visit at most max_delegations of them and say it truncated, not list them all.
    repo = SimulatedRepository()
    repo.delegate_hash_bins(2, succinct=True)
    served = serve(repo, tmp_path)
    sim = next(served)
    try:
        with repo._lock:
            delegations_ = repo._md["targets"].signed.delegations
            two = delegations_.succinct_roles
            delegations_.succinct_roles = SuccinctRoles(two.keyids, two.threshold, 32,
                                                        two.name_prefix)
        repo.resign("targets")
        started = time.monotonic()
        result = _probe(sim, Prober(sim.state_dir), limits=Limits(max_delegations=4))
        assert time.monotonic() - started < 30
        assert result.delegations.count == 4
        assert result.delegations.truncated
        assert not result.success  # the four bins it visited do not exist
    finally:
        served.close()


def test_each_bins_signature_is_counted_once_per_probe_and_never_read_back(
    bins: Sim, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls = counting_verifications(monkeypatch)
    read_back: list[str] = []
    real_read = Path.read_bytes

    def reading(path: Path) -> bytes:
        if path.suffix == ".part":  # a spool file of the sweep
            read_back.append(path.name)
        return real_read(path)

    monkeypatch.setattr(Path, "read_bytes", reading)
    prober = Prober(bins.state_dir)
    cold = _probe(bins, prober)
    assert cold.success, cold.message
    bin_calls = [name for name in calls if name.startswith("bin-")]
    # python-tuf's verify_delegate, once a bin; the inspector takes its verdict for the count
    assert sorted(bin_calls) == sorted(cold.delegated) and len(cold.delegated) == BINS
    assert all(facts.signatures_valid == 1 for facts in cold.delegated.values())
    assert read_back == []  # small bins come back from the download in memory
    # the facts are those a fresh inspector counts from the cache files
    fresh = Prober(bins.state_dir / "fresh")
    again = _probe(bins, fresh)
    assert again.delegated == cold.delegated


def test_a_warm_sweep_does_not_load_the_cached_old_version_of_a_changed_bin(
    bins: Sim, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A bin whose cached file is the one python-tuf accepted, as a version other than the
    new snapshot names, would be refused for its version: it is downloaded, not loaded."""
    prober = Prober(bins.state_dir)
    assert _probe(bins, prober).success
    changed = bins.repo.role_for_target("bins/file-6.txt")
    bins.repo.add_target("bins/file-6.txt", b"changed\n")
    bins.repo.publish()
    loaded: list[bytes] = []
    real = TrustedMetadataSet.update_delegated_targets

    def counted(self: TrustedMetadataSet, data: bytes, role: str, parent: str) -> Targets:
        if role == changed:
            loaded.append(data)
        return real(self, data, role, parent)

    monkeypatch.setattr(TrustedMetadataSet, "update_delegated_targets", counted)
    warm = _probe(bins, prober)
    assert warm.success, warm.message
    assert _bins_fetched(warm) == {changed}
    assert loaded == [bins.repo.latest.metadata(changed)]  # the new version, once


def test_a_bin_deleted_from_the_cache_between_probes_is_fetched_as_a_full_refresh_would(
    bins: Sim,
) -> None:
    """What the sweep knows of the cache from the last probe is checked against the disk: a
    deleted bin is loaded by python-tuf again (downloaded), with the verdict and facts a new
    client's full refresh gives, and cached again."""
    prober = Prober(bins.state_dir)
    assert _probe(bins, prober).success
    victim = bins.repo.role_for_target("bins/file-7.txt")
    cached = _cached(bins, prober, victim)
    cached.unlink()
    bins.repo.publish()
    warm = _probe(bins, prober)
    fresh = _probe(bins, Prober(bins.state_dir / "fresh"))
    assert warm.success, warm.message
    assert _bins_fetched(warm) == {victim}
    assert (warm.success, warm.delegations.failures) == (fresh.success, fresh.delegations.failures)
    assert warm.delegated == fresh.delegated
    assert cached.read_bytes() == bins.repo.latest.metadata(victim)
