"""External TUF clients (issue 17): run a program speaking tuf-conformance's client CLI
(``CLIENT-CLI.md``: ``init``, ``refresh``, ``download``; exit 0 or 1) as one client view of an
endpoint, contained.

:func:`run_client` is the one entry point: (client, repository, endpoint, trusted root,
``state_dir``) -> a :class:`~exporter.probe.results.ProbeResult` whose ``client`` is the
client's name. A run:

* takes one of the ``slots`` (a semaphore sized by ``client_concurrency``) for its whole length,
  so at most that many client processes exist at once;
* runs ``init`` (``returning`` mode: only while the endpoint's metadata directory below
  ``state_dir/clients`` is new or empty, and it is emptied again when ``init`` fails; ``new``
  mode: into a fresh directory every run), ``refresh``, then one ``download`` per canary target,
  each as a child process in its own session and process group, with ``stdin`` closed;
* gives the client its own directories below ``state_dir`` (``HOME``, ``TMPDIR``, the target
  directory, and in ``new`` mode the metadata directory), removed after the run;
* passes an explicit environment: ``PATH`` and ``LANG`` of the exporter, ``HOME`` and ``TMPDIR``
  of the run, then the client's configured ``env``; nothing else of the exporter's environment
  (credentials such as ``OPENSEARCH_PASSWORD`` never reach a client);
* ends at the client's ``timeout`` (one deadline for all its commands): the whole process group
  gets SIGTERM, then SIGKILL after :data:`KILL_GRACE` seconds; the group is killed too when its
  leader exits, so nothing a client started outlives its command;
* ends at once, the same way, when its ``cancel`` event is set (the service's stop, or a reload
  that removes the client view): no verdict, see :func:`run_client`;
* keeps at most :data:`OUTPUT_BOUND` bytes of each of stdout and stderr, the tail, and counts
  the bytes before it (a client printing 100 MB costs a pipe's worth of memory);
* points the client at a loopback forwarder (:class:`Forwarder`, one for every run of the
  service, kept alive between runs) below a path prefix of the run's own (a :class:`Route`),
  which fetches every request from the endpoint with the exporter's own
  :class:`~exporter.probe.fetcher.Fetcher` (the repository's timeouts, retries, length limits
  and redirect policy, the run's deadline) and records it: the run's request log, and the role
  a failure is attributed to, come from the exporter's side, never from the client's output.

Verdicts (``reason``): ``client_rejected`` (a command exited 1: the client refused the
repository), ``client_timeout``, ``client_error`` (the program could not be started, exited with
another status, or died by a signal). ``role`` is what the last request of the failing command
fetched (:func:`exporter.probe.classify.role_of`); when that command made no request:
``root`` for ``init`` and ``refresh``, ``target`` for ``download``. A fault of this host (no disk
for the run's directories, no descriptor for a pipe) or a bug of ours is ``exporter_error``
with its cause, as for python-tuf probes.

The child processes of a run (:func:`run_process`: session, process group, bounded output, kill
at the deadline, a wait that ends when the leader exits) are in ``exporter.probe._process``.
"""

from __future__ import annotations

import contextlib
import logging
import os
import secrets
import selectors
import shutil
import socket
import sys
import tempfile
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import unquote

from tuf.api import exceptions

from exporter.config.model import Client, ClientMode, Endpoint, Limits, Repository, safe_name
from exporter.probe._process import KILL_GRACE as KILL_GRACE
from exporter.probe._process import OUTPUT_BOUND as OUTPUT_BOUND
from exporter.probe._process import POLL, Step
from exporter.probe._process import run_process as run_process
from exporter.probe.classify import describe, exporter_error_result, role_of
from exporter.probe.fetcher import EndpointSession, Fetcher, new_session, url_role
from exporter.probe.results import (
    ErrorCause,
    FailedRole,
    ProbeResult,
    Reason,
    RequestRecord,
    TargetResult,
)

log = logging.getLogger(__name__)

#: Bytes of the failing command's output tail put in the result's message (and so the event).
MESSAGE_TAIL = 4096
#: Age in seconds past which a run directory is taken as left behind by a stopped exporter.
STALE_RUN = 86400.0
#: Seconds the forwarder keeps an idle client connection open.
_IDLE = 30.0


def clients_dir(state_dir: Path) -> Path:
    """Where external clients keep their directories: ``<state_dir>/clients``."""
    return state_dir / "clients"


def client_dir(state_dir: Path, client: str, repository: str, endpoint: str) -> Path:
    """The directory of one client view of one endpoint (names sanitized): ``metadata/`` (the
    ``returning`` mode's trusted metadata) and the ``run-*`` directories of running runs."""
    return clients_dir(state_dir) / client / safe_name(repository) / safe_name(endpoint)


# ---------------------------------------------------------------------------------------------
# The forwarder: the client's only way to the endpoint, and the run's request log


def max_length(role: str, limits: Limits) -> int:
    """The length cap of a file fetched as ``role`` (a role name or ``"target"``): the
    repository's ``limits``, as the python-tuf probe applies them."""
    caps = {
        "root": limits.root_max_length,
        "timestamp": limits.timestamp_max_length,
        "snapshot": limits.snapshot_max_length,
        "target": limits.target_max_length,
    }
    return caps.get(role, limits.targets_max_length)  # targets and delegated roles


class _ChunkedWriter:
    """Writes a response body with chunked transfer encoding; the status line and headers go
    out with the first chunk, in one write (or at :meth:`finish` for an empty body), and each
    chunk is sent as it comes. A body cut short is never terminated, so the client sees an
    incomplete response, not a short file."""

    def __init__(self, handler: _Handler) -> None:
        self._handler = handler
        self.started = False

    def _start(self) -> None:
        if not self.started:
            self.started = True
            self._handler.send_response(200)
            self._handler.send_header("Content-Type", "application/octet-stream")
            self._handler.send_header("Transfer-Encoding", "chunked")
            self._handler.end_headers()

    def write(self, data: bytes) -> int:
        self._start()
        if data:
            self._handler.wfile.write(b"%x\r\n%b\r\n" % (len(data), data))
            self._handler.wfile.flush()  # a slow body reaches the client as it arrives
        return len(data)

    def finish(self) -> None:
        self._start()
        self._handler.wfile.write(b"0\r\n\r\n")


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    forwarder: Forwarder
    #: :meth:`handle_request` is only called once the listening socket is readable: never wait.
    timeout = 0.0

    def handle_error(self, request: object, client_address: object) -> None:
        """Log an exception of a request's thread instead of printing it on stderr (which
        ``socketserver`` does): a client that drops its connection (reset, broken pipe) is
        routine and logged at DEBUG; anything else is a bug of ours, logged at WARNING."""
        error = sys.exc_info()[1]
        if isinstance(error, ConnectionError):
            log.debug("client of the forwarder went away: %s", describe(error))
            return
        log.warning("forwarder request from %s failed", client_address, exc_info=True)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    timeout = _IDLE
    #: TCP_NODELAY: a response is two writes (headers with the first chunk, then the last
    #: chunk), and Nagle's algorithm held the second back until the client's delayed ACK:
    #: 40 ms on every request but the first of a kept-alive connection.
    disable_nagle_algorithm = True
    #: Buffered writes, flushed after each chunk and after each response (by
    #: ``handle_one_request``): the status line and headers go out with the first chunk, and a
    #: short response in one write.
    wbufsize = 64 * 1024
    server: _Server

    def log_message(self, format: str, *args: object) -> None:
        """Requests are recorded by the fetcher, not logged one by one."""

    def _plain(self, status: int, text: str) -> None:
        body = text.encode("utf-8", errors="replace")
        self.send_response(status)
        self.send_header("Content-Type", "text/plain; charset=utf-8")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self) -> None:
        found = self.server.forwarder.resolve(self.path)
        if found is None:
            self._plain(404, "not a path this forwarder serves")
            return
        route, url = found
        writer = _ChunkedWriter(self)
        try:
            route.fetch(url, writer)
        except exceptions.DownloadHTTPError as exc:
            status = exc.status_code if 400 <= exc.status_code < 600 else 502
            self._fail(writer, status, str(exc))
            return
        except exceptions.SlowRetrievalError as exc:
            self._fail(writer, 504, str(exc))
            return
        except exceptions.DownloadError as exc:  # length cap, refused connection, ...
            self._fail(writer, 502, str(exc))
            return
        except OSError:  # the client went away (or this host has a fault): drop the connection
            self.close_connection = True
            return
        writer.finish()

    def _fail(self, writer: _ChunkedWriter, status: int, text: str) -> None:
        if writer.started:  # cut short: leave the chunked body unterminated
            self.close_connection = True
            return
        self._plain(status, text)


class Route:
    """One run's way through the :class:`Forwarder` to one endpoint: the URLs to give the
    client (below a path prefix of its own, a random token) and the run's request log.

    ``GET <prefix>/metadata/<path>`` and ``GET <prefix>/targets/<path>`` are fetched from the
    endpoint's metadata and targets URLs with a :class:`~exporter.probe.fetcher.Fetcher` of
    this run alone (the repository's connect and read timeouts, retries,
    ``allowed_redirect_hosts``, the length caps of ``limits`` by what the URL fetches, and the
    run's ``deadline``), on the endpoint's session (kept alive across runs). Every fetch is a
    :class:`~exporter.probe.results.RequestRecord` in :attr:`records`; requests of other runs,
    and requests after :meth:`close`, never are.
    """

    METADATA = "/metadata/"
    TARGETS = "/targets/"

    def __init__(self, forwarder: Forwarder, token: str, repository: Repository,
                 endpoint: Endpoint, fetcher: Fetcher) -> None:
        self._forwarder = forwarder
        self.token = token
        #: (repository, endpoint) names: whose session the route uses.
        self.key = (repository.name, endpoint.name)
        self._endpoint = endpoint
        self._limits = repository.limits
        self._fetcher = fetcher

    @property
    def base_url(self) -> str:
        """``http://127.0.0.1:<port>/<token>``."""
        return f"{self._forwarder.base_url}/{self.token}"

    @property
    def metadata_url(self) -> str:
        """The ``--metadata-url`` to give the client."""
        return self.base_url + self.METADATA

    @property
    def targets_url(self) -> str:
        """The ``--target-base-url`` to give the client."""
        return self.base_url + self.TARGETS

    @property
    def records(self) -> list[RequestRecord]:
        """The requests forwarded for this run so far, in the order they started."""
        return sorted(self._fetcher.records, key=lambda r: r.started)

    def upstream(self, path: str) -> str | None:
        """The endpoint URL a request path (below the route's prefix) forwards to; None for a
        path not served: another prefix, a ``..``, ``.`` or empty segment, a query, a
        fragment."""
        if "?" in path or "#" in path:
            return None
        for prefix, base in ((self.METADATA, self._endpoint.metadata_url),
                             (self.TARGETS, self._endpoint.targets_url)):
            if path.startswith(prefix):
                rest = path[len(prefix):]
                segments = rest.split("/")
                if not rest or any(unquote(s) in ("", ".", "..") for s in segments):
                    return None
                return base + rest
        return None

    def fetch(self, url: str, out: _ChunkedWriter) -> int:
        """Stream ``url`` into ``out`` (within the cap of what it fetches); its length."""
        role = url_role(url, self._endpoint.targets_url)
        return self._fetcher.download_into(url, max_length(role, self._limits), out)

    def close(self) -> None:
        """Stop serving this route (its prefix is 404 from now on)."""
        self._forwarder.release(self)

    def __enter__(self) -> Route:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class Forwarder:
    """The external clients' only way to the endpoints: a loopback HTTP server (127.0.0.1, an
    ephemeral port) shared by every run, started at the first :meth:`route` and stopped by
    :meth:`close` (the service's stop), and one HTTP session per endpoint, kept alive across
    runs.

    Each run gets a :class:`Route` below a path prefix of its own (``/<token>``, 128 random
    bits), so its request log is exactly its own requests while the server, its thread and
    the connections to the endpoint outlive the run. A response streams the endpoint's body
    back with chunked encoding as it arrives; the status of a failed fetch is passed on (404
    stays 404; a refused connection is 502, a timeout 504). A path of no open route, or with a
    ``..`` segment, a query or a fragment, is 404 before any request. Use as a context manager
    or call :meth:`close`; thread-safe.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._routes: dict[str, Route] = {}
        self._sessions: dict[tuple[str, str], EndpointSession] = {}
        self._users: dict[tuple[str, str], int] = {}
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None
        self._wake: tuple[socket.socket, socket.socket] | None = None
        self._closed = False

    @property
    def running(self) -> bool:
        """Whether the server is started (and not closed)."""
        with self._lock:
            return self._server is not None

    @property
    def base_url(self) -> str:
        """``http://127.0.0.1:<port>``; ValueError before the first :meth:`route`."""
        server = self._server
        if server is None:
            raise ValueError("the forwarder is not started")
        host, port = server.server_address[:2]
        return f"http://{host!s}:{port}"

    def route(self, repository: Repository, endpoint: Endpoint, deadline: float,
              tmp_dir: Path | None = None) -> Route:
        """A new :class:`Route` to ``endpoint`` whose fetches end by ``deadline`` (monotonic
        seconds); close it when the run ends. Starts the server on first use; raises
        ``OSError`` when it cannot (no descriptor or port: a fault of this host) and
        ``ValueError`` once the forwarder is closed."""
        key = (repository.name, endpoint.name)
        with self._lock:
            if self._closed:
                raise ValueError("the forwarder is closed")
            if self._server is None:
                self._start()
            session = self._sessions.get(key)
            if session is None:
                session = self._sessions[key] = new_session(4)
            fetcher = Fetcher(
                session,
                lambda url: url_role(url, endpoint.targets_url),
                connect_timeout=repository.connect_timeout,
                read_timeout=repository.read_timeout,
                deadline=deadline,
                retries=repository.retries,
                allowed_redirect_hosts=repository.allowed_redirect_hosts,
                tmp_dir=tmp_dir,
            )
            token = secrets.token_urlsafe(16)
            route = Route(self, token, repository, endpoint, fetcher)
            self._routes[token] = route
            self._users[key] = self._users.get(key, 0) + 1
            return route

    def resolve(self, path: str) -> tuple[Route, str] | None:
        """The open route a request path (``/<token>/...``) belongs to and the endpoint URL it
        forwards to; None for a path not served."""
        if not path.startswith("/"):
            return None
        token, slash, rest = path[1:].partition("/")
        with self._lock:
            route = self._routes.get(token)
        if route is None or not slash:
            return None
        url = route.upstream("/" + rest)
        return None if url is None else (route, url)

    def release(self, route: Route) -> None:
        """Stop serving ``route`` (what :meth:`Route.close` does)."""
        with self._lock:
            if self._routes.pop(route.token, None) is not None:
                self._users[route.key] -= 1

    def forget(self, keep: set[tuple[str, str]]) -> None:
        """Close the sessions of endpoints (repository, endpoint names) not in ``keep`` and
        without an open route (after a reload removed them)."""
        with self._lock:
            for key in [k for k in self._sessions if k not in keep and not self._users.get(k)]:
                self._sessions.pop(key).close()
                self._users.pop(key, None)

    def close(self) -> None:
        """Stop the server (at once: its loop waits on a wake-up socket, not a poll interval)
        and close every session; open routes are 404 from then on. Idempotent."""
        with self._lock:
            self._closed = True
            server, thread, wake = self._server, self._thread, self._wake
            self._server = self._thread = self._wake = None
            self._routes.clear()
            sessions = list(self._sessions.values())
            self._sessions.clear()
            self._users.clear()
        if wake is not None and thread is not None:
            wake[1].send(b"x")
            thread.join()
            for sock in wake:
                sock.close()
        if server is not None:
            server.server_close()
        for session in sessions:
            session.close()

    def _start(self) -> None:
        """Bind the server and start its thread (under the lock)."""
        server = _Server(("127.0.0.1", 0), _Handler)
        try:
            server.forwarder = self
            wake = socket.socketpair()
            try:
                thread = threading.Thread(target=self._serve, args=(server, wake[0]),
                                          name="client-forwarder", daemon=True)
                thread.start()
            except BaseException:
                for sock in wake:
                    sock.close()
                raise
        except BaseException:
            server.server_close()
            raise
        self._server, self._thread, self._wake = server, thread, wake

    @staticmethod
    def _serve(server: _Server, wake: socket.socket) -> None:
        """Accept connections (one thread each) until ``wake`` is readable."""
        with selectors.DefaultSelector() as selector:
            selector.register(server, selectors.EVENT_READ, server)
            selector.register(wake, selectors.EVENT_READ, None)
            while True:
                for key, _ in selector.select():
                    if key.data is None:
                        return
                    server.handle_request()  # ready: accepts without waiting (timeout 0)

    def __enter__(self) -> Forwarder:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# ---------------------------------------------------------------------------------------------
# A run


def client_environment(client: Client, home: Path, tmp: Path) -> dict[str, str]:
    """The whole environment of a client's processes: ``PATH`` and ``LANG`` of the exporter
    (``os.defpath`` and ``C.UTF-8`` when unset), ``HOME`` and ``TMPDIR`` of the run, then the
    client's ``env`` (which may override any of them)."""
    env = {
        "PATH": os.environ.get("PATH") or os.defpath,
        "LANG": os.environ.get("LANG") or "C.UTF-8",
        "HOME": str(home),
        "TMPDIR": str(tmp),
    }
    env.update(client.env)
    return env


@dataclass
class _Dirs:
    run: Path
    home: Path
    tmp: Path
    targets: Path
    metadata: Path
    root: Path


@contextlib.contextmanager
def _run_dirs(base: Path, client: Client, trusted_root: bytes) -> Iterator[_Dirs]:
    """The run's directories below ``base``, removed afterwards. Run directories a stopped
    exporter left behind (older than :data:`STALE_RUN`) are removed first."""
    base.mkdir(parents=True, exist_ok=True, mode=0o700)
    for stale in base.glob("run-*"):
        with contextlib.suppress(OSError):  # gone already, or not ours to judge: leave it
            if time.time() - stale.stat().st_mtime > STALE_RUN:
                shutil.rmtree(stale, ignore_errors=True)
    run = Path(tempfile.mkdtemp(prefix="run-", dir=base))
    try:
        dirs = _Dirs(run, run / "home", run / "tmp", run / "targets",
                     run / "metadata" if client.mode is ClientMode.NEW else base / "metadata",
                     run / "trusted-root.json")
        for path in (dirs.home, dirs.tmp, dirs.targets):
            path.mkdir(mode=0o700)
        dirs.root.write_bytes(trusted_root)
        yield dirs
    finally:
        shutil.rmtree(run, ignore_errors=True)


def _failed_role(step: Step, records: Sequence[RequestRecord]) -> FailedRole | None:
    """The role a failed command is attributed to: what its last request fetched."""
    if records:
        return role_of(records[-1].role)
    return FailedRole.TARGET if step.command == "download" else FailedRole.ROOT


def _verdict(step: Step) -> tuple[Reason, str]:
    """The reason of a failed command and the first words of its message."""
    if step.start_error is not None:
        return Reason.CLIENT_ERROR, f"{step.command} could not be started: {step.start_error}"
    if step.timed_out:
        return Reason.CLIENT_TIMEOUT, f"{step.command} did not finish in time; its process " \
            "group was killed"
    if step.status == 1:
        return Reason.CLIENT_REJECTED, f"{step.command} exited with status 1"
    if step.status is not None and step.status < 0:
        return Reason.CLIENT_ERROR, f"{step.command} was killed by signal {-step.status}"
    return Reason.CLIENT_ERROR, f"{step.command} exited with status {step.status}"


def _message(step: Step, head: str) -> str:
    """``head`` and the output tail most likely to say why (stderr, else stdout)."""
    stream = step.stderr if step.stderr.tail.strip() or step.stderr.dropped else step.stdout
    name = "stderr" if stream is step.stderr else "stdout"
    tail = stream.text(MESSAGE_TAIL).strip()
    return f"{head} after {step.seconds:.1f} s; {name}: {tail}" if tail else \
        f"{head} after {step.seconds:.1f} s; no output"


def run_client(
    client: Client,
    repository: Repository,
    endpoint: Endpoint,
    trusted_root: bytes,
    state_dir: Path,
    slots: threading.Semaphore | None = None,
    cancel: threading.Event | None = None,
    forwarder: Forwarder | None = None,
) -> ProbeResult:
    """Run ``client`` against ``endpoint`` once (see the module's docstring); never raises.

    ``slots`` bounds the client processes of every run that shares it; the run's ``timeout``
    starts once a slot is taken. ``forwarder`` is the :class:`Forwarder` the run gets its
    :class:`Route` from (the service keeps one for all runs; None: one of the run's own,
    closed after it). The result's ``requests`` are the route's records, ``targets`` one
    :class:`~exporter.probe.results.TargetResult` per canary downloaded.

    Once ``cancel`` is set, the run ends within :data:`KILL_GRACE` seconds and a fraction: the
    running command's process group is killed (SIGTERM, then SIGKILL), no further command nor a
    wait for a slot starts, and the result is ``exporter_error`` with the message
    :data:`CANCELLED` (a verdict of neither the repository nor the client; the service records
    nothing of it, as of a probe that finished after its endpoint's removal).
    """
    started_at = datetime.now(UTC)
    t0 = time.monotonic()
    with _slot(slots, cancel) as taken:
        try:
            if not taken:
                raise _CancelledError
            return _Run(client, repository, endpoint, trusted_root, state_dir,
                        cancel).run(forwarder)
        except _CancelledError:
            return _cancelled_result(client, repository, endpoint, started_at,
                                     time.monotonic() - t0)
        except Exception as exc:
            log.warning("client %s on %s/%s stopped by a fault of the exporter: %s",
                        client.name, repository.name, endpoint.name, describe(exc),
                        exc_info=True)
            result = exporter_error_result(repository.name, endpoint.name, started_at,
                                           time.monotonic() - t0, exc)
            return replace(result, client=client.name)


#: The message of a run its ``cancel`` event ended.
CANCELLED = "ended by the exporter before a verdict (stop, or a reload removed the view)"


class _CancelledError(Exception):
    """The run's ``cancel`` event was set: it ends without a verdict."""


def _cancelled_result(client: Client, repository: Repository, endpoint: Endpoint,
                      started_at: datetime, seconds: float) -> ProbeResult:
    log.info("client %s on %s/%s ended by the exporter (stop or reload) after %.1f s",
             client.name, repository.name, endpoint.name, seconds)
    return ProbeResult(repository.name, endpoint.name, False, started_at, seconds,
                       reason=Reason.EXPORTER_ERROR, message=CANCELLED, client=client.name)


@contextlib.contextmanager
def _slot(slots: threading.Semaphore | None, cancel: threading.Event | None) -> Iterator[bool]:
    """Hold one of ``slots`` (none: no bound) while the block runs; yields False, holding
    nothing, when ``cancel`` was set before a slot was free."""
    if slots is None:
        yield cancel is None or not cancel.is_set()
        return
    while not slots.acquire(timeout=POLL):
        if cancel is not None and cancel.is_set():
            yield False
            return
    try:
        yield cancel is None or not cancel.is_set()
    finally:
        slots.release()


class _Run:
    """One run of one client against one endpoint."""

    def __init__(self, client: Client, repository: Repository, endpoint: Endpoint,
                 trusted_root: bytes, state_dir: Path,
                 cancel: threading.Event | None = None) -> None:
        self.cancel = cancel
        self.client = client
        self.repo = repository
        self.endpoint = endpoint
        self.trusted_root = trusted_root
        self.base = client_dir(state_dir, client.name, repository.name, endpoint.name)
        self.started_at = datetime.now(UTC)
        self.t0 = time.monotonic()
        self.deadline = self.t0 + client.timeout
        self.tmp = state_dir / "tmp"

    def run(self, shared: Forwarder | None) -> ProbeResult:
        self.tmp.mkdir(parents=True, exist_ok=True, mode=0o700)
        with contextlib.ExitStack() as stack:
            dirs = stack.enter_context(_run_dirs(self.base, self.client, self.trusted_root))
            forwarder = shared if shared is not None else stack.enter_context(Forwarder())
            route = stack.enter_context(
                forwarder.route(self.repo, self.endpoint, self.deadline, self.tmp))
            return self._steps(dirs, route)

    def _steps(self, dirs: _Dirs, route: Route) -> ProbeResult:
        """The run's commands, one after the other, until one fails."""
        env = client_environment(self.client, dirs.home, dirs.tmp)
        argv = list(self.client.command)
        meta = ["--metadata-dir", str(dirs.metadata)]
        steps: list[tuple[list[str], str, str | None]] = []
        fresh = not dirs.metadata.is_dir() or not any(dirs.metadata.iterdir())
        if fresh:
            dirs.metadata.mkdir(parents=True, exist_ok=True, mode=0o700)
            steps.append(([*argv, *meta, "init", str(dirs.root)], "init", None))
        remote = ["--metadata-url", route.metadata_url]
        steps.append(([*argv, *meta, *remote, "refresh"], "refresh", None))
        for canary in self.client.targets_for(self.repo):
            steps.append(([*argv, *meta, *remote, "--target-name", canary,
                           "--target-base-url", route.targets_url,
                           "--target-dir", str(dirs.targets), "download"],
                          "download", canary))
        targets: list[TargetResult] = []
        for command_argv, command, target in steps:
            before = len(route.records)
            step = run_process(command_argv, command=command, cwd=dirs.run, env=env,
                               deadline=self.deadline, cancel=self.cancel)
            if step.cancelled:
                if command == "init" and self.client.mode is ClientMode.RETURNING:
                    shutil.rmtree(dirs.metadata, ignore_errors=True)  # init again next run
                raise _CancelledError
            records = route.records[before:]
            if target is not None:
                length = sum(r.bytes for r in records if r.role == "target")
                targets.append(TargetResult(target, step.ok, None if step.ok else
                                            _verdict(step)[0], None, length or None,
                                            step.seconds))
            if not step.ok:
                if command == "init" and self.client.mode is ClientMode.RETURNING:
                    shutil.rmtree(dirs.metadata, ignore_errors=True)  # init again next run
                return self._failure(step, records, route.records, tuple(targets))
        return self._result(True, route.records, tuple(targets))

    def _failure(self, step: Step, step_records: Sequence[RequestRecord],
                 records: Sequence[RequestRecord], targets: tuple[TargetResult, ...]
                 ) -> ProbeResult:
        reason, head = _verdict(step)
        if step.start_error is not None:
            # the configured program is missing or not executable: a fault of this host's
            # setup, never the repository's; the view keeps its last verdict (exporter_error)
            log.warning("client %s on %s/%s: %s", self.client.name, self.repo.name,
                        self.endpoint.name, head)
            return replace(self._result(False, records, targets, Reason.EXPORTER_ERROR, None,
                                        head), cause=ErrorCause.CLIENT)
        role = _failed_role(step, step_records)
        log.warning("client %s on %s/%s: %s", self.client.name, self.repo.name,
                    self.endpoint.name, head, extra={
                        "client": self.client.name, "repository": self.repo.name,
                        "endpoint": self.endpoint.name, "command": step.command,
                        "reason": str(reason), "role": None if role is None else str(role),
                        "status": step.status, "stdout": step.stdout.text(),
                        "stderr": step.stderr.text(),
                    })
        return self._result(False, records, targets, reason, role, _message(step, head))

    def _result(self, success: bool, records: Sequence[RequestRecord],
                targets: tuple[TargetResult, ...], reason: Reason | None = None,
                role: FailedRole | None = None, message: str | None = None) -> ProbeResult:
        dates = [r.server_date for r in records if r.server_date is not None]
        return ProbeResult(
            self.repo.name, self.endpoint.name, success, self.started_at,
            time.monotonic() - self.t0, reason=reason, role=role, message=message,
            targets=targets, requests=tuple(records),
            server_date=max(dates) if dates else None, client=self.client.name,
        )
