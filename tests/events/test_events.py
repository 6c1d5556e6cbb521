"""The event model: content-derived ids, the document schema, validation."""

from __future__ import annotations

import dataclasses
import json
import logging
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest

from exporter.events import (
    SCHEMA_VERSION,
    Emitter,
    Event,
    EventKind,
    MemoryEmitter,
    NullEmitter,
    canonical_json,
    format_time,
    parse_time,
)
from exporter.logs import JSONFormatter
from exporter.probe import rfc3339

T0 = datetime(2024, 5, 1, 12, 0, 0, 123456, tzinfo=UTC)


def signing(**changes: object) -> Event:
    fields: dict[str, object] = {
        "kind": EventKind.SIGNING,
        "time": T0,
        "repository": "pypi",
        "endpoint": "primary",
        "role": "snapshot",
        "versions": {"snapshot": 42},
        "hashes": {"sha256": "ab" * 32},
        "keyids": ("k2", "k1"),
        "message": "snapshot version 42 signed by k1, k2",
        "durations": {"probe": 1.5},
        "details": {"threshold": 1, "signers": ["k1", "k2"]},
    }
    fields.update(changes)
    return Event(**fields)  # type: ignore[arg-type]


def test_event_id_is_derived_from_identifying_content() -> None:
    a, b = signing(), signing()
    assert a.event_id == b.event_id
    assert len(a.event_id) == 64 and int(a.event_id, 16) >= 0
    # message, durations and details do not identify the event
    assert signing(message="other", durations={"probe": 9}, details={}).event_id == a.event_id
    # everything that identifies it does
    for change in (
        {"kind": EventKind.ANOMALY},
        {"time": T0 + timedelta(microseconds=1)},
        {"repository": "other"},
        {"endpoint": "mirror"},
        {"role": "timestamp"},
        {"versions": {"snapshot": 43}},
        {"hashes": {"sha256": "cd" * 32}},
        {"keyids": ("k3",)},
        {"reason": "rollback"},
    ):
        assert signing(**change).event_id != a.event_id, change


def test_time_is_normalised_to_utc_and_keyids_to_a_sorted_set() -> None:
    plus_two = T0.astimezone(timezone(timedelta(hours=2)))
    event = signing(time=plus_two, keyids=("k2", "k1", "k2"))
    assert event.time.tzinfo is UTC and event.time == T0
    assert event.keyids == ("k1", "k2")
    assert event.event_id == signing().event_id


def test_document_schema_and_round_trip() -> None:
    event = signing(reason="new_version")
    document = event.to_document()
    assert document["schema_version"] == SCHEMA_VERSION
    assert document["@timestamp"] == document["time"] == "2024-05-01T12:00:00.123456Z"
    assert document["event_id"] == event.event_id
    assert document["kind"] == "signing"
    assert document["keyids"] == ["k1", "k2"]
    assert set(document) == {
        "event_id", "schema_version", "kind", "@timestamp", "time", "repository", "endpoint",
        "role", "versions", "hashes", "keyids", "reason", "message", "durations", "details",
    }  # fmt: skip
    json.dumps(document, allow_nan=False)  # JSON-safe
    again = Event.from_document(json.loads(json.dumps(document)))
    assert again == event and again.event_id == event.event_id
    assert again.to_document() == document


def test_from_document_refuses_tampering_and_newer_schemas() -> None:
    document = signing().to_document()
    with pytest.raises(ValueError, match="does not match"):
        Event.from_document({**document, "versions": {"snapshot": 1}})
    with pytest.raises(ValueError, match="schema_version"):
        Event.from_document({**document, "schema_version": SCHEMA_VERSION + 1})
    with pytest.raises(ValueError, match="malformed"):
        Event.from_document({"kind": "signing"})


def test_validation() -> None:
    with pytest.raises(ValueError, match="timezone-aware"):
        signing(time=datetime(2024, 5, 1))
    with pytest.raises(ValueError, match="JSON-safe"):
        signing(details={"when": datetime.now(UTC)})
    with pytest.raises(ValueError, match="finite"):
        signing(durations={"probe": float("nan")})
    with pytest.raises(ValueError, match="integer"):
        signing(versions={"snapshot": "42"})
    with pytest.raises(ValueError):
        signing(kind="no_such_kind")
    with pytest.raises(ValueError, match="repository"):
        signing(repository="")


def test_events_are_immutable() -> None:
    event = signing()
    with pytest.raises(dataclasses.FrozenInstanceError):
        event.role = "root"  # type: ignore[misc]
    with pytest.raises(TypeError):
        event.versions["snapshot"] = 1  # type: ignore[index]
    details = {"a": [1]}
    held = signing(details=details)
    details["a"].append(2)
    assert held.details["a"] == [1]


def test_times_are_rfc3339_utc_with_z() -> None:
    assert format_time(T0) == "2024-05-01T12:00:00.123456Z"
    assert parse_time("2024-05-01T14:00:00.123456+02:00") == T0
    with pytest.raises(ValueError):
        format_time(datetime(2024, 5, 1))


def test_one_rfc3339_formatter_for_events_findings_and_logs() -> None:
    """Events, findings/status JSON and logs word a moment with the one formatter; a naive
    datetime is refused everywhere (its zone would be a guess), not taken as local time."""
    moment = datetime(2024, 5, 1, 14, 0, 0, 123456, tzinfo=timezone(timedelta(hours=2)))
    assert format_time(moment) == rfc3339(moment, "microseconds") == "2024-05-01T12:00:00.123456Z"
    assert rfc3339(moment.replace(microsecond=0)) == "2024-05-01T12:00:00Z"
    record = logging.makeLogRecord({"msg": "m", "created": moment.timestamp()})
    assert json.loads(JSONFormatter().format(record))["time"] == "2024-05-01T12:00:00.123Z"
    with pytest.raises(ValueError, match="timezone-aware"):
        rfc3339(datetime(2024, 5, 1))


def test_every_kind_has_a_stable_name() -> None:
    assert {k.value for k in EventKind} >= {
        "verification", "signing", "key_rotation", "anomaly", "rollback", "signer_probe",
        "mirror_lag",
    }  # fmt: skip


def test_emitters_satisfy_the_protocol() -> None:
    memory = MemoryEmitter()
    for emitter in (memory, NullEmitter()):
        assert isinstance(emitter, Emitter)
        emitter.emit(signing())
    assert memory.events == [signing()]


def test_events_are_hashable_by_id() -> None:
    assert len({signing(), signing(), signing(role="root")}) == 2
    assert hash(signing(message="other")) == hash(signing())


def test_to_json_is_the_canonical_document_computed_once() -> None:
    event = signing(details={"success": True, "count": 3, "ratio": 0.5, "note": "ok"})
    text = event.to_json()
    assert text == canonical_json(event.to_document()).decode("utf-8")
    assert text.startswith('{"@timestamp":"2024-05-01T12:00:00.123456Z"')
    assert event.to_json() is text  # cached
    assert "_json" not in repr(event) and event == signing(
        details={"success": True, "count": 3, "ratio": 0.5, "note": "ok"})


@pytest.mark.parametrize(
    "details",
    [
        {"ratio": float("inf")},
        {"ratio": float("nan")},
        {1: "not a text key"},
        {"nested": {"list": [1, 2]}},
        {"text": "caf\u00e9 \U0001f600"},
        {"when": datetime(2024, 5, 1, tzinfo=UTC)},
    ],
)
def test_details_outside_the_flat_plain_fast_path_still_go_through_json(
    details: dict[Any, Any],
) -> None:
    try:
        expected = json.loads(canonical_json(details))
    except (TypeError, ValueError):
        with pytest.raises(ValueError, match="JSON-safe"):
            signing(details=details)
        return
    event = signing(details=details)
    assert dict(event.details) == expected
    assert event.to_document()["details"] == expected
    if "nested" in details:
        details["nested"]["list"].append(3)  # the event keeps a detached copy
        assert event.to_document()["details"] == {"nested": {"list": [1, 2]}}
