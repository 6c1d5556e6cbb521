"""The shipper: a thread that moves events from the spool to the sink and loses nothing.

Sinks
    :class:`OpenSearchSink` writes with opensearch-py's ``helpers.streaming_bulk`` (one chunk
    per batch, ``raise_on_error=False, raise_on_exception=False, max_retries=0``). It is chosen
    over ``bulk`` because it yields one result per document, in order, which is exactly what
    acknowledging, dead-lettering or retrying each event needs; ``parallel_bulk`` would add
    threads and reorder results for no gain at the exporter's event rate; and the helper's own
    429 retry is left off because it sleeps without jitter, blocks ``stop()`` and does not cover
    5xx or connection errors: the shipper retries instead. Every document is a ``create`` with
    the event id as ``_id``, so a 409 means "already there" and counts as delivered.

    :class:`FileSink` appends JSON Lines to a size-rotated file: the embedded default when no
    OpenSearch is configured, fed through the same spool and shipper.

Batches
    The shipper sends a batch when ``batch_size`` events are waiting, or when the oldest has
    waited ``batch_interval``. At the end of a burst (a full batch just went out) the partial
    rest ships as soon as no new event arrived for ``burst_idle`` (50 ms), so a burst does not
    end with a ``batch_interval`` pause; a trickle of events still waits for the interval.
    Documents leave the spool as the canonical JSON text stored there: sinks that offer
    ``send_serialized`` (both built-in ones do) put that text into the request verbatim.

    While a backlog drains, the acknowledgement of a fully delivered, full batch (a spool
    commit) runs on a second thread while the next batch is read from past it and sent: the
    next acknowledgement waits for the previous one, so at most one is in flight. A batch
    with anything not delivered, a partial batch, an empty spool and stopping all wait for
    it first; if it fails, its events stay spooled and the next look starts from the oldest
    again (they are sent again and the sink deduplicates by id, as after any failed
    acknowledgement). An event leaves the spool only after the sink accepted it, so a crash
    at any point still ships every event exactly once.

Retries
    Connection errors, 429, 5xx and whole-request errors (401, 403, 413, ...) leave the events
    in the spool; the shipper waits with exponential backoff and jitter and tries again. An item
    rejected with a 400 (a mapping error) is moved to the spool's dead-letter table with the
    error and counted as ``dropped{cause="rejected"}``; the rest of the batch keeps flowing.

The outbox
    Findings' events are committed with the findings, in the history database's outbox
    (:meth:`exporter.history.recorder.HistoryStore.drain_outbox`). Before each look at the spool the
    shipper moves them into it (``Spool.put_many``); they leave the outbox only once the spool
    committed them, and the spool keeps an id once, so a crash between the two commits ships
    them exactly once. A failed move is counted as ``outbox`` and retried after a backoff of
    its own while the spool keeps shipping.

Survival
    Nothing the thread's own work raises ends it: an exception (a spool write failing on a
    full disk or a held lock, a bug) is logged, counted (``spool`` or ``exception``), waited
    out with backoff, and the loop goes on; events not acknowledged stay spooled and are sent
    again (the sink deduplicates by id). :attr:`Shipper.running` says whether it still runs.
"""

from __future__ import annotations

import json
import logging
import os
import random
import re
import sqlite3
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Any, Protocol

from prometheus_client.core import Metric

from exporter import catalogue
from exporter.config.model import Config, OpenSearch
from exporter.events.model import Event, canonical_json
from exporter.events.spool import Spool, SpooledEvent, SpoolError

log = logging.getLogger(__name__)

#: Default batch settings when no OpenSearch section gives them (the file sink).
DEFAULT_BATCH_SIZE = 500
DEFAULT_BATCH_INTERVAL = 2.0
#: After a burst (a full batch shipped), the rest ships once no event came for this long.
DEFAULT_BURST_IDLE = 0.05

_USERINFO = re.compile(r"(?<=//)[^/@\s]+@")

#: The date at the start of a canonical event document (``{"@timestamp":"2024-05-01T...``).
_LEADING_DAY = re.compile(r'\{"@timestamp":"(\d{4})-(\d{2})-(\d{2})T')


def redact(text: str) -> str:
    """Remove ``user:password@`` from URLs in ``text`` (error messages end up in logs)."""
    return _USERINFO.sub("***@", text)


class Outcome(StrEnum):
    """What became of one document sent to a sink."""

    OK = "ok"  #: stored (or already there)
    RETRY = "retry"  #: not stored; try again later
    REJECT = "reject"  #: refused for good; set aside as a dead letter


@dataclass(frozen=True)
class ItemResult:
    """The sink's answer for one document."""

    event_id: str
    outcome: Outcome
    status: int | None = None
    error: str = ""
    #: For retries: why (``connection``, ``throttled``, ``server_error``, ``http_401``, ...).
    cause: str = ""


class SinkError(Exception):
    """A sink could not take a batch at all; ``cause`` labels shipper_errors_total."""

    def __init__(self, message: str, cause: str) -> None:
        super().__init__(message)
        self.cause = cause


class Outbox(Protocol):
    """Events committed elsewhere (the history's findings) waiting to be moved to the spool:
    :class:`exporter.history.recorder.HistoryStore`."""

    @property
    def outbox_pending(self) -> int:
        """How many wait (from memory: cheap to ask on every step)."""
        ...

    def drain_outbox(self, put: Callable[[list[Event]], object], batch: int = 500) -> int:
        """Hand them to ``put`` (durable when it returns); delete them once it returned."""
        ...


class Sink(Protocol):
    """Where shipped events end up."""

    name: str

    def setup(self) -> None:
        """Prepare the sink (templates, policies, directories); raise to be retried."""

    def send(self, documents: Sequence[Mapping[str, Any]]) -> list[ItemResult]:
        """Store ``documents``; one result per document (by ``event_id``).

        A sink may also offer ``send_serialized(pairs)`` taking ``(event_id, JSON text)``
        pairs (the spool's stored canonical JSON) with the same results; the shipper then
        uses it, so documents are not parsed and re-encoded on the way out.
        """
        ...

    def close(self) -> None:
        """Release connections and files."""


# ---------------------------------------------------------------------------------------------
# OpenSearch


def timevalue(seconds: float) -> str:
    """An OpenSearch time value for ``seconds``: ``90d``, ``12h``, ``30m`` or ``45s``."""
    whole = max(1, round(seconds))
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if whole % size == 0:
            return f"{whole // size}{unit}"
    return f"{whole}s"


def index_template(prefix: str) -> dict[str, Any]:
    """The index template installed at start: explicit mappings for every event field.

    ``versions.*`` holds any version python-tuf accepts (any positive integer, past 2**64
    too), so it is a ``keyword`` (the exact decimal digits; terms and exact matches) with a
    ``versions.<name>.number`` ``unsigned_long`` sub-field for ranges and sorting up to
    2**64 - 1 (``ignore_malformed``: a larger version keeps its document and its keyword,
    it only has no number). A ``long`` would reject every event carrying a version past
    2**63 - 1. ``unsigned_long`` needs OpenSearch 2.8 or later.
    """
    keyword = {"type": "keyword"}
    date = {"type": "date", "format": "strict_date_optional_time||epoch_millis"}
    return {
        "index_patterns": [f"{prefix}-*"],
        "priority": 100,
        "template": {
            "settings": {"index": {"number_of_shards": 1}},
            "mappings": {
                "dynamic": False,
                "dynamic_templates": [
                    {
                        "versions": {
                            "path_match": "versions.*",
                            "match_mapping_type": "*",
                            "mapping": {
                                "type": "keyword",
                                "fields": {"number": {"type": "unsigned_long",
                                                      "ignore_malformed": True}},
                            },
                        }
                    },
                    {
                        "durations_double": {
                            "path_match": "durations.*",
                            "match_mapping_type": "double",
                            "mapping": {"type": "float"},
                        }
                    },
                    {
                        "durations_long": {
                            "path_match": "durations.*",
                            "match_mapping_type": "long",
                            "mapping": {"type": "float"},
                        }
                    },
                    {
                        "hashes": {
                            "path_match": "hashes.*",
                            "match_mapping_type": "string",
                            "mapping": {"type": "keyword"},
                        }
                    },
                ],
                "properties": {
                    "event_id": keyword,
                    "schema_version": {"type": "integer"},
                    "kind": keyword,
                    "@timestamp": date,
                    "time": date,
                    "repository": keyword,
                    "endpoint": keyword,
                    "role": keyword,
                    "reason": keyword,
                    "keyids": keyword,
                    "message": {"type": "text"},
                    "versions": {"type": "object", "dynamic": True},
                    "durations": {"type": "object", "dynamic": True},
                    "hashes": {"type": "object", "dynamic": True},
                    "details": {"type": "object", "enabled": False},
                },
            },
        },
    }


def retention_policy(prefix: str, retention: float) -> dict[str, Any]:
    """The ISM policy that deletes the event indices ``retention`` seconds after creation."""
    return {
        "policy": {
            "description": f"tuf-exporter: delete {prefix}-* indices after {timevalue(retention)}",
            "default_state": "hot",
            "states": [
                {
                    "name": "hot",
                    "actions": [],
                    "transitions": [
                        {
                            "state_name": "delete",
                            "conditions": {"min_index_age": timevalue(retention)},
                        }
                    ],
                },
                {"name": "delete", "actions": [{"delete": {}}], "transitions": []},
            ],
            "ism_template": [{"index_patterns": [f"{prefix}-*"], "priority": 100}],
        }
    }


def read_credentials(
    settings: OpenSearch, environ: Mapping[str, str] | None = None
) -> tuple[str, str] | None:
    """``(username, password)`` from the environment or the password file, or None.

    Errors name the variable or file, never a value.
    """
    env = os.environ if environ is None else environ
    if settings.username_env is None:
        return None
    username = env.get(settings.username_env)
    if not username:
        raise ValueError(f"environment variable {settings.username_env} (username) is not set")
    if settings.password_env is not None:
        password = env.get(settings.password_env)
        if not password:
            raise ValueError(f"environment variable {settings.password_env} (password) is not set")
    elif settings.password_file is not None:
        try:
            password = settings.password_file.read_text(encoding="utf-8").rstrip("\r\n")
        except OSError as exc:
            raise ValueError(
                f"cannot read the password file {settings.password_file}: {exc.strerror}"
            ) from None
    else:
        raise ValueError("opensearch.username_env needs password_env or password_file")
    return username, password


def _status(info: Mapping[str, Any]) -> int | None:
    status = info.get("status")
    return status if isinstance(status, int) else None


class OpenSearchSink:
    """Bulk-creates documents in ``<prefix>-YYYY.MM.DD`` (UTC date of the event's time)."""

    name = "opensearch"

    def __init__(
        self,
        settings: OpenSearch,
        *,
        timeout: float = 10.0,
        environ: Mapping[str, str] | None = None,
        max_chunk_bytes: int = 10 * 1024 * 1024,
    ) -> None:
        from opensearchpy import OpenSearch as Client

        self.settings = settings
        self.prefix = settings.index_prefix
        self.max_chunk_bytes = max_chunk_bytes
        options: dict[str, Any] = {
            "hosts": list(settings.hosts),
            "verify_certs": settings.verify_tls,
            "ssl_show_warn": settings.verify_tls,
            "max_retries": 0,  # the shipper retries, with backoff and jitter
            "retry_on_timeout": False,
            "timeout": timeout,
        }
        if settings.ca_file is not None:
            options["ca_certs"] = str(settings.ca_file)
        credentials = read_credentials(settings, environ)
        if credentials is not None:
            options["http_auth"] = credentials
        if not settings.verify_tls:
            log.warning("OpenSearch TLS certificate verification is disabled (verify_tls: false)")
        self.client = Client(**options)

    def index_for(self, document: Mapping[str, Any]) -> str:
        """The daily index of ``document``: ``<prefix>-YYYY.MM.DD``."""
        day = str(document["time"])[:10].replace("-", ".")
        return f"{self.prefix}-{day}"

    def setup(self) -> None:
        """Install the ISM retention policy and the index template (idempotent)."""
        from opensearchpy.exceptions import TransportError

        try:
            self._install_policy()
        except TransportError as exc:
            status = exc.status_code
            if not isinstance(status, int) or status >= 500 or status in (401, 403, 429):
                raise SinkError(
                    f"cannot install the ISM policy: {redact(str(exc))}", "setup"
                ) from exc
            # 400/404: the ISM plugin is absent; shipping must not depend on it.
            log.warning(
                "cannot install the ISM retention policy (is the ISM plugin installed?): %s; "
                "old event indices will not be deleted automatically",
                redact(str(exc)),
            )
        try:
            self.client.indices.put_index_template(
                name=self.prefix, body=index_template(self.prefix)
            )
        except TransportError as exc:
            raise SinkError(
                f"cannot install the index template: {redact(str(exc))}", "setup"
            ) from exc

    def _install_policy(self) -> None:
        from opensearchpy.exceptions import ConflictError

        policy_id = f"{self.prefix}-retention"
        body = retention_policy(self.prefix, self.settings.retention)
        path = f"/_plugins/_ism/policies/{policy_id}"
        try:
            self.client.transport.perform_request("PUT", path, body=body)
            return
        except ConflictError:
            pass  # it exists: update it only when the retention changed
        current = self.client.transport.perform_request("GET", path)
        if _policy_age(current.get("policy", {})) == _policy_age(body["policy"]):
            return
        self.client.transport.perform_request(
            "PUT",
            path,
            body=body,
            params={
                "if_seq_no": current["_seq_no"],
                "if_primary_term": current["_primary_term"],
            },
        )
        log.info("updated the ISM policy %s to %s", policy_id, timevalue(self.settings.retention))

    def index_for_text(self, text: str) -> str:
        """:meth:`index_for` of a serialised document: read from its leading ``@timestamp``
        (canonical JSON sorts it first; it equals ``time`` in every event document), else
        parsed."""
        stamp = _LEADING_DAY.match(text)
        if stamp is None:
            return self.index_for(json.loads(text))
        return f"{self.prefix}-{stamp[1]}.{stamp[2]}.{stamp[3]}"

    def send(self, documents: Sequence[Mapping[str, Any]]) -> list[ItemResult]:
        """One ``streaming_bulk`` chunk of ``create`` actions; one result per document."""
        return self._bulk(
            [
                {
                    "_op_type": "create",
                    "_index": self.index_for(document),
                    "_id": document["event_id"],
                    "_source": dict(document),
                }
                for document in documents
            ]
        )

    def send_serialized(self, documents: Sequence[tuple[str, str]]) -> list[ItemResult]:
        """Like :meth:`send` for ``(event_id, JSON text)`` pairs: the text goes into the bulk
        body verbatim (opensearch-py does not re-serialise a string source)."""
        return self._bulk(
            [
                {
                    "_op_type": "create",
                    "_index": self.index_for_text(text),
                    "_id": event_id,
                    "_source": text,
                }
                for event_id, text in documents
            ]
        )

    def _bulk(self, actions: list[dict[str, Any]]) -> list[ItemResult]:
        from opensearchpy.helpers import streaming_bulk

        results: list[ItemResult] = []
        for ok, item in streaming_bulk(
            self.client,
            actions,
            chunk_size=max(1, len(actions)),
            max_chunk_bytes=self.max_chunk_bytes,
            raise_on_error=False,
            raise_on_exception=False,
            max_retries=0,
            yield_ok=True,
        ):
            _op, info = next(iter(item.items()))
            results.append(self._classify(bool(ok), info))
        return results

    @staticmethod
    def _classify(ok: bool, info: Mapping[str, Any]) -> ItemResult:
        event_id = str(info.get("_id"))
        status = _status(info)
        if ok or status == 409:  # 409: a create for an id that is already there
            return ItemResult(event_id, Outcome.OK, status)
        raw_error = info.get("error", "")
        error = redact(raw_error if isinstance(raw_error, str) else json.dumps(raw_error))
        if status is None:
            return ItemResult(event_id, Outcome.RETRY, None, error, "connection")
        if status == 429:
            return ItemResult(event_id, Outcome.RETRY, status, error, "throttled")
        if status >= 500:
            return ItemResult(event_id, Outcome.RETRY, status, error, "server_error")
        if "exception" in info:  # the whole request failed (auth, too large, ...)
            return ItemResult(event_id, Outcome.RETRY, status, error, f"http_{status}")
        if status == 400:  # this document cannot be indexed: mapping or parsing error
            return ItemResult(event_id, Outcome.REJECT, status, error, "rejected")
        return ItemResult(event_id, Outcome.RETRY, status, error, f"item_{status}")

    def close(self) -> None:
        """Close the client's connections."""
        self.client.close()


def _policy_age(policy: Mapping[str, Any]) -> Any:
    for state in policy.get("states", []):
        for transition in state.get("transitions", []):
            return transition.get("conditions", {}).get("min_index_age")
    return None


# ---------------------------------------------------------------------------------------------
# JSON Lines file


class FileSink:
    """Appends one canonical JSON document per line, fsynced; rotates by size.

    ``path`` is rotated to ``path.1`` (``path.1`` to ``path.2``, ...) before a batch that would
    take it over ``max_bytes``; ``backups`` rotated files are kept. At start the tail of the
    current file is read back: a partial last line (a crash mid-write) is cut off, and ids of
    the last documents written are remembered so a batch written just before a crash but not
    yet acknowledged is not written twice.
    """

    name = "file"

    def __init__(self, path: Path, *, max_bytes: int, backups: int, remember: int = 10_000) -> None:
        self.path = path
        self.max_bytes = max_bytes
        self.backups = backups
        self.remember = remember
        self._recent: dict[str, None] = {}

    def setup(self) -> None:
        """Create the directory, repair the tail and remember the last ids written."""
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            if self.path.exists():
                self._repair_and_load()
        except OSError as exc:
            raise SinkError(
                f"cannot prepare the event file {self.path}: {exc}", "file_error"
            ) from exc

    def _repair_and_load(self) -> None:
        window = 8 * 1024 * 1024
        with self.path.open("rb+") as handle:
            size = handle.seek(0, os.SEEK_END)
            start = max(0, size - window)
            handle.seek(start)
            tail = handle.read()
            end = tail.rfind(b"\n") + 1
            if end < len(tail):
                log.warning(
                    "event file %s ends with a partial line (an interrupted write); cutting "
                    "%d bytes",
                    self.path,
                    len(tail) - end,
                )
                handle.truncate(start + end)
                handle.flush()
                os.fsync(handle.fileno())
        lines = tail[:end].splitlines()
        if start > 0 and lines:
            lines = lines[1:]  # the first line may be cut by the window
        for line in lines[-self.remember :]:
            try:
                self._remember(str(json.loads(line)["event_id"]))
            except (ValueError, KeyError, TypeError):
                continue

    def _remember(self, event_id: str) -> None:
        self._recent[event_id] = None
        while len(self._recent) > self.remember:
            del self._recent[next(iter(self._recent))]

    def send(self, documents: Sequence[Mapping[str, Any]]) -> list[ItemResult]:
        """Append the documents (skipping any just written) and fsync."""
        return self.send_serialized(
            [(str(d["event_id"]), canonical_json(dict(d)).decode("utf-8")) for d in documents]
        )

    def send_serialized(self, documents: Sequence[tuple[str, str]]) -> list[ItemResult]:
        """Like :meth:`send` for ``(event_id, canonical JSON text)`` pairs, written verbatim."""
        fresh = [(i, text) for i, text in documents if i not in self._recent]
        data = "".join(text + "\n" for _i, text in fresh).encode("utf-8")
        if data:
            try:
                self._append(data)
            except OSError as exc:
                raise SinkError(
                    f"cannot write the event file {self.path}: {exc}", "file_error"
                ) from exc
            for event_id, _text in fresh:
                self._remember(event_id)
        return [ItemResult(event_id, Outcome.OK) for event_id, _text in documents]

    def _append(self, data: bytes) -> None:
        size = self.path.stat().st_size if self.path.exists() else 0
        if size > 0 and size + len(data) > self.max_bytes:
            self.rotate()
        with self.path.open("ab") as handle:
            position = handle.tell()
            try:
                handle.write(data)
                handle.flush()
                os.fsync(handle.fileno())
            except OSError:
                handle.truncate(position)
                raise

    def rotate(self) -> None:
        """``path`` -> ``path.1`` -> ... -> ``path.<backups>``; the oldest is deleted."""
        if self.backups <= 0:
            self.path.unlink(missing_ok=True)
            return
        for number in range(self.backups - 1, 0, -1):
            older = Path(f"{self.path}.{number}")
            if older.exists():
                older.replace(Path(f"{self.path}.{number + 1}"))
        self.path.replace(Path(f"{self.path}.1"))
        log.info("rotated the event file %s", self.path)

    def close(self) -> None:
        """Nothing to release: every batch is written and closed."""


# ---------------------------------------------------------------------------------------------
# The shipper thread


@dataclass(frozen=True)
class Backoff:
    """Exponential backoff with jitter: attempt ``n`` waits ``min(maximum, initial *
    multiplier**n)`` scaled by a random factor in ``[1 - jitter, 1]``."""

    initial: float = 1.0
    maximum: float = 60.0
    multiplier: float = 2.0
    jitter: float = 0.5

    def delay(self, attempt: int) -> float:
        """Seconds to wait before retry number ``attempt`` (0 for the first retry)."""
        base = min(self.maximum, self.initial * self.multiplier ** min(attempt, 64))
        return base * (1.0 - self.jitter * random.random())


class Shipper:
    """Ships spooled events to a sink in batches, on its own thread, until stopped."""

    def __init__(
        self,
        spool: Spool,
        sink: Sink,
        *,
        batch_size: int = DEFAULT_BATCH_SIZE,
        batch_interval: float = DEFAULT_BATCH_INTERVAL,
        backoff: Backoff | None = None,
        burst_idle: float = DEFAULT_BURST_IDLE,
        outbox: Outbox | None = None,
    ) -> None:
        self.spool = spool
        #: drained into the spool before each look at it (see :meth:`_drain`)
        self.outbox = outbox
        self._outbox_attempt = 0
        self._outbox_retry_at = 0.0
        self.burst_idle = burst_idle
        #: a full batch went out and the spool has not been drained since: a burst
        self._in_burst = False
        self._last_spooled = 0.0
        self.sink = sink
        self.batch_size = max(1, batch_size)
        self.batch_interval = batch_interval
        self.backoff = backoff or Backoff()
        self._current_batch = self.batch_size
        #: set when a full batch is waiting (or to look again at once); wakes a batch wait
        self._wake = threading.Event()
        #: set by stop(); wakes a backoff wait too, which new events do not
        self._halt = threading.Event()
        self._stop = threading.Event()
        self._deadline = float("inf")
        self._next_ship = 0.0
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._ready = False
        self._attempt = 0
        self._shipped = 0
        self._errors: Counter[str] = Counter()
        self._last_success: float | None = None
        #: runs one batch's acknowledgement while the next batch is sent (see "Batches")
        self._acker: ThreadPoolExecutor | None = None
        #: the acknowledgement in flight, and the highest spool seq of its batch
        self._pending: Future[int] | None = None
        self._pending_seq = 0
        spool.add_listener(self._on_spooled)

    @classmethod
    def from_config(cls, config: Config, spool: Spool, **kwargs: Any) -> Shipper:
        """OpenSearch when configured, else the JSON Lines file (``<state_dir>/events.jsonl``);
        ``kwargs`` go to the constructor (``outbox=`` the history store, ...)."""
        if config.opensearch is not None:
            sink: Sink = OpenSearchSink(config.opensearch)
            kwargs.setdefault("batch_size", config.opensearch.batch_size)
            kwargs.setdefault("batch_interval", config.opensearch.batch_interval)
        else:
            events = config.events
            sink = FileSink(
                events.file or config.state_dir / "events.jsonl",
                max_bytes=events.file_max_bytes,
                backups=events.file_backups,
            )
        return cls(spool, sink, **kwargs)

    # -- lifecycle -----------------------------------------------------------------------------

    def start(self) -> None:
        """Start the shipper thread."""
        if self._thread is not None:
            raise RuntimeError("the shipper is already started")
        self._thread = threading.Thread(target=self._run, name="event-shipper", daemon=True)
        self._thread.start()

    @property
    def running(self) -> bool:
        """True while the shipper thread is alive."""
        return self._thread is not None and self._thread.is_alive()

    def stop(self, timeout: float = 10.0) -> bool:
        """Ship what can be shipped within ``timeout`` seconds, then stop.

        Returns True when the spool was drained; whatever is left stays in the spool for the
        next start. The sink is closed.
        """
        self._deadline = time.monotonic() + timeout
        self._stop.set()
        self._halt.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout + 1.0)
            if self._thread.is_alive():
                log.warning("the event shipper did not stop within %.1f s", timeout)
        try:
            self.sink.close()
        except Exception as exc:  # noqa: BLE001 - stopping must not fail
            log.warning("closing the event sink failed: %s", redact(str(exc)))
        try:
            return len(self.spool) == 0
        except Exception:  # noqa: BLE001 - a broken spool is simply "not drained"
            return False

    def wake(self) -> None:
        """Look at the outbox and the spool now (new findings were committed): their events
        then ship like any other, within ``batch_interval``."""
        self._wake.set()

    def _on_spooled(self) -> None:
        """Spool listener (on the producer's thread, after each commit): wake the shipper only
        when a full batch is waiting, judged from the spool's in-memory count; a smaller
        backlog waits for the batch interval (or, at the end of a burst, for ``burst_idle``)."""
        self._last_spooled = time.monotonic()
        if self.spool.backlog >= self._current_batch and not self._wake.is_set():
            self._wake.set()

    def _sleep(self, seconds: float, *, backoff: bool = False) -> None:
        """Wait ``seconds``, or until stopped, or (unless ``backoff``) until a full batch is
        waiting: new events do not cut a backoff short."""
        if self._stop.is_set():
            seconds = min(seconds, max(0.0, self._deadline - time.monotonic()))
        event = self._halt if backoff else self._wake
        if seconds > 0:
            event.wait(seconds)
        event.clear()

    def _run(self) -> None:
        """The thread: one :meth:`_step` after another until stopped. Whatever a step raises
        is logged, counted by cause (``spool`` for the spool's database and files, else
        ``exception``), waited out with backoff, and the loop goes on: no error of its own
        work ends the thread (a batch whose acknowledgement failed stays in the spool and is
        sent again; the sink deduplicates by event id)."""
        self._next_ship = time.monotonic() + self.batch_interval
        self._acker = ThreadPoolExecutor(max_workers=1, thread_name_prefix="event-acker")
        try:
            self._loop()
        finally:
            try:
                self._settle()
            except Exception as exc:  # noqa: BLE001 - stopping must not fail
                log.warning("acknowledging the last batch failed; it stays spooled: %s", exc)
            self._acker.shutdown(wait=True)
            self._acker = None

    def _loop(self) -> None:
        while True:
            try:
                if not self._step():
                    return
            except Exception as exc:  # the shipper thread must survive
                cause = "spool" if isinstance(exc, sqlite3.Error | SpoolError | OSError) else (
                    "exception")
                if cause == "exception":
                    log.error("the event shipper failed; it goes on", exc_info=exc)
                self._fail(cause, f"the event shipper failed: {type(exc).__name__}: {exc}")

    def _step(self) -> bool:
        """One look at the spool: ship a batch, or wait for one. False once stopped."""
        stopping = self._stop.is_set()
        if stopping and time.monotonic() >= self._deadline:
            return False
        self._drain()
        try:
            if not self._ensure_ready():
                return True
            # past the batch whose acknowledgement is in flight, if any
            batch = self.spool.peek(self._current_batch, after=self._pending_seq)
        except Exception as exc:  # noqa: BLE001 - the shipper thread must survive
            self._fail("spool", f"cannot read the event spool: {exc}")
            return True
        full = len(batch) >= self._current_batch
        if not full or stopping:
            self._settle()  # raises if it failed: then the next look starts from the oldest
        if not batch:
            self._mark_success()
            self._in_burst = False
            if stopping:
                return False
            self._sleep(self.batch_interval)
            self._next_ship = time.monotonic() + self.batch_interval
            return True
        now = time.monotonic()
        if not stopping and not full and now < self._next_ship:
            # a partial batch waits for the interval, unless it is the tail of a burst
            # and the producers have gone quiet: then it ships now
            wait = self._next_ship - now
            if self._in_burst:
                wait = min(wait, self._last_spooled + self.burst_idle - now)
            if wait > 0:
                self._sleep(wait)
                return True
        delivered = self._ship(batch, overlap=full and not stopping)
        self._next_ship = time.monotonic() + self.batch_interval
        if not delivered:
            self._sleep(self.backoff.delay(self._attempt), backoff=True)
            self._attempt += 1
        else:
            self._in_burst = full
            self._attempt = 0
            self._wake.set()  # more may be waiting: look again at once
        return True

    def _drain(self) -> None:
        """Move the outbox's events into the spool. A failure (history or spool unwritable) is
        logged and counted as ``outbox``; the events stay in the outbox and the drain is tried
        again after a backoff of its own, while the spool keeps shipping meanwhile."""
        if self.outbox is None or self.outbox.outbox_pending == 0:
            return
        if time.monotonic() < self._outbox_retry_at:
            return
        try:
            self.outbox.drain_outbox(self.spool.put_many)
        except Exception as exc:  # noqa: BLE001 - kept in the outbox, tried again
            delay = self.backoff.delay(self._outbox_attempt)
            self._outbox_attempt += 1
            self._outbox_retry_at = time.monotonic() + delay
            with self._lock:
                self._errors["outbox"] += 1
            log.warning(
                "cannot move finding events from the history outbox to the spool (%s: %s); "
                "they stay in the outbox, retrying in %.1f s",
                type(exc).__name__, exc, delay,
            )
            return
        self._outbox_attempt = 0
        self._outbox_retry_at = 0.0

    def _ensure_ready(self) -> bool:
        if self._ready:
            return True
        try:
            self.sink.setup()
        except Exception as exc:  # noqa: BLE001 - any setup failure is retried
            cause = exc.cause if isinstance(exc, SinkError) else "setup"
            self._fail(cause, f"cannot set up the {self.sink.name} event sink: {exc}")
            return False
        self._ready = True
        self._attempt = 0
        log.info("the %s event sink is ready", self.sink.name)
        return True

    def _fail(self, cause: str, message: str) -> None:
        with self._lock:
            self._errors[cause] += 1
        delay = self.backoff.delay(self._attempt)
        self._attempt += 1
        log.warning("%s; retrying in %.1f s", redact(message), delay)
        self._sleep(delay, backoff=True)

    def _mark_success(self) -> None:
        with self._lock:
            self._last_success = time.time()

    # -- one batch -----------------------------------------------------------------------------

    def _settle(self) -> None:
        """Wait for the acknowledgement in flight, if any; what it raised is raised here (its
        events stay spooled, the next look starts from the oldest)."""
        pending, self._pending = self._pending, None
        self._pending_seq = 0
        if pending is not None:
            pending.result()

    def _ack(self, event_ids: list[str]) -> int:
        """Acknowledge ``event_ids`` in the spool and count them as shipped (on the acker
        thread); returns how many were still spooled."""
        acked = self.spool.ack(event_ids)
        with self._lock:
            self._shipped += acked
        return acked

    def ship(self, batch: Sequence[SpooledEvent]) -> bool:
        """Send ``batch`` once; ack, dead-letter or keep each event. True if none is kept."""
        self._settle()
        return self._ship(batch, overlap=False)

    def _ship(self, batch: Sequence[SpooledEvent], *, overlap: bool) -> bool:
        """:meth:`ship`; with ``overlap`` a fully delivered batch is acknowledged on the acker
        thread (after the acknowledgement in flight) and this returns without waiting."""
        send_serialized = getattr(self.sink, "send_serialized", None)
        try:
            if send_serialized is not None:  # the stored JSON text, not parsed and re-encoded
                results = send_serialized([(item.event_id, item.text) for item in batch])
            else:
                results = self.sink.send([item.document for item in batch])
        except Exception as exc:  # noqa: BLE001 - any send failure keeps the batch
            cause = exc.cause if isinstance(exc, SinkError) else "exception"
            error = redact(str(exc))
            results = [ItemResult(i.event_id, Outcome.RETRY, None, error, cause) for i in batch]
        by_id = {result.event_id: result for result in results}
        delivered: list[str] = []
        causes: Counter[str] = Counter()
        first_error = ""
        for item in batch:
            result = by_id.get(item.event_id)
            if result is None:
                causes["no_result"] += 1
                continue
            if result.outcome is Outcome.OK:
                delivered.append(item.event_id)
            elif result.outcome is Outcome.REJECT:
                self.spool.dead_letter(item.event_id, result.error, result.status)
            else:
                causes[result.cause or "retry"] += 1
                first_error = first_error or result.error
        self._settle()
        if overlap and not causes and self._acker is not None and batch:
            self._pending = self._acker.submit(self._ack, delivered)
            self._pending_seq = max(item.seq for item in batch)
        else:
            self._ack(delivered)
        with self._lock:
            if delivered:
                self._last_success = time.time()
            for cause in causes:
                self._errors[cause] += 1
        if "http_413" in causes and self._current_batch > 1:
            self._current_batch = max(1, self._current_batch // 2)
            log.warning(
                "the sink refused a batch as too large; batch size now %d", self._current_batch
            )
        if causes:
            log.warning(
                "%d of %d event(s) not delivered to the %s sink (%s), kept in the spool: %s",
                sum(causes.values()),
                len(batch),
                self.sink.name,
                ", ".join(sorted(causes)),
                first_error[:300],
            )
            return False
        return True

    # -- metrics -------------------------------------------------------------------------------

    def stats(self) -> dict[str, Any]:
        """Shipped count, errors by cause and last success time (for tests and debugging)."""
        with self._lock:
            return {
                "shipped": self._shipped,
                "errors": dict(self._errors),
                "last_success": self._last_success,
            }

    def metrics(self) -> list[Metric]:
        """All six event metric families (the spool's three and the shipper's three)."""
        families = self.spool.metrics()
        stats = self.stats()
        shipped = catalogue.family("tuf_exporter_events_shipped_total")
        shipped.add_metric([], stats["shipped"])
        errors = catalogue.family("tuf_exporter_shipper_errors_total")
        # the common causes start at 0, so a first error is an increase Prometheus can see
        error_counts: dict[str, int] = dict.fromkeys(
            ("connection", "throttled", "server_error", "spool", "outbox"), 0
        )
        error_counts.update(stats["errors"])
        if self.spool.corrupt_recoveries:
            error_counts["spool_corrupt"] = self.spool.corrupt_recoveries
        for cause, count in sorted(error_counts.items()):
            errors.add_metric([cause], count)
        last = catalogue.family("tuf_exporter_shipper_last_success_timestamp_seconds")
        if stats["last_success"] is not None:
            last.add_metric([], stats["last_success"])
        return [*families, shipped, errors, last]

    def collect(self) -> Iterator[Metric]:
        """prometheus_client collector interface: ``REGISTRY.register(shipper)``."""
        yield from self.metrics()

    def describe(self) -> Iterator[Metric]:
        """No up-front description: families are built at collection time."""
        return iter(())
