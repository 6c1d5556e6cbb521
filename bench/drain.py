"""Case 8: draining a backlog of 1,000,000 spooled events into the bulk API (issue #18, 4).

After OpenSearch was down long enough for the spool to hold 1,000,000 events, how fast does
the shipper empty it once OpenSearch answers again, and does its memory stay flat? That rate
decides how long dashboards in OpenSearch stay behind after an outage.

* The backlog: one real probe result turned into verification events with distinct start
  times (hence distinct ids), spooled with ``Spool.emit_many`` in chunks of 1,000 (durable
  commits, as the service spools them), into a spool whose ``spool_max_bytes`` holds them all
  (the default, 256 MB, holds fewer: an operator expecting such outages raises it).
* The drain runs in a fresh process (spawned): the real ``Spool`` and ``Shipper`` with the
  default batch settings (500 events, 2 s) and the real ``OpenSearchSink`` (opensearch-py
  ``streaming_bulk``). Rate = events acknowledged / seconds from the shipper's start until
  the spool is empty; resident memory is sampled every 0.25 s (``/proc/self/statm``).
* OpenSearch is a minimal bulk endpoint in its own process (:func:`_bulk_main`): it answers
  the ISM policy and index template calls and ``POST /_bulk`` like OpenSearch does (one item
  per action, 201 ``created``, or 409 for an id already created in that index), parses every
  action line and keeps the ids, but not the documents.
* Baseline: the same sink alone, ``OpenSearchSink.send_serialized`` of the same documents in
  batches of 500 from memory (no spool), against the same endpoint in the same process: what
  the HTTP bulk path costs, so the ratio shows what the spool adds.

``python -m bench.drain [--events N]`` runs it alone.
"""

from __future__ import annotations

import contextlib
import json
import multiprocessing
import multiprocessing.connection
import sys
import threading
import time
from dataclasses import replace
from datetime import timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from bench.common import Goal, Row, scratch
from bench.events import _probe_result
from bench.service_run import rss_growth, rss_mb
from exporter.config import OpenSearch
from exporter.events import Spool
from exporter.serve.service import verification_event

#: Events in the backlog.
EVENTS = 1_000_000
#: Events spooled per ``emit_many`` while building the backlog.
CHUNK = 1000
#: Documents sent by the sink-alone baseline.
BASELINE_EVENTS = 100_000
#: The longest a drain may take before the case gives up.
DRAIN_DEADLINE = 1200.0
#: The index prefix of the drained events.
PREFIX = "bench-drain"


# ---------------------------------------------------------------------------------------------
# the bulk endpoint (its own process)


class _BulkServer(ThreadingHTTPServer):
    daemon_threads = True
    #: (index, id) of every document created
    ids: set[tuple[str, str]]
    lock: threading.Lock
    created: Any  # multiprocessing.Value("q")


class _BulkHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _BulkServer

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def _body(self) -> bytes:
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length else b""

    def _reply(self, status: int, payload: Any) -> None:
        data = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self) -> None:
        self._body()
        self._reply(200, {"version": {"number": "2.11.0", "distribution": "opensearch"}})

    def do_PUT(self) -> None:
        body = self._body()
        if self.path.startswith("/_plugins/_ism/policies/"):
            policy_id = self.path.rsplit("/", 1)[-1].split("?")[0]
            self._reply(201, {"_id": policy_id, "_version": 1, "_seq_no": 0,
                              "_primary_term": 1, "policy": json.loads(body or b"{}")})
        elif self.path.startswith("/_index_template/"):
            self._reply(200, {"acknowledged": True})
        elif self.path.startswith("/_bulk"):
            self._bulk(body)
        else:
            self._reply(404, {"error": "not here", "status": 404})

    def do_POST(self) -> None:
        body = self._body()
        if self.path.startswith("/_bulk"):
            self._bulk(body)
        else:
            self._reply(404, {"error": "not here", "status": 404})

    def _bulk(self, body: bytes) -> None:
        lines = body.split(b"\n")
        items: list[dict[str, Any]] = []
        created = 0
        errors = False
        with self.server.lock:
            i = 0
            while i < len(lines):
                if not lines[i].strip():
                    i += 1
                    continue
                op, meta = next(iter(json.loads(lines[i]).items()))
                i += 2  # the action line and its source line
                key = (str(meta["_index"]), str(meta["_id"]))
                base = {"_index": key[0], "_id": key[1]}
                if key in self.server.ids:
                    errors = True
                    items.append({op: {**base, "status": 409, "error": {
                        "type": "version_conflict_engine_exception",
                        "reason": f"[{key[1]}]: version conflict, document already exists"}}})
                    continue
                self.server.ids.add(key)
                created += 1
                items.append({op: {**base, "_version": 1, "result": "created", "status": 201,
                                   "_shards": {"total": 1, "successful": 1, "failed": 0},
                                   "_seq_no": len(self.server.ids), "_primary_term": 1}})
        with self.server.created.get_lock():
            self.server.created.value += created
        self._reply(200, {"took": 1, "errors": errors, "items": items})


def _bulk_main(conn: multiprocessing.connection.Connection, created: Any) -> None:
    server = _BulkServer(("127.0.0.1", 0), _BulkHandler)
    server.ids = set()
    server.lock = threading.Lock()
    server.created = created
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05},
                              daemon=True)
    thread.start()
    conn.send(server.server_address[1])
    with contextlib.suppress(EOFError):
        conn.recv()  # anything (or EOF): stop
    server.shutdown()
    server.server_close()


class BulkEndpoint:
    """The minimal OpenSearch bulk endpoint in a child process; a context manager."""

    def __init__(self) -> None:
        context = multiprocessing.get_context("spawn")
        self.created = context.Value("q", 0)
        self._conn, child = context.Pipe()
        self._process = context.Process(target=_bulk_main, args=(child, self.created),
                                        daemon=True)
        self._process.start()
        child.close()
        port = self._conn.recv()
        self.url = f"http://127.0.0.1:{port}"

    def close(self) -> None:
        """Stop the endpoint and its process."""
        if self._process.is_alive():
            self._conn.send("stop")
            self._process.join(10)
        if self._process.is_alive():
            self._process.kill()
            self._process.join(5)
        self._conn.close()

    def __enter__(self) -> BulkEndpoint:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# ---------------------------------------------------------------------------------------------
# the backlog and the drain


def build_backlog(path: Path, count: int) -> tuple[int, float]:
    """Spool ``count`` distinct verification events at ``path``; (spool bytes, seconds)."""
    result = _probe_result()
    spool = Spool(path, max_bytes=1 << 40)
    start = time.perf_counter()
    try:
        for first in range(0, count, CHUNK):
            spool.emit_many([
                verification_event(
                    replace(result, started_at=result.started_at + timedelta(microseconds=i))
                )
                for i in range(first, min(count, first + CHUNK))
            ])
        assert len(spool) == count, f"{len(spool)} of {count} events spooled"
        return spool.size_bytes, time.perf_counter() - start
    finally:
        spool.close()


def _drain_child(spec: dict[str, Any]) -> dict[str, Any]:
    """In a fresh process: drain the spool into the endpoint; the rate and RSS samples."""
    from exporter.events import OpenSearchSink, Shipper

    url, count = str(spec["url"]), int(spec["count"])
    spool = Spool(Path(spec["spool"]), max_bytes=1 << 40)
    settings = OpenSearch(hosts=(url,), index_prefix=PREFIX)
    shipper = Shipper(spool, OpenSearchSink(settings))
    samples: list[tuple[float, float]] = []
    start = time.perf_counter()
    shipper.start()
    deadline = start + DRAIN_DEADLINE
    try:
        while time.perf_counter() < deadline:
            now = time.perf_counter()
            samples.append((now - start, rss_mb()))
            if shipper.stats()["shipped"] >= count:
                break
            time.sleep(0.25)
        seconds = time.perf_counter() - start
    finally:
        shipper.stop(timeout=5)
    left = len(spool)
    spool.close()
    return {"seconds": seconds, "shipped": shipper.stats()["shipped"], "left": left,
            "errors": shipper.stats()["errors"], "samples": samples}


def _baseline_child(spec: dict[str, Any]) -> dict[str, Any]:
    """In a fresh process: the sink alone, the spool's documents sent from memory."""
    from exporter.events import OpenSearchSink

    count = int(spec["count"])
    spool = Spool(Path(spec["spool"]), max_bytes=1 << 40)
    documents = [(e.event_id, e.text) for e in spool.peek(count)]
    spool.close()
    sink = OpenSearchSink(OpenSearch(hosts=(str(spec["url"]),), index_prefix=PREFIX + "-bare"))
    sink.setup()
    start = time.perf_counter()
    sent = 0
    for first in range(0, len(documents), 500):
        results = sink.send_serialized(documents[first:first + 500])
        sent += sum(1 for r in results if r.status == 201)
    seconds = time.perf_counter() - start
    sink.close()
    return {"seconds": seconds, "sent": sent}


def _in_child(name: str, spec: dict[str, Any]) -> dict[str, Any]:
    """Run ``_<name>_child(spec)`` in a fresh interpreter; its JSON answer.

    With ``BENCH_DRAIN_PROFILE=DIR`` in the environment the drain child runs under
    ``py-spy record --nonblocking`` (it must be installed), writing ``DIR/drain.txt``
    (collapsed stacks of every thread, 100 samples/s).
    """
    import os
    import shutil
    import subprocess

    command = [sys.executable, "-m", "bench.drain", "--child", name, json.dumps(spec)]
    profile = os.environ.get("BENCH_DRAIN_PROFILE")
    if profile and name == "drain":
        spy = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
        command = [spy, "record", "--nonblocking", "-r", "100", "-f", "raw",
                   "-o", str(Path(profile) / "drain.txt"), "--", *command]
    done = subprocess.run(
        command,
        capture_output=True, text=True, check=True, timeout=DRAIN_DEADLINE + 120,
    )
    last = [line for line in done.stdout.splitlines() if line.startswith("{")][-1]
    answer: dict[str, Any] = json.loads(last)  # py-spy writes its own lines around it
    return answer


def run(quick: bool, events: int | None = None) -> list[Row]:
    """Rows of case 8."""
    count = events or (100_000 if quick else EVENTS)
    with scratch() as tmp, BulkEndpoint() as endpoint:
        path = tmp / "spool.sqlite"
        size, fill_seconds = build_backlog(path, count)
        base = _in_child("baseline", {"url": endpoint.url, "spool": str(path),
                                      "count": min(count, BASELINE_EVENTS)})
        drained = _in_child("drain", {"url": endpoint.url, "spool": str(path),
                                      "count": count})
        stored = int(endpoint.created.value) - int(base["sent"])
    samples = [(float(t), float(mb)) for t, mb in drained["samples"]]
    rate = int(drained["shipped"]) / float(drained["seconds"])
    baseline = int(base["sent"]) / float(base["seconds"])
    ok = drained["left"] == 0 and stored == count and drained["shipped"] == count
    first, last = rss_growth(samples, 0.0)
    growth = 100.0 * (last - first) / first if first else 0.0
    peak = max(mb for _, mb in samples)
    label = f"8 backlog drain, {count:,} spooled events ({size / 1e6:,.0f} MB)"
    detail = (f"{drained['shipped']:,} acked in {float(drained['seconds']):.1f} s, "
              f"{stored:,} stored, {drained['left']} left, errors {drained['errors'] or 'none'}; "
              f"backlog built in {fill_seconds:.0f} s")
    return [
        Row(f"{label}: shipper -> bulk API", rate, "/s", baseline,
            "sink alone, same documents from memory", Goal("value>=", 10_000.0, ">= 10,000/s"),
            1, verdict=ok and rate >= 10_000.0, note=detail),
        Row(f"{label}: resident memory growth during the drain", growth, "%", None, "",
            Goal("value<=", 5.0, "flat (<= 5 %)"), len(samples),
            note=f"{first:.0f} MB -> {last:.0f} MB, peak {peak:.0f} MB"),
    ]


if __name__ == "__main__":
    if len(sys.argv) == 4 and sys.argv[1] == "--child":
        child = {"drain": _drain_child, "baseline": _baseline_child}[sys.argv[2]]
        print(json.dumps(child(json.loads(sys.argv[3]))))
    else:
        from bench.common import table

        wanted = int(sys.argv[sys.argv.index("--events") + 1]) if "--events" in sys.argv else None
        print(table(run("--quick" in sys.argv, wanted)))
