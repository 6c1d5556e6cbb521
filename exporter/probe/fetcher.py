"""An instrumented, bounded ngclient fetcher on a ``requests.Session``.

python-tuf's ``RequestsFetcher`` is deprecated and its default ``Urllib3Fetcher`` retries
behind the caller's back (urllib3's default of three retries turns a 1 s timeout into 4 s).
This fetcher:

* times every request and records URL, role, HTTP status, bytes, duration and the server's
  ``Date`` header (:class:`~exporter.probe.results.RequestRecord`);
* applies a connect and a read timeout per request and a deadline for the whole probe, checked
  after every chunk (a server that trickles bytes cannot hold a probe past its deadline);
* streams with ``read1`` so the length cap that ngclient enforces is checked chunk by chunk and
  nothing is buffered far past it;
* writes its temporary files (ngclient's download buffer, see :meth:`Fetcher.download_file`) to
  the directory it is given, below ``state_dir``, never to ``$TMPDIR``;
* streams a delegated role straight to a file (:meth:`Fetcher.download_into`) without keeping
  its body, so the delegation sweep holds on disk, not in memory, what it has downloaded;
* follows a redirect only to the same scheme, host and port, or to a host (and port) listed in
  ``allowed_redirect_hosts``, and never from https down to http (see :func:`redirect_allowed`);
* retries only where configured (connection errors and 5xx before any body byte), and counts
  every retry;
* given a :class:`FetchMemo` (the client views of one pass, issue 16), serves a URL another
  view of the pass downloaded completely from the memo instead of the network, and records
  what it downloads there.

Timeouts raise ``SlowRetrievalError`` whose cause says whether the connect or the read timed out,
or the deadline passed; a refused connection raises a plain ``DownloadError`` caused by the
``requests`` connection error, so the two are told apart.

The environment is read once, not on every request. A plain ``requests.Session`` consults it for
each request (``HTTP(S)_PROXY``/``ALL_PROXY``/``NO_PROXY``, ``.netrc``, ``REQUESTS_CA_BUNDLE``/
``CURL_CA_BUNDLE``), about a third of the cost of a small download on a fast network. The
sessions of :func:`new_session` (:class:`EndpointSession`, one per endpoint in the prober) have
``trust_env`` off and instead take the same settings from the environment themselves, with
requests' own functions: the CA bundle when the session is created, the proxy (or none, per
``NO_PROXY``) and the ``.netrc`` credentials for a scheme, host and port when the session first
requests a URL there (the endpoint's metadata and targets hosts, and any host a redirect is
allowed to). They then hold for the life of the session, that is as long as the endpoint stays
configured: a configuration reload keeps the sessions of unchanged endpoints, so a changed
``.netrc`` takes effect for a new endpoint or after a restart.
"""

from __future__ import annotations

import contextlib
import functools
import os
import tempfile
import threading
import time
from collections.abc import Callable, Generator, Iterable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from pathlib import Path
from typing import IO, Any, Protocol
from urllib.parse import unquote, urljoin, urlsplit

import requests
import urllib3
from tuf.api import exceptions
from tuf.ngclient import FetcherInterface

from exporter import __version__
from exporter.config import redirect_origin
from exporter.probe.results import RequestRecord

_CHUNK = 64 * 1024
_MAX_REDIRECTS = 5
_RETRY_STATUSES = frozenset({500, 502, 503, 504})
_DEFAULT_PORTS = {"http": 80, "https": 443}


def redirect_allowed(
    original: str, target: str, allowed: frozenset[tuple[str, int | None]] = frozenset()
) -> bool:
    """Whether a redirect from ``original`` to ``target`` may be followed.

    Allowed: the same scheme, host and port (the origin, RFC 6454); or a host listed in
    ``allowed`` (entries as :func:`redirect_origin` returns them: a host alone stands for the
    default port of ``target``'s scheme). Never from https down to http, whatever the list
    says, and never to a scheme other than http or https.
    """
    old, new = urlsplit(original), urlsplit(target)
    if new.scheme not in _DEFAULT_PORTS or old.scheme not in _DEFAULT_PORTS:
        return False
    if old.scheme == "https" and new.scheme != "https":
        return False
    try:
        old_port = old.port or _DEFAULT_PORTS[old.scheme]
        new_port = new.port or _DEFAULT_PORTS[new.scheme]
    except ValueError:  # a port that is not a number
        return False
    host = (new.hostname or "").lower()
    if (old.scheme, (old.hostname or "").lower(), old_port) == (new.scheme, host, new_port):
        return True
    default = new_port == _DEFAULT_PORTS[new.scheme]
    return (host, new_port) in allowed or (default and (host, None) in allowed)


def url_role(url: str, targets_url: str) -> str:
    """What a request of an endpoint fetches: ``"target"`` for a URL below ``targets_url``,
    else the metadata role its file name names (``2.root.json`` -> ``root``, ``timestamp.json``
    -> ``timestamp``, ``3.django.json`` -> ``django``; percent-escapes decoded)."""
    if url.startswith(targets_url):
        return "target"
    name = unquote(urlsplit(url).path.rsplit("/", 1)[-1]).removesuffix(".json")
    head, _, rest = name.partition(".")
    return rest if head.isdigit() and rest else name


class Sink(Protocol):
    """Where :meth:`Fetcher.download_into` streams a body: a binary file, or anything with
    its ``write``."""

    def write(self, data: bytes, /) -> int:
        """Write ``data``; the number of bytes written."""
        ...


class DeadlineExceeded(Exception):  # noqa: N818 - it is the cause of a SlowRetrievalError
    """The probe's deadline passed while a request was running."""


@dataclass(frozen=True, slots=True)
class _Origin:
    """What the environment says about one scheme, host and port."""

    proxies: dict[str, str]
    auth: tuple[str, str] | None


class EndpointSession(requests.Session):
    """A ``requests.Session`` that reads the environment once per origin, not per request.

    ``trust_env`` is off, so requests itself never looks at the environment; the session applies
    what requests would have taken from it: ``REQUESTS_CA_BUNDLE``/``CURL_CA_BUNDLE`` as
    ``verify`` (read here, at creation), and per scheme, host and port the environment's proxy
    (honouring ``NO_PROXY``) and ``.netrc`` credentials, read on the first request there and
    remembered. Proxies or auth passed to a request, or a session-wide ``auth``, still win.
    This covers every call of :meth:`request` (so :meth:`get`), hence every hop the
    :class:`Fetcher` makes, as it follows redirects itself; a redirect followed by requests
    (``allow_redirects=True``) would go through ``send`` without it.
    """

    def __init__(self) -> None:
        super().__init__()
        self.trust_env = False
        self.verify = (
            os.environ.get("REQUESTS_CA_BUNDLE") or os.environ.get("CURL_CA_BUNDLE") or True
        )
        self._origins: dict[str, _Origin] = {}

    def _origin(self, url: str) -> _Origin:
        parts = urlsplit(url)
        key = f"{parts.scheme}://{parts.netloc}".lower()
        origin = self._origins.get(key)
        if origin is None:  # two threads may both resolve it: same answer, no harm
            proxy = requests.utils.select_proxy(url, requests.utils.get_environ_proxies(url))
            auth = requests.utils.get_netrc_auth(url)
            origin = _Origin({parts.scheme: proxy} if proxy else {}, auth)
            self._origins[key] = origin
        return origin

    def request(
        self, method: str | bytes, url: str | bytes, *args: Any, **kwargs: Any
    ) -> requests.Response:
        origin = self._origin(url.decode() if isinstance(url, bytes) else url)
        if origin.proxies and not kwargs.get("proxies"):
            kwargs["proxies"] = origin.proxies
        if origin.auth is not None and not kwargs.get("auth") and not self.auth:
            kwargs["auth"] = origin.auth
        return super().request(method, url, *args, **kwargs)


def new_session(pool_size: int = 10) -> EndpointSession:
    """A session with no hidden retries and a pool sized for parallel delegation fetches.

    It reads the environment once per origin (see :class:`EndpointSession`).
    """
    session = EndpointSession()
    adapter = requests.adapters.HTTPAdapter(
        pool_connections=2, pool_maxsize=pool_size, max_retries=urllib3.Retry(0, redirect=False)
    )
    session.mount("http://", adapter)
    session.mount("https://", adapter)
    session.headers["User-Agent"] = f"tuf-exporter/{__version__}"
    return session


class FetchMemo:
    """URL -> body of every download completed in one view pass, for the other views of it.

    The client views of one pass (``new``, ``bootstrap-root-v<N>``) fetch the same timestamp,
    snapshot, targets, delegated roles and canaries; each view still verifies them with its own
    ngclient ``Updater``, but the bytes are downloaded once. Only complete bodies are kept: a
    download cut short (ngclient's length cap, a timeout, an error) leaves nothing, so what is
    kept is bounded by the lengths the configuration allows, and a failed fetch is tried again
    by the next view. Bodies up to ``memory_limit`` bytes are held in memory, larger ones in a
    file below ``tmp_dir`` (the exporter's ``<state_dir>/tmp``), removed by :meth:`close`.
    Thread safe (the delegation sweep fetches in parallel).
    """

    def __init__(self, tmp_dir: Path | None, memory_limit: int = 1 << 20) -> None:
        self._tmp_dir = tmp_dir
        #: Bodies larger than this many bytes are kept in a file.
        self.memory_limit = memory_limit
        self._lock = threading.Lock()
        self._bodies: dict[str, bytes | Path] = {}
        self._dir: tempfile.TemporaryDirectory[str] | None = None

    def chunks(self, url: str) -> Generator[bytes, None, None] | None:
        """The kept body of ``url`` in chunks, or None when the pass has not downloaded it."""
        with self._lock:
            body = self._bodies.get(url)
        if body is None:
            return None
        return _body_chunks(body)

    def keeper(self, url: str) -> _MemoWriter:
        """A writer for the body of ``url`` as it streams; :meth:`_MemoWriter.commit` once
        complete, nothing kept otherwise."""
        return _MemoWriter(self, url)

    def spill_file(self) -> IO[bytes]:
        """A new file below ``tmp_dir`` for a large body (removed by :meth:`close`)."""
        with self._lock:
            if self._dir is None:
                self._dir = tempfile.TemporaryDirectory(prefix="fetch-memo-", dir=self._tmp_dir)
            directory = self._dir.name
        return tempfile.NamedTemporaryFile(dir=directory, prefix="body-", delete=False)

    def keep(self, url: str, body: bytes | Path) -> None:
        """Keep the complete body of ``url`` (bytes, or a file of :meth:`spill_file`)."""
        with self._lock:
            if self._dir is None and isinstance(body, Path):
                body.unlink(missing_ok=True)  # closed meanwhile
                return
            self._bodies.setdefault(url, body)

    def close(self) -> None:
        """Forget every body and remove the files (idempotent)."""
        with self._lock:
            self._bodies.clear()
            directory, self._dir = self._dir, None
        if directory is not None:
            directory.cleanup()


class _MemoWriter:
    """Collects one body for a :class:`FetchMemo`, spilling to a file past its memory limit."""

    def __init__(self, memo: FetchMemo, url: str) -> None:
        self._memo = memo
        self._url = url
        self._parts: list[bytes] = []
        self._size = 0
        self._file: IO[bytes] | None = None

    def write(self, chunk: bytes) -> None:
        self._size += len(chunk)
        if self._file is None and self._size > self._memo.memory_limit:
            self._file = self._memo.spill_file()
            self._file.write(b"".join(self._parts))
            self._parts.clear()
        if self._file is not None:
            self._file.write(chunk)
        else:
            self._parts.append(chunk)

    def commit(self) -> None:
        """The body is complete: keep it."""
        if self._file is not None:
            self._file.close()
            self._memo.keep(self._url, Path(self._file.name))
        else:
            self._memo.keep(self._url, b"".join(self._parts))
        self._parts = []

    def abort(self) -> None:
        """The body is incomplete: keep nothing."""
        self._parts = []
        if self._file is not None:
            self._file.close()
            Path(self._file.name).unlink(missing_ok=True)


def _body_chunks(body: bytes | Path) -> Generator[bytes, None, None]:
    if isinstance(body, bytes):
        if body:
            yield body
        return
    with body.open("rb") as file:
        while chunk := file.read(_CHUNK):
            yield chunk


class Fetcher(FetcherInterface):
    """Fetches for one probe of one endpoint and keeps a record of every request.

    ``classify(url)`` names what a URL fetches (a role name or ``"target"``). Metadata bodies
    fetched through ngclient's interface (everything not classified as ``"target"``) are kept,
    by URL, for the inspector; bodies streamed by :meth:`download_into` are not.

    ``tmp_dir`` is where ngclient's download buffer (a temporary file, see
    :meth:`download_file`) is created: a directory below ``state_dir``. None: ``tempfile``'s
    default directory (which the service points below ``state_dir`` at start).

    ``on_metadata(role, body)``, when given, is called with every complete metadata body as
    soon as its last byte arrived, before the body is handed to ngclient, that is before
    python-tuf has verified it: a hook for work that must happen before ngclient reads its
    cache (see the prober), never a source of trust. It runs on the fetching thread and must
    not raise.
    """

    def __init__(
        self,
        session: requests.Session,
        classify: Callable[[str], str],
        *,
        connect_timeout: float,
        read_timeout: float,
        deadline: float,
        retries: int = 0,
        allowed_redirect_hosts: tuple[str, ...] = (),
        on_metadata: Callable[[str, bytes], None] | None = None,
        tmp_dir: Path | None = None,
        memo: FetchMemo | None = None,
    ) -> None:
        self._session = session
        self._memo = memo
        self._on_metadata = on_metadata
        self._classify = classify
        self._connect_timeout = connect_timeout
        self._read_timeout = read_timeout
        self.deadline = deadline
        self._retries = retries
        self._allowed = frozenset(redirect_origin(h) for h in allowed_redirect_hosts)
        self._tmp_dir = tmp_dir
        self._lock = threading.Lock()
        self.records: list[RequestRecord] = []
        self.bodies: dict[str, bytes] = {}
        #: What the most recently started request fetched (a role name or "target").
        self.last_started: str | None = None

    # -- FetcherInterface -------------------------------------------------------------------

    def _fetch(self, url: str) -> Iterator[bytes]:
        return self._get(url, keep=True)

    @contextlib.contextmanager
    def download_file(self, url: str, max_length: int) -> Iterator[IO[bytes]]:
        """ngclient's ``download_file``, with its temporary file in ``tmp_dir``.

        The same contract as ``FetcherInterface.download_file``: a file holding the body of
        ``url``, at most ``max_length`` bytes (``DownloadLengthMismatchError`` past it).
        """
        with tempfile.TemporaryFile(dir=self._tmp_dir) as temp_file:
            _copy_capped(self.fetch(url), max_length, temp_file)
            temp_file.seek(0)
            yield temp_file

    def download_into(self, url: str, max_length: int, out: Sink) -> int:
        """Stream the body of ``url`` into ``out``; return its length in bytes.

        The body is not kept (not in :attr:`bodies`, and ``on_metadata`` is not called): at
        most one chunk (64 KiB) of it is held at a time, so a delegated role streamed to a
        file costs no memory of its size. Raises what ngclient's downloads raise
        (``DownloadError``; ``DownloadLengthMismatchError`` past ``max_length``;
        ``SlowRetrievalError``), and whatever ``out.write`` raises (``OSError`` for a file
        that cannot be written: a fault of this host, never a ``DownloadError``).
        """
        try:
            chunks = self._get(url, keep=False)
        except exceptions.DownloadError:
            raise
        except Exception as exc:  # as FetcherInterface.fetch does
            raise exceptions.DownloadError(f"Failed to download {url}") from exc
        with contextlib.closing(chunks):
            return _copy_capped(chunks, max_length, out)

    def _get(self, url: str, *, keep: bool) -> Generator[bytes, None, None]:
        role = self._classify(url)
        self.last_started = role
        started = time.monotonic()
        kept = None if self._memo is None else self._memo.chunks(url)
        if kept is not None:
            return self._replay(url, role, kept, started, keep and role != "target")
        attempt = 0
        while True:
            try:
                response = self._open(url)
                break
            except (requests.ConnectionError, exceptions.DownloadHTTPError) as exc:
                retriable = not isinstance(exc, requests.ConnectTimeout) and (
                    not isinstance(exc, exceptions.DownloadHTTPError)
                    or exc.status_code in _RETRY_STATUSES
                )
                if attempt < self._retries and retriable and self._remaining() > 0:
                    attempt += 1
                    continue
                status = exc.status_code if isinstance(exc, exceptions.DownloadHTTPError) else None
                self._record(url, role, status, 0, started, None, repr(exc), attempt)
                raise self._translate(exc) from exc
            except requests.RequestException as exc:
                self._record(url, role, None, 0, started, None, repr(exc), attempt)
                raise self._translate(exc) from exc
        return self._stream(url, role, response, started, attempt, keep and role != "target")

    # -- internals --------------------------------------------------------------------------

    def _remaining(self) -> float:
        return self.deadline - time.monotonic()

    def _timeouts(self) -> tuple[float, float]:
        remaining = self._remaining()
        if remaining <= 0:
            raise exceptions.SlowRetrievalError("probe deadline exceeded") from DeadlineExceeded()
        return min(self._connect_timeout, remaining), min(self._read_timeout, remaining)

    def _open(self, url: str) -> requests.Response:
        current = url
        for _ in range(_MAX_REDIRECTS + 1):
            response = self._session.get(
                current, stream=True, timeout=self._timeouts(), allow_redirects=False
            )
            if response.is_redirect:
                target = urljoin(current, response.headers.get("Location", ""))
                response.close()
                if not redirect_allowed(current, target, self._allowed):
                    raise exceptions.DownloadHTTPError(
                        f"refusing redirect from {current} to {target}: another scheme, host"
                        " or port, not in allowed_redirect_hosts",
                        response.status_code,
                    )
                current = target
                continue
            if response.status_code != 200:
                response.close()
                raise exceptions.DownloadHTTPError(
                    f"HTTP {response.status_code} for {current}", response.status_code
                )
            return response
        raise exceptions.DownloadHTTPError(f"too many redirects for {url}", 310)

    def _replay(
        self, url: str, role: str, chunks: Generator[bytes, None, None], started: float,
        keep: bool,
    ) -> Generator[bytes, None, None]:
        """A body from the memo, handed on as :meth:`_stream` hands on one from the network."""
        received = 0
        parts: list[bytes] = []
        error: str | None = None
        try:
            for chunk in chunks:
                received += len(chunk)
                if keep:
                    parts.append(chunk)
                yield chunk
            if keep:
                body = b"".join(parts)
                parts.clear()
                with self._lock:
                    self.bodies[url] = body
                if self._on_metadata is not None:
                    self._on_metadata(role, body)
        except BaseException as exc:
            error = repr(exc)
            raise
        finally:
            chunks.close()  # the memo's file, when the body is one
            self._record(url, role, 200, received, started, None, error, 0, memo=True)

    def _stream(
        self,
        url: str,
        role: str,
        response: requests.Response,
        started: float,
        retries: int,
        keep: bool,
    ) -> Generator[bytes, None, None]:
        received = 0
        parts: list[bytes] = []
        error: str | None = None
        server_date = _parse_date(response.headers.get("Date"))
        memo = None if self._memo is None else self._memo.keeper(url)
        try:
            while True:
                if self._remaining() <= 0:
                    raise exceptions.SlowRetrievalError(
                        f"probe deadline exceeded after {received} bytes of {url}"
                    ) from DeadlineExceeded()
                try:
                    chunk = response.raw.read1(_CHUNK, decode_content=True)
                except (urllib3.exceptions.HTTPError, OSError) as exc:
                    raise self._translate(exc) from exc
                if not chunk:
                    break
                received += len(chunk)
                if keep:
                    parts.append(chunk)
                if memo is not None:
                    memo.write(chunk)
                yield chunk
            if memo is not None:
                memo.commit()
                memo = None
            if keep:
                body = b"".join(parts)
                parts.clear()  # one copy of a large body, not two
                with self._lock:
                    self.bodies[url] = body
                if self._on_metadata is not None:
                    self._on_metadata(role, body)
        except BaseException as exc:
            error = repr(exc)
            raise
        finally:
            if memo is not None:
                memo.abort()
            response.close()
            self._record(url, role, response.status_code, received, started, server_date, error,
                         retries)

    def _record(
        self,
        url: str,
        role: str,
        status: int | None,
        size: int,
        started: float,
        server_date: datetime | None,
        error: str | None,
        retries: int,
        *,
        memo: bool = False,
    ) -> None:
        record = RequestRecord(
            url=url,
            role=role,
            status=status,
            bytes=size,
            started=started,
            duration_seconds=time.monotonic() - started,
            server_date=server_date,
            error=error,
            retries=retries,
            memo=memo,
        )
        with self._lock:
            self.records.append(record)

    @staticmethod
    def _translate(exc: BaseException) -> exceptions.DownloadError:
        """Map transport errors to ngclient's: timeouts to SlowRetrievalError, HTTP as is."""
        if isinstance(exc, exceptions.DownloadError):
            return exc
        text = repr(exc)
        timed_out = isinstance(
            exc,
            requests.Timeout | urllib3.exceptions.TimeoutError | TimeoutError,
        ) or "timed out" in text.lower()
        if timed_out:
            return exceptions.SlowRetrievalError(f"timed out: {exc}")
        return exceptions.DownloadError(f"download failed: {exc}")


@functools.lru_cache(maxsize=16)  # responses of one second share their Date
def _parse_date(value: str | None) -> datetime | None:
    """An HTTP ``Date`` as an aware datetime; None when absent or unparsable. An HTTP-date is
    always GMT (RFC 9110 5.6.7): a ``-0000`` zone, which ``parsedate_to_datetime`` returns
    naive, is UTC too (a naive time would be refused by ``rfc3339`` and not compare)."""
    if not value:
        return None
    try:
        moment = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)


def _copy_capped(chunks: Iterable[bytes], max_length: int, out: Sink) -> int:
    """Write ``chunks`` to ``out``; the number of bytes. ``DownloadLengthMismatchError`` (worded
    as ngclient words it) as soon as more than ``max_length`` bytes arrived."""
    received = 0
    for chunk in chunks:
        received += len(chunk)
        if received > max_length:
            raise exceptions.DownloadLengthMismatchError(
                f"Downloaded {received} bytes exceeding the maximum allowed length"
                f" of {max_length}"
            )
        out.write(chunk)
    return received
