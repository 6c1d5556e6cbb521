"""The web configuration file (``--web.config.file``) in the exporter-toolkit format.

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
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import ssl
import tempfile
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

from exporter.config import ConfigError, parse_duration, read_yaml

__all__ = ["RateLimit", "TLSServerConfig", "WebConfig", "WebConfigError", "load_web_config"]

logger = logging.getLogger("exporter.serve.web")  # one logger for the whole web server

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

