"""The event model: what the exporter tells the event sink (OpenSearch or a JSON Lines file).

An :class:`Event` is an immutable, versioned record. Its :attr:`Event.event_id` is derived from
its content (the SHA-256 of the canonical JSON of the fields that identify it), never random,
so emitting or shipping the same event twice can never create two documents: the spool ignores
a second insert and OpenSearch answers ``409`` to a second ``create`` with the same ``_id``.

Producers (the prober, the history store, the signer probes) only see the :class:`Emitter`
protocol: ``emit(event)`` returns quickly and never raises into the caller.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import StrEnum
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

from exporter.probe import rfc3339

if TYPE_CHECKING:
    from exporter.probe import SignerResult

#: Version of the document schema written by :meth:`Event.to_document`. Bump it on any change
#: that is not purely additive; :meth:`Event.from_document` refuses newer documents.
SCHEMA_VERSION = 1


class EventKind(StrEnum):
    """What happened."""

    VERIFICATION = "verification"  #: a probe result (success or failure with reason)
    SIGNING = "signing"  #: a new version of a role was observed, with the keys that signed it
    KEY_ROTATION = "key_rotation"  #: a root version changed a role's keys or threshold
    ANOMALY = "anomaly"  #: equivocation, unknown_signer, expiry_beyond_policy, version_jump
    ROLLBACK = "rollback"  #: a lower version than already seen, or a frozen online role
    SIGNER_PROBE = "signer_probe"  #: an active signing probe result
    MIRROR_LAG = "mirror_lag"  #: a mirror fell behind the primary or caught up again
    #: a client view's verdict changed (success <-> failure, or another reason or role)
    CLIENT_VIEW = "client_view"


def format_time(value: datetime) -> str:
    """The time of an event document: :func:`exporter.probe.results.rfc3339` with microseconds
    always (``2024-05-01T12:00:00.000000Z``: a fixed width, part of the event id)."""
    return rfc3339(value, "microseconds")


def parse_time(text: str) -> datetime:
    """Parse an RFC 3339 time (``Z`` or an offset) into an aware UTC datetime."""
    value = datetime.fromisoformat(text.replace("Z", "+00:00").replace("z", "+00:00"))
    if value.tzinfo is None:
        raise ValueError(f"time {text!r} has no timezone")
    return value.astimezone(UTC)


def canonical_json(value: Any) -> bytes:
    """Deterministic JSON bytes: sorted keys, no spaces, UTF-8, no NaN or infinity."""
    return json.dumps(
        value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False
    ).encode("utf-8")


def _plain_scalar(value: Any) -> bool:
    """True for a value JSON keeps as it is: None, bool, int, a finite float, ASCII text."""
    kind = type(value)
    if kind is str:
        return bool(value.isascii())
    if kind is float:
        return math.isfinite(value)
    return kind is int or kind is bool or value is None


def _json_safe(value: Any, where: str) -> Any:
    """A detached, plain-JSON copy of ``value``; ValueError names ``where`` when it is not."""
    if type(value) is dict and all(
        type(k) is str and k.isascii() and _plain_scalar(v) for k, v in value.items()
    ):
        return dict(value)  # flat and plain (the common case): a copy is already detached
    try:
        return json.loads(canonical_json(value))
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{where} is not JSON-safe: {exc}") from None


def _frozen(mapping: Mapping[str, Any]) -> Mapping[str, Any]:
    return MappingProxyType(dict(mapping))


@dataclass(frozen=True)
class Event:
    """One event. Construct with keyword arguments; everything but kind, time and repository
    is optional. Mappings are copied and made read-only; ``keyids`` are sorted and de-duplicated.
    """

    kind: EventKind
    time: datetime
    repository: str
    endpoint: str | None = None
    role: str | None = None
    #: Versions involved, name -> version (``{"timestamp": 42}``, ``{"seen": 7, "previous": 9}``).
    versions: Mapping[str, int] = field(default_factory=dict)
    #: Hashes of the metadata involved, ``"<role>.<algorithm>"`` or algorithm -> hex digest.
    hashes: Mapping[str, str] = field(default_factory=dict)
    #: Key IDs involved (the keys that signed a version, the keys a rotation added, ...).
    keyids: tuple[str, ...] = ()
    #: A machine-readable reason (a failure reason, an anomaly kind, ...).
    reason: str | None = None
    #: A human-readable message; not part of the identity.
    message: str = ""
    #: Durations in seconds, name -> seconds; not part of the identity.
    durations: Mapping[str, float] = field(default_factory=dict)
    #: Free JSON-safe details; not part of the identity.
    details: Mapping[str, Any] = field(default_factory=dict)
    schema_version: int = SCHEMA_VERSION
    #: SHA-256 (hex) of the canonical JSON of the identifying fields.
    event_id: str = field(init=False, compare=False)

    def __post_init__(self) -> None:
        kind = EventKind(self.kind)
        if self.time.tzinfo is None or self.time.utcoffset() is None:
            raise ValueError("Event.time must be timezone-aware")
        if not self.repository:
            raise ValueError("Event.repository must not be empty")
        versions = {}
        for name, version in self.versions.items():
            if isinstance(version, bool) or not isinstance(version, int):
                raise ValueError(f"Event.versions[{name!r}] must be an integer, got {version!r}")
            versions[str(name)] = version
        durations = {}
        for name, seconds in self.durations.items():
            if isinstance(seconds, bool) or not isinstance(seconds, int | float):
                raise ValueError(f"Event.durations[{name!r}] must be a number, got {seconds!r}")
            if not math.isfinite(seconds):
                raise ValueError(f"Event.durations[{name!r}] must be finite")
            durations[str(name)] = float(seconds)
        set_ = object.__setattr__
        set_(self, "kind", kind)
        set_(self, "time", self.time.astimezone(UTC))
        set_(self, "versions", _frozen(versions))
        set_(self, "hashes", _frozen({str(k): str(v) for k, v in self.hashes.items()}))
        set_(self, "keyids", tuple(sorted(set(self.keyids))))
        set_(self, "durations", _frozen(durations))
        set_(self, "details", _frozen(_json_safe(dict(self.details), "Event.details")))
        set_(self, "event_id", hashlib.sha256(canonical_json(self.identity())).hexdigest())
        set_(self, "_json", None)  # to_json()'s cache; not a field (not compared, not shown)

    def __hash__(self) -> int:
        return hash(self.event_id)

    def identity(self) -> dict[str, Any]:
        """The fields that identify the event; :attr:`event_id` is the hash of these."""
        return {
            "kind": str(self.kind),
            "time": format_time(self.time),
            "repository": self.repository,
            "endpoint": self.endpoint,
            "role": self.role,
            "versions": dict(self.versions),
            "hashes": dict(self.hashes),
            "keyids": list(self.keyids),
            "reason": self.reason,
        }

    def to_document(self) -> dict[str, Any]:
        """The JSON document written to OpenSearch or the JSON Lines file."""
        stamp = format_time(self.time)
        return {
            "event_id": self.event_id,
            "schema_version": self.schema_version,
            "kind": str(self.kind),
            "@timestamp": stamp,
            "time": stamp,
            "repository": self.repository,
            "endpoint": self.endpoint,
            "role": self.role,
            "versions": dict(self.versions),
            "hashes": dict(self.hashes),
            "keyids": list(self.keyids),
            "reason": self.reason,
            "message": self.message,
            "durations": dict(self.durations),
            "details": _json_safe(dict(self.details), "Event.details"),
        }

    def to_json(self) -> str:
        """The canonical JSON text of :meth:`to_document` (what the spool stores and the
        sinks ship verbatim); computed once per event."""
        text: str | None = self.__dict__.get("_json")
        if text is None:
            text = canonical_json(self.to_document()).decode("utf-8")
            object.__setattr__(self, "_json", text)
        return text

    @classmethod
    def from_document(cls, document: Mapping[str, Any]) -> Event:
        """Rebuild an event from :meth:`to_document` output.

        Raises ValueError for a newer schema version, a malformed document, or an ``event_id``
        that does not match the content (a tampered or corrupted document).
        """
        version = document.get("schema_version", SCHEMA_VERSION)
        if not isinstance(version, int) or version > SCHEMA_VERSION:
            raise ValueError(f"unsupported event schema_version {version!r}")
        try:
            event = cls(
                kind=EventKind(document["kind"]),
                time=parse_time(document.get("time") or document["@timestamp"]),
                repository=document["repository"],
                endpoint=document.get("endpoint"),
                role=document.get("role"),
                versions=document.get("versions") or {},
                hashes=document.get("hashes") or {},
                keyids=tuple(document.get("keyids") or ()),
                reason=document.get("reason"),
                message=document.get("message") or "",
                durations=document.get("durations") or {},
                details=document.get("details") or {},
                schema_version=version,
            )
        except (KeyError, TypeError, AttributeError) as exc:
            raise ValueError(f"malformed event document: {exc!r}") from None
        stored = document.get("event_id")
        if stored is not None and stored != event.event_id:
            raise ValueError(f"event_id {stored!r} does not match the document's content")
        return event


def signer_probe_event(result: SignerResult) -> Event:
    """The ``signer_probe`` event of one signing probe (from :mod:`exporter.probe.signers`).

    Its identity includes the challenge hash, so every probe is a distinct event, even for two
    signers probed at the same time. Durations in seconds (``probe``, and ``sign`` when the
    signer signed); ``details`` holds the signer's name, ``up`` and ``authorized``.
    """
    durations = {"probe": result.duration_seconds}
    if result.sign_seconds is not None:
        durations["sign"] = result.sign_seconds
    return Event(
        kind=EventKind.SIGNER_PROBE,
        time=result.started_at,
        repository=result.repository,
        role=result.role,
        versions={} if result.metadata_version is None else {
            "delegator": result.metadata_version},
        hashes={} if result.challenge_sha256 is None else {
            "challenge.sha256": result.challenge_sha256},
        keyids=() if result.keyid is None else (result.keyid,),
        reason=None if result.reason is None else str(result.reason),
        message=result.message,
        durations=durations,
        details={"signer": result.signer, "up": result.up, "authorized": result.authorized},
    )


@runtime_checkable
class Emitter(Protocol):
    """What producers call. ``emit`` returns quickly and never raises into the caller."""

    def emit(self, event: Event) -> None:
        """Record ``event`` durably (or drop and count it); never raise."""


class NullEmitter:
    """An emitter that discards events (for producers run without an event pipeline)."""

    def emit(self, event: Event) -> None:
        """Discard ``event``."""


class MemoryEmitter:
    """An emitter that keeps events in a list, for producers' tests."""

    def __init__(self) -> None:
        self.events: list[Event] = []

    def emit(self, event: Event) -> None:
        """Append ``event`` to :attr:`events`."""
        self.events.append(event)
