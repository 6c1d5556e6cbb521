"""Exactly-once shipping against a real OpenSearch (opt-in: set OPENSEARCH_URL).

``OPENSEARCH_URL`` is e.g. ``http://localhost:9200`` or ``https://localhost:9200``; for a
secured cluster also set ``OPENSEARCH_USERNAME`` and ``OPENSEARCH_PASSWORD``, and
``OPENSEARCH_VERIFY_TLS=0`` for a self-signed certificate. The test uses a unique index
prefix and deletes its indices, template and policy afterwards.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from exporter.config import OpenSearch
from exporter.events import Backoff, Event, EventKind, OpenSearchSink, Shipper, Spool

URL = os.environ.get("OPENSEARCH_URL")

pytestmark = pytest.mark.skipif(not URL, reason="OPENSEARCH_URL is not set")


@pytest.fixture
def settings() -> Iterator[OpenSearch]:
    assert URL is not None
    has_auth = "OPENSEARCH_USERNAME" in os.environ
    result = OpenSearch(
        hosts=(URL,),
        index_prefix=f"tuf-exporter-test-{uuid.uuid4().hex[:8]}",
        verify_tls=os.environ.get("OPENSEARCH_VERIFY_TLS", "1") != "0",
        username_env="OPENSEARCH_USERNAME" if has_auth else None,
        password_env="OPENSEARCH_PASSWORD" if has_auth else None,
        retention=86400.0,
    )
    yield result
    cleanup = OpenSearchSink(result)
    try:
        client = cleanup.client
        client.indices.delete(index=f"{result.index_prefix}-*", ignore=[404])
        client.indices.delete_index_template(name=result.index_prefix, ignore=[404])
        client.transport.perform_request(
            "DELETE",
            f"/_plugins/_ism/policies/{result.index_prefix}-retention",
            params={"ignore": 404},
        )
    finally:
        cleanup.close()


def count_by_id(sink: OpenSearchSink, prefix: str) -> dict[str, int]:
    client = sink.client
    client.indices.refresh(index=f"{prefix}-*")
    response = client.search(
        index=f"{prefix}-*", body={"query": {"match_all": {}}, "size": 1000, "_source": False}
    )
    counts: dict[str, int] = {}
    for hit in response["hits"]["hits"]:
        counts[hit["_id"]] = counts.get(hit["_id"], 0) + 1
    return counts


def test_exactly_once_against_real_opensearch(settings: OpenSearch, tmp_path: Path) -> None:
    t0 = datetime.now(UTC) - timedelta(days=1)
    events = [
        Event(kind=EventKind.SIGNING, time=t0 + timedelta(hours=i), repository="real",
              role="snapshot", versions={"snapshot": i}, keyids=("k1",),
              durations={"probe": 0.5}, details={"i": i})
        for i in range(40)
    ]  # fmt: skip
    with Spool(tmp_path / "spool.sqlite") as spool:
        for e in events:
            spool.emit(e)
        sink = OpenSearchSink(settings)
        shipper = Shipper(spool, sink, batch_size=7, batch_interval=0.05,
                          backoff=Backoff(0.1, 1.0))  # fmt: skip
        shipper.start()
        assert shipper.stop(timeout=60.0), shipper.stats()
    # a retry of everything (as after a crash before the acks) must not create duplicates
    again = OpenSearchSink(settings)
    try:
        results = again.send([e.to_document() for e in events])
        assert all(r.outcome == "ok" for r in results), results[:3]
        counts = count_by_id(again, settings.index_prefix)
        assert counts == {e.event_id: 1 for e in events}
        template = again.client.indices.get_index_template(name=settings.index_prefix)
        assert template["index_templates"]
    finally:
        again.close()
