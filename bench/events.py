"""Case 6: events from probe results into the durable spool and through the shipper.

One real probe result (a probe of a simulated repository) is replayed with distinct start
times: for a fixed time each producer turns one into its verification event and spools it with
``Spool.emit_many``, as the service does after every probe (SQLite, WAL, ``synchronous=FULL``:
the commit is fsynced before ``emit_many`` returns). The goal is measured as the service
produces events: its default number of probe workers (``Config.workers``), each spooling its own
probe's events, so concurrent probes share a commit (group commit). A single producer (one
fsync per event, nothing to share) is shown too, for information. The shipper runs at the same
time with the default batch settings (500 events, 2 s) and bulk-creates into the fake
OpenSearch of ``tests/support/opensearch_fake.py``. Throughput = events acknowledged by the fake /
seconds from the first emit until the last one is stored.

Baseline: the physical limit of the same durability on this disk, raw ``sqlite3`` inserting the
same documents into a WAL database with ``synchronous=FULL``, one commit per event.
"""

from __future__ import annotations

import sqlite3
import sys
import threading
import time
from dataclasses import replace
from datetime import timedelta
from pathlib import Path

from bench.common import Goal, Row, median, repository, scratch
from bench.simproc import SimProcess, Spec
from exporter.config import Config, OpenSearch
from exporter.events import OpenSearchSink, Shipper, Spool, canonical_json
from exporter.probe import Prober, ProbeResult
from exporter.serve.service import verification_event

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from support.opensearch_fake import FakeOpenSearch  # type: ignore[import-not-found]


def _probe_result() -> ProbeResult:
    with SimProcess(Spec(targets=10)) as sim, scratch() as tmp:
        urls = sim.built.urls["primary"]
        repo = repository(urls, canaries=(sim.built.canary,))
        result = Prober(tmp / "state").probe(repo, repo.primary, sim.built.trusted_root)
    assert result.success, result.message
    return result


def _durable(spool: Spool) -> bool:
    conn = sqlite3.connect(spool.path)
    try:
        mode = conn.execute("PRAGMA journal_mode").fetchone()[0]
    finally:
        conn.close()
    with spool._lock:  # noqa: SLF001 - read the live connection's setting
        level = spool._db().execute("PRAGMA synchronous").fetchone()[0]  # noqa: SLF001
    return str(mode).lower() == "wal" and int(level) >= 2


def _pipeline(
    fake: FakeOpenSearch, result: ProbeResult, directory: Path, seconds: float, offset: int,
    producers: int,
) -> tuple[float, float, bool]:
    """One run: (end-to-end events/s, emit events/s, spool durable)."""
    spool = Spool(directory / "spool.sqlite")
    sink = OpenSearchSink(OpenSearch(hosts=(fake.url,), index_prefix="bench-events"))
    shipper = Shipper(spool, sink)
    shipper.start()
    before = len(fake.created)
    counts = [0] * producers
    start = time.perf_counter()

    def produce(index: int) -> None:
        # distinct start times, hence distinct event ids, per producer
        base = offset + index * 1_000_000
        while time.perf_counter() - start < seconds:
            moment = result.started_at + timedelta(microseconds=base + counts[index])
            spool.emit_many([verification_event(replace(result, started_at=moment))])
            counts[index] += 1

    try:
        threads = [threading.Thread(target=produce, args=(i,)) for i in range(producers)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        produced = sum(counts)
        emitted = time.perf_counter()
        deadline = emitted + 120
        while len(fake.created) - before < produced and time.perf_counter() < deadline:
            time.sleep(0.005)
        done = time.perf_counter()
        stored = len(fake.created) - before
        durable = _durable(spool)
    finally:
        shipper.stop(timeout=5)
        spool.close()
    assert stored == produced, f"{stored} of {produced} events stored"
    return stored / (done - start), produced / (emitted - start), durable


def _raw(result: ProbeResult, directory: Path, seconds: float) -> float:
    """Raw SQLite, WAL + synchronous=FULL, one commit per event: events/s."""
    conn = sqlite3.connect(directory / "raw.sqlite", isolation_level=None)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=FULL")
    conn.execute("CREATE TABLE IF NOT EXISTS events (id TEXT PRIMARY KEY, document TEXT)")
    event = verification_event(result)
    document = canonical_json(event.to_document()).decode()
    count = 0
    start = time.perf_counter()
    while time.perf_counter() - start < seconds:
        conn.execute("INSERT INTO events VALUES (?, ?)", (f"{event.event_id}-{count}", document))
        count += 1
    elapsed = time.perf_counter() - start
    conn.close()
    return count / elapsed


def run(quick: bool) -> list[Row]:
    """All rows of case 6."""
    result = _probe_result()
    reps = 3
    seconds = 2.0 if quick else 5.0
    workers = Config(repositories=()).workers
    e2e: list[float] = []
    emit: list[float] = []
    single: list[float] = []
    single_emit: list[float] = []
    raw: list[float] = []
    durable = True
    with FakeOpenSearch() as fake, scratch() as tmp:
        for i in range(reps):
            directory = tmp / f"run-{i}"
            directory.mkdir()
            rate, emitted, ok = _pipeline(fake, result, directory / "workers", seconds,
                                          i * 100_000_000, workers)
            e2e.append(rate)
            emit.append(emitted)
            rate, emitted, ok1 = _pipeline(fake, result, directory / "single", seconds,
                                           i * 100_000_000 + 50_000_000, 1)
            single.append(rate)
            single_emit.append(emitted)
            durable = durable and ok and ok1
            raw.append(_raw(result, directory, seconds / 2))
    base = median(raw)
    note = "spool WAL + synchronous=FULL" if durable else "spool NOT durable"
    return [
        Row(f"6 events: {workers} probe workers (the default) -> spool -> shipper -> bulk fake, "
            "sustained", median(e2e), "/s", base, "raw SQLite FULL commit/event",
            Goal("value>=", 5000.0, ">= 5,000/s, durable"), reps,
            verdict=durable and median(e2e) >= 5000.0, note=note),
        Row(f"6 events: {workers} probe workers, emit into the spool alone", median(emit), "/s",
            base, "raw SQLite FULL commit/event", Goal("info"), reps),
        Row("6 events: one producer (a commit and an fsync per event) -> bulk fake",
            median(single), "/s", base, "raw SQLite FULL commit/event", Goal("info"), reps),
        Row("6 events: one producer, emit into the spool alone", median(single_emit), "/s",
            base, "raw SQLite FULL commit/event", Goal("info"), reps),
    ]
