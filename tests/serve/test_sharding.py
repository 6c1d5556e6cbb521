"""Sharding: every endpoint probed exactly once, minimal movement, stable ownership."""

from __future__ import annotations

import subprocess
import sys
from collections import Counter
from dataclasses import replace
from pathlib import Path

import pytest

from exporter.config import Config, Endpoint, Repository, Signer
from exporter.serve.sharding import PRIMARY, ShardKey, owner, select

REPOS = 300


def _config(repositories: int = REPOS) -> Config:
    repos = []
    for i in range(repositories):
        name = f"repo-{i}"
        url = f"https://{name}.example/"
        mirrors = tuple(
            Endpoint(f"mirror-{j}", f"https://m{j}.{name}.example/", f"https://m{j}.example/t/")
            for j in range(i % 4)
        )
        repos.append(
            Repository(
                name=name,
                trusted_root=Path("/nonexistent/root.json"),
                primary=Endpoint(PRIMARY, url, url + "targets/"),
                mirrors=mirrors,
            )
        )
    signers = tuple(
        Signer(name=f"signer-{i}", uri="file:/k", repository=f"repo-{i}", role="timestamp")
        for i in range(0, repositories, 7)
    )
    return Config(repositories=tuple(repos), signers=signers)


def _endpoints(config: Config) -> list[tuple[str, str]]:
    return [(r.name, e.name) for r in config.repositories for e in r.endpoints]


def _shards(config: Config, count: int, key: ShardKey) -> list[Config]:
    return [select(replace(config, shard_index=i, shard_count=count), key) for i in range(count)]


@pytest.mark.parametrize("count", range(1, 9))
def test_repository_shards_probe_every_endpoint_exactly_once(count: int) -> None:
    config = _config()
    shards = _shards(config, count, ShardKey.REPOSITORY)
    probed = Counter(ep for shard in shards for ep in _endpoints(shard))
    assert set(probed) == set(_endpoints(config))
    assert set(probed.values()) == {1}
    # a repository is never split, and no shard keeps an empty repository
    for shard in shards:
        for repo in shard.repositories:
            assert repo == config.repository(repo.name)
    # signer probes run once, in the shard of their repository
    signers = Counter(s.name for shard in shards for s in shard.signers)
    assert set(signers) == {s.name for s in config.signers}
    assert set(signers.values()) == {1}
    for shard in shards:
        names = {r.name for r in shard.repositories}
        assert all(s.repository in names for s in shard.signers)
    if count > 1:  # reasonably balanced: no shard more than twice its fair share
        sizes = [len(shard.repositories) for shard in shards]
        assert max(sizes) < 2 * REPOS / count, sizes


@pytest.mark.parametrize("count", range(1, 9))
def test_endpoint_shards_probe_every_mirror_once_and_keep_the_primary_for_lag(
    count: int,
) -> None:
    config = _config()
    shards = _shards(config, count, ShardKey.ENDPOINT)
    mirrors = Counter(
        (r.name, m.name) for shard in shards for r in shard.repositories for m in r.mirrors
    )
    assert set(mirrors) == {(r.name, m.name) for r in config.repositories for m in r.mirrors}
    assert set(mirrors.values()) == {1}
    for index, shard in enumerate(shards):
        for repo in shard.repositories:
            # a shard probing a mirror also probes its primary, the reference for lag
            assert repo.primary == config.repository(repo.name).primary
            assert repo.mirrors or owner(repo.name, PRIMARY, count, ShardKey.ENDPOINT) == index
    # the primary's owner is unique, and every repository has one
    primary_owners = Counter(
        r.name
        for i, shard in enumerate(shards)
        for r in shard.repositories
        if owner(r.name, PRIMARY, count, ShardKey.ENDPOINT) == i
    )
    assert set(primary_owners) == {r.name for r in config.repositories}
    assert set(primary_owners.values()) == {1}
    signers = Counter(s.name for shard in shards for s in shard.signers)
    assert set(signers.values()) == {1} and len(signers) == len(config.signers)


@pytest.mark.parametrize("key", list(ShardKey))
@pytest.mark.parametrize("count", range(1, 8))
def test_adding_a_shard_moves_about_one_in_n_plus_one(key: ShardKey, count: int) -> None:
    config = _config()
    endpoints = _endpoints(config)
    before = {ep: owner(*ep, count, key) for ep in endpoints}
    after = {ep: owner(*ep, count + 1, key) for ep in endpoints}
    moved = [ep for ep in endpoints if before[ep] != after[ep]]
    # rendezvous hashing: whatever moves, moves to the new shard, never between old ones
    assert all(after[ep] == count for ep in moved)
    expected = len(endpoints) / (count + 1)
    # statistical margin: repositories move as a unit, so allow 50% + a few over the mean
    assert len(moved) <= 1.5 * expected + 10, (len(moved), expected)
    assert len(moved) >= 0.5 * expected - 10, (len(moved), expected)


def test_owner_is_within_range_and_ignores_endpoint_by_repository() -> None:
    for count in range(1, 9):
        for i in range(50):
            shard = owner(f"r{i}", PRIMARY, count)
            assert 0 <= shard < count
            assert owner(f"r{i}", "mirror-eu", count) == shard
    with pytest.raises(ValueError, match="at least 1"):
        owner("r", PRIMARY, 0)


# Pinned values: a change here re-shuffles every deployment on upgrade. Only change them
# together with a release note.
SIGSTORE_OF_3 = 1
PYPI_EU_OF_5 = 0
ABC_OF_8 = 1
FIRST_12_OF_4 = [3, 1, 2, 2, 2, 1, 1, 2, 1, 3, 0, 3]


def _pinned_program() -> str:
    return (
        "from exporter.serve.sharding import owner, ShardKey\n"
        "print(owner('sigstore', 'primary', 3), owner('pypi', 'mirror-eu', 5, "
        "ShardKey.ENDPOINT), owner('a/b c', 'primary', 8), "
        "sum(owner(f'repo-{i}', 'primary', 7) * i for i in range(500)))\n"
    )


def test_ownership_is_stable_across_processes_and_hash_seeds() -> None:
    outputs = set()
    for seed in ("0", "1", "12345", "random"):
        done = subprocess.run(
            [sys.executable, "-c", _pinned_program()],
            env={"PYTHONHASHSEED": seed, "PATH": "/usr/bin:/bin"},
            capture_output=True,
            text=True,
            check=True,
        )
        outputs.add(done.stdout.strip())
    assert len(outputs) == 1
    here = (
        f"{owner('sigstore', 'primary', 3)} {owner('pypi', 'mirror-eu', 5, ShardKey.ENDPOINT)} "
        f"{owner('a/b c', 'primary', 8)} "
        f"{sum(owner(f'repo-{i}', 'primary', 7) * i for i in range(500))}"
    )
    assert outputs == {here}


def test_ownership_matches_pinned_values() -> None:
    assert owner("sigstore", PRIMARY, 3) == SIGSTORE_OF_3
    assert owner("pypi", "mirror-eu", 5, ShardKey.ENDPOINT) == PYPI_EU_OF_5
    assert owner("a/b c", PRIMARY, 8) == ABC_OF_8
    assert [owner(f"repo-{i}", PRIMARY, 4) for i in range(12)] == FIRST_12_OF_4


def test_select_of_a_single_shard_is_the_configuration_itself() -> None:
    config = _config(10)
    assert select(config) is config


def test_more_shards_than_repositories_leaves_some_shards_empty() -> None:
    config = _config(2)
    shards = _shards(config, 8, ShardKey.REPOSITORY)
    assert sum(len(s.repositories) for s in shards) == 2
    assert any(not s.repositories for s in shards)
