"""The delegation sweep's worker processes: python-tuf in another process gives exactly the
verdict a sequential walk gives here, and a worker that dies is this host's fault."""

from __future__ import annotations

import os
import signal
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from support import Sim, poll, serve
from tuf.api.serialization import DeserializationError

from exporter.config import parse_config
from exporter.probe import Prober, ProbeResult, delegations
from exporter.probe import _verify_pool as verify_pool
from exporter.simulator import SimulatedRepository

BINS = 16


@pytest.fixture
def handed(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[int]]:
    """Worker processes for every level of a sweep, in batches of 5 (so 16 bins take 4); the
    sizes of the batches handed to them. The pool stops after the test."""
    monkeypatch.setattr(verify_pool, "MIN_ROLES", 1)
    monkeypatch.setattr(verify_pool, "BATCH", 5)
    sizes: list[int] = []
    submit = verify_pool.submit

    def counting(context: verify_pool.Context, jobs: list[verify_pool.Job]) -> Any:
        sizes.append(len(jobs))
        return submit(context, jobs)

    monkeypatch.setattr(verify_pool, "submit", counting)
    before = verify_pool.processes()
    delegations.use_processes(1)
    try:
        yield sizes
    finally:
        delegations.use_processes(before)
        delegations.stop_processes()


def _bins(tmp_path: Path, *, succinct: bool, snapshot_hashes: bool = False) -> Iterator[Sim]:
    repo = SimulatedRepository(snapshot_hashes=snapshot_hashes)
    repo.delegate_hash_bins(BINS, succinct=succinct)
    for i in range(64):
        repo.add_target(f"bins/file-{i}.txt", f"content {i}\n".encode())
    yield from serve(repo, tmp_path)


@pytest.fixture(params=[True, False], ids=["succinct", "classic"])
def bins(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Sim]:
    yield from _bins(tmp_path, succinct=request.param)


def _probe(sim: Sim, state: Path, *, processes: int) -> ProbeResult:
    """A cold probe in a new cache below ``state``, verified by ``processes`` workers."""
    delegations.use_processes(processes)
    config = sim.config(canary_targets=("bins/file-0.txt",), full_refresh_every=1, timeout=60.0,
                        connect_timeout=10.0, read_timeout=10.0)
    return Prober(state).probe(config, config.primary)


def _verdict(result: ProbeResult) -> tuple[object, ...]:
    failures = result.delegations.failures
    return (result.success, result.reason, result.role, result.message,
            result.delegations.count, sorted(failures.items()))


def test_workers_accept_every_bin_as_python_tuf_does_here(
    bins: Sim, handed: list[int], tmp_path: Path
) -> None:
    here = _probe(bins, tmp_path / "here", processes=0)
    assert handed == []
    there = _probe(bins, tmp_path / "there", processes=1)
    assert handed == [5, 5, 5, 1]  # every bin went to a worker
    assert there.success, there.message
    assert _verdict(there) == _verdict(here)
    assert [t.path for t in there.targets if t.success] == ["bins/file-0.txt"]
    cache = next((tmp_path / "there" / "cache").glob("*/*/metadata"))
    for i in range(BINS):  # only what python-tuf accepted is cached, and all of it
        role = bins.repo.role_for_target(f"bins/file-{i}.txt")
        assert (cache / f"{role}.json").read_bytes() == bins.repo.latest.metadata(role)
    assert there.roles.keys() == here.roles.keys()


def test_verdicts_from_workers_are_reused_by_the_next_warm_sweep(
    bins: Sim, handed: list[int], tmp_path: Path
) -> None:
    delegations.use_processes(1)
    config = bins.config(canary_targets=(), full_refresh_every=100, timeout=60.0,
                         connect_timeout=10.0, read_timeout=10.0)
    prober = Prober(tmp_path / "state")
    assert prober.probe(config, config.primary).success
    assert sum(handed) == BINS
    changed = bins.repo.role_for_target("bins/file-0.txt")
    bins.repo.add_target("bins/file-0.txt", b"changed\n")
    bins.repo.publish()
    warm = prober.probe(config, config.primary)
    assert warm.success, warm.message
    assert {r.role for r in warm.requests if r.role.startswith("bin-")} == {changed}
    assert sum(handed) == BINS + 1  # MIN_ROLES is 1 here: the changed bin went to a worker


@pytest.mark.parametrize(
    ("fault", "params", "reason"),
    [
        ("broken-delegation", {}, "bad_signature"),
        ("below-threshold", {}, "bad_signature"),
        ("expired-targets", {}, "expired"),
        ("malformed-json", {}, "invalid_metadata"),
    ],
)
def test_a_bad_bin_fails_in_a_worker_exactly_as_in_a_sequential_walk(
    bins: Sim, handed: list[int], tmp_path: Path, fault: str, params: dict[str, Any],
    reason: str,
) -> None:
    victim = bins.repo.role_for_target("bins/file-7.txt")
    bins.server.inject(fault, role=victim, **params)
    here = _probe(bins, tmp_path / "here", processes=0)
    there = _probe(bins, tmp_path / "there", processes=1)
    assert handed
    assert (str(there.reason), str(there.role)) == (reason, "delegated")
    assert victim in there.message
    assert _verdict(there) == _verdict(here)


def test_a_length_or_hash_mismatch_fails_in_a_worker_as_in_a_sequential_walk(
    handed: list[int], tmp_path: Path
) -> None:
    sim_iter = _bins(tmp_path, succinct=True, snapshot_hashes=True)
    sim = next(sim_iter)
    try:
        victim = sim.repo.role_for_target("bins/file-3.txt")
        sim.server.inject("malformed-json", role=victim)  # other bytes than snapshot lists
        here = _probe(sim, tmp_path / "here", processes=0)
        there = _probe(sim, tmp_path / "there", processes=1)
        assert handed
        assert (str(there.reason), str(there.role)) == ("length_or_hash_mismatch", "delegated")
        assert _verdict(there) == _verdict(here)
    finally:
        sim_iter.close()


def test_a_worker_that_dies_is_an_exporter_error_and_the_next_sweep_has_a_new_pool(
    bins: Sim, handed: list[int], tmp_path: Path
) -> None:
    assert _probe(bins, tmp_path / "first", processes=1).success
    (worker,) = delegations.process_ids()
    os.kill(worker, signal.SIGKILL)
    result = _probe(bins, tmp_path / "second", processes=1)
    assert not result.success
    assert str(result.reason) == "exporter_error"  # never the repository's reason
    assert str(result.cause) == "workers"
    assert "worker" in result.message
    again = _probe(bins, tmp_path / "third", processes=1)
    assert again.success, again.message
    assert delegations.process_ids() and delegations.process_ids() != [worker]


def test_a_small_sweep_starts_no_worker(bins: Sim, tmp_path: Path) -> None:
    delegations.stop_processes()
    before = verify_pool.processes()
    try:
        result = _probe(bins, tmp_path / "state", processes=1)  # 16 bins < MIN_ROLES
        assert result.success, result.message
        assert delegations.process_ids() == []
    finally:
        delegations.use_processes(before)


def test_stop_processes_ends_the_workers(bins: Sim, handed: list[int], tmp_path: Path) -> None:
    assert _probe(bins, tmp_path / "state", processes=1).success
    (worker,) = delegations.process_ids()
    delegations.stop_processes()
    assert delegations.process_ids() == []
    poll(lambda: not Path(f"/proc/{worker}").exists()
         or "Z" in Path(f"/proc/{worker}/stat").read_text().split()[2], timeout=10.0)


def test_a_python_tuf_error_keeps_its_cause_across_the_process_boundary() -> None:
    try:
        try:
            raise ValueError("Expecting value: line 1 column 1 (char 0)")
        except ValueError as inner:
            raise DeserializationError("Failed to deserialize") from inner
    except DeserializationError as exc:
        chain = verify_pool._portable_chain(exc)
    outcome = verify_pool._outcome(("bin-0", chain, None, False))
    assert isinstance(outcome.error, DeserializationError)
    assert isinstance(outcome.error.__cause__, ValueError)
    assert str(outcome.error.__cause__) == "Expecting value: line 1 column 1 (char 0)"


def test_delegation_processes_is_configurable_and_defaults_beside_one_cpu() -> None:
    text = ("repositories:\n  - name: r\n    metadata_url: https://tuf.example/\n"
            "    trusted_root: /dev/null\n")
    default = parse_config(text, "<config>", Path("/"))
    assert default.delegation_processes == max(0, min(4, (os.cpu_count() or 1) - 1))
    assert parse_config("delegation_processes: 0\n" + text, "<config>",
                        Path("/")).delegation_processes == 0
