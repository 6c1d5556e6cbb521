"""The fetcher's metadata hook: every metadata body, complete, before ngclient gets it."""

from __future__ import annotations

import time

import pytest
from conftest import Sim
from tuf.api import exceptions

from exporter.fetcher import Fetcher, new_session


def test_on_metadata_sees_each_complete_metadata_body_before_the_caller(sim: Sim) -> None:
    metadata_url, targets_url = sim.server.endpoint_urls("primary")
    seen: list[tuple[str, bytes]] = []
    fetcher = Fetcher(
        new_session(),
        lambda url: "target" if url.startswith(targets_url) else "timestamp",
        connect_timeout=1.0,
        read_timeout=1.0,
        deadline=time.monotonic() + 5.0,
        on_metadata=lambda role, body: seen.append((role, body)),
    )
    data = fetcher.download_bytes(f"{metadata_url}timestamp.json", 1 << 20)
    assert seen == [("timestamp", data)]
    assert data == sim.repo.latest.metadata("timestamp")
    # a target is not metadata: no call, and its body is not kept
    info = sim.repo.latest.signed("targets").signed.targets["files/a.txt"]
    digest = next(iter(info.hashes.values()))
    fetcher.download_bytes(f"{targets_url}files/{digest}.a.txt", 1 << 20)
    assert len(seen) == 1
    assert list(fetcher.bodies.values()) == [data]


def test_on_metadata_is_not_called_for_a_failed_download(sim: Sim) -> None:
    metadata_url, _ = sim.server.endpoint_urls("primary")
    seen: list[str] = []
    fetcher = Fetcher(
        new_session(), lambda url: "timestamp", connect_timeout=1.0, read_timeout=1.0,
        deadline=time.monotonic() + 5.0, on_metadata=lambda role, body: seen.append(role),
    )
    with pytest.raises(exceptions.DownloadLengthMismatchError):
        fetcher.download_bytes(f"{metadata_url}timestamp.json", 10)  # longer than allowed
    assert seen == []
