"""What the history reveals: :class:`Finding` values (kind, severity, the event each becomes)
and :class:`RootVersion`, the root versions a repository served.

Produced by :meth:`exporter.history.HistoryStore.observe`; the rules that produce each kind are
in :mod:`exporter.history._observation`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from typing import Any

from exporter.events import Event, EventKind
from exporter.probe import RoleKeys, rfc3339

__all__ = ["Finding", "FindingKind", "RootVersion", "Severity"]

class FindingKind(StrEnum):
    """What a finding reports."""

    ROLLBACK = "rollback"
    FREEZE = "freeze"
    EQUIVOCATION = "equivocation"
    UNKNOWN_SIGNER = "unknown_signer"
    EXPIRY_BEYOND_POLICY = "expiry_beyond_policy"
    VERSION_JUMP = "version_jump"
    KEY_ROTATION = "key_rotation"
    NEW_VERSION = "new_version"
    MIRROR_LAG_STARTED = "mirror_lag_started"
    MIRROR_CAUGHT_UP = "mirror_caught_up"


class Severity(StrEnum):
    """How urgent a finding is."""

    CRITICAL = "critical"
    WARNING = "warning"
    INFO = "info"


_SEVERITY: dict[FindingKind, Severity] = {
    FindingKind.ROLLBACK: Severity.CRITICAL,
    FindingKind.EQUIVOCATION: Severity.CRITICAL,
    FindingKind.UNKNOWN_SIGNER: Severity.CRITICAL,
    FindingKind.FREEZE: Severity.WARNING,
    FindingKind.EXPIRY_BEYOND_POLICY: Severity.WARNING,
    FindingKind.VERSION_JUMP: Severity.WARNING,
    FindingKind.KEY_ROTATION: Severity.INFO,
    FindingKind.NEW_VERSION: Severity.INFO,
    FindingKind.MIRROR_LAG_STARTED: Severity.INFO,
    FindingKind.MIRROR_CAUGHT_UP: Severity.INFO,
}


#: The event kind of each finding kind (the finding's kind becomes the event's ``reason``).
_EVENT_KINDS: dict[FindingKind, EventKind] = {
    FindingKind.ROLLBACK: EventKind.ROLLBACK,
    FindingKind.FREEZE: EventKind.ROLLBACK,
    FindingKind.EQUIVOCATION: EventKind.ANOMALY,
    FindingKind.UNKNOWN_SIGNER: EventKind.ANOMALY,
    FindingKind.EXPIRY_BEYOND_POLICY: EventKind.ANOMALY,
    FindingKind.VERSION_JUMP: EventKind.ANOMALY,
    FindingKind.KEY_ROTATION: EventKind.KEY_ROTATION,
    FindingKind.NEW_VERSION: EventKind.SIGNING,
    FindingKind.MIRROR_LAG_STARTED: EventKind.MIRROR_LAG,
    FindingKind.MIRROR_CAUGHT_UP: EventKind.MIRROR_LAG,
}


@dataclass(frozen=True)
class Finding:
    """One thing the history revealed, self-describing (it becomes an event as is).

    ``versions`` names the versions involved (``previous``/``current``, ``primary``/``mirror``,
    ``old_root``/``new_root``), ``hashes`` the content hashes, ``keyids`` the keys concerned
    (signers of a new version, unknown signers, keys a rotation authorizes now) and ``details``
    everything else (for ``key_rotation``: ``added``, ``removed``, ``old_threshold``,
    ``new_threshold``).
    """

    kind: FindingKind
    repository: str
    endpoint: str
    role: str | None
    time: datetime
    message: str
    versions: Mapping[str, int] = field(default_factory=dict)
    hashes: Mapping[str, str] = field(default_factory=dict)
    keyids: tuple[str, ...] = ()
    details: Mapping[str, Any] = field(default_factory=dict)

    @property
    def severity(self) -> Severity:
        """``critical`` for attacks, ``warning`` for policy breaches, ``info`` otherwise."""
        return _SEVERITY[self.kind]

    def to_event(self) -> Event:
        """The event recording this finding; ``reason`` is the finding's kind. Its id is
        derived from the content (time included), so the same finding is the same event."""
        return Event(
            kind=_EVENT_KINDS[self.kind],
            time=self.time,
            repository=self.repository,
            endpoint=self.endpoint,
            role=self.role,
            versions=self.versions,
            hashes=self.hashes,
            keyids=self.keyids,
            reason=str(self.kind),
            message=self.message,
            details={**self.details, "severity": str(self.severity)},
        )

    def to_json(self) -> dict[str, Any]:
        """JSON-ready finding, time as RFC 3339 UTC."""
        return {
            "kind": str(self.kind),
            "severity": str(self.severity),
            "repository": self.repository,
            "endpoint": self.endpoint,
            "role": self.role,
            "time": rfc3339(self.time),
            "message": self.message,
            "versions": dict(self.versions),
            "hashes": dict(self.hashes),
            "keyids": list(self.keyids),
            "details": dict(self.details),
        }


@dataclass(frozen=True)
class RootVersion:
    """One root version of a repository, for dashboards, annotations and signer probes."""

    version: int
    first_seen: datetime
    sha256: str
    endpoint: str  #: where it was first seen
    #: Keys and threshold of every top-level role (None when the probe did not report them).
    role_keys: Mapping[str, RoleKeys] | None

