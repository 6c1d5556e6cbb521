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
from a ``--web.config.file`` in the exporter-toolkit format (see :mod:`exporter.serve.web_config`).
Basic auth protects every path, ``/-/healthy`` included, as exporter-toolkit does.

The server is an asyncio event loop in one thread with h11 (the HTTP/1.1 state machine of
uvicorn, hypercorn and httpcore) parsing requests and framing responses; routes run on a
few worker threads. Connections, workers, request size and the time to read a request are
bounded (see :class:`ExporterServer`), so slow or idle clients cannot take the descriptors
and threads that probes need; each response goes out in a single write.
"""

from __future__ import annotations

import gzip
import ipaddress
import logging
import resource
import socket
import threading
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Final
from urllib.parse import parse_qs, urlsplit

from prometheus_client.exposition import choose_encoder
from prometheus_client.registry import Collector, CollectorRegistry

from exporter.serve._auth import _BasicAuth, _gzip_accepted, _TokenBucket
from exporter.serve._loop import _LISTEN_BACKLOG, _Loop
from exporter.serve._responses import (
    _NOT_FOUND,
    _READ_ONLY,
    _RELOAD_METHODS,
    _html,
    _landing_page,
    _method_not_allowed,
    _Response,
    _Route,
    _text,
)
from exporter.serve.web_config import (
    WebConfig,
    WebConfigError,
    load_web_config,
)

if TYPE_CHECKING:
    from exporter.serve.status_page import StatusPage


__all__ = [
    "ExporterServer",
    "connection_limit",
    "parse_listen_address",
    "raise_open_files_limit",
]

logger = logging.getLogger(__name__)

_MAX_CONNECTIONS: Final = 512  # the most connections held open, whatever the open-files limit
_MIN_CONNECTIONS: Final = 8  # the fewest, however low the open-files limit
_NOFILE_SHARE: Final = 4  # connections may take 1/4 of the open-files limit; the rest is probes'
_WORKERS: Final = 8  # threads answering routes
_REQUEST_TIMEOUT: Final = 10.0  # seconds to read a request (head and body) and write the answer
_IDLE_TIMEOUT: Final = 120.0  # seconds a keep-alive connection may stay silent
_STOP_TIMEOUT: Final = 5.0


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

