"""Tests for the exporter's HTTP(S) server (exporter.serve.web), on loopback only."""

from __future__ import annotations

import base64
import gzip
import http.client
import logging
import re
import resource
import socket
import ssl
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import bcrypt
import pytest
import requests
from prometheus_client import CollectorRegistry, Counter, Gauge
from prometheus_client.openmetrics.parser import (
    text_string_to_metric_families as openmetrics_families,
)
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.registry import Collector
from support.pki import PKI

from exporter.serve import (
    ExporterServer,
    WebConfigError,
    connection_limit,
    load_web_config,
    parse_listen_address,
    raise_open_files_limit,
    web,
)

pytestmark = pytest.mark.timeout(60)

PASSWORD = "s3cret-pass"
HASH = bcrypt.hashpw(PASSWORD.encode(), bcrypt.gensalt(4)).decode()  # cost 4: fast tests
OPENMETRICS = "application/openmetrics-text; version=1.0.0; charset=utf-8"


# ----------------------------------------------------------------------------- helpers


def make_registry() -> CollectorRegistry:
    registry = CollectorRegistry()
    Counter("tuf_probes", "Probes run.", ["repository"], registry=registry).labels("sim").inc(3)
    Gauge("tuf_up", "Whether the repository answered.", registry=registry).set(1)
    return registry


@dataclass
class State:
    """What the fake service behind the server answers."""

    ready: bool = True
    reload_result: tuple[bool, str] = (True, "reloaded 2 repositories")
    reloads: int = 0

    def is_ready(self) -> bool:
        return self.ready

    def reload(self) -> tuple[bool, str]:
        self.reloads += 1
        return self.reload_result


ServerFactory = Callable[..., ExporterServer]


@pytest.fixture
def make_server() -> Iterator[ServerFactory]:
    """Build and start servers on loopback; every one is stopped at the end."""
    started: list[ExporterServer] = []

    def factory(
        *,
        registry: Collector | None = None,
        state: State | None = None,
        web_config_file: Path | None = None,
        listen: str = "127.0.0.1:0",
        ready: Callable[[], bool] | None = None,
        reload: Callable[[], tuple[bool, str]] | None = None,
        **options: Any,
    ) -> ExporterServer:
        state = state or State()
        server = ExporterServer(
            listen,
            registry if registry is not None else make_registry(),
            ready=ready or state.is_ready,
            reload=reload or state.reload,
            web_config_file=web_config_file,
            **options,
        )
        server.start()
        started.append(server)
        return server

    yield factory
    for server in started:
        server.stop()


@pytest.fixture
def server(make_server: ServerFactory) -> ExporterServer:
    return make_server()


def raw_get(server: ExporterServer, path: str, headers: dict[str, str] | None = None,
            method: str = "GET") -> tuple[int, dict[str, str], bytes]:
    """A request with http.client, which (unlike requests) does not decode gzip."""
    host, port = server.address
    conn = http.client.HTTPConnection(host, port, timeout=10)
    try:
        conn.request(method, path, headers=headers or {})
        resp = conn.getresponse()
        return resp.status, dict(resp.getheaders()), resp.read()
    finally:
        conn.close()


def write_config(pki: PKI, text: str, name: str = "web.yml") -> Path:
    """A web config in the PKI folder, so it can name the files relatively."""
    path = pki.dir / name
    path.write_text(text)
    return path


TLS_CONFIG = """
tls_server_config:
  cert_file: server.pem
  key_file: server-key.pem
"""


# ----------------------------------------------------------------------------- listen address


@pytest.mark.parametrize(("text", "expected"), [
    ("127.0.0.1:9100", ("127.0.0.1", 9100)),
    (":9100", ("", 9100)),
    ("localhost:0", ("localhost", 0)),
    ("[::1]:9100", ("::1", 9100)),
    ("[::]:80", ("::", 80)),
])
def test_parse_listen_address(text: str, expected: tuple[str, int]) -> None:
    assert parse_listen_address(text) == expected


@pytest.mark.parametrize("text", ["9100", "host:", "host:http", "::1:9100", "[nothost]:1",
                                  "127.0.0.1:70000", ""])
def test_parse_listen_address_rejects(text: str) -> None:
    with pytest.raises(ValueError, match="listen address"):
        parse_listen_address(text)


def test_port_zero_picks_a_free_port_and_url_reaches_it(server: ExporterServer) -> None:
    host, port = server.address
    assert host == "127.0.0.1"
    assert port > 0
    assert server.url == f"http://127.0.0.1:{port}/"
    assert requests.get(server.url + "-/healthy", timeout=5).status_code == 200


def test_all_interfaces(make_server: ServerFactory) -> None:
    server = make_server(listen=":0")
    assert server.address[0] in ("::", "0.0.0.0")
    assert requests.get(server.url + "-/healthy", timeout=5).text == "Healthy"
    port = server.address[1]
    with socket.create_connection(("127.0.0.1", port), timeout=5):
        pass  # reachable over IPv4 too


def test_ipv6_loopback(make_server: ServerFactory) -> None:
    if not socket.has_ipv6:
        pytest.skip("no IPv6")
    try:
        server = make_server(listen="[::1]:0")
    except OSError:
        pytest.skip("cannot bind ::1")
    assert server.address[0] == "::1"
    assert server.url.startswith("http://[::1]:")
    assert requests.get(server.url + "-/healthy", timeout=5).status_code == 200


def test_start_twice_and_stop_twice(server: ExporterServer) -> None:
    with pytest.raises(RuntimeError):
        server.start()
    server.stop()
    server.stop()
    assert not server.running
    with pytest.raises(RuntimeError):
        _ = server.address


def test_stop_is_prompt_with_open_keepalive_connections(server: ExporterServer) -> None:
    host, port = server.address
    session = requests.Session()
    assert session.get(server.url + "metrics", timeout=5).status_code == 200  # kept alive
    idle = socket.create_connection((host, port), timeout=5)  # connected, says nothing
    try:
        started = time.monotonic()
        server.stop()
        assert time.monotonic() - started < 2
        with pytest.raises(OSError):
            socket.create_connection((host, port), timeout=2).close()
        assert not [t for t in threading.enumerate() if t.name.startswith("web-")]
    finally:
        idle.close()
        session.close()


def test_context_manager() -> None:
    with ExporterServer("127.0.0.1:0", make_registry(), ready=lambda: True,
                        reload=lambda: (True, "")) as server:
        url = server.url
        assert requests.get(url + "-/healthy", timeout=5).status_code == 200
    assert not server.running


# ----------------------------------------------------------------------------- /metrics


def test_metrics_text_format_parses(server: ExporterServer) -> None:
    resp = requests.get(server.url + "metrics", timeout=5)
    assert resp.status_code == 200
    assert resp.headers["Content-Type"].startswith("text/plain; version=0.0.4")
    families = {f.name: f for f in text_string_to_metric_families(resp.text)}
    assert families["tuf_probes"].samples[0].value == 3
    assert families["tuf_probes"].samples[0].labels == {"repository": "sim"}
    assert families["tuf_up"].samples[0].value == 1


def test_metrics_openmetrics_negotiation(server: ExporterServer) -> None:
    resp = requests.get(server.url + "metrics", headers={"Accept": OPENMETRICS}, timeout=5)
    assert resp.status_code == 200
    assert resp.headers["Content-Type"].startswith("application/openmetrics-text; version=1.0.0")
    assert resp.text.endswith("# EOF\n")
    families = {f.name: f for f in openmetrics_families(resp.text)}  # type: ignore[no-untyped-call]
    assert families["tuf_probes"].type == "counter"
    # Prometheus' own Accept header prefers OpenMetrics with a fallback to text
    prometheus_accept = ("application/openmetrics-text;version=1.0.0;q=0.5,"
                         "text/plain;version=0.0.4;q=0.4,*/*;q=0.1")
    resp = requests.get(server.url + "metrics", headers={"Accept": prometheus_accept}, timeout=5)
    assert resp.headers["Content-Type"].startswith("application/openmetrics-text")


def test_metrics_gzip_when_accepted(server: ExporterServer) -> None:
    status, headers, body = raw_get(server, "/metrics", {"Accept-Encoding": "gzip"})
    assert status == 200
    assert headers["Content-Encoding"] == "gzip"
    assert int(headers["Content-Length"]) == len(body)
    assert b"tuf_up 1.0" in gzip.decompress(body)
    status, headers, body = raw_get(server, "/metrics", {"Accept-Encoding": "gzip;q=0"})
    assert "Content-Encoding" not in headers
    assert b"tuf_up 1.0" in body
    status, headers, body = raw_get(server, "/metrics", {"Accept-Encoding": "identity"})
    assert "Content-Encoding" not in headers


def test_metrics_name_filter(server: ExporterServer) -> None:
    text = requests.get(server.url + "metrics?name[]=tuf_up", timeout=5).text
    assert "tuf_up" in text
    assert "tuf_probes" not in text


def test_head_has_headers_but_no_body(server: ExporterServer) -> None:
    status, headers, body = raw_get(server, "/metrics", method="HEAD")
    assert status == 200
    assert int(headers["Content-Length"]) > 0
    assert body == b""


class Broken:
    """A collector that fails at scrape time."""

    def collect(self) -> Iterator[Any]:
        raise RuntimeError("database is gone")


def test_collector_error_is_a_500_and_the_server_lives_on(
        make_server: ServerFactory, caplog: pytest.LogCaptureFixture) -> None:
    registry = make_registry()
    registry.register(Broken())
    server = make_server(registry=registry)
    with caplog.at_level(logging.ERROR, logger="exporter.serve.web"):
        resp = requests.get(server.url + "metrics", timeout=5)
    assert resp.status_code == 500
    assert "RuntimeError: database is gone" in resp.text
    assert len(resp.text) < 400
    assert any(r.getMessage() == "collecting metrics failed" for r in caplog.records)
    assert requests.get(server.url + "-/healthy", timeout=5).status_code == 200


# ----------------------------------------------------------------------------- other paths


def test_healthy(server: ExporterServer) -> None:
    resp = requests.get(server.url + "-/healthy", timeout=5)
    assert (resp.status_code, resp.text) == (200, "Healthy")
    assert resp.headers["Content-Type"] == "text/plain; charset=utf-8"


def test_ready_follows_the_callable(make_server: ServerFactory) -> None:
    state = State(ready=False)
    server = make_server(state=state)
    resp = requests.get(server.url + "-/ready", timeout=5)
    assert resp.status_code == 503
    state.ready = True
    resp = requests.get(server.url + "-/ready", timeout=5)
    assert (resp.status_code, resp.text) == (200, "Ready")


def test_ready_callable_raising_is_not_ready(make_server: ServerFactory) -> None:
    def boom() -> bool:
        raise RuntimeError("not yet")

    server = make_server(ready=boom)
    resp = requests.get(server.url + "-/ready", timeout=5)
    assert resp.status_code == 503
    assert "not yet" in resp.text


@pytest.mark.parametrize("method", ["POST", "PUT"])
def test_reload_success(make_server: ServerFactory, method: str) -> None:
    state = State()
    server = make_server(state=state)
    resp = requests.request(method, server.url + "-/reload", timeout=5)
    assert (resp.status_code, resp.text) == (200, "reloaded 2 repositories")
    assert state.reloads == 1


def test_reload_failure_is_a_500_with_the_message(make_server: ServerFactory) -> None:
    state = State(reload_result=(False, "config.yml: repositories[0].url: missing"))
    server = make_server(state=state)
    resp = requests.post(server.url + "-/reload", data=b"ignored body", timeout=5)
    assert resp.status_code == 500
    assert resp.text == "config.yml: repositories[0].url: missing"


def test_reload_raising_is_a_500(make_server: ServerFactory) -> None:
    def boom() -> tuple[bool, str]:
        raise OSError("disk on fire")

    server = make_server(reload=boom)
    resp = requests.post(server.url + "-/reload", timeout=5)
    assert resp.status_code == 500
    assert "disk on fire" in resp.text


def test_reload_needs_post_or_put(make_server: ServerFactory) -> None:
    state = State()
    server = make_server(state=state)
    resp = requests.get(server.url + "-/reload", timeout=5)
    assert resp.status_code == 405
    assert resp.headers["Allow"] == "POST, PUT"
    assert state.reloads == 0


def test_unknown_path_404_and_wrong_method_405(server: ExporterServer) -> None:
    assert requests.get(server.url + "nope", timeout=5).status_code == 404
    assert requests.get(server.url + "metrics/", timeout=5).status_code == 404
    resp = requests.post(server.url + "metrics", timeout=5)
    assert resp.status_code == 405
    assert resp.headers["Allow"] == "GET, HEAD"
    assert requests.delete(server.url + "-/healthy", timeout=5).status_code == 405


def test_landing_page(server: ExporterServer) -> None:
    resp = requests.get(server.url, timeout=5)
    assert resp.status_code == 200
    assert resp.headers["Content-Type"] == "text/html; charset=utf-8"
    for link in ('href="metrics"', 'href="-/healthy"', 'href="-/ready"'):
        assert link in resp.text


def test_keepalive_connection_serves_many_requests(server: ExporterServer) -> None:
    host, port = server.address
    conn = http.client.HTTPConnection(host, port, timeout=5)
    try:
        for _ in range(5):
            conn.request("GET", "/metrics")
            resp = conn.getresponse()
            assert resp.status == 200
            resp.read()
    finally:
        conn.close()


def test_pipelined_requests_are_answered_in_order(server: ExporterServer) -> None:
    with socket.create_connection(server.address, timeout=5) as sock:
        sock.sendall(b"GET /-/healthy HTTP/1.1\r\nHost: x\r\n\r\n"
                     b"GET /nope HTTP/1.1\r\nHost: x\r\n\r\n"
                     b"GET /-/ready HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        received = b""
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            chunk = sock.recv(65536)
            if not chunk:
                break
            received += chunk
    statuses = re.findall(rb"HTTP/1\.1 (\d{3}) ", received)
    assert statuses == [b"200", b"404", b"200"]
    assert received.endswith(b"Ready")


def test_a_slow_handler_does_not_block_others(make_server: ServerFactory) -> None:
    release = threading.Event()
    entered = threading.Event()

    def slow_reload() -> tuple[bool, str]:
        entered.set()
        release.wait(20)
        return True, "done"

    server = make_server(reload=slow_reload)
    results: list[int] = []
    worker = threading.Thread(target=lambda: results.append(
        requests.post(server.url + "-/reload", timeout=30).status_code))
    worker.start()
    try:
        assert entered.wait(5)
        started = time.monotonic()
        assert requests.get(server.url + "-/healthy", timeout=5).status_code == 200
        assert requests.get(server.url + "metrics", timeout=5).status_code == 200
        assert time.monotonic() - started < 1.0
    finally:
        release.set()
        worker.join(10)
    assert results == [200]


def test_keepalive_responses_do_not_wait_for_a_delayed_ack(server: ExporterServer) -> None:
    # headers and body in two writes make each response wait ~40 ms for the client's
    # delayed ACK (Nagle); one write per response does not
    host, port = server.address
    conn = http.client.HTTPConnection(host, port, timeout=5)
    try:
        conn.request("GET", "/-/healthy")
        conn.getresponse().read()
        started = time.monotonic()
        for _ in range(25):
            conn.request("GET", "/-/healthy")
            resp = conn.getresponse()
            assert resp.read() == b"Healthy"
        elapsed = time.monotonic() - started
    finally:
        conn.close()
    assert elapsed < 0.5, f"25 keep-alive requests took {elapsed:.2f} s"


def _closed_by_server(sock: socket.socket, deadline: float, trickle: bytes = b"") -> float | None:
    """Send ``trickle`` every 0.1 s until the server closes ``sock`` or ``deadline`` (monotonic)
    passes; the monotonic time it closed, or None."""
    sock.settimeout(0.1)
    while time.monotonic() < deadline:
        try:
            if trickle:
                sock.sendall(trickle)
            if sock.recv(4096) == b"":
                return time.monotonic()
        except TimeoutError:
            continue
        except OSError:  # reset: closed
            return time.monotonic()
    return None


def test_a_trickled_request_head_is_cut_at_its_deadline(make_server: ServerFactory) -> None:
    server = make_server(request_timeout=1.0)
    with socket.create_connection(server.address, timeout=5) as sock:
        started = time.monotonic()
        sock.sendall(b"GET /metrics HTTP/1.1\r\nHost: x\r\n")
        closed = _closed_by_server(sock, started + 5, trickle=b"X")  # a byte every 0.1 s
        assert closed is not None, "a trickle kept the connection open"
        assert closed - started < 2.0
    # a keep-alive connection's next request gets its own deadline from its first byte
    with socket.create_connection(server.address, timeout=5) as sock:
        sock.sendall(b"GET /-/healthy HTTP/1.1\r\nHost: x\r\n\r\n")
        assert sock.recv(4096).startswith(b"HTTP/1.1 200 ")
        started = time.monotonic()
        sock.sendall(b"GET /")
        closed = _closed_by_server(sock, started + 5, trickle=b"m")
        assert closed is not None
        assert closed - started < 2.0


def test_a_pipelined_partial_request_gets_the_request_deadline_not_the_idle_one(
        make_server: ServerFactory) -> None:
    server = make_server(request_timeout=1.0, idle_timeout=30.0)
    with socket.create_connection(server.address, timeout=5) as sock:
        started = time.monotonic()
        sock.sendall(b"GET /-/healthy HTTP/1.1\r\nHost: x\r\n\r\nGET /met")
        closed = _closed_by_server(sock, started + 5)
        assert closed is not None
        assert closed - started < 2.0


def test_a_silent_tls_client_is_cut_at_the_request_deadline(
        make_server: ServerFactory, pki: PKI) -> None:
    server = make_server(web_config_file=write_config(pki, TLS_CONFIG), request_timeout=1.0)
    with socket.create_connection(server.address, timeout=5) as sock:
        started = time.monotonic()
        closed = _closed_by_server(sock, started + 5)
        assert closed is not None
        assert closed - started < 2.0


def test_at_the_connection_cap_the_longest_waiting_client_is_closed(
        make_server: ServerFactory) -> None:
    server = make_server(max_connections=4)
    silent = [socket.create_connection(server.address, timeout=5) for _ in range(4)]
    try:
        started = time.monotonic()  # the scrape takes the place of the oldest silent client
        assert requests.get(server.url + "metrics", timeout=5).status_code == 200
        assert time.monotonic() - started < 1.0
        assert _closed_by_server(silent[0], time.monotonic() + 5) is not None
        for sock in silent[1:]:
            assert _closed_by_server(sock, time.monotonic() + 0.2) is None  # still open
    finally:
        for sock in silent:
            sock.close()


def test_basic_auth_is_checked_before_the_body_is_read(
        make_server: ServerFactory, tmp_path: Path) -> None:
    state = State()
    server = make_server(state=state, web_config_file=auth_config(tmp_path))
    with socket.create_connection(server.address, timeout=5) as sock:
        # a body is announced and never sent: the answer cannot wait for it
        sock.sendall(b"POST /-/reload HTTP/1.1\r\nHost: x\r\nContent-Length: 60000\r\n\r\n")
        sock.settimeout(3)
        answer = sock.recv(4096)
        assert answer.startswith(b"HTTP/1.1 401 ")
        assert b"connection: close" in answer.lower()  # the unread body ends the connection
    assert state.reloads == 0
    token = base64.b64encode(f"prometheus:{PASSWORD}".encode()).decode()
    resp = requests.post(server.url + "-/reload", data=b"x" * 1000, timeout=5,
                         headers={"Authorization": f"Basic {token}"})
    assert resp.status_code == 200
    assert state.reloads == 1


def test_bodies_over_64_kib_are_refused(server: ExporterServer) -> None:
    resp = requests.post(server.url + "-/reload", data=b"x" * (64 * 1024 + 1), timeout=5)
    assert resp.status_code == 413
    chunks = iter([b"x" * 40_000, b"x" * 40_000])  # chunked: no Content-Length up front
    resp = requests.post(server.url + "-/reload", data=chunks, timeout=5)
    assert resp.status_code == 413


def test_oversized_and_malformed_heads_are_refused(server: ExporterServer) -> None:
    with socket.create_connection(server.address, timeout=5) as sock:
        sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 40_000 + b"\r\n\r\n")
        assert sock.recv(4096).startswith(b"HTTP/1.1 431 ")
    with socket.create_connection(server.address, timeout=5) as sock:
        sock.sendall(b"NOT HTTP AT ALL\r\n\r\n")
        assert sock.recv(4096).startswith(b"HTTP/1.1 400 ")
    assert requests.get(server.url + "-/healthy", timeout=5).status_code == 200


@pytest.mark.parametrize(("soft", "expected"), [
    (256, 64), (1024, 256), (20_000, 512), (16, 8), (resource.RLIM_INFINITY, 512)])
def test_connections_take_a_quarter_of_the_open_files_limit(
        monkeypatch: pytest.MonkeyPatch, soft: int, expected: int) -> None:
    monkeypatch.setattr(web.resource, "getrlimit", lambda _: (soft, resource.RLIM_INFINITY))
    assert connection_limit() == expected


def test_serving_raises_the_open_files_soft_limit_to_the_hard_one(
        monkeypatch: pytest.MonkeyPatch) -> None:
    limits = {"value": (1024, 4096)}
    monkeypatch.setattr(web.resource, "getrlimit", lambda _: limits["value"])

    def setrlimit(_: int, value: tuple[int, int]) -> None:
        limits["value"] = value

    monkeypatch.setattr(web.resource, "setrlimit", setrlimit)
    assert raise_open_files_limit() == 4096
    assert limits["value"] == (4096, 4096)
    assert raise_open_files_limit() == 4096  # already there

    def refuse(_: int, value: tuple[int, int]) -> None:
        raise ValueError("not allowed")

    limits["value"] = (512, 1024)
    monkeypatch.setattr(web.resource, "setrlimit", refuse)
    assert raise_open_files_limit() == 512  # what stays in force


@pytest.mark.parametrize("options", [
    {"max_connections": 0}, {"workers": 0}, {"request_timeout": 0}, {"idle_timeout": -1}])
def test_bounds_must_be_positive(options: dict[str, Any]) -> None:
    with pytest.raises(ValueError, match="must be"):
        ExporterServer("127.0.0.1:0", make_registry(), ready=lambda: True,
                       reload=lambda: (True, ""), **options)


def test_requests_logged_at_debug_only(server: ExporterServer,
                                       caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO, logger="exporter.serve.web"):
        requests.get(server.url + "-/healthy", timeout=5)
    assert not [r for r in caplog.records if r.getMessage() == "request"]
    with caplog.at_level(logging.DEBUG, logger="exporter.serve.web"):
        requests.get(server.url + "-/healthy", timeout=5)
        deadline = time.monotonic() + 2  # logged just after the response is written
        while time.monotonic() < deadline and not [
                r for r in caplog.records if r.getMessage() == "request"]:
            time.sleep(0.01)
    record = next(r for r in caplog.records if r.getMessage() == "request")
    assert record.levelno == logging.DEBUG
    assert (record.method, record.path, record.status) == ("GET", "/-/healthy", 200)  # type: ignore[attr-defined]


# ----------------------------------------------------------------------------- TLS


def test_tls(make_server: ServerFactory, pki: PKI) -> None:
    server = make_server(web_config_file=write_config(pki, TLS_CONFIG))
    assert server.url.startswith("https://127.0.0.1:")
    resp = requests.get(server.url + "metrics", verify=str(pki.ca), timeout=5)
    assert resp.status_code == 200
    assert "tuf_up" in resp.text
    with pytest.raises(requests.exceptions.SSLError):
        requests.get(server.url + "metrics", timeout=5)  # not trusted by default
    with pytest.raises(requests.exceptions.ConnectionError):
        requests.get(server.url.replace("https", "http") + "metrics", timeout=5)
    # the server still answers after those failures
    assert requests.get(server.url + "-/healthy", verify=str(pki.ca), timeout=5).ok


def test_tls_handshake_does_not_block_the_server(make_server: ServerFactory, pki: PKI) -> None:
    server = make_server(web_config_file=write_config(pki, TLS_CONFIG))
    silent = socket.create_connection(server.address, timeout=5)  # never starts a handshake
    try:
        started = time.monotonic()
        assert requests.get(server.url + "-/healthy", verify=str(pki.ca), timeout=5).ok
        assert time.monotonic() - started < 1.0
    finally:
        silent.close()


def test_tls_inline_cert_and_key(make_server: ServerFactory, pki: PKI, tmp_path: Path) -> None:
    indent = "\n    ".join
    config = tmp_path / "web.yml"
    config.write_text(
        "tls_server_config:\n"
        "  cert: |\n    " + indent(pki.server_cert.read_text().splitlines()) + "\n"
        "  key: |\n    " + indent(pki.server_key.read_text().splitlines()) + "\n")
    server = make_server(web_config_file=config)
    assert requests.get(server.url + "-/healthy", verify=str(pki.ca), timeout=5).ok


def test_tls_min_version_tls13_refuses_tls12(make_server: ServerFactory, pki: PKI) -> None:
    server = make_server(web_config_file=write_config(pki, TLS_CONFIG + "  min_version: TLS13\n"))
    context = ssl.create_default_context(cafile=str(pki.ca))
    context.maximum_version = ssl.TLSVersion.TLSv1_2
    with socket.create_connection(server.address, timeout=5) as sock, pytest.raises(ssl.SSLError):
        context.wrap_socket(sock, server_hostname="127.0.0.1")
    context = ssl.create_default_context(cafile=str(pki.ca))
    with socket.create_connection(server.address, timeout=5) as sock, \
            context.wrap_socket(sock, server_hostname="127.0.0.1") as tls:
        assert tls.version() == "TLSv1.3"


def test_client_certificate_required(make_server: ServerFactory, pki: PKI) -> None:
    config = write_config(pki, TLS_CONFIG + "  client_auth_type: RequireAndVerifyClientCert\n"
                                            "  client_ca_file: ca.pem\n")
    server = make_server(web_config_file=config)
    with pytest.raises(requests.exceptions.RequestException):
        requests.get(server.url + "metrics", verify=str(pki.ca), timeout=5)
    resp = requests.get(server.url + "metrics", verify=str(pki.ca), timeout=5,
                        cert=(str(pki.client_cert), str(pki.client_key)))
    assert resp.status_code == 200


def test_client_certificate_allowed_sans(make_server: ServerFactory, pki: PKI) -> None:
    config = write_config(pki, TLS_CONFIG + "  client_auth_type: RequireAndVerifyClientCert\n"
                                            "  client_ca_file: ca.pem\n"
                                            "  client_allowed_sans: [prometheus.test]\n")
    server = make_server(web_config_file=config)
    ok = requests.get(server.url + "-/healthy", verify=str(pki.ca), timeout=5,
                      cert=(str(pki.client_cert), str(pki.client_key)))
    assert ok.status_code == 200
    with pytest.raises(requests.exceptions.RequestException):
        requests.get(server.url + "-/healthy", verify=str(pki.ca), timeout=5,
                     cert=(str(pki.other_client_cert), str(pki.other_client_key)))


def test_ignored_tls_options_warn(pki: PKI, caplog: pytest.LogCaptureFixture) -> None:
    config = write_config(pki, TLS_CONFIG + "  cipher_suites: [TLS_AES_128_GCM_SHA256]\n")
    with caplog.at_level(logging.WARNING, logger="exporter.serve.web"):
        loaded = load_web_config(config)
    assert loaded.tls is not None
    assert loaded.tls.ignored == ("cipher_suites",)
    assert any("cipher_suites" in r.getMessage() for r in caplog.records)


# ----------------------------------------------------------------------------- basic auth


def auth_config(tmp_path: Path, extra: str = "") -> Path:
    path = tmp_path / "web.yml"
    path.write_text(f"basic_auth_users:\n  prometheus: '{HASH}'\n{extra}")
    return path


def test_basic_auth(make_server: ServerFactory, tmp_path: Path) -> None:
    server = make_server(web_config_file=auth_config(tmp_path))
    ok = requests.get(server.url + "metrics", auth=("prometheus", PASSWORD), timeout=5)
    assert ok.status_code == 200
    assert "tuf_up" in ok.text
    for auth in (("prometheus", "wrong"), ("nobody", PASSWORD), ("", ""), None):
        resp = requests.get(server.url + "metrics", auth=auth, timeout=5)
        assert resp.status_code == 401, auth
        assert resp.headers["WWW-Authenticate"] == 'Basic realm="tuf-exporter"'
    for path in ("-/healthy", "-/ready", "", "nope"):  # everything is protected
        assert requests.get(server.url + path, timeout=5).status_code == 401
    garbage = requests.get(server.url + "metrics", timeout=5,
                           headers={"Authorization": "Basic !!!not-base64"})
    assert garbage.status_code == 401
    bearer = requests.get(server.url + "metrics", timeout=5,
                          headers={"Authorization": "Bearer abc"})
    assert bearer.status_code == 401


def test_basic_auth_caches_successful_verifications(
        make_server: ServerFactory, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[bytes] = []
    real = bcrypt.checkpw

    def counting(password: bytes, hashed: bytes) -> bool:
        calls.append(password)
        return real(password, hashed)

    monkeypatch.setattr(bcrypt, "checkpw", counting)
    server = make_server(web_config_file=auth_config(tmp_path))
    session = requests.Session()
    for _ in range(5):
        assert session.get(server.url + "metrics", auth=("prometheus", PASSWORD),
                           timeout=5).status_code == 200
    assert len(calls) == 1
    for _ in range(2):  # failures are not cached: each one costs a bcrypt check
        assert session.get(server.url + "metrics", auth=("prometheus", "nope"),
                           timeout=5).status_code == 401
    assert len(calls) == 3
    # an unknown user is still checked against a hash (no timing oracle for user names)
    assert session.get(server.url + "metrics", auth=("ghost", PASSWORD),
                       timeout=5).status_code == 401
    assert len(calls) == 4


def test_basic_auth_over_tls_with_headers(make_server: ServerFactory, pki: PKI) -> None:
    config = write_config(pki, TLS_CONFIG + f"""
basic_auth_users:
  prometheus: '{HASH}'
http_server_config:
  headers:
    X-Frame-Options: deny
    X-Content-Type-Options: nosniff
    Strict-Transport-Security: max-age=31536000
""")
    server = make_server(web_config_file=config)
    denied = requests.get(server.url + "metrics", verify=str(pki.ca), timeout=5)
    assert denied.status_code == 401
    assert denied.headers["X-Frame-Options"] == "deny"
    resp = requests.get(server.url + "metrics", verify=str(pki.ca), timeout=5,
                        auth=("prometheus", PASSWORD))
    assert resp.status_code == 200
    assert resp.headers["X-Content-Type-Options"] == "nosniff"
    assert resp.headers["Strict-Transport-Security"] == "max-age=31536000"


def test_htpasswd_2y_hashes_are_accepted(make_server: ServerFactory, tmp_path: Path) -> None:
    path = tmp_path / "web.yml"
    path.write_text(f"basic_auth_users:\n  p: '$2y${HASH[4:]}'\n")
    server = make_server(web_config_file=path)
    assert requests.get(server.url, auth=("p", PASSWORD), timeout=5).status_code == 200


def test_rate_limit(make_server: ServerFactory, tmp_path: Path) -> None:
    path = tmp_path / "web.yml"
    path.write_text("rate_limit:\n  interval: 1m\n  burst: 2\n")
    server = make_server(web_config_file=path)
    codes = [requests.get(server.url + "-/healthy", timeout=5).status_code for _ in range(3)]
    assert codes == [200, 200, 429]


# ----------------------------------------------------------------------------- reloading


def test_reload_web_config(make_server: ServerFactory, tmp_path: Path) -> None:
    path = auth_config(tmp_path)
    server = make_server(web_config_file=path)
    assert requests.get(server.url, auth=("prometheus", PASSWORD), timeout=5).ok
    new_hash = bcrypt.hashpw(b"rotated", bcrypt.gensalt(4)).decode()
    path.write_text(f"basic_auth_users:\n  prometheus: '{new_hash}'\n")
    server.reload_web_config()
    assert requests.get(server.url, auth=("prometheus", PASSWORD), timeout=5).status_code == 401
    assert requests.get(server.url, auth=("prometheus", "rotated"), timeout=5).ok
    # a broken file is refused and the running config stays
    path.write_text("basic_auth_users:\n  prometheus: plaintext\n")
    with pytest.raises(WebConfigError, match=r"basic_auth_users\.prometheus"):
        server.reload_web_config()
    assert requests.get(server.url, auth=("prometheus", "rotated"), timeout=5).ok
    # removing all users turns auth off
    path.write_text("")
    server.reload_web_config()
    assert requests.get(server.url, timeout=5).ok


def test_reload_web_config_cannot_toggle_tls(make_server: ServerFactory, pki: PKI) -> None:
    path = write_config(pki, "")
    server = make_server(web_config_file=path)
    path.write_text(TLS_CONFIG)
    with pytest.raises(WebConfigError, match="restart"):
        server.reload_web_config()
    assert requests.get(server.url + "-/healthy", timeout=5).ok


def test_reload_web_config_picks_up_new_certificate(make_server: ServerFactory, pki: PKI) -> None:
    path = write_config(pki, TLS_CONFIG, name="reload.yml")
    server = make_server(web_config_file=path)
    server.reload_web_config()
    assert requests.get(server.url + "-/healthy", verify=str(pki.ca), timeout=5).ok


def test_reload_without_a_file_is_a_noop(server: ExporterServer) -> None:
    assert server.reload_web_config() == server.web_config


# ----------------------------------------------------------------------------- bad configs


def test_empty_config_is_plain_http(tmp_path: Path) -> None:
    path = tmp_path / "web.yml"
    path.write_text("# nothing\n")
    config = load_web_config(path)
    assert not config.tls_enabled
    assert not config.basic_auth_users


@pytest.mark.parametrize(("text", "field", "reason"), [
    ("listen: 1\n", "listen", "unknown field"),
    ("tls_server_config:\n  cert_file: server.pem\n  key_file: server-key.pem\n  ca: x\n",
     "tls_server_config.ca", "unknown field"),
    ("tls_server_config:\n  cert_file: server.pem\n", "tls_server_config.key_file", "missing"),
    ("tls_server_config:\n  cert_file: nope.pem\n  key_file: server-key.pem\n",
     "tls_server_config.cert_file", "no such file"),
    ("tls_server_config:\n  cert_file: server.pem\n  key_file: ca.pem\n",
     "tls_server_config.cert_file", "cannot load"),
    (TLS_CONFIG + "  client_auth_type: Sometimes\n", "tls_server_config.client_auth_type",
     "invalid"),
    (TLS_CONFIG + "  client_auth_type: RequireAnyClientCert\n",
     "tls_server_config.client_auth_type", "not supported"),
    (TLS_CONFIG + "  client_auth_type: RequireAndVerifyClientCert\n",
     "tls_server_config.client_ca_file", "missing"),
    (TLS_CONFIG + "  client_ca_file: ca.pem\n", "tls_server_config.client_auth_type",
     "does not verify"),
    (TLS_CONFIG + "  min_version: TLS99\n", "tls_server_config.min_version", "invalid"),
    (TLS_CONFIG + "  min_version: TLS13\n  max_version: TLS12\n",
     "tls_server_config.min_version", "above"),
    (TLS_CONFIG + "  client_allowed_sans: [a]\n", "tls_server_config.client_allowed_sans",
     "RequireAndVerifyClientCert"),
    ("basic_auth_users:\n  alice: hunter2\n", "basic_auth_users.alice", "not a bcrypt hash"),
    ("basic_auth_users: [alice]\n", "basic_auth_users", "mapping"),
    ("http_server_config:\n  headers:\n    X-Powered-By: me\n",
     "http_server_config.headers.X-Powered-By", "unknown field"),
    ("http_server_config:\n  headers:\n    X-Frame-Options: allow\n",
     "http_server_config.headers.X-Frame-Options", "invalid"),
    ("http_server_config:\n  http2: maybe\n", "http_server_config.http2", "true or false"),
    ("rate_limit:\n  interval: soon\n  burst: 1\n", "rate_limit.interval", "duration"),
    ("rate_limit:\n  interval: 1s\n", "rate_limit.burst", "at least 1"),
    ("tls_server_config: [1]\n", "tls_server_config", "mapping"),
    ("- a list\n", "", "mapping"),
    ("a: [unclosed\n", "", "not valid YAML"),
    ("basic_auth_users:\n  alice: x\n  alice: y\n", "basic_auth_users.alice", "duplicate key"),
])
def test_bad_config_names_file_and_field(pki: PKI, text: str, field: str, reason: str) -> None:
    path = write_config(pki, text, name="bad.yml")
    with pytest.raises(WebConfigError) as info:
        load_web_config(path)
    error = info.value
    assert error.path == path
    assert error.field == field
    assert reason in str(error)
    assert f"web config {path}:{error.line}: " in str(error)  # file and line
    assert error.line is not None and 1 <= error.line <= text.count("\n") + 1


@pytest.mark.parametrize(("text", "line"), [
    ("http_server_config:\n  http2: true\nbasic_auth_users:\n  alice: hunter2\n", 4),
    ("rate_limit:\n  burst: 1\n  interval: soon\n", 3),
    ("\n\nlisten: 1\n", 3),
])
def test_a_bad_web_config_names_the_line_of_the_field(pki: PKI, text: str, line: int) -> None:
    path = write_config(pki, text, name="bad.yml")
    with pytest.raises(WebConfigError) as info:
        load_web_config(path)
    assert info.value.line == line, str(info.value)


def test_missing_config_file(tmp_path: Path) -> None:
    with pytest.raises(WebConfigError, match="cannot read"):
        load_web_config(tmp_path / "absent.yml")


def test_server_with_bad_config_does_not_start(tmp_path: Path) -> None:
    path = tmp_path / "web.yml"
    path.write_text("basic_auth_users:\n  alice: hunter2\n")
    with pytest.raises(WebConfigError):
        ExporterServer("127.0.0.1:0", make_registry(), ready=lambda: True,
                       reload=lambda: (True, ""), web_config_file=path)


def test_relative_paths_are_relative_to_the_config_file(
        pki: PKI, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)  # not the config's folder
    config = load_web_config(write_config(pki, TLS_CONFIG, name="rel.yml"))
    assert config.tls is not None
    assert config.tls.cert_file == pki.dir / "server.pem"
    assert config.tls_enabled


def test_the_listening_log_line_names_the_bound_address_and_a_local_url(
    caplog: pytest.LogCaptureFixture,
) -> None:
    # on every interface, the log says so (0.0.0.0), with a URL that works from this host
    with caplog.at_level(logging.INFO, logger="exporter.serve.web"), ExporterServer(
        "0.0.0.0:0", make_registry(), ready=lambda: True, reload=lambda: (True, "")
    ) as server:
        port = server.address[1]
        (record,) = [r for r in caplog.records if r.getMessage() == "listening"]
        assert record.address == f"0.0.0.0:{port}"  # type: ignore[attr-defined]
        assert record.url == f"http://127.0.0.1:{port}/"  # type: ignore[attr-defined]
