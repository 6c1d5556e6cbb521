"""The fetcher: its metadata hook, and the environment (proxies, CA bundle, .netrc)."""

from __future__ import annotations

import base64
import http.server
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
from conftest import Sim
from tuf.api import exceptions

from exporter.config import redirect_origin
from exporter.probe import rfc3339
from exporter.probe.fetcher import Fetcher, _parse_date, new_session, redirect_allowed


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


# -- the environment: read once per origin, still honoured -------------------------------------

_PROXY_VARS = ("http_proxy", "https_proxy", "all_proxy", "no_proxy")


class _Proxy(http.server.ThreadingHTTPServer):
    """A loopback HTTP proxy that answers absolute-URI requests itself and records them."""

    def __init__(self, routes: dict[str, tuple[int, dict[str, str], bytes]]) -> None:
        self.routes = routes
        self.seen: list[tuple[str, str | None]] = []  # (request target, Authorization)
        super().__init__(("127.0.0.1", 0), _ProxyHandler)
        threading.Thread(target=self.serve_forever, daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"


class _ProxyHandler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True
    server: _Proxy

    def do_GET(self) -> None:
        self.server.seen.append((self.path, self.headers.get("Authorization")))
        status, headers, body = self.server.routes.get(self.path, (404, {}, b""))
        self.send_response(status)
        for name, value in headers.items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture
def proxy(monkeypatch: pytest.MonkeyPatch) -> Iterator[_Proxy]:
    for name in _PROXY_VARS:
        monkeypatch.delenv(name, raising=False)
        monkeypatch.delenv(name.upper(), raising=False)
    server = _Proxy({
        "http://repo.example/metadata/timestamp.json": (200, {}, b"via proxy"),
        "http://repo.example/moved.json": (302, {"Location": "http://cdn.example/t.json"}, b""),
        "http://cdn.example/t.json": (200, {}, b"redirected via proxy"),
    })
    monkeypatch.setenv("HTTP_PROXY", server.url)
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()


def _fetcher(**kwargs: Any) -> Fetcher:
    return Fetcher(
        kwargs.pop("session", None) or new_session(), lambda url: "timestamp",
        connect_timeout=2.0, read_timeout=2.0, deadline=time.monotonic() + 10.0, **kwargs,
    )


def test_an_http_proxy_from_the_environment_is_used(proxy: _Proxy) -> None:
    fetcher = _fetcher()
    url = "http://repo.example/metadata/timestamp.json"
    assert fetcher.download_bytes(url, 1000) == b"via proxy"
    assert fetcher.download_bytes(url, 1000) == b"via proxy"
    assert proxy.seen == [(url, None), (url, None)]


def test_a_redirect_to_an_allowed_host_goes_through_the_proxy_the_environment_gives_it(
    proxy: _Proxy,
) -> None:
    fetcher = _fetcher(allowed_redirect_hosts=("cdn.example",))
    assert fetcher.download_bytes("http://repo.example/moved.json", 1000) == (
        b"redirected via proxy"
    )
    assert [target for target, _ in proxy.seen] == [
        "http://repo.example/moved.json", "http://cdn.example/t.json",
    ]


def test_no_proxy_for_the_endpoint_host_bypasses_the_proxy(
    sim: Sim, proxy: _Proxy, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("NO_PROXY", "127.0.0.1")
    metadata_url, _ = sim.server.endpoint_urls("primary")
    fetcher = _fetcher()
    data = fetcher.download_bytes(f"{metadata_url}timestamp.json", 1 << 20)
    assert data == sim.repo.latest.metadata("timestamp")
    # the same session still proxies a host NO_PROXY does not name
    fetcher.download_bytes("http://repo.example/metadata/timestamp.json", 1000)
    assert [target for target, _ in proxy.seen] == ["http://repo.example/metadata/timestamp.json"]


def test_without_no_proxy_the_endpoint_host_is_proxied(sim: Sim, proxy: _Proxy) -> None:
    metadata_url, _ = sim.server.endpoint_urls("primary")
    with pytest.raises(exceptions.DownloadHTTPError):  # the proxy knows no such route
        _fetcher().download_bytes(f"{metadata_url}timestamp.json", 1 << 20)
    assert [target for target, _ in proxy.seen] == [f"{metadata_url}timestamp.json"]


def test_netrc_credentials_are_sent_to_their_host(
    proxy: _Proxy, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    netrc = tmp_path / "netrc"
    netrc.write_text("machine repo.example login alice password s3cret\n")
    netrc.chmod(0o600)
    monkeypatch.setenv("NETRC", str(netrc))
    fetcher = _fetcher(allowed_redirect_hosts=("cdn.example",))
    fetcher.download_bytes("http://repo.example/metadata/timestamp.json", 1000)
    fetcher.download_bytes("http://repo.example/moved.json", 1000)
    basic = "Basic " + base64.b64encode(b"alice:s3cret").decode()
    assert proxy.seen == [
        ("http://repo.example/metadata/timestamp.json", basic),
        ("http://repo.example/moved.json", basic),
        ("http://cdn.example/t.json", None),  # not to another host
    ]


def test_the_environment_is_read_once_per_origin_not_per_request(
    proxy: _Proxy, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[str] = []
    original = requests.utils.get_environ_proxies

    def counting(url: str, no_proxy: str | None = None) -> dict[str, str]:
        calls.append(url)
        return original(url, no_proxy)

    monkeypatch.setattr(requests.utils, "get_environ_proxies", counting)
    monkeypatch.setattr(requests.sessions, "get_environ_proxies", counting)
    fetcher = _fetcher()
    for _ in range(5):
        fetcher.download_bytes("http://repo.example/metadata/timestamp.json", 1000)
    assert calls == ["http://repo.example/metadata/timestamp.json"]
    assert len(proxy.seen) == 5


@pytest.mark.parametrize(
    ("requests_bundle", "curl_bundle", "expected"),
    [
        ("/etc/r.pem", "/etc/c.pem", "/etc/r.pem"),
        (None, "/etc/c.pem", "/etc/c.pem"),
        (None, None, True),
    ],
)
def test_a_ca_bundle_from_the_environment_is_applied(
    monkeypatch: pytest.MonkeyPatch,
    requests_bundle: str | None,
    curl_bundle: str | None,
    expected: str | bool,
) -> None:
    for name, value in (("REQUESTS_CA_BUNDLE", requests_bundle), ("CURL_CA_BUNDLE", curl_bundle)):
        if value is None:
            monkeypatch.delenv(name, raising=False)
        else:
            monkeypatch.setenv(name, value)
    session = new_session()
    assert session.verify == expected
    assert session.trust_env is False  # requests itself does not look again, per request


# -- redirects: the same scheme, host and port, or what allowed_redirect_hosts lists -------------


@pytest.fixture
def two_ports(monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[_Proxy, _Proxy]]:
    """Two loopback servers; the first redirects /moved.json to /t.json on the second."""
    for name in _PROXY_VARS:
        monkeypatch.delenv(name, raising=False)
        monkeypatch.delenv(name.upper(), raising=False)
    other = _Proxy({"/t.json": (200, {}, b"on the other port")})
    first = _Proxy({
        "/moved.json": (302, {"Location": f"{other.url}/t.json"}, b""),
        "/here.json": (301, {"Location": "/t.json"}, b""),
        "/t.json": (200, {}, b"on the first port"),
    })
    try:
        yield first, other
    finally:
        for server in (first, other):
            server.shutdown()
            server.server_close()


def test_a_redirect_to_another_port_of_the_same_host_is_refused(
    two_ports: tuple[_Proxy, _Proxy],
) -> None:
    first, other = two_ports
    for allowed in ((), ("127.0.0.1",)):  # a bare host stands for the default port only
        with pytest.raises(exceptions.DownloadHTTPError, match="refusing redirect"):
            _fetcher(allowed_redirect_hosts=allowed).download_bytes(
                f"{first.url}/moved.json", 1000
            )
    assert other.seen == []


def test_a_redirect_to_a_listed_host_and_port_is_followed(
    two_ports: tuple[_Proxy, _Proxy],
) -> None:
    first, other = two_ports
    port = other.server_address[1]
    fetcher = _fetcher(allowed_redirect_hosts=(f"127.0.0.1:{port}",))
    assert fetcher.download_bytes(f"{first.url}/moved.json", 1000) == b"on the other port"
    assert [path for path, _ in other.seen] == ["/t.json"]


def test_a_redirect_within_the_same_origin_is_followed(two_ports: tuple[_Proxy, _Proxy]) -> None:
    first, _ = two_ports
    assert _fetcher().download_bytes(f"{first.url}/here.json", 1000) == b"on the first port"


@pytest.mark.parametrize(
    ("original", "target", "allowed", "expected"),
    [
        ("https://repo.example/a", "https://repo.example/b", [], True),
        ("https://repo.example/a", "https://repo.example:443/b", [], True),
        ("https://repo.example/a", "https://REPO.example/b", [], True),
        ("https://repo.example/a", "https://repo.example:8443/b", [], False),
        ("https://repo.example/a", "http://repo.example/b", [], False),
        ("https://repo.example/a", "http://repo.example/b", ["repo.example"], False),
        ("https://repo.example/a", "http://cdn.example/b", ["cdn.example", "cdn.example:80"],
         False),
        ("http://repo.example/a", "https://repo.example/b", [], False),
        ("http://repo.example/a", "https://repo.example/b", ["repo.example"], True),
        ("https://repo.example/a", "https://cdn.example/b", ["cdn.example"], True),
        ("https://repo.example/a", "https://cdn.example:8443/b", ["cdn.example"], False),
        ("https://repo.example/a", "https://cdn.example:8443/b", ["cdn.example:8443"], True),
        ("https://repo.example/a", "https://cdn.example/b", ["cdn.example:8443"], False),
        ("https://repo.example/a", "https://[2001:db8::1]:8443/b", ["[2001:db8::1]:8443"], True),
        ("https://repo.example/a", "ftp://repo.example/b", ["repo.example"], False),
        ("https://repo.example/a", "https://repo.example:x/b", [], False),
    ],
)
def test_redirect_policy(original: str, target: str, allowed: list[str], expected: bool) -> None:
    entries = frozenset(redirect_origin(entry) for entry in allowed)
    assert redirect_allowed(original, target, entries) is expected


@pytest.mark.parametrize("entry", ["https://cdn.example", "cdn.example/path", "cdn.example:0",
                                   "cdn.example:70000", "cdn.example:x", "", "user@cdn.example"])
def test_a_malformed_allowed_redirect_host_is_refused(entry: str) -> None:
    with pytest.raises(ValueError, match="host"):
        redirect_origin(entry)


@pytest.mark.parametrize("header", ["Mon, 01 Jan 2024 00:00:00 GMT",
                                    "Mon, 01 Jan 2024 00:00:00 -0000",
                                    "Mon, 01 Jan 2024 01:00:00 +0100"])
def test_a_server_date_is_always_aware_utc(header: str) -> None:
    """An HTTP-date is GMT whatever zone it spells; a naive one would make ``rfc3339`` (the
    probe's JSON) raise and could not be compared with the others of the probe."""
    moment = _parse_date(header)
    assert moment is not None and moment.utcoffset() is not None
    assert rfc3339(moment) == "2024-01-01T00:00:00Z"
