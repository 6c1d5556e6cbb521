"""The exporter's HTTP(S) server: ``/metrics``, health, readiness, reload and a landing page.

It behaves like the web server of the Go exporters built on the Prometheus exporter-toolkit
(node_exporter, blackbox_exporter):

* ``GET /metrics`` renders a ``prometheus_client`` registry at scrape time, negotiating the
  text or OpenMetrics format from ``Accept`` and gzip from ``Accept-Encoding``; ``name[]``
  query parameters restrict the output to those metric families. It waits on nothing but
  the registry's collectors.
* ``GET /-/healthy`` answers 200 while the process runs; ``GET /-/ready`` answers 200 once
  the ``ready()`` callable returns True, else 503.
* ``POST``/``PUT /-/reload`` calls ``reload()`` -> ``(ok, message)``: 200, or 500 with the
  message; other methods get 405.
* ``GET /`` is the status page and ``GET /endpoint?repository=R&endpoint=E`` one endpoint's
  page (see :mod:`exporter.serve.status_page`) when a status page is given; else ``/`` is a small
  landing page. Any other path is 404.

TLS, client certificates, basic auth (bcrypt), extra response headers and rate limiting come
from a ``--web.config.file`` in the exporter-toolkit format, see
https://github.com/prometheus/exporter-toolkit/blob/master/docs/web-configuration.md.
Basic auth protects every path, ``/-/healthy`` included, as exporter-toolkit does.
Differences from exporter-toolkit, all reported at load time:

* ``cipher_suites``, ``prefer_server_cipher_suites`` and ``curve_preferences`` are ignored
  with a warning (OpenSSL's defaults are used); ``http_server_config.http2`` is accepted and
  ignored (the server speaks HTTP/1.1).
* ``client_auth_type: RequestClientCert`` does not ask the client for a certificate (it
  was never verified anyway); ``RequireAnyClientCert`` (a certificate that is not verified)
  is refused: use ``RequireAndVerifyClientCert``. Verifying modes need a ``client_ca_file``
  (or inline ``client_ca``) rather than falling back to the system roots.
* The file is not re-read on every request: call :meth:`ExporterServer.reload_web_config`
  (for instance on SIGHUP or from the ``reload()`` callable). A reload cannot turn TLS on or
  off, which needs a restart.

The server is an asyncio event loop in one thread with h11 (the HTTP/1.1 state machine of
uvicorn, hypercorn and httpcore) parsing requests and framing responses; routes run on a
few worker threads. Connections, workers, request size and the time to read a request are
bounded (see :class:`ExporterServer`), so slow or idle clients cannot take the descriptors
and threads that probes need; each response goes out in a single write.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import functools
import gzip
import hashlib
import hmac
import html
import ipaddress
import logging
import os
import re
import resource
import secrets
import socket
import ssl
import tempfile
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from email.utils import formatdate
from http import HTTPStatus
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any, Final
from urllib.parse import parse_qs, urlsplit

import bcrypt
import h11
from prometheus_client.exposition import choose_encoder
from prometheus_client.registry import Collector, CollectorRegistry

from exporter import __version__
from exporter.config.durations import parse_duration
from exporter.config.yamlfile import ConfigError, read_yaml

if TYPE_CHECKING:
    from exporter.serve.status_page import Page, StatusPage

__all__ = [
    "REALM",
    "ExporterServer",
    "RateLimit",
    "TLSServerConfig",
    "WebConfig",
    "WebConfigError",
    "connection_limit",
    "load_web_config",
    "parse_listen_address",
    "raise_open_files_limit",
]

logger = logging.getLogger(__name__)

REALM: Final = "tuf-exporter"
"""The basic-auth realm announced in ``WWW-Authenticate``."""

_SERVER: Final = f"tuf-exporter/{__version__}"  # the Server header
_MAX_CONNECTIONS: Final = 512  # the most connections held open, whatever the open-files limit
_MIN_CONNECTIONS: Final = 8  # the fewest, however low the open-files limit
_NOFILE_SHARE: Final = 4  # connections may take 1/4 of the open-files limit; the rest is probes'
_WORKERS: Final = 8  # threads answering routes
_REQUEST_TIMEOUT: Final = 10.0  # seconds to read a request (head and body) and write the answer
_IDLE_TIMEOUT: Final = 120.0  # seconds a keep-alive connection may stay silent
_MAX_HEAD: Final = 16 * 1024  # bytes of an incomplete request head (431 beyond; h11 checks it
# after each read, so a complete head can be up to one read longer)
_MAX_BODY: Final = 64 * 1024  # bytes of request body we are willing to read and discard
_READ_SIZE: Final = 8 * 1024  # bytes asked of a socket at a time
_LISTEN_BACKLOG: Final = 128
_ACCEPT_RETRY: Final = 0.1  # seconds to wait after accept() failed (e.g. out of descriptors)
_TLS_SHUTDOWN_TIMEOUT: Final = 2.0  # seconds to wait for the client's TLS close_notify
_WARN_INTERVAL: Final = 60.0  # seconds between warnings of one kind (cap reached, accept failed)
_AUTH_CACHE_SIZE: Final = 256  # successful (user, password) verifications remembered
_BCRYPT_MAX_PASSWORD: Final = 72  # bcrypt only uses the first 72 bytes (as Go and htpasswd)
_STOP_TIMEOUT: Final = 5.0

_TLS_VERSIONS: Final[Mapping[str, ssl.TLSVersion]] = {
    "TLS10": ssl.TLSVersion.TLSv1,
    "TLS11": ssl.TLSVersion.TLSv1_1,
    "TLS12": ssl.TLSVersion.TLSv1_2,
    "TLS13": ssl.TLSVersion.TLSv1_3,
}
_CLIENT_AUTH_TYPES: Final = (
    "NoClientCert",
    "RequestClientCert",
    "RequireAnyClientCert",
    "VerifyClientCertIfGiven",
    "RequireAndVerifyClientCert",
)
_VERIFYING_AUTH_TYPES: Final = ("VerifyClientCertIfGiven", "RequireAndVerifyClientCert")
# Headers exporter-toolkit lets a web config add, with their allowed values (None: any).
_ALLOWED_HEADERS: Final[Mapping[str, tuple[str, ...] | None]] = {
    "Strict-Transport-Security": None,
    "X-Content-Type-Options": ("nosniff",),
    "X-Frame-Options": ("deny", "sameorigin"),
    "X-XSS-Protection": None,
    "Content-Security-Policy": None,
}
_TOP_KEYS: Final = ("tls_server_config", "http_server_config", "basic_auth_users", "rate_limit")
_TLS_KEYS: Final = (
    "cert", "key", "client_ca", "cert_file", "key_file", "client_auth_type", "client_ca_file",
    "client_allowed_sans", "min_version", "max_version", "cipher_suites",
    "prefer_server_cipher_suites", "curve_preferences",
)
_TLS_IGNORED_KEYS: Final = ("cipher_suites", "prefer_server_cipher_suites", "curve_preferences")
_HTTP_KEYS: Final = ("http2", "headers")
_RATE_LIMIT_KEYS: Final = ("interval", "burst")
_BCRYPT_HASH: Final = re.compile(r"\$2[abxy]?\$(\d\d)\$[./A-Za-z0-9]{53}")
_SAN_KINDS: Final = ("DNS", "IP Address", "email", "URI")


# --------------------------------------------------------------------------- configuration


class WebConfigError(ConfigError):
    """A web configuration file that cannot be used; names the file, the line (where known)
    and the field: ``web config <file>:<line>: <field>: <message>``."""

    def __init__(
        self, path: Path | None, field_name: str, message: str, line: int | None = None
    ) -> None:
        self.path = path
        self.field = field_name
        self.message = message
        self.source = None if path is None else str(path)
        self.line, self.key, self.detail = line, field_name or None, message
        where = f"web config {path}" if path is not None else "web config"
        where = where if line is None else f"{where}:{line}"
        text = f"{where}: {field_name}: {message}" if field_name else f"{where}: {message}"
        super().__init__(text)


@dataclass(frozen=True)
class TLSServerConfig:
    """``tls_server_config``: the server certificate and the client-certificate policy.

    Paths are absolute (resolved against the web config file's folder); ``cert``/``key``/
    ``client_ca`` hold inline PEM text instead of a file.
    """

    cert_file: Path | None = None
    key_file: Path | None = None
    cert: str | None = field(default=None, repr=False)
    key: str | None = field(default=None, repr=False)
    client_auth_type: str = "NoClientCert"
    client_ca_file: Path | None = None
    client_ca: str | None = field(default=None, repr=False)
    client_allowed_sans: tuple[str, ...] = ()
    min_version: str = "TLS12"
    max_version: str = "TLS13"
    ignored: tuple[str, ...] = ()


@dataclass(frozen=True)
class RateLimit:
    """``rate_limit``: a token bucket of ``burst`` requests refilled every ``interval`` s."""

    interval: float
    burst: int


@dataclass(frozen=True)
class WebConfig:
    """A loaded web configuration; the default (no file) is plain HTTP without auth."""

    path: Path | None = None
    tls: TLSServerConfig | None = None
    headers: Mapping[str, str] = field(default_factory=dict)
    basic_auth_users: Mapping[str, str] = field(default_factory=dict, repr=False)
    http2: bool = True
    rate_limit: RateLimit | None = None
    ssl_context: ssl.SSLContext | None = field(default=None, repr=False, compare=False)

    @property
    def tls_enabled(self) -> bool:
        """Whether connections are served over TLS."""
        return self.ssl_context is not None


def load_web_config(path: Path | str) -> WebConfig:
    """Read and validate an exporter-toolkit web configuration file.

    Relative paths inside are taken relative to the file's folder. The certificate, key
    and client CA are loaded here, so a bad file fails now and not at the first request.
    Raises :class:`WebConfigError` naming the file and the field at fault.
    """
    path = Path(path)
    try:
        document = read_yaml(path)
    except ConfigError as exc:
        raise WebConfigError(path, exc.key or "", exc.detail, exc.line) from None
    if document is None:
        return WebConfig(path=path)
    try:
        return _web_config(path, document.plain())
    except WebConfigError as exc:
        if exc.line is not None:
            raise
        line = document.line_of(exc.field) if exc.field else document.line
        raise WebConfigError(path, exc.field, exc.message, line) from exc.__cause__


def _web_config(path: Path, raw: object) -> WebConfig:
    """The web configuration of the plain document ``raw`` read from ``path``."""
    top = _mapping(path, "", raw, _TOP_KEYS)
    tls = _tls_config(path, top.get("tls_server_config"))
    http2, headers = _http_config(path, top.get("http_server_config"))
    users = _users(path, top.get("basic_auth_users"))
    rate_limit = _rate_limit(path, top.get("rate_limit"))
    context = _ssl_context(path, tls) if tls is not None else None
    for key in tls.ignored if tls is not None else ():
        logger.warning("web config: tls_server_config.%s is not supported and is ignored",
                       key, extra={"file": str(path)})
    return WebConfig(path=path, tls=tls, headers=headers, basic_auth_users=users, http2=http2,
                     rate_limit=rate_limit, ssl_context=context)


def _mapping(path: Path, where: str, value: object, allowed: tuple[str, ...]) -> dict[str, Any]:
    """Return ``value`` as a dict whose keys are all in ``allowed``, or raise."""
    if not isinstance(value, dict):
        raise WebConfigError(path, where, f"expected a mapping, got {type(value).__name__}")
    for key in value:
        if key not in allowed:
            name = f"{where}.{key}" if where else str(key)
            expected = ", ".join(allowed)
            raise WebConfigError(path, name, f"unknown field (expected one of {expected})")
    return value


def _string(path: Path, where: str, value: object) -> str:
    """Return ``value`` if it is a string, else raise."""
    if not isinstance(value, str):
        raise WebConfigError(path, where, f"expected a string, got {type(value).__name__}")
    return value


def _optional_string(path: Path, where: str, value: object) -> str | None:
    """Return ``value`` as a string, or None for an absent or empty value."""
    if value is None:
        return None
    text = _string(path, where, value)
    return text or None


def _file(path: Path, where: str, value: object) -> Path | None:
    """Return the path named by ``value`` resolved against the config's folder."""
    text = _optional_string(path, where, value)
    if text is None:
        return None
    resolved = path.parent / Path(text).expanduser()
    if not resolved.is_file():
        raise WebConfigError(path, where, f"no such file: {resolved}")
    return resolved


def _tls_config(path: Path, value: object) -> TLSServerConfig | None:
    """Parse ``tls_server_config``; None (plain HTTP) when absent or empty."""
    if value is None or value == {}:
        return None
    raw = _mapping(path, "tls_server_config", value, _TLS_KEYS)
    where = "tls_server_config."
    cert_file = _file(path, where + "cert_file", raw.get("cert_file"))
    key_file = _file(path, where + "key_file", raw.get("key_file"))
    cert = _optional_string(path, where + "cert", raw.get("cert"))
    key = _optional_string(path, where + "key", raw.get("key"))
    ca_file = _file(path, where + "client_ca_file", raw.get("client_ca_file"))
    ca = _optional_string(path, where + "client_ca", raw.get("client_ca"))
    _exclusive(path, where, ("cert", cert), ("cert_file", cert_file))
    _exclusive(path, where, ("key", key), ("key_file", key_file))
    _exclusive(path, where, ("client_ca", ca), ("client_ca_file", ca_file))
    if cert is None and cert_file is None:
        raise WebConfigError(path, where + "cert_file", "missing: TLS needs a certificate")
    if key is None and key_file is None:
        raise WebConfigError(path, where + "key_file", "missing: TLS needs a private key")
    auth_type = _client_auth_type(path, raw.get("client_auth_type"), has_ca=bool(ca or ca_file))
    sans = _string_list(path, where + "client_allowed_sans", raw.get("client_allowed_sans"))
    if sans and auth_type != "RequireAndVerifyClientCert":
        raise WebConfigError(path, where + "client_allowed_sans",
                             "needs client_auth_type: RequireAndVerifyClientCert")
    min_version = _tls_version(path, where + "min_version", raw.get("min_version"), "TLS12")
    max_version = _tls_version(path, where + "max_version", raw.get("max_version"), "TLS13")
    if _TLS_VERSIONS[min_version] > _TLS_VERSIONS[max_version]:
        raise WebConfigError(path, where + "min_version",
                             f"{min_version} is above max_version {max_version}")
    ignored = tuple(k for k in _TLS_IGNORED_KEYS if raw.get(k) not in (None, [], ""))
    return TLSServerConfig(
        cert_file=cert_file, key_file=key_file, cert=cert, key=key,
        client_auth_type=auth_type, client_ca_file=ca_file, client_ca=ca,
        client_allowed_sans=sans, min_version=min_version, max_version=max_version,
        ignored=ignored,
    )


def _exclusive(
    path: Path, where: str, inline: tuple[str, object], file: tuple[str, object]
) -> None:
    """Refuse a value given both inline and as a file."""
    if inline[1] is not None and file[1] is not None:
        raise WebConfigError(path, where + inline[0], f"give either {inline[0]} or {file[0]}")


def _client_auth_type(path: Path, value: object, *, has_ca: bool) -> str:
    """Validate ``client_auth_type`` against the presence of a client CA."""
    where = "tls_server_config.client_auth_type"
    auth_type = _optional_string(path, where, value) or "NoClientCert"
    if auth_type not in _CLIENT_AUTH_TYPES:
        raise WebConfigError(path, where, f"invalid {auth_type!r} (expected one of "
                             f"{', '.join(_CLIENT_AUTH_TYPES)})")
    if auth_type == "RequireAnyClientCert":
        raise WebConfigError(path, where, "RequireAnyClientCert (a certificate that is not "
                             "verified) is not supported: use RequireAndVerifyClientCert")
    if auth_type in _VERIFYING_AUTH_TYPES and not has_ca:
        raise WebConfigError(path, "tls_server_config.client_ca_file",
                             f"missing: client_auth_type {auth_type} needs a client CA")
    if auth_type not in _VERIFYING_AUTH_TYPES and has_ca:
        raise WebConfigError(path, where, "a client CA is configured but client_auth_type "
                             f"{auth_type} does not verify client certificates")
    return auth_type


def _string_list(path: Path, where: str, value: object) -> tuple[str, ...]:
    """Return a list of strings (None: empty)."""
    if value is None:
        return ()
    if not isinstance(value, list):
        raise WebConfigError(path, where, f"expected a list, got {type(value).__name__}")
    return tuple(_string(path, f"{where}[{i}]", item) for i, item in enumerate(value))


def _tls_version(path: Path, where: str, value: object, default: str) -> str:
    """Validate a TLS version name such as ``TLS12``."""
    version = _optional_string(path, where, value) or default
    if version not in _TLS_VERSIONS:
        raise WebConfigError(path, where, f"invalid {version!r} (expected one of "
                             f"{', '.join(_TLS_VERSIONS)})")
    return version


def _http_config(path: Path, value: object) -> tuple[bool, dict[str, str]]:
    """Parse ``http_server_config`` into (http2, headers)."""
    if value is None:
        return True, {}
    raw = _mapping(path, "http_server_config", value, _HTTP_KEYS)
    http2 = raw.get("http2", True)
    if not isinstance(http2, bool):
        raise WebConfigError(path, "http_server_config.http2", "expected true or false")
    headers_raw = raw.get("headers")
    if headers_raw is None:
        return http2, {}
    where = "http_server_config.headers"
    headers = _mapping(path, where, headers_raw, tuple(_ALLOWED_HEADERS))
    out: dict[str, str] = {}
    for name, header_value in headers.items():
        text = _string(path, f"{where}.{name}", header_value)
        allowed = _ALLOWED_HEADERS[name]
        if allowed is not None and text and text not in allowed:
            raise WebConfigError(path, f"{where}.{name}",
                                 f"invalid {text!r} (expected one of {', '.join(allowed)})")
        if "\r" in text or "\n" in text:
            raise WebConfigError(path, f"{where}.{name}", "line breaks are not allowed")
        if text:  # blank means unset
            out[name] = text
    return http2, out


def _users(path: Path, value: object) -> dict[str, str]:
    """Parse ``basic_auth_users``: user name to bcrypt hash."""
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise WebConfigError(path, "basic_auth_users", "expected a mapping of user to bcrypt hash")
    users: dict[str, str] = {}
    for user, hashed in value.items():
        where = f"basic_auth_users.{user}"
        if not isinstance(user, str) or not user or ":" in user:
            raise WebConfigError(path, where, "user names must be non-empty strings without ':'")
        text = _string(path, where, hashed)
        match = _BCRYPT_HASH.fullmatch(text)
        if match is None or not 4 <= int(match.group(1)) <= 31:
            raise WebConfigError(path, where, "not a bcrypt hash (like $2y$10$...)")
        users[user] = text
    return users


def _rate_limit(path: Path, value: object) -> RateLimit | None:
    """Parse ``rate_limit``; None when absent or with a zero interval."""
    if value is None:
        return None
    raw = _mapping(path, "rate_limit", value, _RATE_LIMIT_KEYS)
    try:
        interval = parse_duration(raw.get("interval", 0))
    except ValueError as exc:
        raise WebConfigError(path, "rate_limit.interval", str(exc)) from exc
    burst = raw.get("burst", 0)
    if isinstance(burst, bool) or not isinstance(burst, int) or burst < 0:
        raise WebConfigError(path, "rate_limit.burst", "expected a non-negative integer")
    if interval <= 0:
        return None
    if burst == 0:
        raise WebConfigError(path, "rate_limit.burst", "must be at least 1 when interval is set")
    return RateLimit(interval=interval, burst=burst)


def _ssl_context(path: Path, tls: TLSServerConfig) -> ssl.SSLContext:
    """Build the server's SSL context, loading the certificate, key and client CA."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    where = "tls_server_config."
    try:
        context.minimum_version = _TLS_VERSIONS[tls.min_version]
        context.maximum_version = _TLS_VERSIONS[tls.max_version]
    except (ValueError, ssl.SSLError) as exc:
        raise WebConfigError(path, where + "min_version", f"not supported here: {exc}") from exc
    with _pem_file(tls.cert_file, tls.cert) as cert, _pem_file(tls.key_file, tls.key) as key:
        try:
            context.load_cert_chain(certfile=cert, keyfile=key)
        except (ssl.SSLError, OSError) as exc:
            field_name = "cert_file" if tls.cert_file is not None else "cert"
            raise WebConfigError(path, where + field_name,
                                 f"cannot load the certificate and key: {exc}") from exc
    if tls.client_auth_type in _VERIFYING_AUTH_TYPES:
        try:
            if tls.client_ca_file is not None:
                context.load_verify_locations(cafile=tls.client_ca_file)
            else:
                context.load_verify_locations(cadata=tls.client_ca)
        except (ssl.SSLError, OSError, ValueError) as exc:
            field_name = "client_ca_file" if tls.client_ca_file is not None else "client_ca"
            raise WebConfigError(path, where + field_name, f"cannot load: {exc}") from exc
        required = tls.client_auth_type == "RequireAndVerifyClientCert"
        context.verify_mode = ssl.CERT_REQUIRED if required else ssl.CERT_OPTIONAL
    return context


@contextlib.contextmanager
def _pem_file(file: Path | None, inline: str | None) -> Iterator[Path]:
    """Yield ``file``, or a private temporary file holding ``inline`` PEM text."""
    if file is not None:
        yield file
        return
    fd, name = tempfile.mkstemp(suffix=".pem")  # created 0600
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(inline or "")
        yield Path(name)
    finally:
        Path(name).unlink(missing_ok=True)


# --------------------------------------------------------------------------- listen address


def parse_listen_address(text: str) -> tuple[str, int]:
    """Split ``host:port``, ``:port`` (all interfaces: host "") or ``[v6]:port``.

    Raises ValueError for anything else, or a port outside 0-65535 (0 picks a free port).
    """
    host, sep, port_text = text.rpartition(":")
    if not sep or not port_text.isdigit():
        raise ValueError(
            f"invalid listen address {text!r}: expected host:port, :port or [::1]:port"
        )
    port = int(port_text)
    if port > 65535:
        raise ValueError(f"invalid listen address {text!r}: port out of range")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            raise ValueError(f"invalid listen address {text!r}: bad IPv6 address") from None
    elif ":" in host or "[" in host or "]" in host:
        raise ValueError(f"invalid listen address {text!r}: put IPv6 addresses in brackets")
    return host, port


def _bind_target(host: str, port: int) -> tuple[socket.AddressFamily, str, bool]:
    """Return (family, address to bind, dual-stack) for a parsed listen address."""
    if host == "":
        if socket.has_dualstack_ipv6():
            return socket.AF_INET6, "::", True
        return socket.AF_INET, "0.0.0.0", False  # noqa: S104 - ":port" means all interfaces
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as exc:
        raise OSError(f"cannot resolve listen host {host!r}: {exc}") from exc
    infos.sort(key=lambda info: info[0] != socket.AF_INET)  # prefer IPv4 for "localhost"
    family, _, _, _, sockaddr = infos[0]
    return family, str(sockaddr[0]), False


# --------------------------------------------------------------------------- auth and limits


class _BasicAuth:
    """bcrypt basic-auth checks with a cache of successful verifications.

    The cache holds HMAC-SHA256 digests of (user, hash, password) under a random per-process
    key, so neither passwords nor anything usable offline is kept. An unknown user is
    checked against a configured hash anyway, so timing does not tell which users exist.
    Like exporter-toolkit, one bcrypt check runs at a time, so a flood of bad passwords
    costs at most one core; the server answers cached credentials without a thread
    (:meth:`cached`) and runs :meth:`verify` on its single auth thread, so cached scrapes
    never wait for it.
    """

    def __init__(self) -> None:
        self._key = secrets.token_bytes(32)
        self._cache: OrderedDict[bytes, None] = OrderedDict()
        self._lock = threading.Lock()
        self._bcrypt_lock = threading.Lock()

    def cached(self, users: Mapping[str, str], header: str | None) -> bool | None:
        """True for remembered credentials, False for a missing or malformed header (or no
        users), None when only a bcrypt check (:meth:`verify`) can tell; microseconds."""
        checked = self._credentials(users, header)
        if checked is None:
            return False
        _, _, known, digest = checked
        with self._lock:
            if known and digest in self._cache:
                self._cache.move_to_end(digest)
                return True
        return None

    def verify(self, users: Mapping[str, str], header: str | None) -> bool:
        """Whether the ``Authorization`` header carries a valid user and password: a bcrypt
        check (one at a time, milliseconds to seconds by the hash's cost); remembered if valid."""
        checked = self._credentials(users, header)
        if checked is None:
            return False
        password, reference, known, digest = checked
        with self._bcrypt_lock:
            ok = _bcrypt_matches(password, reference) and known
        if ok:
            with self._lock:
                self._cache[digest] = None
                while len(self._cache) > _AUTH_CACHE_SIZE:
                    self._cache.popitem(last=False)
        return ok

    def _credentials(self, users: Mapping[str, str],
                     header: str | None) -> tuple[bytes, str, bool, bytes] | None:
        """(password, hash to check it against, user known, cache digest); None if no users
        or no usable ``Basic`` credentials."""
        credentials = _parse_basic(header)
        if credentials is None or not users:
            return None
        user, password = credentials
        hashed = users.get(user)
        reference = hashed if hashed is not None else next(iter(users.values()))
        return password, reference, hashed is not None, self._digest(user, reference, password)

    def _digest(self, user: str, hashed: str, password: bytes) -> bytes:
        mac = hmac.new(self._key, digestmod=hashlib.sha256)
        for part in (user.encode("utf-8"), hashed.encode("ascii"), password):
            mac.update(len(part).to_bytes(8, "big"))
            mac.update(part)
        return mac.digest()


def _parse_basic(header: str | None) -> tuple[str, bytes] | None:
    """Decode ``Basic base64(user:password)``; None when absent or malformed."""
    if not header:
        return None
    scheme, _, token = header.strip().partition(" ")
    if scheme.lower() != "basic":
        return None
    try:
        decoded = base64.b64decode(token.strip(), validate=True)
        user_bytes, sep, password = decoded.partition(b":")
        user = user_bytes.decode("utf-8")
    except (binascii.Error, UnicodeDecodeError):
        return None
    return (user, password) if sep else None


def _bcrypt_matches(password: bytes, hashed: str) -> bool:
    """Constant-time bcrypt check; like Go and htpasswd only the first 72 bytes count."""
    try:
        return bcrypt.checkpw(password[:_BCRYPT_MAX_PASSWORD], hashed.encode("ascii"))
    except ValueError:
        return False


class _TokenBucket:
    """exporter-toolkit's ``rate_limit``: ``burst`` tokens, one more every ``interval`` s."""

    def __init__(self, limit: RateLimit) -> None:
        self.limit = limit
        self._tokens = float(limit.burst)
        self._at = time.monotonic()
        self._lock = threading.Lock()

    def allow(self) -> bool:
        """Take a token if there is one."""
        with self._lock:
            now = time.monotonic()
            refill = (now - self._at) / self.limit.interval
            self._tokens = min(float(self.limit.burst), self._tokens + refill)
            self._at = now
            if self._tokens >= 1.0:
                self._tokens -= 1.0
                return True
            return False


def _san_allowed(peer: Mapping[str, Any] | None, allowed: tuple[str, ...]) -> bool:
    """Whether the client certificate has a SAN exactly equal to one of ``allowed``."""
    if not allowed:
        return True
    names = {_normalize_san(str(value)) for kind, value in (peer or {}).get("subjectAltName", ())
             if kind in _SAN_KINDS}
    return any(_normalize_san(want) in names for want in allowed)


def _normalize_san(value: str) -> str:
    """Canonical text of an IP SAN (Python prints IPv6 long-hand); others unchanged."""
    try:
        return str(ipaddress.ip_address(value.strip()))
    except ValueError:
        return value.strip()


def _gzip_accepted(accept_encoding: str) -> bool:
    """Whether ``Accept-Encoding`` allows gzip (``gzip;q=0`` refuses it)."""
    for item in accept_encoding.split(","):
        coding, *params = (part.strip() for part in item.split(";"))
        if coding.lower() not in ("gzip", "x-gzip"):
            continue
        for param in params:
            name, _, value = param.partition("=")
            if name.strip().lower() == "q":
                try:
                    return float(value) > 0
                except ValueError:
                    return False
        return True
    return False


# --------------------------------------------------------------------------- responses


@dataclass(frozen=True)
class _Response:
    """What a route answers."""

    status: int
    body: bytes
    content_type: str = "text/plain; charset=utf-8"
    headers: tuple[tuple[str, str], ...] = ()


def _text(status: int, message: str, *headers: tuple[str, str]) -> _Response:
    return _Response(status, message.encode("utf-8"), headers=headers)


_NOT_FOUND: Final = _text(404, "404 page not found\n")
_UNAUTHORIZED: Final = _text(401, "Unauthorized\n", ("WWW-Authenticate", f'Basic realm="{REALM}"'))
_TOO_MANY: Final = _text(429, "Too Many Requests\n")
_TOO_LARGE: Final = _text(413, "Request Entity Too Large\n")
_READ_ONLY: Final = ("GET", "HEAD")
_RELOAD_METHODS: Final = ("POST", "PUT")


_Route = Callable[[Mapping[str, str], str], _Response]


def _method_not_allowed(allowed: tuple[str, ...]) -> _Response:
    return _text(405, "Method Not Allowed\n", ("Allow", ", ".join(allowed)))


def _html(page: Page) -> _Response:
    return _Response(page.status, page.html.encode("utf-8"), "text/html; charset=utf-8",
                     (("Cache-Control", "no-store"),))


def _landing_page() -> _Response:
    links = (("metrics", "Metrics"), ("-/healthy", "Health"), ("-/ready", "Readiness"))
    items = "\n".join(f'      <li><a href="{href}">{html.escape(label)}</a></li>'
                      for href, label in links)
    page = f"""<!DOCTYPE html>
<html lang="en">
  <head>
    <meta charset="utf-8">
    <title>TUF Exporter</title>
  </head>
  <body>
    <h1>TUF Exporter</h1>
    <p>Prometheus exporter that watches TUF repositories and their mirrors.</p>
    <ul>
{items}
    </ul>
    <p>Version {html.escape(__version__)}</p>
  </body>
</html>
"""
    return _Response(200, page.encode("utf-8"), "text/html; charset=utf-8")


# --------------------------------------------------------------------------- server


def raise_open_files_limit() -> int:
    """Raise this process's soft ``RLIMIT_NOFILE`` to its hard limit; return the soft limit
    now in force (descriptors). Never raises: a limit that cannot be changed stays."""
    try:
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    except (OSError, ValueError):
        return 0
    if hard == resource.RLIM_INFINITY or soft == resource.RLIM_INFINITY or soft >= hard:
        return soft
    target = hard
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    except (OSError, ValueError) as exc:
        logger.warning("cannot raise the open-files limit",
                       extra={"soft": soft, "hard": hard, "error": str(exc)})
        return soft
    return target


def connection_limit() -> int:
    """The default cap on open connections: a quarter of the soft open-files limit, at
    least 8 and at most 512. The other three quarters are reserved for probes, the history,
    the spool and the shipper, so clients of the web port can never take their descriptors."""
    try:
        soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    except (OSError, ValueError):
        return _MAX_CONNECTIONS
    if soft == resource.RLIM_INFINITY:
        return _MAX_CONNECTIONS
    return max(_MIN_CONNECTIONS, min(_MAX_CONNECTIONS, soft // _NOFILE_SHARE))


class ExporterServer:
    """The exporter's HTTP(S) server: an asyncio event loop in one thread, HTTP/1.1 parsed by
    h11, routes answered by a small pool of worker threads.

    ``listen_address`` is ``host:port``, ``:port`` or ``[v6]:port`` (port 0: a free port,
    see :attr:`address`). ``registry`` is rendered on every ``/metrics``; ``ready`` and
    ``reload`` back ``/-/ready`` and ``/-/reload``; ``status_page`` (optional) serves ``/`` and
    ``/endpoint``. The web config file (TLS, basic auth, headers) is loaded here, so a bad one
    raises :class:`WebConfigError` at construction.

    What is bounded (see :class:`_Loop` for how):

    * ``max_connections`` open connections (default :func:`connection_limit`); at the cap,
      a new connection closes, among those waiting on their client (TLS handshake, reading
      a request, idle keep-alive, a response the client does not read, a bcrypt check),
      the one whose current request or idle wait began first; so idle and slow clients
      cannot lock out a scrape. When every connection is being answered, accepting pauses.
    * ``request_timeout`` seconds (default 10) for a request's head and body from its first
      byte, and for the first request from the accept, TLS handshake included: an absolute
      deadline that trickling bytes cannot extend. The same bound holds for writing a
      response. A keep-alive connection may stay silent ``idle_timeout`` s (default 120).
    * ``workers`` threads (default 8) answer routes; bcrypt checks run on one more thread,
      one at a time. Basic auth, the rate limit and routing are decided on the request head:
      no body is read before, and a refused request's body is never read.
    * Request heads up to 24 KiB (h11 refuses an incomplete head over 16 KiB, checked after
      each 8 KiB read) and bodies up to 64 KiB: 431 and 413 beyond. Bodies are dropped.

    Each response leaves in one write. ValueError for ``max_connections`` or ``workers``
    below 1 or a timeout that is not positive.
    """

    def __init__(
        self,
        listen_address: str,
        registry: Collector,
        *,
        ready: Callable[[], bool],
        reload: Callable[[], tuple[bool, str]],
        web_config_file: Path | None = None,
        status_page: StatusPage | None = None,
        max_connections: int | None = None,
        workers: int = _WORKERS,
        request_timeout: float = _REQUEST_TIMEOUT,
        idle_timeout: float = _IDLE_TIMEOUT,
    ) -> None:
        self.listen_address = listen_address
        self.status_page = status_page
        self._host, self._port = parse_listen_address(listen_address)
        self.registry = registry
        self.ready = ready
        self.reload = reload
        self.web_config_file = web_config_file
        self.web_config = (load_web_config(web_config_file) if web_config_file is not None
                           else WebConfig())
        if max_connections is not None and max_connections < 1:
            raise ValueError(f"max_connections must be at least 1, got {max_connections}")
        if workers < 1:
            raise ValueError(f"workers must be at least 1, got {workers}")
        if request_timeout <= 0 or idle_timeout <= 0:
            raise ValueError("request_timeout and idle_timeout must be positive")
        self.max_connections = max_connections
        self.workers = workers
        self.request_timeout = request_timeout
        self.idle_timeout = idle_timeout
        self.limiter = _limiter(self.web_config)
        self.auth = _BasicAuth()
        self._reload_lock = threading.Lock()
        self._state_lock = threading.Lock()
        self._loop: _Loop | None = None
        # path -> (methods, handler); a new page is one more entry here
        self._routes: dict[str, tuple[tuple[str, ...], _Route]] = {
            "/": (_READ_ONLY, self._root),
            "/metrics": (_READ_ONLY, self._metrics),
            "/-/healthy": (_READ_ONLY, self._healthy),
            "/-/ready": (_READ_ONLY, self._ready),
            "/-/reload": (_RELOAD_METHODS, self._reload),
        }
        if status_page is not None:
            self._routes["/endpoint"] = (_READ_ONLY, self._endpoint)

    # ---------------------------------------------------------------- lifecycle

    def start(self) -> None:
        """Bind the listen address and serve in background threads; OSError if it cannot."""
        with self._state_lock:
            if self._loop is not None:
                raise RuntimeError("server already started")
            family, host, dual = _bind_target(self._host, self._port)
            listener = socket.create_server((host, self._port), family=family,
                                            backlog=_LISTEN_BACKLOG, dualstack_ipv6=dual)
            limit = self.max_connections or connection_limit()
            loop = _Loop(self, listener, dual_stack=dual, max_connections=limit)
            loop.start()
            self._loop = loop
        host, port = self.address
        bound = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        # the address as bound (0.0.0.0 or :: means every interface), and a URL for this host
        logger.info("listening", extra={"address": bound, "url": self.url,
                                         "tls": self.web_config.tls_enabled,
                                         "basic_auth": bool(self.web_config.basic_auth_users),
                                         "max_connections": limit})

    def stop(self, timeout: float = _STOP_TIMEOUT) -> None:
        """Stop accepting, close open connections and join the server's threads."""
        with self._state_lock:
            loop, self._loop = self._loop, None
        if loop is None:
            return
        stuck = loop.stop(time.monotonic() + timeout)
        if stuck:
            logger.warning("request handlers still busy after stop", extra={"threads": stuck})

    def __enter__(self) -> ExporterServer:
        self.start()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()

    @property
    def running(self) -> bool:
        """Whether the server is started."""
        return self._loop is not None

    @property
    def address(self) -> tuple[str, int]:
        """The bound (host, port); the port is the real one when 0 was asked for."""
        loop = self._loop
        if loop is None:
            raise RuntimeError("server not started")
        return loop.address

    @property
    def url(self) -> str:
        """Base URL (with a trailing slash) to reach the server from this machine."""
        host, port = self.address
        if host in ("0.0.0.0", ""):  # noqa: S104
            host = "127.0.0.1"
        elif host == "::":
            host = "::1" if not self._dual_stack_v4() else "127.0.0.1"
        if ":" in host:
            host = f"[{host}]"
        scheme = "https" if self.web_config.tls_enabled else "http"
        return f"{scheme}://{host}:{port}/"

    def _dual_stack_v4(self) -> bool:
        loop = self._loop
        return loop is not None and loop.dual_stack

    # ---------------------------------------------------------------- web config

    def reload_web_config(self) -> WebConfig:
        """Re-read the web config file and use it for the next requests and connections.

        On error the current configuration stays and :class:`WebConfigError` is raised.
        Turning TLS on or off needs a restart and is refused. Without a file: a no-op.
        """
        if self.web_config_file is None:
            return self.web_config
        config = load_web_config(self.web_config_file)
        if config.tls_enabled != self.web_config.tls_enabled:
            raise WebConfigError(self.web_config_file, "tls_server_config",
                                 "turning TLS on or off needs a restart")
        limiter = self.limiter
        if config.rate_limit != self.web_config.rate_limit:
            limiter = _limiter(config)
        self.limiter, self.web_config = limiter, config
        logger.info("web config reloaded", extra={"file": str(self.web_config_file)})
        return config

    # ---------------------------------------------------------------- routing

    def route(self, method: str, target: str) -> tuple[_Route, str] | _Response:
        """(handler, query string) for a request, or the 404/405 answer; never raises."""
        parts = urlsplit(target)
        route = self._routes.get(parts.path)
        if route is None:
            return _NOT_FOUND
        allowed, handler = route
        if method not in allowed:
            return _method_not_allowed(allowed)
        return handler, parts.query

    def _metrics(self, headers: Mapping[str, str], query: str) -> _Response:
        encoder, content_type = choose_encoder(headers.get("Accept", ""))
        registry: Collector = self.registry
        names = parse_qs(query).get("name[]")
        if names and isinstance(registry, CollectorRegistry):
            registry = registry.restricted_registry(names)
        try:
            body = encoder(registry)
        except Exception as exc:  # a broken collector must not kill the server
            logger.error("collecting metrics failed", exc_info=True)
            return _text(500, f"error collecting metrics: {type(exc).__name__}: {exc}"[:300] + "\n")
        extra: tuple[tuple[str, str], ...] = (("Vary", "Accept-Encoding"),)
        if _gzip_accepted(headers.get("Accept-Encoding", "")):
            body = gzip.compress(body, compresslevel=6)
            extra += (("Content-Encoding", "gzip"),)
        return _Response(200, body, content_type, extra)

    def _healthy(self, headers: Mapping[str, str], query: str) -> _Response:
        return _text(200, "Healthy")

    def _ready(self, headers: Mapping[str, str], query: str) -> _Response:
        try:
            is_ready = bool(self.ready())
        except Exception as exc:  # report not ready, keep serving
            logger.warning("readiness check failed", exc_info=True)
            return _text(503, f"Not ready: {type(exc).__name__}: {exc}"[:300])
        return _text(200, "Ready") if is_ready else _text(503, "Not ready")

    def _reload(self, headers: Mapping[str, str], query: str) -> _Response:
        with self._reload_lock:
            try:
                ok, message = self.reload()
            except Exception as exc:  # a failed reload is a 500, not a crash
                logger.error("reload failed", exc_info=True)
                return _text(500, f"reload failed: {type(exc).__name__}: {exc}")
        if ok:
            return _text(200, message or "Reloaded")
        logger.error("reload failed", extra={"reason": message})
        return _text(500, message or "reload failed")

    def _root(self, headers: Mapping[str, str], query: str) -> _Response:
        if self.status_page is None:
            return _landing_page()
        return _html(self.status_page.overview(query))

    def _endpoint(self, headers: Mapping[str, str], query: str) -> _Response:
        if self.status_page is None:
            return _NOT_FOUND
        return _html(self.status_page.endpoint(query))


def _limiter(config: WebConfig) -> _TokenBucket | None:
    return _TokenBucket(config.rate_limit) if config.rate_limit is not None else None


class _Client:
    """One accepted connection and the task serving it."""

    def __init__(self, sock: socket.socket, address: Any) -> None:
        self.sock = sock
        self.address = str(address[0]) if isinstance(address, tuple) else str(address)
        self.task: asyncio.Task[None] | None = None
        self.writer: asyncio.StreamWriter | None = None
        self.since = 0.0  # loop time its current request (or the wait for it) began
        self.graceful = False  # whether it ended cleanly (close, not abort)


class _ClosedError(Exception):
    """The connection is to be closed without (another) response."""


class _Loop:
    """The event loop thread behind :class:`ExporterServer`.

    h11 parses and frames HTTP/1.1; this layer adds what no embeddable library gave us
    together (see the commit that introduced it): an accept loop that holds at most
    ``max_connections`` connections and evicts the oldest one waiting on its client,
    absolute deadlines for reading a request, auth before any body, one write per response.
    """

    def __init__(self, owner: ExporterServer, listener: socket.socket, *, dual_stack: bool,
                 max_connections: int) -> None:
        self.owner = owner
        self.listener = listener
        self.dual_stack = dual_stack
        self.max_connections = max_connections
        host, port = listener.getsockname()[:2]
        self.address = (str(host), int(port))
        self.loop = asyncio.new_event_loop()
        self.workers = ThreadPoolExecutor(owner.workers, thread_name_prefix="web-worker")
        self.auth_worker = ThreadPoolExecutor(1, thread_name_prefix="web-auth")
        self.clients: set[_Client] = set()
        self.closing: set[_Client] = set()  # released, possibly still in a TLS shutdown
        # clients waiting on the network (reading a request, writing a response): evictable
        self.waiting: set[_Client] = set()
        self.accepting = False  # whether the listener is watched for new connections
        self.backoff_until = 0.0  # loop time before which accept() is not retried
        self.stopping = asyncio.Event()
        self.evicted = 0
        self.accept_failures = 0
        self._warned_at: dict[str, float] = {}
        self.thread = threading.Thread(target=self._run, name=f"web-{port}", daemon=True)

    def start(self) -> None:
        self.listener.setblocking(False)
        self.thread.start()

    def stop(self, deadline: float) -> int:
        """Close the listener and every connection, join the threads; return how many worker
        threads are still busy at ``deadline`` (monotonic)."""
        with contextlib.suppress(RuntimeError):  # the loop has already ended
            self.loop.call_soon_threadsafe(self.stopping.set)
        self.thread.join(max(0.0, deadline - time.monotonic()))
        stuck = 0
        for pool in (self.workers, self.auth_worker):
            pool.shutdown(wait=False, cancel_futures=True)
            joiner = threading.Thread(target=pool.shutdown, name="stop-web-pool", daemon=True)
            joiner.start()
            joiner.join(max(0.0, deadline - time.monotonic()))
            stuck += joiner.is_alive()
        return stuck

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        try:
            self.loop.run_until_complete(self._main())
        finally:
            self.listener.close()
            self.loop.close()

    async def _main(self) -> None:
        self._resume()
        await self.stopping.wait()
        self._pause()
        self.listener.close()
        tasks = [client.task for client in self.clients if client.task is not None]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        for client in self.closing:  # connections still saying goodbye
            if client.writer is not None and client.sock.fileno() != -1:
                client.writer.transport.abort()
        for _ in range(3):  # let aborted transports close their sockets
            await asyncio.sleep(0)
        for client in self.closing:
            client.sock.close()

    # ---------------------------------------------------------------- connections

    def _on_acceptable(self) -> None:
        """Accept the connections waiting in the listen queue (the listener is readable),
        making room first at the cap; pause accepting when no room can be made."""
        for attempt in range(_LISTEN_BACKLOG):
            if len(self.clients) >= self.max_connections:
                if attempt:  # none may be waiting; if one is, the listener calls again
                    return
                if not self._evict():  # one is waiting: readability says so
                    self._pause()  # until a connection closes or waits on its client
                    return
            try:
                sock, address = self.listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:  # out of descriptors, or the client left: retry soon
                self.accept_failures += 1
                if self._warn_now("accept"):
                    logger.warning("accepting a connection failed", extra={
                        "error": str(exc), "failures_total": self.accept_failures})
                self._pause()
                self.backoff_until = self.loop.time() + _ACCEPT_RETRY
                self.loop.call_later(_ACCEPT_RETRY, self._resume)
                return
            sock.setblocking(False)
            client = _Client(sock, address)
            client.since = self.loop.time()
            self.clients.add(client)
            self.waiting.add(client)  # for its TLS handshake or first request
            client.task = self.loop.create_task(self._serve(client))
            client.task.add_done_callback(functools.partial(self._finished, client))

    def _pause(self) -> None:
        if self.accepting:
            self.loop.remove_reader(self.listener)
            self.accepting = False

    def _resume(self) -> None:
        """Watch the listener again, unless stopping or backing off after a failed accept."""
        if (not self.accepting and not self.stopping.is_set()
                and self.loop.time() >= self.backoff_until):
            self.loop.add_reader(self.listener, self._on_acceptable)
            self.accepting = True

    def _evict(self) -> bool:
        """Close the connection waiting on its client whose current request (or the wait
        for it) began longest ago; False if no connection is waiting on its client."""
        if not self.waiting:
            return False
        client = min(self.waiting, key=lambda waiting: waiting.since)
        self.waiting.discard(client)
        self.clients.discard(client)
        if client.task is not None:
            client.task.cancel()
        self.evicted += 1
        if self._warn_now("evict"):
            logger.warning("connection limit reached: closing the oldest connections "
                           "waiting on their clients",
                           extra={"max_connections": self.max_connections,
                                  "evicted_total": self.evicted})
        return True

    def _warn_now(self, what: str) -> bool:
        """Whether a warning about ``what`` is due (at most one a minute for each)."""
        now = time.monotonic()
        if now - self._warned_at.get(what, -_WARN_INTERVAL) < _WARN_INTERVAL:
            return False
        self._warned_at[what] = now
        return True

    def _release(self, client: _Client) -> None:
        self.waiting.discard(client)
        self.clients.discard(client)
        self._resume()

    @contextlib.contextmanager
    def _on_client(self, client: _Client) -> Iterator[None]:
        """Mark ``client`` as waiting on the network, so evictable, for the block."""
        self.waiting.add(client)
        self._resume()
        try:
            yield
        finally:
            self.waiting.discard(client)

    async def _serve(self, client: _Client) -> None:
        """Serve ``client`` until it closes, fails or times out; :meth:`_finished` closes it."""
        accepted = client.since
        try:
            with self._on_client(client):
                reader = await self._open(client, accepted + self.owner.request_timeout)
            if reader is None:
                return
            conn = h11.Connection(h11.SERVER, max_incomplete_event_size=_MAX_HEAD)
            started: float | None = accepted  # the first request's deadline runs from accept
            while True:
                if not await self._exchange(client, conn, reader, started):
                    break
                conn.start_next_cycle()
                started, client.since = None, self.loop.time()
            client.graceful = True
        except (_ClosedError, TimeoutError, OSError, h11.ProtocolError, ssl.SSLError) as exc:
            logger.debug("connection closed", extra={"client": client.address,
                                                      "reason": f"{type(exc).__name__}: {exc}"})
        except Exception:  # one connection's failure is logged, never fatal
            logger.error("serving a connection failed", exc_info=True,
                         extra={"client": client.address})

    def _finished(self, client: _Client, task: asyncio.Task[None]) -> None:
        """Free ``client``'s slot and close its socket, however its task ended (it may have
        been cancelled before it ever ran)."""
        self._release(client)
        if client.writer is None:
            client.sock.close()
        elif client.graceful:
            client.writer.close()
        else:
            client.writer.transport.abort()
        self.closing = {old for old in self.closing if old.sock.fileno() != -1}
        if client.sock.fileno() != -1:
            self.closing.add(client)

    async def _open(self, client: _Client, deadline: float) -> asyncio.StreamReader | None:
        """Wrap the socket in a stream, after the TLS handshake if TLS is on; None when the
        client fails the handshake or its certificate's SANs."""
        reader = asyncio.StreamReader(limit=_READ_SIZE, loop=self.loop)
        protocol = asyncio.StreamReaderProtocol(reader, loop=self.loop)
        config = self.owner.web_config
        context = config.ssl_context
        async with asyncio.timeout_at(deadline):
            if context is None:
                transport, _ = await self.loop.connect_accepted_socket(
                    lambda: protocol, client.sock)
            else:
                transport, _ = await self.loop.connect_accepted_socket(
                    lambda: protocol, client.sock, ssl=context,
                    ssl_handshake_timeout=max(0.001, deadline - self.loop.time()),
                    ssl_shutdown_timeout=_TLS_SHUTDOWN_TIMEOUT)
        transport.set_write_buffer_limits(high=0)  # drain() waits until all is sent
        client.writer = asyncio.StreamWriter(transport, protocol, reader, self.loop)
        if context is not None and config.tls is not None and not _san_allowed(
                transport.get_extra_info("peercert"), config.tls.client_allowed_sans):
            logger.debug("client certificate SAN not allowed", extra={"client": client.address})
            return None
        return reader

    async def _exchange(self, client: _Client, conn: h11.Connection,
                        reader: asyncio.StreamReader, started: float | None) -> bool:
        """Read one request and answer it; whether the connection may serve another.

        ``started`` is when the request's deadline began (None: at its first byte)."""
        try:
            event, started = await self._next_event(client, conn, reader, started)
        except h11.RemoteProtocolError as exc:
            if conn.our_state not in (h11.IDLE, h11.SEND_RESPONSE):
                raise
            status = exc.error_status_hint
            self._send(client, conn, "GET", _text(status, f"{HTTPStatus(status).phrase}\n"),
                       close=True)
            await self._flush(client, self.loop.time() + self.owner.request_timeout)
            return False
        if isinstance(event, h11.ConnectionClosed):
            return False
        if not isinstance(event, h11.Request):
            raise _ClosedError(f"unexpected {type(event).__name__}")
        assert started is not None
        request_started = time.monotonic()
        method = event.method.decode("ascii", "replace")
        target = event.target.decode("latin-1")
        headers = _Headers(event.headers)
        answer = await self._admit(client, method, target, headers)
        if isinstance(answer, _Response):  # refused on the head: the body is never read
            response = answer
            close = not _complete(conn)
        else:
            handler, query = answer
            refused = await self._drain_body(client, conn, reader, headers, started)
            if refused is not None:
                response, close = refused, True
            else:
                response = await self._call(handler, headers, query)
                close = False
        self._send(client, conn, method, response, close=close)
        await self._flush(client, self.loop.time() + self.owner.request_timeout)
        logger.debug("request", extra={
            "method": method, "path": urlsplit(target).path, "status": response.status,
            "bytes": len(response.body), "client": client.address,
            "duration_seconds": round(time.monotonic() - request_started, 6),
        })
        return conn.our_state is h11.DONE and conn.their_state is h11.DONE

    async def _next_event(self, client: _Client, conn: h11.Connection,
                          reader: asyncio.StreamReader,
                          started: float | None) -> tuple[h11.Event, float | None]:
        """The next h11 event, reading as needed: by ``started + request_timeout`` once the
        request has begun, else within the idle timeout. Raises TimeoutError past it."""
        idle_until = self.loop.time() + self.owner.idle_timeout
        if started is None and conn.trailing_data[0]:  # part of a pipelined request is here
            started = self.loop.time()
        while True:
            event = conn.next_event()
            if event is not h11.NEED_DATA:
                if event is h11.PAUSED:
                    raise _ClosedError("pipelined request after an unfinished one")
                assert not isinstance(event, type)
                # a pipelined request was already read: its deadline starts now
                return event, self.loop.time() if started is None else started
            deadline = idle_until if started is None else started + self.owner.request_timeout
            with self._on_client(client):
                async with asyncio.timeout_at(deadline):
                    data = await reader.read(_READ_SIZE)
            if started is None and data:
                started = self.loop.time()
            conn.receive_data(data)

    async def _admit(self, client: _Client, method: str, target: str,
                     headers: Mapping[str, str]) -> tuple[_Route, str] | _Response:
        """Rate limit, basic auth and routing, decided on the request head alone. A client
        waiting for a bcrypt check can be evicted: a flood of wrong passwords must not hold
        every connection slot."""
        owner = self.owner
        limiter, users = owner.limiter, owner.web_config.basic_auth_users
        if limiter is not None and not limiter.allow():
            return _TOO_MANY
        if users:
            header = headers.get("Authorization")
            ok = owner.auth.cached(users, header)
            if ok is None:
                with self._on_client(client):
                    ok = await self.loop.run_in_executor(self.auth_worker, owner.auth.verify,
                                                         users, header)
            if not ok:
                return _UNAUTHORIZED
        return owner.route(method, target)

    async def _drain_body(self, client: _Client, conn: h11.Connection,
                          reader: asyncio.StreamReader, headers: Mapping[str, str],
                          started: float) -> _Response | None:
        """Read and drop the request body within the request's deadline (``started`` +
        request timeout); the 413 answer if it is too big."""
        try:
            declared = int(headers.get("Content-Length") or 0)
        except ValueError:
            declared = 0  # h11 has already refused a bad Content-Length
        if declared > _MAX_BODY:
            return _TOO_LARGE
        if conn.they_are_waiting_for_100_continue:
            continue_ = h11.InformationalResponse(status_code=100, headers=[], reason=b"Continue")
            self._send_bytes(client, conn.send(continue_))
        size = 0
        while True:
            event, _ = await self._next_event(client, conn, reader, started)
            if isinstance(event, h11.EndOfMessage):
                return None
            if not isinstance(event, h11.Data):
                raise _ClosedError(f"unexpected {type(event).__name__} in a request body")
            size += len(event.data)
            if size > _MAX_BODY:
                return _TOO_LARGE

    async def _call(self, handler: _Route, headers: Mapping[str, str], query: str) -> _Response:
        """Run a route on a worker thread; a route that raises is a 500."""
        try:
            return await self.loop.run_in_executor(self.workers, handler, headers, query)
        except Exception:  # answer 500 rather than drop the connection
            logger.error("request failed", exc_info=True)
            return _text(500, "Internal Server Error\n")

    def _send(self, client: _Client, conn: h11.Connection, method: str, response: _Response,
              *, close: bool) -> None:
        """Frame ``response`` with h11 and hand it to the transport in one write."""
        headers = [("Server", _SERVER), ("Date", formatdate(usegmt=True))]
        headers += self.owner.web_config.headers.items()
        headers += [("Content-Type", response.content_type),
                    ("Content-Length", str(len(response.body))), *response.headers]
        if close:
            headers.append(("Connection", "close"))
        status = HTTPStatus(response.status)
        parts = [conn.send(h11.Response(status_code=response.status, headers=headers,
                                        reason=status.phrase.encode("ascii")))]
        if method != "HEAD" and response.body:
            parts.append(conn.send(h11.Data(data=response.body)))
        parts.append(conn.send(h11.EndOfMessage()))
        self._send_bytes(client, b"".join(part for part in parts if part))

    def _send_bytes(self, client: _Client, data: bytes | None) -> None:
        if data and client.writer is not None:
            client.writer.write(data)

    async def _flush(self, client: _Client, deadline: float) -> None:
        """Wait until the response has gone to the kernel, by ``deadline``; a client that does
        not read it can be evicted meanwhile."""
        writer = client.writer
        if writer is None or not writer.transport.get_write_buffer_size():
            return
        with self._on_client(client):
            async with asyncio.timeout_at(deadline):
                await writer.drain()


def _complete(conn: h11.Connection) -> bool:
    """Whether the request just read has no body left to read (it had none)."""
    try:
        event = conn.next_event()
    except h11.RemoteProtocolError:
        return False
    return isinstance(event, h11.EndOfMessage)


class _Headers(Mapping[str, str]):
    """Case-insensitive read-only view of request headers (the first value of a name wins)."""

    def __init__(self, headers: Any) -> None:
        self._values: dict[str, str] = {}
        for name, value in headers:
            self._values.setdefault(name.decode("latin-1").lower(), value.decode("latin-1"))

    def __getitem__(self, key: str) -> str:
        return self._values[key.lower()]

    def __iter__(self) -> Iterator[str]:
        return iter(self._values)

    def __len__(self) -> int:
        return len(self._values)
