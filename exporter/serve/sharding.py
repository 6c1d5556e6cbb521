"""Scaling out: split the probes of one configuration over ``COUNT`` exporter replicas.

Every replica loads the same configuration file and keeps only what its shard owns
(``shard: INDEX/COUNT`` in the file, :attr:`Config.shard_index` / :attr:`Config.shard_count`).
No coordination is needed: ownership is a pure function of names and the shard count.

Ownership: rendezvous hashing
    :func:`owner` uses rendezvous (highest-random-weight) hashing over SHA-256: for a key, each
    shard ``i`` gets the score ``sha256("tuf-exporter-shard" NUL key NUL i)`` and the shard with
    the highest score owns the key. Going from ``N`` to ``N + 1`` shards, a key moves only when
    the new shard's score beats all the others, which happens for ~``1/(N + 1)`` of the keys;
    no key moves between two old shards. SHA-256 (never Python's salted ``hash()``) keeps the
    answer the same in every process, on every machine and in every version of Python.

The shard key: repository (the default) or endpoint
    Mirror lag, freshness and equivocation compare a mirror with its repository's primary, and
    the history store that does so is local to a replica. So the default unit is the
    **repository** (:attr:`ShardKey.REPOSITORY`): all endpoints of a repository — its primary
    and every mirror — and its signer probes live in one shard. Every endpoint is probed exactly
    once, lag is computed exactly as with a single replica. The price: a repository with very
    many mirrors cannot be spread, and balance is by repositories, not endpoints.

    With :attr:`ShardKey.ENDPOINT` each mirror goes to the shard that owns
    ``(repository, mirror)`` and the primary to the shard that owns ``(repository, "primary")``;
    a shard that owns any mirror of a repository *also* probes that repository's primary, as
    the reference its lag is measured against. Load spreads by endpoint, but the primary is
    probed (and exported) by several replicas: dashboards and alerts must aggregate it away
    (``max without (instance, pod) (...)``), and the primary sees more client traffic. Signer
    probes go with the primary's owner.
"""

from __future__ import annotations

import hashlib
from dataclasses import replace
from enum import StrEnum

from exporter.config import Config, Repository

__all__ = ["PRIMARY", "ShardKey", "owner", "owns", "select"]

#: The endpoint name of a repository's primary (mirrors may not use it).
PRIMARY = "primary"

_DOMAIN = b"tuf-exporter-shard\x00"


class ShardKey(StrEnum):
    """What is hashed to decide ownership."""

    REPOSITORY = "repository"  #: all endpoints of a repository together (exact lag, default)
    ENDPOINT = "endpoint"  #: each endpoint on its own; the primary duplicated for lag


def _score(key: str, shard: int) -> int:
    digest = hashlib.sha256(_DOMAIN + key.encode("utf-8") + b"\x00" + str(shard).encode())
    return int.from_bytes(digest.digest()[:16], "big")


def _key(repository: str, endpoint: str, key: ShardKey) -> str:
    # Names never contain control characters (the configuration refuses them), so NUL
    # separates the two parts unambiguously.
    return repository if key is ShardKey.REPOSITORY else f"{repository}\x00{endpoint}"


def owner(repository: str, endpoint: str, count: int, key: ShardKey = ShardKey.REPOSITORY) -> int:
    """The shard (``0 <= shard < count``) that probes ``endpoint`` of ``repository``.

    With the default ``key`` (:attr:`ShardKey.REPOSITORY`) the endpoint does not matter: a
    repository's endpoints all share one owner. The answer depends only on the names and
    ``count``; raises ValueError when ``count`` is less than 1.
    """
    if count < 1:
        raise ValueError(f"the shard count must be at least 1, got {count}")
    if count == 1:
        return 0
    name = _key(repository, endpoint, ShardKey(key))
    return max(range(count), key=lambda shard: _score(name, shard))


def owns(
    config: Config, repository: str, endpoint: str, key: ShardKey = ShardKey.REPOSITORY
) -> bool:
    """Whether this configuration's shard owns ``endpoint`` of ``repository``."""
    return owner(repository, endpoint, config.shard_count, key) == config.shard_index


def _select_repository(config: Config, repo: Repository, key: ShardKey) -> Repository | None:
    if key is ShardKey.REPOSITORY:
        return repo if owns(config, repo.name, PRIMARY, key) else None
    mirrors = tuple(m for m in repo.mirrors if owns(config, repo.name, m.name, key))
    if mirrors or owns(config, repo.name, PRIMARY, key):
        return replace(repo, mirrors=mirrors)
    return None


def select(config: Config, key: ShardKey = ShardKey.REPOSITORY) -> Config:
    """``config`` reduced to what its shard (``shard_index`` of ``shard_count``) probes.

    Repositories left with no endpoint are dropped, and so are the signer probes of dropped
    repositories (with :attr:`ShardKey.ENDPOINT`, signers stay with the primary's owner). The
    result may have no repository at all when there are more shards than repositories; the
    configuration is returned unchanged when there is a single shard.
    """
    key = ShardKey(key)
    if config.shard_count == 1:
        return config
    repositories = []
    for repo in config.repositories:
        selected = _select_repository(config, repo, key)
        if selected is not None:
            repositories.append(selected)
    signers = tuple(s for s in config.signers if owns(config, s.repository, PRIMARY, key))
    return replace(config, repositories=tuple(repositories), signers=signers)
