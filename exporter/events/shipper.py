"""The shipper: a thread that moves events from the spool to the sink and loses nothing.

Sinks
    :mod:`exporter.events.sinks` (the protocol), :mod:`exporter.events.opensearch_sink` and
    :mod:`exporter.events.file_sink`.

Batches
    The shipper sends a batch when ``batch_size`` events are waiting, or when the oldest has
    waited ``batch_interval``. At the end of a burst (a full batch just went out) the partial
    rest ships as soon as no new event arrived for ``burst_idle`` (50 ms), so a burst does not
    end with a ``batch_interval`` pause; a trickle of events still waits for the interval.
    A shipper that empties the spool while the producers are still in their burst (an event
    came within ``burst_idle``) stays in the burst and looks again after ``burst_idle``.
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

import logging
import random
import sqlite3
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Protocol

from prometheus_client.core import Metric

from exporter import catalogue
from exporter.config import Config
from exporter.events.file_sink import FileSink
from exporter.events.model import Event
from exporter.events.opensearch_sink import OpenSearchSink
from exporter.events.sinks import ItemResult, Outcome, Sink, SinkError, redact
from exporter.events.spool import Spool, SpooledEvent, SpoolError

log = logging.getLogger(__name__)

#: Default batch settings when no OpenSearch section gives them (the file sink).
DEFAULT_BATCH_SIZE = 500
DEFAULT_BATCH_INTERVAL = 2.0
#: After a burst (a full batch shipped), the rest ships once no event came for this long.
DEFAULT_BURST_IDLE = 0.05



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
    """Ships spooled events to a sink in batches, on its own thread, until stopped.

    In: the :class:`~exporter.events.spool.Spool` to read, the :class:`Sink` to write,
    ``batch_size`` (events), ``batch_interval`` and ``burst_idle`` (seconds), the retry
    :class:`Backoff`, and optionally the ``outbox`` whose events are moved into the spool
    first (the history store). Out: events in the sink, each exactly once; the
    ``tuf_exporter_events_*`` and ``tuf_exporter_shipper_*`` families (:meth:`collect`).
    Errors: none escape the thread (see "Survival" above); :meth:`stop` returns whether the
    spool was drained.
    """

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
            if stopping:
                return False
            if self._in_burst and time.monotonic() - self._last_spooled < self.burst_idle:
                # caught up with producers still in their burst: the burst goes on, and its
                # tail ships once they went quiet (not a batch_interval later)
                self._sleep(self.burst_idle)
                return True
            self._in_burst = False
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

    def _ack(self, delivered: list[SpooledEvent]) -> int:
        """Acknowledge ``delivered`` in the spool and count them as shipped (on the acker
        thread); returns how many were still spooled."""
        acked = self.spool.ack(delivered)
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
        delivered: list[SpooledEvent] = []
        causes: Counter[str] = Counter()
        first_error = ""
        for item in batch:
            result = by_id.get(item.event_id)
            if result is None:
                causes["no_result"] += 1
                continue
            if result.outcome is Outcome.OK:
                delivered.append(item)
            elif result.outcome is Outcome.REJECT:
                self.spool.dead_letter(item, result.error, result.status)
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
        """prometheus_client's collector interface (the service registers the shipper): the
        families of :meth:`metrics`. No ``describe()``: a registry with ``auto_describe``
        learns the names from one collection, so ``/metrics?name[]=`` finds them."""
        yield from self.metrics()

