"""Slow unauthenticated clients against ``tuf-exporter serve`` (issue 14, deliverable 5).

A thousand connections that trickle a request head and never finish it, reconnecting
when dropped, must neither delay scrapes nor make probes late or fail: the web server's
connections are capped below the open-files limit and a request must arrive within its
deadline. Loopback only; the attack runs for a bounded number of rounds.
"""

from __future__ import annotations

import resource
import socket
import time
from pathlib import Path

import pytest
import requests
from conftest import Sim, poll
from test_serve import Exporter, _config, exporters, get  # noqa: F401 - the fixture

pytestmark = pytest.mark.timeout(180)

CLIENTS = 1000
OPEN_FILES = 1024  # the exporter's limit: the usual soft default
ROUNDS = 12  # each: one byte on every slow connection, then a timed scrape


def _open_files_for(needed: int) -> None:
    """Let this test process hold ``needed`` descriptors, or skip."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft >= needed:
        return
    if hard != resource.RLIM_INFINITY and hard < needed:
        pytest.skip(f"open-files hard limit {hard} < {needed}")
    resource.setrlimit(resource.RLIMIT_NOFILE, (needed, hard))


def _slow_client(port: int) -> socket.socket | None:
    """A connection that has sent a request line and one header, and will never finish."""
    try:
        sock = socket.create_connection(("127.0.0.1", port), timeout=1)
        sock.sendall(b"GET /metrics HTTP/1.1\r\nHost: x\r\n")
    except OSError:
        return None
    return sock


def test_a_thousand_slow_clients_neither_delay_scrapes_nor_probes(
    sim: Sim, tmp_path: Path, exporters: list[Exporter]  # noqa: F811
) -> None:
    _open_files_for(CLIENTS + 512)
    exporter = Exporter("serve", "--config", str(_config(sim, tmp_path)), open_files=OPEN_FILES)
    exporters.append(exporter)
    poll(exporter.up, timeout=30)
    poll(lambda: get(exporter.metrics(), "tuf_probe_success", endpoint="mirror1") == 1,
         timeout=30)
    before = exporter.metrics()
    failures_before = sum(v for (name, labels), v in before.items()
                          if name == "tuf_probes_total" and ("result", "failure") in labels)
    successes_before = get(before, "tuf_probes_total", endpoint="primary", result="success") or 0

    slow: list[socket.socket | None] = [_slow_client(exporter.port) for _ in range(CLIENTS)]
    scrapes: list[float] = []
    probe_ages: list[float] = []
    started = time.monotonic()
    try:
        for _ in range(ROUNDS):
            for i, sock in enumerate(slow):  # trickle; a dropped client comes back
                try:
                    if sock is None:
                        raise OSError("not connected")
                    sock.sendall(b"X")
                except OSError:
                    if sock is not None:
                        sock.close()
                    slow[i] = _slow_client(exporter.port)
            t0 = time.monotonic()
            response = requests.get(f"{exporter.url}/metrics", timeout=5)
            scrapes.append(time.monotonic() - t0)
            response.raise_for_status()
            samples = exporter.metrics()
            last = get(samples, "tuf_exporter_last_probe_timestamp_seconds", endpoint="primary")
            assert last is not None
            probe_ages.append(time.time() - last)
        elapsed = time.monotonic() - started
        connected = sum(sock is not None for sock in slow)
    finally:
        for sock in slow:
            if sock is not None:
                sock.close()

    after = exporter.metrics()
    failures_after = sum(v for (name, labels), v in after.items()
                         if name == "tuf_probes_total" and ("result", "failure") in labels)
    successes = (get(after, "tuf_probes_total", endpoint="primary", result="success") or 0) \
        - successes_before
    assert connected >= CLIENTS * 0.9, "the attack did not hold its connections open"
    assert max(scrapes) < 1.0, scrapes
    assert failures_after == failures_before, "probes failed during the attack"
    assert max(probe_ages) < 3.0, probe_ages  # probes every 1 s stayed on time
    assert successes >= elapsed - 3, (successes, elapsed)
