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
  page (see :mod:`exporter.status_page`) when a status page is given; else ``/`` is a small
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

Each connection is served by its own daemon thread; the TLS handshake also happens in that
thread, so a client that never finishes its handshake blocks nobody else.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import gzip
import hashlib
import hmac
import html
import ipaddress
import logging
import os
import re
import secrets
import socket
import socketserver
import ssl
import tempfile
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any, Final
from urllib.parse import parse_qs, urlsplit

import bcrypt
import yaml
from prometheus_client.exposition import choose_encoder
from prometheus_client.registry import Collector, CollectorRegistry

from exporter import __version__
from exporter.durations import parse_duration

if TYPE_CHECKING:
    from exporter.status_page import Page, StatusPage

__all__ = [
    "REALM",
    "ExporterServer",
    "RateLimit",
    "TLSServerConfig",
    "WebConfig",
    "WebConfigError",
    "load_web_config",
    "parse_listen_address",
]

logger = logging.getLogger(__name__)

REALM: Final = "tuf-exporter"
"""The basic-auth realm announced in ``WWW-Authenticate``."""

_POLL_INTERVAL: Final = 0.05  # seconds between checks for shutdown in serve_forever
_HANDSHAKE_TIMEOUT: Final = 10.0  # seconds a client has to finish its TLS handshake
_IDLE_TIMEOUT: Final = 120.0  # seconds a keep-alive connection may stay silent
_MAX_BODY: Final = 64 * 1024  # bytes of request body we are willing to read and discard
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


class WebConfigError(ValueError):
    """A web configuration file that cannot be used; names the file and the field."""

    def __init__(self, path: Path | None, field_name: str, message: str) -> None:
        self.path = path
        self.field = field_name
        self.message = message
        where = f"web config {path}" if path is not None else "web config"
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
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise WebConfigError(path, "", f"cannot read: {exc}") from exc
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise WebConfigError(path, "", f"invalid YAML: {exc}") from exc
    if raw is None:
        return WebConfig(path=path)
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
    costs at most one core; cached scrapes never wait for it.
    """

    def __init__(self) -> None:
        self._key = secrets.token_bytes(32)
        self._cache: OrderedDict[bytes, None] = OrderedDict()
        self._lock = threading.Lock()
        self._bcrypt_lock = threading.Lock()

    def check(self, users: Mapping[str, str], header: str | None) -> bool:
        """Whether the ``Authorization`` header carries a valid user and password."""
        credentials = _parse_basic(header)
        if credentials is None or not users:
            return False
        user, password = credentials
        hashed = users.get(user)
        known = hashed is not None
        reference = hashed if hashed is not None else next(iter(users.values()))
        digest = self._digest(user, reference, password)
        with self._lock:
            if known and digest in self._cache:
                self._cache.move_to_end(digest)
                return True
        with self._bcrypt_lock:
            ok = _bcrypt_matches(password, reference) and known
        if ok:
            with self._lock:
                self._cache[digest] = None
                while len(self._cache) > _AUTH_CACHE_SIZE:
                    self._cache.popitem(last=False)
        return ok

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


class ExporterServer:
    """The exporter's threaded HTTP(S) server.

    ``listen_address`` is ``host:port``, ``:port`` or ``[v6]:port`` (port 0: a free port,
    see :attr:`address`). ``registry`` is rendered on every ``/metrics``; ``ready`` and
    ``reload`` back ``/-/ready`` and ``/-/reload``; ``status_page`` (optional) serves ``/`` and
    ``/endpoint``. The web config file (TLS, basic auth, headers) is loaded here, so a bad one
    raises :class:`WebConfigError` at construction.
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
        self._limiter = _limiter(self.web_config)
        self._auth = _BasicAuth()
        self._reload_lock = threading.Lock()
        self._state_lock = threading.Lock()
        self._httpd: _HTTPServer | None = None
        self._thread: threading.Thread | None = None
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
            if self._httpd is not None:
                raise RuntimeError("server already started")
            family, host, dual = _bind_target(self._host, self._port)
            httpd = _HTTPServer(family, (host, self._port), self, dual_stack=dual)
            thread = threading.Thread(target=httpd.serve_forever, args=(_POLL_INTERVAL,),
                                      name=f"web-{httpd.server_address[1]}", daemon=True)
            thread.start()
            self._httpd, self._thread = httpd, thread
        logger.info("listening", extra={"address": self.url, "tls": self.web_config.tls_enabled,
                                         "basic_auth": bool(self.web_config.basic_auth_users)})

    def stop(self, timeout: float = _STOP_TIMEOUT) -> None:
        """Stop accepting, close open connections and join the server's threads."""
        with self._state_lock:
            httpd, thread = self._httpd, self._thread
            self._httpd = self._thread = None
        if httpd is None or thread is None:
            return
        deadline = time.monotonic() + timeout
        httpd.shutdown()
        httpd.server_close()
        thread.join(max(0.0, deadline - time.monotonic()))
        stuck = httpd.close_connections(deadline)
        if stuck:
            logger.warning("request handlers still busy after stop",
                           extra={"threads": stuck})

    def __enter__(self) -> ExporterServer:
        self.start()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()

    @property
    def running(self) -> bool:
        """Whether the server is started."""
        return self._httpd is not None

    @property
    def address(self) -> tuple[str, int]:
        """The bound (host, port); the port is the real one when 0 was asked for."""
        httpd = self._httpd
        if httpd is None:
            raise RuntimeError("server not started")
        host, port = httpd.server_address[:2]
        return str(host), int(port)

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
        httpd = self._httpd
        return httpd is not None and httpd.dual_stack

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
        limiter = self._limiter
        if config.rate_limit != self.web_config.rate_limit:
            limiter = _limiter(config)
        self._limiter, self.web_config = limiter, config
        logger.info("web config reloaded", extra={"file": str(self.web_config_file)})
        return config

    # ---------------------------------------------------------------- routing

    def respond(self, method: str, target: str, headers: Mapping[str, str]) -> _Response:
        """Answer one request (auth, rate limit and routing); never raises."""
        config = self.web_config
        limiter = self._limiter
        if limiter is not None and not limiter.allow():
            return _TOO_MANY
        if config.basic_auth_users and not self._auth.check(
                config.basic_auth_users, headers.get("Authorization")):
            return _UNAUTHORIZED
        parts = urlsplit(target)
        route = self._routes.get(parts.path)
        if route is None:
            return _NOT_FOUND
        allowed, handler = route
        if method not in allowed:
            return _method_not_allowed(allowed)
        return handler(headers, parts.query)

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


class _HTTPServer(ThreadingHTTPServer):
    """Threading server that does TLS handshakes in the connection's own thread and tracks
    its threads and sockets so that :meth:`ExporterServer.stop` is prompt."""

    daemon_threads = True
    block_on_close = False
    allow_reuse_address = True
    request_queue_size = 128

    def __init__(self, family: socket.AddressFamily, address: tuple[str, int],
                 owner: ExporterServer, *, dual_stack: bool) -> None:
        self.address_family = family
        self.owner = owner
        self.dual_stack = dual_stack
        self._track_lock = threading.Lock()
        self._connections: dict[threading.Thread, socket.socket] = {}
        super().__init__(address, _Handler)

    def server_bind(self) -> None:
        """Bind without the reverse DNS lookup HTTPServer does; dual-stack for ``:port``."""
        if self.dual_stack:
            self.socket.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        socketserver.TCPServer.server_bind(self)
        host, port = self.server_address[:2]
        self.server_name, self.server_port = str(host), int(port)

    def process_request(self, request: Any, client_address: Any) -> None:
        """Serve the connection in a new daemon thread (tracked for stop)."""
        thread = threading.Thread(target=self._serve_connection, args=(request, client_address),
                                  name=f"web-conn-{client_address[1]}", daemon=True)
        with self._track_lock:
            self._connections[thread] = request
        thread.start()

    def _serve_connection(self, sock: socket.socket, client_address: Any) -> None:
        me = threading.current_thread()
        try:
            conn = self._secure(sock, client_address)
            if conn is not None:
                with self._track_lock:
                    self._connections[me] = conn
                self.finish_request(conn, client_address)
        except Exception:  # noqa: BLE001 - one connection's failure is logged, never fatal
            self.handle_error(sock, client_address)
        finally:
            with self._track_lock:
                current = self._connections.pop(me, sock)
            self.shutdown_request(current)

    def _secure(self, sock: socket.socket, client_address: Any) -> socket.socket | None:
        """Do the TLS handshake (if TLS is on); None when the client fails it."""
        context = self.owner.web_config.ssl_context
        if context is None:
            return sock
        sock.settimeout(_HANDSHAKE_TIMEOUT)
        try:
            conn = context.wrap_socket(sock, server_side=True, do_handshake_on_connect=False)
            with self._track_lock:
                self._connections[threading.current_thread()] = conn
            conn.do_handshake()
        except (ssl.SSLError, OSError) as exc:
            logger.debug("TLS handshake failed",
                         extra={"client": str(client_address[0]), "error": str(exc)})
            return None
        tls = self.owner.web_config.tls
        if tls is not None and not _san_allowed(conn.getpeercert(), tls.client_allowed_sans):
            logger.debug("client certificate SAN not allowed",
                         extra={"client": str(client_address[0])})
            return None
        return conn

    def handle_error(self, request: Any, client_address: Any) -> None:
        """Log a connection's failure at debug level (clients go away all the time)."""
        logger.debug("error serving connection", exc_info=True,
                     extra={"client": str(client_address[0])})

    def close_connections(self, deadline: float) -> int:
        """Shut down open connections and join their threads; return how many are stuck."""
        with self._track_lock:
            connections = dict(self._connections)
        for conn in connections.values():
            with contextlib.suppress(OSError):
                socket.socket.shutdown(conn, socket.SHUT_RDWR)
        stuck = 0
        for thread in connections:
            thread.join(max(0.0, deadline - time.monotonic()))
            stuck += thread.is_alive()
        return stuck


class _Handler(BaseHTTPRequestHandler):
    """Reads one request at a time on a (keep-alive) connection and writes the response."""

    server: _HTTPServer
    protocol_version = "HTTP/1.1"
    server_version = f"tuf-exporter/{__version__}"
    sys_version = ""
    timeout = _IDLE_TIMEOUT
    def _dispatch(self) -> None:
        """Answer the request just parsed, whatever its method."""
        started = time.monotonic()
        if not self._drain_body():
            return
        owner = self.server.owner
        try:
            response = owner.respond(self.command, self.path, _HeaderView(self.headers))
        except Exception:  # answer 500 rather than drop the connection
            logger.error("request failed", exc_info=True)
            response = _text(500, "Internal Server Error\n")
        self._write(response, owner.web_config.headers)
        logger.debug("request", extra={
            "method": self.command, "path": urlsplit(self.path).path, "status": response.status,
            "bytes": len(response.body), "client": self.client_address[0],
            "duration_seconds": round(time.monotonic() - started, 6),
        })

    def _drain_body(self) -> bool:
        """Read and drop a request body so the connection can be reused; False if refused."""
        if self.headers.get("Transfer-Encoding"):
            self.close_connection = True
            return True
        try:
            length = int(self.headers.get("Content-Length") or 0)
        except ValueError:
            self.send_error(400, "Bad Content-Length")
            return False
        if length > _MAX_BODY:
            self.close_connection = True
            self.send_error(413)
            return False
        if length > 0:
            self.rfile.read(length)
        return True

    def _write(self, response: _Response, extra_headers: Mapping[str, str]) -> None:
        self.send_response(response.status)
        for name, value in extra_headers.items():
            self.send_header(name, value)
        self.send_header("Content-Type", response.content_type)
        self.send_header("Content-Length", str(len(response.body)))
        for name, value in response.headers:
            self.send_header(name, value)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(response.body)

    do_GET = do_HEAD = do_POST = do_PUT = do_DELETE = do_PATCH = do_OPTIONS = _dispatch  # noqa: N815

    def log_request(self, code: int | str = "-", size: int | str = "-") -> None:
        """Requests are logged by :meth:`_dispatch`, at debug level."""

    def log_message(self, format: str, *args: Any) -> None:
        """Protocol errors (bad request lines, timeouts) at debug level."""
        logger.debug("http: " + format, *args, extra={"client": self.client_address[0]})


class _HeaderView(Mapping[str, str]):
    """Case-insensitive read-only view of the request headers (first value wins)."""

    def __init__(self, message: Any) -> None:
        self._message = message

    def __getitem__(self, key: str) -> str:
        value = self._message.get(key)
        if value is None:
            raise KeyError(key)
        return str(value)

    def __iter__(self) -> Iterator[str]:
        return iter(self._message.keys())

    def __len__(self) -> int:
        return len(self._message.keys())
