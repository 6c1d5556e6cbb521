"""Events: what happened, kept durably and shipped to a sink exactly once.

In: :class:`Event` values from producers (probe verdicts, history findings, signer probes via
:func:`signer_probe_event`), given to :meth:`Spool.emit` (never raises; False when it could
not spool) or :meth:`Spool.put` (raises :class:`SpoolError`). The :class:`Spool` is SQLite in
the state directory; the :class:`Shipper` thread moves its events to a :class:`Sink`
(:class:`OpenSearchSink`, or the :class:`FileSink` of JSON Lines) in batches, with retries
(:class:`Backoff`, seconds) and a dead-letter table for documents the sink refuses.
Times are aware UTC datetimes, written as RFC 3339 with microseconds.
Depends on probe, config, catalogue and sqlite_files.
"""

from exporter.events.file_sink import FileSink
from exporter.events.model import (
    SCHEMA_VERSION,
    Emitter,
    Event,
    EventKind,
    MemoryEmitter,
    NullEmitter,
    canonical_json,
    format_time,
    parse_time,
    signer_probe_event,
)
from exporter.events.opensearch_sink import OpenSearchSink
from exporter.events.shipper import Backoff, Shipper
from exporter.events.sinks import ItemResult, Outcome, Sink, SinkError
from exporter.events.spool import DeadLetter, Spool, SpooledEvent, SpoolError

__all__ = [
    "SCHEMA_VERSION",
    "Backoff",
    "DeadLetter",
    "Emitter",
    "Event",
    "EventKind",
    "FileSink",
    "ItemResult",
    "MemoryEmitter",
    "NullEmitter",
    "OpenSearchSink",
    "Outcome",
    "Shipper",
    "Sink",
    "SinkError",
    "Spool",
    "SpoolError",
    "SpooledEvent",
    "canonical_json",
    "format_time",
    "parse_time",
    "signer_probe_event",
]
