"""What a sink is: the :class:`Sink` protocol, the per-document :class:`ItemResult` and
:class:`SinkError`, shared by the shipper and the built-in sinks
(:class:`~exporter.events.opensearch_sink.OpenSearchSink`,
:class:`~exporter.events.file_sink.FileSink`).
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, Protocol

_USERINFO = re.compile(r"(?<=//)[^/@\s]+@")



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


class Sink(Protocol):
    """Where shipped events end up: :class:`~exporter.events.opensearch_sink.OpenSearchSink`
    or :class:`~exporter.events.file_sink.FileSink`.

    The shipper calls :meth:`setup` until it succeeds, then :meth:`send` per batch; a sink
    raises :class:`SinkError` (with its ``cause``) when it cannot take a batch at all, and
    otherwise answers each document with an :class:`ItemResult`.
    """

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

