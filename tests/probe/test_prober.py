"""The prober against the simulated repository: verdicts, reasons, roles, facts, bounds."""

from __future__ import annotations

import json
import os
import tempfile
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import yaml
from securesystemslib.signer import CryptoSigner
from support import CANARIES, Clock, Sim, hash_bins, poll
from tuf.api.metadata import Metadata, Targets

from exporter import cli
from exporter.config.model import Mode
from exporter.probe.prober import Prober
from exporter.probe.results import FailedRole, ProbeResult, Reason
from exporter.simulator import FAULTS, closed_port

# fault -> (endpoint, inject parameters, expected reason, expected role); None = success
FAULT_CASES: dict[str, tuple[dict[str, Any], tuple[str, str] | None]] = {
    "expired-root": ({}, ("expired", "root")),
    "expired-timestamp": ({}, ("expired", "timestamp")),
    "expired-snapshot": ({}, ("expired", "snapshot")),
    "expired-targets": ({}, ("expired", "targets")),
    "timestamp-missing": ({}, ("missing", "timestamp")),
    "snapshot-mismatch": ({}, ("length_or_hash_mismatch", "snapshot")),
    "unauthorized-key": ({}, ("bad_signature", "timestamp")),
    "below-threshold": ({}, ("bad_signature", "targets")),
    "broken-delegation": ({"role": "team"}, ("bad_signature", "delegated")),
    "stale-mirror": ({"states_behind": 1}, None),
    "target-hash-mismatch": ({}, ("length_or_hash_mismatch", "target")),
    "oversized-metadata": ({}, ("length_or_hash_mismatch", "timestamp")),
    "slow-retrieval": ({"role": "snapshot", "delay": 0.3}, ("timeout", "snapshot")),
    "http-500": ({"role": "snapshot"}, ("download_error", "snapshot")),
    "malformed-json": ({}, ("invalid_metadata", "timestamp")),
    "deeply-nested-json": ({}, ("invalid_metadata", "timestamp")),
    "never-answers": ({"role": "timestamp"}, ("timeout", "timestamp")),
    "connection-refused": ({}, ("download_error", "root")),
    "equivocation": ({}, None),
    "unknown-signer": ({}, None),
    "version-jump": ({}, None),
    "expiry-beyond-policy": ({}, None),
    "padded-delegations": ({"size": 200_000}, None),
    "target-missing": ({}, ("missing", "target")),
    "unencodable-metadata": ({}, ("invalid_metadata", "targets")),
    # a new client (this probe's cache is empty); the timestamp lists the snapshot's hashes
    "corrupt-signature": ({}, ("length_or_hash_mismatch", "snapshot")),
}
# faults that need a history of probes: tested on their own below
STATEFUL = {"rollback", "freeze"}
# faults that need a rotated root chain: tests/test_simulator.py, the e2e bootstrap scenario
ROOT_CHAIN = {"root-missing"}


def _probe(sim: Sim, prober: Prober | None = None, endpoint: str = "primary",
           **changes: Any) -> ProbeResult:
    config = sim.config(**changes)
    prober = prober or Prober(sim.state_dir)
    target = next(e for e in config.endpoints if e.name == endpoint)
    return prober.probe(config, target)


def test_fault_table_covers_the_simulator() -> None:
    assert set(FAULT_CASES) | STATEFUL | ROOT_CHAIN == set(FAULTS)


def test_healthy_endpoint_reports_facts_exactly(sim: Sim) -> None:
    result = _probe(sim)
    assert result.success, result.message
    latest = sim.repo.latest
    for role in ("root", "timestamp", "snapshot", "targets"):
        md = Metadata.from_bytes(latest.metadata(role))
        facts = result.roles[role]
        assert facts.version == md.signed.version
        assert facts.expires == md.signed.expires
        assert facts.size_bytes == len(latest.metadata(role))
        threshold = Metadata.from_bytes(latest.metadata("root")).signed.roles[role].threshold
        assert facts.threshold == threshold
        assert facts.signatures_valid == threshold
        assert facts.unknown_signers == ()
    assert result.roles["targets"].threshold == 2
    assert result.delegations.count == 1 and result.delegations.failing == 0
    assert set(result.delegated) == {"team"}
    assert [t.path for t in result.targets] == list(CANARIES)
    assert all(t.success for t in result.targets)
    phases = {p.phase for p in result.phases}
    assert phases == {"root", "timestamp", "snapshot", "targets", "delegations", "download"}


@pytest.mark.parametrize("fault", sorted(FAULT_CASES))
def test_fault(sim: Sim, fault: str) -> None:
    params, expected = FAULT_CASES[fault]
    endpoint = "mirror1" if fault == "stale-mirror" else "primary"
    for _ in range(3):  # some history, so stale and rolled-back states exist
        sim.repo.add_target(f"files/{time.monotonic_ns()}.txt", b"x")
        sim.repo.publish()
    sim.server.inject(fault, endpoint=endpoint, **params)
    result = _probe(sim, endpoint=endpoint)
    assert result.duration_seconds < 5.0 + 1.5, "the probe deadline was not kept"
    if expected is None:
        assert result.success, result.message
    else:
        assert not result.success
        assert (str(result.reason), str(result.role)) == expected, result.message
        assert result.message
    if fault == "unknown-signer":
        assert result.roles["timestamp"].unknown_signers
    if fault == "stale-mirror":
        latest = sim.repo.latest.signed("timestamp").signed.version
        assert result.roles["timestamp"].version < latest


def test_rollback_seen_by_a_returning_client(sim: Sim) -> None:
    prober = Prober(sim.state_dir)
    sim.repo.publish()
    assert _probe(sim, prober).success
    sim.server.inject("rollback")
    result = _probe(sim, prober)
    assert (result.reason, result.role) == ("rollback", "timestamp"), result.message


def test_a_broken_snapshot_copy_is_invisible_to_the_returning_probe(sim: Sim) -> None:
    # Issue 16: the blind spot of the returning view the new-client view is for. The probe's
    # cache holds the snapshot of this version, so it never fetches the broken copy.
    # A full refresh every time (not only the steady state's reuse of the last verdict).
    prober = Prober(sim.state_dir)
    assert _probe(sim, prober, full_refresh_every=1).success
    sim.server.inject("corrupt-signature")
    snapshot = sim.server.view().filename("snapshot")
    sim.server.reset_requests()
    result = _probe(sim, prober, full_refresh_every=1)
    assert result.success, result.message
    assert sim.server.request_count(name="metadata/timestamp.json") == 1
    assert sim.server.request_count(name=snapshot) == 0
    fresh = _probe(sim, Prober(sim.state_dir / "fresh"))
    assert (str(fresh.reason), str(fresh.role)) == ("length_or_hash_mismatch", "snapshot")


def test_freeze_ends_in_expired_timestamp(sim: Sim) -> None:
    from datetime import timedelta

    prober = Prober(sim.state_dir)
    # long enough for the first probe to pass on a loaded machine, short enough to wait for
    sim.server.inject("freeze", expires_in=timedelta(seconds=4))
    assert _probe(sim, prober).success
    sim.repo.publish()  # the frozen endpoint does not follow
    result = poll(lambda: (r := _probe(sim, prober)).reason is not None and r, timeout=20)
    assert (result.reason, result.role) == ("expired", "timestamp")


def test_connection_refused_and_timeout_are_told_apart(sim: Sim) -> None:
    from exporter.config.model import Endpoint

    port = closed_port()
    url = f"http://127.0.0.1:{port}/"
    config = sim.config(primary=Endpoint("primary", url, url + "targets/"))
    refused = Prober(sim.state_dir).probe(config, config.primary)
    assert (refused.reason, refused.role) == ("download_error", "root")
    sim.server.inject("never-answers")
    silent = _probe(sim, read_timeout=0.3)
    assert (silent.reason, silent.role) == ("timeout", "root")
    assert silent.duration_seconds < 2.0, "no hidden retries: one read timeout only"


def test_whole_probe_deadline_bounds_a_trickling_server(sim: Sim) -> None:
    sim.server.inject("slow-retrieval", role="timestamp", delay=0.05)
    result = _probe(sim, timeout=1.0, read_timeout=1.0)
    assert (result.reason, result.role) == ("timeout", "timestamp")
    assert result.duration_seconds < 2.0


def test_retries_only_where_configured(sim: Sim) -> None:
    sim.server.inject("http-500", role="timestamp")
    sim.server.reset_requests()
    _probe(sim)
    once = sim.server.request_count(name="metadata/timestamp.json")
    sim.server.reset_requests()
    result = _probe(sim, retries=2)
    assert once == 1
    assert sim.server.request_count(name="metadata/timestamp.json") == 3
    assert sum(r.retries for r in result.requests) == 2


def test_unchanged_timestamp_reuses_the_verdict(sim: Sim) -> None:
    prober = Prober(sim.state_dir)
    first = _probe(sim, prober)
    assert first.success and not first.reused_verdict
    sim.server.reset_requests()
    second = _probe(sim, prober)
    assert second.success and second.reused_verdict
    fetched = {k for k, v in sim.server.requests().items() if v}
    assert not any("snapshot" in name or "targets.json" in name for name in fetched), fetched
    assert second.roles == first.roles
    assert [t.success for t in second.targets] == [True, True], "canaries still downloaded"
    sim.repo.publish()
    third = _probe(sim, prober)
    assert third.success and not third.reused_verdict
    assert third.roles["timestamp"].version == first.roles["timestamp"].version + 1


def test_reused_verdict_still_checks_the_canaries(sim: Sim) -> None:
    prober = Prober(sim.state_dir)
    assert _probe(sim, prober).success
    sim.server.inject("target-hash-mismatch")
    result = _probe(sim, prober)
    assert result.reused_verdict
    assert (result.reason, result.role) == ("length_or_hash_mismatch", "target")


def test_reused_verdicts_fetch_canaries_where_python_tuf_does_without_consistent_snapshot(
    sim: Sim,
) -> None:
    sim.repo.set_consistent_snapshot(False)  # targets at their plain path only
    sim.repo.publish()
    prober = Prober(sim.state_dir)
    results = [_probe(sim, prober) for _ in range(3)]
    assert [(r.success, r.reused_verdict) for r in results] == [
        (True, False), (True, True), (True, True)], [r.message for r in results]
    fetched = {name for name, count in sim.server.requests().items() if count}
    assert "targets/files/a.txt" in fetched
    assert not [name for name in fetched if name.startswith("targets/") and name.count(".") > 1]


def test_a_reload_that_changes_the_canaries_is_judged_on_the_new_ones(sim: Sim) -> None:
    sim.repo.add_target("files/c.txt", b"new canary\n")
    sim.repo.publish()
    sim.server.inject("target-hash-mismatch", path="files/c.txt")
    prober = Prober(sim.state_dir)
    assert _probe(sim, prober).success
    corrupt = _probe(sim, prober, canary_targets=("files/a.txt", "files/c.txt"))
    unlisted = _probe(sim, prober, canary_targets=("files/a.txt", "files/nope.txt"))
    fresh = Prober(sim.state_dir / "fresh")
    for result, canaries in ((corrupt, ("files/a.txt", "files/c.txt")),
                             (unlisted, ("files/a.txt", "files/nope.txt"))):
        expected = _probe(sim, fresh, canary_targets=canaries)
        assert not result.success
        assert [t.path for t in result.targets] == list(canaries)
        assert (result.reason, result.role, result.message) == (
            expected.reason, expected.role, expected.message)
    assert (corrupt.reason, corrupt.role) == ("length_or_hash_mismatch", "target")
    assert (unlisted.reason, unlisted.role) == ("target_not_found", "target")
    back = [_probe(sim, prober) for _ in range(2)]
    assert [(r.success, r.reused_verdict) for r in back] == [(True, False), (True, True)]


@pytest.mark.parametrize("role", ["targets", "team"])
def test_a_role_expiring_under_an_unchanged_timestamp_is_worded_as_python_tuf_words_it(
    clock: Clock, sim: Sim, role: str
) -> None:
    sim.repo.set_expiry(role, timedelta(hours=1))
    sim.repo.publish()
    reusing, full = Prober(sim.state_dir / "reusing"), Prober(sim.state_dir / "full")
    assert [_probe(sim, reusing).reused_verdict for _ in range(2)] == [False, True]
    assert _probe(sim, full, full_refresh_every=1).success  # the same client cache history
    clock.advance(2 * 3600)  # timestamp and snapshot still valid, ``role`` expired
    result = _probe(sim, reusing)
    expected = _probe(sim, full, full_refresh_every=1)
    assert (expected.reason, expected.role) == (
        "expired", "targets" if role == "targets" else "delegated")
    assert (result.success, result.reason, result.role, result.message) == (
        False, expected.reason, expected.role, expected.message)
    assert result.delegations == expected.delegations


def test_full_refresh_at_least_every_n_probes(sim: Sim) -> None:
    prober = Prober(sim.state_dir)
    reused = [_probe(sim, prober, full_refresh_every=3).reused_verdict for _ in range(6)]
    assert reused == [False, True, True, False, True, True]


def test_cold_mode_starts_from_the_trusted_root_every_time(sim: Sim) -> None:
    prober = Prober(sim.state_dir)
    from exporter.config.model import Mode

    for _ in range(2):
        sim.server.reset_requests()
        result = _probe(sim, prober, mode=Mode.COLD)
        assert result.success and not result.reused_verdict
        assert sim.server.request_count(name="metadata/timestamp.json") == 1
        assert any("snapshot" in n for n in sim.server.requests())
    cache = sim.state_dir / "cache"
    assert not cache.exists() or not any(cache.rglob("*.json"))


def test_missing_canary_target(sim: Sim) -> None:
    result = _probe(sim, canary_targets=("files/nope.txt",))
    assert (result.reason, result.role) == ("target_not_found", "target")


def test_names_are_sanitized_and_nothing_escapes_the_cache(sim: Sim, tmp_path: Path) -> None:
    result = _probe(sim, name="../evil/repo")
    assert result.success
    written = {p for p in tmp_path.rglob("*") if p.is_file()}
    outside = {p for p in written if sim.state_dir not in p.parents and p != sim.trusted_root}
    assert not outside, outside
    assert not (tmp_path / "evil").exists()


def _cli_config(sim: Sim, tmp_path: Path, canaries: list[str], mirror: str | None = None) -> Path:
    """A configuration file for the ``probe`` command: the simulated repository ``sim``, its
    primary and, if named, one mirror."""
    primary = sim.server.endpoint_urls("primary")
    repository: dict[str, Any] = {
        "name": "sim", "metadata_url": primary[0], "targets_url": primary[1],
        "trusted_root": str(sim.trusted_root), "canary_targets": canaries,
    }
    if mirror is not None:
        urls = sim.server.endpoint_urls(mirror)
        repository["mirrors"] = [{"name": mirror, "metadata_url": urls[0],
                                  "targets_url": urls[1]}]
    config = tmp_path / "config.yml"
    config.write_text(yaml.safe_dump({"state_dir": str(tmp_path / "state"),
                                      "repositories": [repository]}))
    return config


def test_probe_of_an_unknown_repository_lists_the_configured_ones(
    sim: Sim, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = _cli_config(sim, tmp_path, [])
    assert cli.main(["probe", "--config", str(config), "--repository", "sigstore"]) == 2
    assert "--repository: no repository is called 'sigstore' (configured: sim)" in \
        capsys.readouterr().err


def test_probe_json_command(sim: Sim, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = _cli_config(sim, tmp_path, ["files/a.txt", "team/b.txt"], mirror="mirror1")
    assert cli.main(["probe", "--config", str(config), "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    [repo] = out["repositories"]
    assert [e["name"] for e in repo["endpoints"]] == ["primary", "mirror1"]
    latest = sim.repo.latest
    for endpoint in repo["endpoints"]:
        assert endpoint["success"] is True and endpoint["reason"] is None
        for role in ("root", "timestamp", "snapshot", "targets"):
            signed = Metadata.from_bytes(latest.metadata(role)).signed
            facts = endpoint["roles"][role]
            assert facts["version"] == signed.version
            assert facts["expires"] == signed.expires.strftime("%Y-%m-%dT%H:%M:%SZ")
        assert endpoint["roles"]["targets"]["threshold"] == 2
        assert endpoint["roles"]["targets"]["signatures_valid"] == 2
        assert endpoint["delegations"]["count"] == 1
        assert [t["success"] for t in endpoint["targets"]] == [True, True]
    sim.server.inject("expired-timestamp", endpoint="mirror1")
    assert cli.main(["probe", "--config", str(config), "--json"]) == 1


def test_bad_trusted_root_is_a_usage_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]
                                           ) -> None:
    root = tmp_path / "root.json"
    root.write_text("{not json")
    config = tmp_path / "config.yml"
    config.write_text(
        f"repositories:\n  - name: x\n    metadata_url: http://127.0.0.1:1/\n"
        f"    trusted_root: {root}\n"
    )
    assert cli.main(["probe", "--config", str(config)]) == 2
    assert "cannot use" in capsys.readouterr().err


def test_canary_larger_than_the_configured_limit(sim: Sim) -> None:
    from exporter.config.model import Limits

    result = _probe(sim, limits=Limits(target_max_length=5))
    assert (result.reason, result.role) == ("length_or_hash_mismatch", "target")
    assert "target_max_length" in (result.message or "")


def test_a_delegation_tree_larger_than_the_limit_is_reported(
    sim: Sim, caplog: pytest.LogCaptureFixture
) -> None:
    from exporter.config.model import Limits

    result = _probe(sim, limits=Limits(max_delegations=0), canary_targets=("files/a.txt",))
    assert result.success
    assert "more roles than limits.max_delegations" in caplog.text
    assert result.delegations.truncated
    assert not _probe(sim).delegations.truncated


# -- a changed repository: the stale cached targets file ----------------------------------------


def _targets_loads(monkeypatch: pytest.MonkeyPatch) -> list[tuple[int | None, str]]:
    """Record every ``targets`` file python-tuf is asked to load: (version, outcome)."""
    from tuf.ngclient._internal.trusted_metadata_set import TrustedMetadataSet

    calls: list[tuple[int | None, str]] = []
    original = TrustedMetadataSet.update_delegated_targets

    def spy(self: TrustedMetadataSet, data: bytes, role: str, parent: str) -> Any:
        if role != "targets":
            return original(self, data, role, parent)
        version = json.loads(data)["signed"].get("version")
        try:
            result = original(self, data, role, parent)
        except Exception as exc:
            calls.append((version, type(exc).__name__))
            raise
        calls.append((version, "ok"))
        return result

    monkeypatch.setattr(TrustedMetadataSet, "update_delegated_targets", spy)
    return calls


def _cached_targets_version(sim: Sim, prober: Prober) -> int | None:
    config = sim.config()
    path = prober.cache_dir(config, config.primary) / "metadata" / "targets.json"
    if not path.exists():
        return None
    return int(Metadata.from_bytes(path.read_bytes()).signed.version)


def test_a_changed_targets_is_verified_once_not_twice(
    sim: Sim, monkeypatch: pytest.MonkeyPatch
) -> None:
    prober = Prober(sim.state_dir)
    first = _probe(sim, prober)
    assert first.success, first.message
    calls = _targets_loads(monkeypatch)
    for _ in range(2):
        calls.clear()
        old = sim.repo.latest.signed("targets").signed.version
        sim.repo.add_target(f"files/{time.monotonic_ns()}.txt", b"new")
        sim.repo.publish()
        new = sim.repo.latest.signed("targets").signed.version
        assert new > old
        result = _probe(sim, prober)
        assert result.success and not result.reused_verdict, result.message
        assert result.roles["targets"].version == new
        # ngclient never parsed the stale cached file: only the new one, once
        assert calls == [(new, "ok")]
        assert _cached_targets_version(sim, prober) == new


def test_an_unchanged_targets_is_still_loaded_from_the_cache(
    sim: Sim, monkeypatch: pytest.MonkeyPatch
) -> None:
    prober = Prober(sim.state_dir)
    assert _probe(sim, prober).success
    calls = _targets_loads(monkeypatch)
    sim.repo.resign("timestamp")  # a new timestamp, snapshot and targets unchanged
    sim.server.reset_requests()
    result = _probe(sim, prober)
    assert result.success and not result.reused_verdict, result.message
    version = sim.repo.latest.signed("targets").signed.version
    assert calls == [(version, "ok")]
    assert not any("targets.json" in n for n, c in sim.server.requests().items() if c)


def test_a_rollback_of_targets_is_still_detected(sim: Sim) -> None:
    from tuf.api.metadata import MetaFile

    from exporter.simulator.faults import forge

    prober = Prober(sim.state_dir)
    sim.repo.add_target("files/c.txt", b"c")
    sim.repo.publish()
    assert _probe(sim, prober).success
    current = sim.repo.latest.signed("targets").signed.version

    def older_targets(snapshot: Any) -> None:
        snapshot.meta["targets.json"] = MetaFile(current - 1)

    # a validly signed new snapshot that names an older targets version
    forge(sim.server.view(), "snapshot", older_targets)
    result = _probe(sim, prober)
    assert not result.success
    assert (result.reason, result.role) == ("rollback", "snapshot"), result.message
    assert "targets.json" in (result.message or "")
    # once the repository is honest again, the client recovers
    sim.repo.publish()
    after = _probe(sim, prober)
    assert after.success, after.message
    assert after.roles["targets"].version >= current


def test_a_tampered_new_targets_still_fails_and_the_client_recovers(sim: Sim) -> None:
    prober = Prober(sim.state_dir)
    assert _probe(sim, prober).success
    trusted = sim.repo.latest.signed("targets").signed.version
    sim.server.inject("below-threshold")
    result = _probe(sim, prober)
    assert not result.success
    assert (result.reason, result.role) == ("bad_signature", "targets"), result.message
    # python-tuf never cached the tampered file; the stale one was dropped before it
    assert _cached_targets_version(sim, prober) in (None, trusted)
    result = _probe(sim, prober)  # the verdict stays the same on the next probe
    assert (result.reason, result.role) == ("bad_signature", "targets"), result.message
    sim.server.clear()
    sim.repo.add_target("files/d.txt", b"d")
    sim.repo.publish()
    after = _probe(sim, prober)
    assert after.success, after.message
    assert after.roles["targets"].version == sim.repo.latest.signed("targets").signed.version


def test_a_cache_changed_behind_the_probers_back_is_still_judged_by_python_tuf(
    sim: Sim,
) -> None:
    prober = Prober(sim.state_dir)
    assert _probe(sim, prober).success
    config = sim.config()
    cached = prober.cache_dir(config, config.primary) / "metadata" / "targets.json"
    cached.write_bytes(b"{not json")
    sim.repo.add_target("files/e.txt", b"e")
    sim.repo.publish()
    result = _probe(sim, prober)
    assert result.success, result.message
    assert _cached_targets_version(sim, prober) == result.roles["targets"].version


def _assert_targets_taken_from_the_cache(
    sim: Sim, prober: Prober, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The next probe succeeds with python-tuf loading the new targets once, from the cache
    (not downloaded)."""
    calls = _targets_loads(monkeypatch)
    sim.server.reset_requests()
    result = _probe(sim, prober)
    assert result.success, result.message
    version = sim.repo.latest.signed("targets").signed.version
    assert calls == [(version, "ok")]
    assert not any("targets.json" in n for n, c in sim.server.requests().items() if c)


def test_a_cache_file_updated_behind_the_probers_back_is_left_to_python_tuf(
    sim: Sim, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Another client sharing the cache already stored the new targets: python-tuf uses it."""
    prober = Prober(sim.state_dir)
    assert _probe(sim, prober).success
    sim.repo.add_target("files/f.txt", b"f")
    sim.repo.publish()
    config = sim.config()
    cached = prober.cache_dir(config, config.primary) / "metadata" / "targets.json"
    cached.write_bytes(sim.repo.latest.metadata("targets"))
    _assert_targets_taken_from_the_cache(sim, prober, monkeypatch)


def test_a_cache_file_replaced_with_the_same_size_and_time_is_left_to_python_tuf(
    sim: Sim, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A file's identity includes its inode: a replacement of the same size and modification
    time is not the file the prober knows, so it is not removed as stale."""
    sim.repo.add_target("files/" + "g" * 64 + ".txt", b"g")
    sim.repo.publish()
    prober = Prober(sim.state_dir)
    assert _probe(sim, prober).success
    config = sim.config()
    cached = prober.cache_dir(config, config.primary) / "metadata" / "targets.json"
    old = cached.stat()
    sim.repo.remove_target("files/" + "g" * 64 + ".txt")  # a new version, shorter
    sim.repo.publish()
    new = json.dumps(json.loads(sim.repo.latest.metadata("targets")), separators=(",", ":"))
    assert len(new) <= old.st_size
    replacement = cached.with_name("targets.json.new")
    replacement.write_bytes(new.encode().ljust(old.st_size))
    os.utime(replacement, ns=(old.st_atime_ns, old.st_mtime_ns))
    replacement.replace(cached)
    assert (cached.stat().st_size, cached.stat().st_mtime_ns) == (old.st_size, old.st_mtime_ns)
    assert cached.stat().st_ino != old.st_ino
    _assert_targets_taken_from_the_cache(sim, prober, monkeypatch)


# -- inspector facts of hash bins across warm probes -------------------------------------------

_BINS = 16


@pytest.fixture(params=[True, False], ids=["succinct", "classic"])
def bins(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Sim]:
    yield from hash_bins(tmp_path, _BINS, succinct=request.param, targets=48, keys=2,
                         threshold=1)


def _full_probe(sim: Sim, prober: Prober) -> ProbeResult:
    config = sim.config(canary_targets=(), full_refresh_every=1, timeout=60.0,
                        connect_timeout=10.0, read_timeout=10.0)
    return prober.probe(config, config.primary)


def _bin_reads(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Every opening of a cached hash bin for reading, by anyone (pathlib or open)."""
    import builtins
    import io

    reads: list[str] = []
    real = io.open

    def counting(file: Any, mode: str = "r", *args: Any, **kwargs: Any) -> Any:
        name = Path(str(file)).name if isinstance(file, str | Path) else ""
        if name.startswith("bin-") and "r" in mode:
            reads.append(name)
        return real(file, mode, *args, **kwargs)

    monkeypatch.setattr(io, "open", counting)
    monkeypatch.setattr(builtins, "open", counting)
    return reads


def _assert_facts_of_latest(sim: Sim, result: ProbeResult) -> None:
    assert set(result.delegated) == set(sim.repo.delegated_roles)
    for role, facts in result.delegated.items():
        data = sim.repo.latest.metadata(role)
        md = Metadata.from_bytes(data)
        assert facts.version == md.signed.version, role
        assert facts.expires == md.signed.expires, role
        assert facts.size_bytes == len(data), role
        assert facts.signatures_valid == len(md.signatures), role
        assert facts.threshold == 1, role


def test_a_warm_probe_reads_no_unchanged_bin_and_reports_the_changed_bins_new_facts(
    bins: Sim, monkeypatch: pytest.MonkeyPatch
) -> None:
    prober = Prober(bins.state_dir)
    cold = _full_probe(bins, prober)
    assert cold.success, cold.message
    _assert_facts_of_latest(bins, cold)
    changed = bins.repo.role_for_target("bins/file-0.txt")
    bins.repo.add_target("bins/file-0.txt", b"changed\n")
    bins.repo.set_expiry(changed, datetime(2100, 3, 4, tzinfo=UTC))
    bins.repo.publish()
    reads = _bin_reads(monkeypatch)
    warm = _full_probe(bins, prober)
    assert warm.success, warm.message
    # not even the changed bin's cached copy: the sweep knows it is the version python-tuf
    # accepted last time, which python-tuf would refuse now for its version
    assert reads == [], "a bin was read from disk"
    _assert_facts_of_latest(bins, warm)
    assert warm.delegated[changed].version == cold.delegated[changed].version + 1
    assert warm.delegated[changed].expires == datetime(2100, 3, 4, tzinfo=UTC)
    bins.repo.publish()
    again = _full_probe(bins, prober)  # the bin written last probe is not read either
    assert again.success, again.message
    assert reads == []
    assert again.delegated == warm.delegated


def test_a_bin_re_signed_with_fewer_signatures_shows_the_lower_count(bins: Sim) -> None:
    prober = Prober(bins.state_dir)
    cold = _full_probe(bins, prober)
    victim = bins.repo.role_for_target("bins/file-1.txt")
    assert cold.delegated[victim].signatures_valid == 2
    with bins.repo._lock:  # the simulator signs a role with every signer it holds for it
        signers = bins.repo._signers[victim]
        del signers[next(iter(signers))]
    bins.repo.resign(victim)
    warm = _full_probe(bins, prober)
    assert warm.success, warm.message
    assert warm.delegated[victim].signatures_valid == 1
    assert warm.delegated[victim].version == cold.delegated[victim].version + 1
    _assert_facts_of_latest(bins, warm)


def test_a_bin_whose_delegators_keys_changed_is_inspected_again(
    bins: Sim, monkeypatch: pytest.MonkeyPatch
) -> None:
    prober = Prober(bins.state_dir)
    assert _full_probe(bins, prober).success
    victim = bins.repo.role_for_target("bins/file-2.txt")
    before = bins.repo.latest.metadata(victim)
    new_key = CryptoSigner.generate_ed25519().public_key
    with bins.repo._lock:  # targets names other keys; the bins are not re-signed
        targets = bins.repo._md["targets"].signed
        assert isinstance(targets, Targets) and targets.delegations is not None
        targets.delegations.keys[new_key.keyid] = new_key
        if targets.delegations.roles is not None:
            targets.delegations.roles[victim].keyids = [new_key.keyid]
            affected = {victim}
        else:
            assert targets.delegations.succinct_roles is not None
            targets.delegations.succinct_roles.keyids = [new_key.keyid]
            affected = set(bins.repo.delegated_roles)
        bins.repo._dirty.add("targets")
    bins.repo.publish()
    assert bins.repo.latest.metadata(victim) == before
    result = _full_probe(bins, prober)
    assert not result.success
    assert (str(result.reason), str(result.role)) == ("bad_signature", "delegated")
    for role, facts in result.delegated.items():
        if role in affected:
            assert facts.signatures_valid == 0 and facts.signed_by == (), role
            assert len(facts.unknown_signers) == 2, role
        else:
            assert facts.signatures_valid == 2, role


def test_facts_are_right_after_a_restart(bins: Sim, monkeypatch: pytest.MonkeyPatch) -> None:
    assert _full_probe(bins, Prober(bins.state_dir)).success
    changed = bins.repo.role_for_target("bins/file-3.txt")
    bins.repo.add_target("bins/file-3.txt", b"changed\n")
    bins.repo.publish()
    reads = _bin_reads(monkeypatch)
    restarted = Prober(bins.state_dir)  # same cache on disk, nothing in memory
    result = _full_probe(bins, restarted)
    assert result.success, result.message
    _assert_facts_of_latest(bins, result)
    # the sweep reads each cached bin once for python-tuf; the inspector reads none again
    assert sorted(reads) == sorted(f"{r}.json" for r in bins.repo.delegated_roles)
    assert result.delegated[changed].version > 1
    reads.clear()
    bins.repo.publish()
    again = _full_probe(bins, restarted)
    assert again.success and reads == []
    _assert_facts_of_latest(bins, again)


def test_every_temporary_file_of_a_probe_is_below_state_dir(
    sim: Sim, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # $TMPDIR unusable: a cold cache, ngclient's download buffers or the trusted-root check
    # put anywhere but below state_dir would fail the probe
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "no-such-tmpdir"))
    prober = Prober(sim.state_dir)
    config = sim.config(mode=Mode.COLD)
    cold = prober.probe(config, config.primary)  # no trusted root given: the probe loads it
    assert cold.success, cold.message
    assert [t.success for t in cold.targets] == [True] * len(CANARIES)
    for _ in range(2):  # a full warm probe, then one that reuses its verdict
        warm = _probe(sim, prober)
        assert warm.success, warm.message
    assert warm.reused_verdict and warm.targets
    assert list((sim.state_dir / "tmp").iterdir()) == []  # and nothing left behind


# ---------------------------------------------------------------------------------------------
# Root facts as python-tuf judges them


@pytest.mark.parametrize("mode", ["warm", "cold"])
@pytest.mark.parametrize(
    "rotation",
    [{"add": 1, "remove": 1}, {"add": 1, "threshold": 2}],
    ids=["key-replaced", "threshold-raised"],
)
def test_a_root_rotation_is_judged_against_both_root_versions(
    sim: Sim, mode: str, rotation: dict[str, Any]
) -> None:
    from exporter.config.model import Mode

    prober = Prober(sim.state_dir)
    assert _probe(sim, prober, mode=Mode(mode)).roles["root"].version == 1
    old = sim.repo.keyids("root")
    sim.repo.rotate_keys("root", **rotation)
    sim.repo.publish()
    result = _probe(sim, prober, mode=Mode(mode))
    assert result.success, result.message
    root = result.roles["root"]
    assert root.version == 2
    assert root.unknown_signers == ()  # v1's key signs v2 as the spec requires
    assert root.signed_by == tuple(sorted(sim.repo.keyids("root")))
    assert root.threshold == rotation.get("threshold", 1)
    assert root.previous_root_signed_by == tuple(sorted(old))
    assert root.previous_root_threshold == 1
    assert root.rejected_root is None


def test_a_root_python_tuf_refuses_is_not_shown_as_the_trusted_root(
    sim: Sim, capsys: pytest.CaptureFixture[str]
) -> None:
    prober = Prober(sim.state_dir)
    sim.repo.rotate_keys("root", add=1, remove=1)
    sim.repo.publish()
    assert _probe(sim, prober).roles["root"].version == 2
    sim.server.inject("unauthorized-key", role="root")  # v3 signed by an unknown key only
    result = _probe(sim, prober)
    assert (result.reason, result.role) == ("bad_signature", "root"), result.message
    root = result.roles["root"]
    assert root.version == 2 and root.signatures_valid == root.threshold == 1
    assert root.previous_root_signatures_valid == root.previous_root_threshold == 1
    rejected = root.rejected_root
    assert rejected is not None and rejected.version == 3
    assert rejected.signatures_valid == 0 and rejected.previous_root_signatures_valid == 0
    assert rejected.unknown_signers == (sim.repo.unknown_signer.public_key.keyid,)
    assert result.roles["timestamp"].signatures_valid == 1  # still judged by the trusted root
    assert result.to_json()["roles"]["root"]["rejected_root"]["version"] == 3
    cli._print_table([result])  # the probe command without --json
    table = capsys.readouterr().out
    assert "r2 ts" in table and "(r3 refused)" in table, table


def test_probe_json_prints_python_tufs_verdict_on_metadata_it_cannot_canonicalize(
    sim: Sim, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = _cli_config(sim, tmp_path, ["files/a.txt"])
    sim.server.inject("unencodable-metadata")
    assert cli.main(["probe", "--config", str(config), "--json"]) == 1
    [endpoint] = json.loads(capsys.readouterr().out)["repositories"][0]["endpoints"]
    assert (endpoint["reason"], endpoint["role"]) == ("invalid_metadata", "targets")
    assert endpoint["roles"]["root"]["previous_root_signatures_valid"] is None
    assert endpoint["roles"]["root"]["rejected_root"] is None


# -- client views (issue 16) ---------------------------------------------------------------------


def _views(sim: Sim, prober: Prober, bootstrap: dict[int, bytes] | None = None,
           **changes: Any) -> list[ProbeResult]:
    config = sim.config(**changes)
    return prober.probe_views(config, config.primary, config.trusted_root.read_bytes(),
                              bootstrap or {})


def _rotate_root(sim: Sim, times: int) -> dict[int, bytes]:
    """Publish ``times`` root rotations (new keys each time); root version -> bytes served."""
    for _ in range(times):
        sim.repo.rotate_keys("root", remove=1)
        sim.repo.rotate_keys("timestamp", remove=1)
        sim.repo.publish()
    latest = sim.repo.latest
    return {v: latest[f"metadata/{v}.root.json"] for v in latest.root_versions()}


def test_a_corrupted_snapshot_fails_the_new_view_only(sim: Sim) -> None:
    """The issue's scenario: the served current snapshot's signature broken, timestamp
    unchanged. A returning client never fetches it again; a first install fails on it."""
    sim.repo.timestamp_hashes = False  # as sigstore's timestamp: the snapshot's version only
    sim.repo.publish()
    prober = Prober(sim.state_dir)
    assert _probe(sim, prober).success
    view = sim.server.view("primary")
    name = view.filename("snapshot")
    served = view.get(name) or b""
    sig = json.loads(served)["signatures"][0]["sig"].encode()
    broken = (b"0" if sig[:1] != b"0" else b"1") + sig[1:]  # same length: only the signature
    view.put(name, served.replace(sig, broken))  # served until the next publish
    returning = _probe(sim, prober)
    assert returning.success and returning.client == "returning"
    (new,) = _views(sim, prober)
    assert new.client == "new"
    assert (new.success, new.reason, new.role) == (False, "bad_signature", "snapshot"), new.message
    assert _probe(sim, prober).success  # the pass changed nothing of the returning view


def test_a_missing_intermediate_root_breaks_only_the_bootstrap_view_from_before_it(
    sim: Sim, tmp_path: Path
) -> None:
    roots = _rotate_root(sim, 2)
    current = tmp_path / "root-3.json"
    current.write_bytes(roots[3])
    prober = Prober(sim.state_dir)
    healthy = _views(sim, prober, {1: roots[1], 2: roots[2]}, trusted_root=current)
    assert [(r.client, r.success) for r in healthy] == [
        ("new", True), ("bootstrap-root-v1", True), ("bootstrap-root-v2", True)
    ], [r.message for r in healthy]
    assert all(r.roles["root"].version == 3 for r in healthy)
    sim.server.view("primary").put("metadata/2.root.json", None)  # 404 until the next publish
    config = sim.config(trusted_root=current)
    assert prober.probe(config, config.primary, roots[3]).success
    broken = _views(sim, prober, {1: roots[1], 2: roots[2]}, trusted_root=current)
    by_client = {r.client: r for r in broken}
    assert by_client["new"].success and by_client["bootstrap-root-v2"].success
    v1 = by_client["bootstrap-root-v1"]
    # python-tuf stops the chain at v1, whose keys no longer sign the timestamp
    assert (v1.success, v1.reason, v1.role) == (False, "bad_signature", "timestamp"), v1.message


def test_a_view_pass_downloads_each_url_once(sim: Sim, tmp_path: Path) -> None:
    roots = _rotate_root(sim, 1)
    prober = Prober(sim.state_dir)
    sim.server.reset_requests()
    results = _views(sim, prober, {1: roots[1], 2: roots[2]})
    assert [r.success for r in results] == [True, True, True], [r.message for r in results]
    counts = sim.server.requests("primary")
    assert counts, "nothing was requested"
    # 404s (the next root version) are asked again by each view: python-tuf needs the answer
    repeated = {name: n for name, n in counts.items() if n > 1 and not name.endswith(".root.json")}
    assert repeated == {}
    assert counts["metadata/timestamp.json"] == 1
    assert counts["metadata/2.root.json"] == 1
    for result in results[1:]:
        served = [r for r in result.requests if r.role in ("timestamp", "snapshot", "targets")]
        assert served and all(r.memo for r in served)
        assert any(r.role == "target" and r.memo for r in result.requests)  # canaries too
    assert not any(r.memo for r in results[0].requests)
    assert list((sim.state_dir / "tmp").iterdir()) == []  # caches and memo removed


def test_a_view_pass_never_touches_the_returning_view(sim: Sim) -> None:
    prober = Prober(sim.state_dir)
    first = _probe(sim, prober)
    cache = prober.cache_dir(sim.config(), sim.config().primary)
    before = sorted((p.relative_to(cache), p.stat().st_mtime_ns) for p in cache.rglob("*"))
    sim.server.reset_requests()
    assert all(r.success for r in _views(sim, prober))
    after = sorted((p.relative_to(cache), p.stat().st_mtime_ns) for p in cache.rglob("*"))
    assert after == before
    again = _probe(sim, prober)
    assert again.reused_verdict and first.success  # the reuse state is the returning view's


def test_a_fault_of_this_host_ends_one_view_as_exporter_error(
    sim: Sim, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import errno

    from exporter.probe import prober as prober_module

    roots = _rotate_root(sim, 1)
    calls = {"n": 0}
    real = prober_module._Run.run_view

    def full_disk_once(self: Any) -> ProbeResult:
        calls["n"] += 1
        if calls["n"] == 1:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(self)

    monkeypatch.setattr(prober_module._Run, "run_view", full_disk_once)
    new, v1 = _views(sim, Prober(sim.state_dir), {1: roots[1]})
    assert (new.client, new.reason, new.cause) == ("new", "exporter_error", "disk")
    assert v1.client == "bootstrap-root-v1" and v1.success, v1.message


def test_probe_command_reports_every_view(
    sim: Sim, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    roots = _rotate_root(sim, 1)
    (tmp_path / "1.root.json").write_bytes(roots[1])
    (tmp_path / "2.root.json").write_bytes(roots[2])
    config = _cli_config(sim, tmp_path, ["files/a.txt"], mirror="mirror1")
    document = yaml.safe_load(config.read_text())
    document["repositories"][0]["bootstrap_roots"] = ["1.root.json"]
    document["repositories"][0]["trusted_root"] = "2.root.json"  # the current root
    config.write_text(yaml.safe_dump(document))
    assert cli.main(["probe", "--config", str(config), "--json"]) == 0
    [repo] = json.loads(capsys.readouterr().out)["repositories"]
    for endpoint in repo["endpoints"]:
        assert endpoint["client"] == "returning" and endpoint["success"] is True
        assert [(v["name"], v["client"], v["success"]) for v in endpoint["views"]] == [
            (endpoint["name"], "new", True), (endpoint["name"], "bootstrap-root-v1", True)]
        assert endpoint["views"][1]["roles"]["root"]["version"] == 2
    # a missing intermediate root: only the view from v1 fails, and so does the command
    sim.server.view("primary").put("metadata/2.root.json", None)
    assert cli.main(["probe", "--config", str(config)]) == 1
    out, err = capsys.readouterr()
    lines = [line.split() for line in out.splitlines()[1:]]
    assert [(cells[1], cells[2], cells[3]) for cells in lines] == [
        ("primary", "returning", "ok"), ("primary", "new", "ok"),
        ("primary", "bootstrap-root-v1", "bad_signature"),
        ("mirror1", "returning", "ok"), ("mirror1", "new", "ok"),
        ("mirror1", "bootstrap-root-v1", "ok")]
    assert "sim/primary (bootstrap-root-v1): " in err
    document["repositories"][0]["new_client_interval"] = 0  # the views off: returning only
    config.write_text(yaml.safe_dump(document))
    assert cli.main(["probe", "--config", str(config)]) == 0
    assert [line.split()[2] for line in capsys.readouterr().out.splitlines()[1:]] == [
        "returning", "returning"]


def test_a_canary_failure_keeps_its_role_as_a_value_not_in_its_message() -> None:
    """Issue 15: the role of a failing canary travels in the result; the message is for people
    and is never parsed (a path that looks like a role prefix changes nothing)."""
    from exporter.probe.prober import _first_target_failure
    from exporter.probe.results import Failure, TargetResult

    looks_like_a_role = TargetResult("root: x", False, Reason.LENGTH_OR_HASH_MISMATCH,
                                     "root: x: hash mismatch", role=FailedRole.TARGET)
    assert _first_target_failure([TargetResult("a", True), looks_like_a_role]) == Failure(
        Reason.LENGTH_OR_HASH_MISMATCH, FailedRole.TARGET, "root: x: hash mismatch")
    expired = TargetResult("team/b.txt", False, Reason.EXPIRED, "team/b.txt: expired",
                           role=FailedRole.DELEGATED)
    assert _first_target_failure([expired]) == Failure(
        Reason.EXPIRED, FailedRole.DELEGATED, "team/b.txt: expired")
