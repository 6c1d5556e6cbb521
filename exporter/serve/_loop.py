"""The event loop behind :class:`exporter.serve.web.ExporterServer`: accept, read, answer, close."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import socket
import ssl
import threading
import time
from collections.abc import Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from email.utils import formatdate
from http import HTTPStatus
from typing import TYPE_CHECKING, Any, Final
from urllib.parse import urlsplit

import h11

from exporter import __version__
from exporter.serve._auth import _san_allowed
from exporter.serve._responses import _TOO_LARGE, _TOO_MANY, _UNAUTHORIZED, _Response, _Route, _text

if TYPE_CHECKING:
    from exporter.serve.web import ExporterServer


logger = logging.getLogger("exporter.serve.web")  # one logger for the whole web server

_SERVER: Final = f"tuf-exporter/{__version__}"  # the Server header
_MAX_HEAD: Final = 16 * 1024  # bytes of an incomplete request head (431 beyond; h11 checks it
# after each read, so a complete head can be up to one read longer)
_MAX_BODY: Final = 64 * 1024  # bytes of request body we are willing to read and discard
_READ_SIZE: Final = 8 * 1024  # bytes asked of a socket at a time
_LISTEN_BACKLOG: Final = 128
_ACCEPT_RETRY: Final = 0.1  # seconds to wait after accept() failed (e.g. out of descriptors)
_TLS_SHUTDOWN_TIMEOUT: Final = 2.0  # seconds to wait for the client's TLS close_notify
_WARN_INTERVAL: Final = 60.0  # seconds between warnings of one kind (cap reached, accept failed)


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

