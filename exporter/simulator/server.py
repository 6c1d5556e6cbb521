"""HTTP serving of a :class:`SimulatedRepository` on 127.0.0.1, with fault injection.

One :class:`SimulatorServer` listens on one port and serves several endpoints
(``primary`` plus mirrors) under ``http://127.0.0.1:PORT/<endpoint>/metadata/``
and ``.../<endpoint>/targets/``. Every endpoint follows the repository's latest
state unless held back / pinned, and has its own list of injected faults.
"""

from __future__ import annotations

import contextlib
import io
import logging
import select
import socket
import struct
import threading
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Any
from urllib.parse import unquote, urlsplit

from exporter.simulator.faults import (
    ActiveFault,
    Endless,
    Reset,
    Respond,
    Response,
    Silent,
    Trickle,
    View,
    make_fault,
)
from exporter.simulator.repository import RepositoryState, SimulatedRepository

logger = logging.getLogger(__name__)

PRIMARY = "primary"
_POLL = 0.05


def closed_port(host: str = "127.0.0.1") -> int:
    """Return a port nothing listens on (bound then released): connections are refused."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        port: int = s.getsockname()[1]
    return port


class _Endpoint:
    """Per-endpoint configuration, cached view and request counts."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.lock = threading.RLock()
        self.behind = 0
        self.pin: int | None = None
        self.faults: list[ActiveFault] = []
        self.generation = 0
        self.cache: tuple[tuple[int, int], View] | None = None
        self.requests: Counter[str] = Counter()

    def changed(self) -> None:
        self.generation += 1
        self.cache = None


class _HTTPServer(ThreadingHTTPServer):
    """Threading server that tracks its handler threads and sockets for stop()."""

    daemon_threads = True
    block_on_close = False
    allow_reuse_address = True

    def __init__(self, address: tuple[str, int], owner: SimulatorServer) -> None:
        self.owner = owner
        self.track_lock = threading.Lock()
        self.live_threads: set[threading.Thread] = set()
        self.live_sockets: set[socket.socket] = set()
        super().__init__(address, _Handler)

    def process_request(self, request: Any, client_address: Any) -> None:
        """Serve ``request`` in a tracked daemon thread."""
        thread = threading.Thread(
            target=self._run, args=(request, client_address), daemon=True
        )
        with self.track_lock:
            self.live_threads.add(thread)
            self.live_sockets.add(request)
        thread.start()

    def _run(self, request: Any, client_address: Any) -> None:
        try:
            self.process_request_thread(request, client_address)
        finally:
            with self.track_lock:
                self.live_threads.discard(threading.current_thread())
                self.live_sockets.discard(request)

    def handle_error(self, request: Any, client_address: Any) -> None:
        """Log handler errors instead of printing tracebacks to stderr."""
        logger.debug("error serving %s", client_address, exc_info=True)


class _Handler(BaseHTTPRequestHandler):
    """Dispatches GET requests to the owning SimulatorServer."""

    server: _HTTPServer
    protocol_version = "HTTP/1.0"
    timeout = 10

    def do_GET(self) -> None:
        """Serve a GET request."""
        self.server.owner.serve_request(self)

    def log_message(self, format: str, *args: Any) -> None:
        """Route access logs to the logging module."""
        logger.debug("%s " + format, self.address_string(), *args)


class SimulatorServer:
    """Serves a repository over HTTP at several endpoints with injectable faults.

    Use as a context manager (``with SimulatorServer(repo) as server: ...``) or
    call :meth:`start` / :meth:`stop`. All methods are thread-safe.
    """

    def __init__(self, repo: SimulatedRepository, *, host: str = "127.0.0.1", port: int = 0):
        """Prepare (not start) a server for ``repo``; ``port=0`` picks a free port."""
        self.repo = repo
        self.host = host
        self._requested_port = port
        self._endpoints: dict[str, _Endpoint] = {PRIMARY: _Endpoint(PRIMARY)}
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._httpd: _HTTPServer | None = None
        self._thread: threading.Thread | None = None

    # -------------------------------------------------------------- lifecycle

    def start(self) -> SimulatorServer:
        """Bind and start serving in a background thread; return self.

        After :meth:`stop`, ``start()`` binds the same port again, so a
        stop/start cycle simulates an outage (connection refused) and recovery.
        """
        if self._httpd is not None:
            raise RuntimeError("server already started")
        self._stopping.clear()
        self._httpd = _HTTPServer((self.host, self._requested_port), self)
        self._requested_port = self.port  # a restart after stop() keeps the URLs
        self._thread = threading.Thread(
            target=self._httpd.serve_forever,
            kwargs={"poll_interval": _POLL},
            name=f"simulator-{self.port}",
            daemon=True,
        )
        self._thread.start()
        return self

    def stop(self, timeout: float = 5.0) -> None:
        """Stop serving: unblock and join handler threads, close the socket."""
        httpd, thread = self._httpd, self._thread
        if httpd is None or thread is None:
            return
        self._stopping.set()
        httpd.shutdown()
        thread.join(timeout)
        with httpd.track_lock:
            sockets = list(httpd.live_sockets)
            threads = list(httpd.live_threads)
        for sock in sockets:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
        for t in threads:
            t.join(timeout)
        httpd.server_close()
        self._httpd = self._thread = None

    def __enter__(self) -> SimulatorServer:
        """Start the server."""
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        """Stop the server."""
        self.stop()

    @property
    def running(self) -> bool:
        """True between start() and stop()."""
        return self._httpd is not None

    @property
    def port(self) -> int:
        """The bound TCP port."""
        if self._httpd is None:
            raise RuntimeError("server not started")
        port: int = self._httpd.server_address[1]
        return port

    @property
    def base_url(self) -> str:
        """``http://host:port``."""
        return f"http://{self.host}:{self.port}"

    # -------------------------------------------------------------- endpoints

    @property
    def endpoints(self) -> list[str]:
        """Endpoint names, primary first."""
        with self._lock:
            return list(self._endpoints)

    def add_mirror(self, name: str) -> tuple[str, str]:
        """Add an endpoint that follows the latest state; return its URLs."""
        if not name or "/" in name:
            raise ValueError(f"bad endpoint name {name!r}")
        with self._lock:
            if name in self._endpoints:
                raise ValueError(f"endpoint {name!r} exists")
            self._endpoints[name] = _Endpoint(name)
        return self.endpoint_urls(name)

    def endpoint_urls(self, name: str = PRIMARY) -> tuple[str, str]:
        """Return ``(metadata_url, targets_url)`` of endpoint ``name``."""
        self._endpoint(name)
        return f"{self.base_url}/{name}/metadata/", f"{self.base_url}/{name}/targets/"

    def hold_mirror(
        self, name: str, states_behind: int = 1, *, state: RepositoryState | int | None = None
    ) -> None:
        """Hold endpoint ``name`` ``states_behind`` states behind the latest, or
        pin it to ``state`` (a state or its serial) until :meth:`release_mirror`."""
        ep = self._endpoint(name)
        with ep.lock:
            if state is not None:
                ep.pin = state if isinstance(state, int) else state.serial
                ep.behind = 0
            else:
                ep.pin, ep.behind = None, states_behind
            ep.changed()

    def release_mirror(self, name: str) -> None:
        """Let endpoint ``name`` follow the latest state again."""
        ep = self._endpoint(name)
        with ep.lock:
            ep.pin, ep.behind = None, 0
            ep.changed()

    # ----------------------------------------------------------------- faults

    def inject(
        self, fault: str, endpoint: str = PRIMARY, role: str | None = None, **params: Any
    ) -> ActiveFault:
        """Inject fault ``fault`` (a name from ``FAULTS``) on ``endpoint``.

        ``role`` (where the fault takes one) selects the role; further
        parameters are listed in ``FAULTS[fault].params``. Raises ValueError /
        TypeError for unknown faults, parameters or unmet prerequisites.
        """
        active = make_fault(fault, role, **params)
        ep = self._endpoint(endpoint)
        with ep.lock:
            active.prepare(self.view(endpoint))
            ep.faults.append(active)
            ep.changed()
        return active

    def clear(self, endpoint: str | None = None, fault: str | None = None) -> None:
        """Remove injected faults (of name ``fault``, or all) from ``endpoint``
        (or all endpoints). Holds are not affected."""
        for ep in self._select(endpoint):
            with ep.lock:
                ep.faults = [f for f in ep.faults if fault is not None and f.name != fault]
                ep.changed()

    def faults(self, endpoint: str = PRIMARY) -> list[str]:
        """Names of the faults active on ``endpoint``."""
        ep = self._endpoint(endpoint)
        with ep.lock:
            return [f.name for f in ep.faults]

    def view(self, endpoint: str = PRIMARY) -> View:
        """Return what ``endpoint`` currently serves (cached per state/config)."""
        ep = self._endpoint(endpoint)
        repo = self.repo
        with ep.lock:
            latest = repo.latest
            key = (latest.serial, ep.generation)
            if ep.cache is not None and ep.cache[0] == key:
                return ep.cache[1]
            if ep.pin is not None:
                base = repo.states[ep.pin]
            else:
                base = repo.states[max(0, latest.serial - ep.behind)]
            for f in ep.faults:
                base = f.select_base(repo, base)
            view = View(base, repo)
            for f in ep.faults:
                f.apply(view)
            ep.cache = (key, view)
            return view

    # --------------------------------------------------------------- requests

    def requests(self, endpoint: str = PRIMARY) -> Counter[str]:
        """Copy of the request counts of ``endpoint`` by file (``metadata/...``)."""
        ep = self._endpoint(endpoint)
        with ep.lock:
            return Counter(ep.requests)

    def request_count(self, endpoint: str = PRIMARY, name: str | None = None) -> int:
        """Requests of file ``name`` (or all requests) seen by ``endpoint``."""
        counts = self.requests(endpoint)
        return counts[name] if name is not None else sum(counts.values())

    def reset_requests(self, endpoint: str | None = None) -> None:
        """Forget recorded requests of ``endpoint`` (or all endpoints)."""
        for ep in self._select(endpoint):
            with ep.lock:
                ep.requests.clear()

    # -------------------------------------------------------------- internals

    def _endpoint(self, name: str) -> _Endpoint:
        with self._lock:
            try:
                return self._endpoints[name]
            except KeyError:
                raise KeyError(f"no endpoint {name!r}") from None

    def _select(self, endpoint: str | None) -> list[_Endpoint]:
        if endpoint is not None:
            return [self._endpoint(endpoint)]
        with self._lock:
            return list(self._endpoints.values())

    def serve_request(self, handler: _Handler) -> None:
        """Answer one request (called by the handler thread)."""
        path = unquote(urlsplit(handler.path).path)
        name, _, rest = path.lstrip("/").partition("/")
        with self._lock:
            ep = self._endpoints.get(name)
        if ep is None:
            self._send(handler, Respond(404, b"no such endpoint\n"))
            return
        with ep.lock:
            ep.requests[rest] += 1
        try:
            response = self.view(name).respond(rest)
        except Exception:
            logger.exception("simulator: cannot build response for %s", path)
            response = Respond(500, b"simulator error\n")
        self._send(handler, response)

    def _send(self, handler: _Handler, response: Response) -> None:
        try:
            if isinstance(response, Respond):
                self._headers(handler, response.status, len(response.body))
                handler.wfile.write(response.body)
            elif isinstance(response, Trickle):
                self._trickle(handler, response)
            elif isinstance(response, Endless):
                self._endless(handler, response)
            elif isinstance(response, Silent):
                self._silent(handler)
            elif isinstance(response, Reset):
                self._reset(handler)
        except OSError:
            logger.debug("client went away", exc_info=True)

    @staticmethod
    def _headers(handler: _Handler, status: int, length: int | None) -> None:
        handler.send_response(status)
        ctype = "application/json" if "/metadata/" in handler.path else "application/octet-stream"
        handler.send_header("Content-Type", ctype)
        if length is not None:
            handler.send_header("Content-Length", str(length))
        handler.end_headers()
        handler.wfile.flush()

    def _trickle(self, handler: _Handler, response: Trickle) -> None:
        self._headers(handler, 200, len(response.body))
        for i in range(len(response.body)):
            if self._stopping.wait(response.delay):
                return
            handler.wfile.write(response.body[i : i + 1])

    def _endless(self, handler: _Handler, response: Endless) -> None:
        self._headers(handler, 200, None)
        handler.connection.settimeout(0.2)
        while not self._stopping.is_set():
            try:
                handler.connection.sendall(response.chunk)
            except TimeoutError:
                continue

    def _silent(self, handler: _Handler) -> None:
        sock = handler.connection
        while not self._stopping.is_set():
            readable, _, _ = select.select([sock], [], [], _POLL)
            if readable and not sock.recv(1, socket.MSG_PEEK):
                return  # client closed the connection

    @staticmethod
    def _reset(handler: _Handler) -> None:
        sock = handler.connection
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        handler.close_connection = True
        handler.rfile.close()
        handler.wfile.close()
        handler.wfile = io.BytesIO()  # later flush()/close() calls go nowhere
        sock.close()


__all__ = ["PRIMARY", "SimulatorServer", "closed_port"]
