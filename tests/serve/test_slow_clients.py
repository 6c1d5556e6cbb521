"""Slow unauthenticated clients against ``tuf-exporter serve`` (issue 14, deliverable 5).

A thousand connections that trickle a request head (over TLS with basic auth: a TLS
handshake) and never finish it, reconnecting when dropped, must neither delay
scrapes nor make probes late or fail: the web server's connections are capped below the
open-files limit and a request must arrive within its deadline. Loopback only; the attack
runs for a bounded number of rounds.
"""

from __future__ import annotations

import resource
import socket
import time
from pathlib import Path
from typing import Final

import bcrypt
import pytest
import requests
import yaml
from support import Sim, poll
from support.pki import PKI
from support.process import Exporter, get, serve_config

pytestmark = pytest.mark.timeout(180)

CLIENTS = 1000
OPEN_FILES = 512  # the exporter's limit, half the usual soft default: the clients could take it all
ROUNDS = 15  # each: a byte on every slow connection (or a reconnection), a timed scrape
ROUND_SECONDS = 1.0  # the pace of the trickle: rounds take at least this long


def _open_files_for(needed: int) -> None:
    """Let this test process hold ``needed`` descriptors, or skip."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft >= needed:
        return
    if hard != resource.RLIM_INFINITY and hard < needed:
        pytest.skip(f"open-files hard limit {hard} < {needed}")
    resource.setrlimit(resource.RLIMIT_NOFILE, (needed, hard))


# What a slow client sends first, then a byte at a time: an unfinished request head, or the
# header of a TLS record (a ClientHello of 512 bytes) that never gets its body.
START: Final = {False: b"GET /metrics HTTP/1.1\r\nHost: x\r\n", True: b"\x16\x03\x01\x02\x00"}
TRICKLE: Final = {False: b"X", True: b"\x01"}


def _slow_client(port: int, tls: bool) -> socket.socket | None:
    """A connection that has started a request (or a TLS handshake) it will never finish."""
    try:
        sock = socket.create_connection(("127.0.0.1", port), timeout=1)
        sock.sendall(START[tls])
    except OSError:
        return None
    return sock


def _trickle(sock: socket.socket, tls: bool) -> bool:
    """Send one more byte; False if the server has closed the connection."""
    try:
        sock.sendall(TRICKLE[tls])
    except OSError:
        return False
    return True


@pytest.mark.parametrize("tls", [False, True], ids=["http", "tls-and-basic-auth"])
def test_a_thousand_slow_clients_neither_delay_scrapes_nor_probes(
    sim: Sim, tmp_path: Path, exporters: list[Exporter], pki: PKI, tls: bool
) -> None:
    _open_files_for(CLIENTS + 512)
    args = ["serve", "--config", str(serve_config(sim, tmp_path))]
    scheme, scrape_options = "http", {}
    if tls:
        web = tmp_path / "web.yml"
        hashed = bcrypt.hashpw(b"s3cret", bcrypt.gensalt(rounds=4)).decode()
        web.write_text(yaml.safe_dump({
            "tls_server_config": {"cert_file": str(pki.server_cert),
                                  "key_file": str(pki.server_key)},
            "basic_auth_users": {"prometheus": hashed}}))
        args += ["--web.config.file", str(web)]
        scheme = "https"
        scrape_options = {"verify": str(pki.ca), "auth": ("prometheus", "s3cret")}
    exporter = Exporter(*args, open_files=OPEN_FILES)
    exporters.append(exporter)
    exporter.url = f"{scheme}://127.0.0.1:{exporter.port}"

    def ready() -> bool:
        try:
            return requests.get(f"{exporter.url}/-/ready", timeout=2,
                                **scrape_options).status_code == 200  # type: ignore[arg-type]
        except requests.ConnectionError:
            return False

    poll(ready, timeout=30)
    poll(lambda: get(exporter.metrics(**scrape_options), "tuf_probe_success",
                     endpoint="mirror1") == 1, timeout=30)
    before = exporter.metrics(**scrape_options)
    failures_before = sum(v for (name, labels), v in before.items()
                          if name == "tuf_probes_total" and ("result", "failure") in labels)
    successes_before = get(before, "tuf_probes_total", endpoint="primary", result="success") or 0

    slow: list[socket.socket | None] = [_slow_client(exporter.port, tls) for _ in range(CLIENTS)]
    scrapes: list[float] = []
    probe_ages: list[float] = []
    started = time.monotonic()
    try:
        for _ in range(ROUNDS):
            round_ends = time.monotonic() + ROUND_SECONDS
            reconnect_until = time.monotonic() + 3 * ROUND_SECONDS
            for i, sock in enumerate(slow):  # a dropped client comes back (within a budget)
                if sock is not None and _trickle(sock, tls):
                    continue
                if sock is not None:
                    sock.close()
                slow[i] = (_slow_client(exporter.port, tls)
                           if time.monotonic() < reconnect_until else None)
            t0 = time.monotonic()
            samples = exporter.metrics(**scrape_options)
            scrapes.append(time.monotonic() - t0)
            last = get(samples, "tuf_exporter_last_probe_timestamp_seconds", endpoint="primary")
            assert last is not None
            probe_ages.append(time.time() - last)
            time.sleep(max(0.0, round_ends - time.monotonic()))  # pace the trickle
        elapsed = time.monotonic() - started
        connected = sum(sock is not None for sock in slow)
    finally:
        for sock in slow:
            if sock is not None:
                sock.close()

    after = exporter.metrics(**scrape_options)
    failures_after = sum(v for (name, labels), v in after.items()
                         if name == "tuf_probes_total" and ("result", "failure") in labels)
    successes = (get(after, "tuf_probes_total", endpoint="primary", result="success") or 0) \
        - successes_before
    assert connected >= CLIENTS * 0.9, "the attack did not hold its connections open"
    assert max(scrapes) < 1.0, scrapes
    assert failures_after == failures_before, "probes failed during the attack"
    assert max(probe_ages) < 3.0, probe_ages  # probes every 1 s stayed on time
    assert successes >= elapsed - 3, (successes, elapsed)
