"""The shipper against a fake OpenSearch over real HTTP, and the JSON Lines file sink."""

from __future__ import annotations

import json
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from support import poll
from support.opensearch_fake import FakeOpenSearch

from exporter import catalogue
from exporter.config import Config, OpenSearch
from exporter.events import Backoff, Event, EventKind, FileSink, Shipper, Spool, SpooledEvent
from exporter.events.opensearch_sink import (
    OpenSearchSink,
    index_template,
    read_credentials,
    timevalue,
)
from exporter.events.sinks import ItemResult, Outcome, redact

T0 = datetime(2024, 5, 1, 23, 59, 58, tzinfo=UTC)
FAST = Backoff(initial=0.02, maximum=0.2)


def event(i: int, repository: str = "repo") -> Event:
    return Event(
        kind=EventKind.VERIFICATION,
        time=T0 + timedelta(seconds=i),
        repository=repository,
        endpoint="primary",
        versions={"timestamp": i},
        durations={"probe": 0.25},
    )



ShipperFactory = Callable[..., Shipper]


@pytest.fixture
def make_shipper(fake: FakeOpenSearch, spool: Spool) -> Iterator[ShipperFactory]:
    started: list[Shipper] = []

    def make(**kwargs: Any) -> Shipper:
        settings = OpenSearch(hosts=(fake.url,), index_prefix="tuf-events")
        sink = kwargs.pop("sink", None) or OpenSearchSink(settings, timeout=2.0)
        kwargs.setdefault("batch_size", 10)
        kwargs.setdefault("batch_interval", 0.05)
        kwargs.setdefault("backoff", FAST)
        shipper = Shipper(kwargs.pop("spool", spool), sink, **kwargs)
        shipper.start()
        started.append(shipper)
        return shipper

    try:
        yield make
    finally:
        for shipper in started:
            shipper.stop(timeout=1.0)


def expect_exactly_once(fake: FakeOpenSearch, events: list[Event]) -> None:
    wanted = {e.event_id for e in events}
    poll(lambda: fake.ids() >= wanted)
    assert fake.ids() == wanted
    assert len(fake.documents) == len(events)
    assert all(count == 1 for count in fake.created.values())


def test_ships_to_daily_indices_with_create_by_id(
    fake: FakeOpenSearch, spool: Spool, make_shipper: ShipperFactory
) -> None:
    shipper = make_shipper()
    events = [event(i) for i in range(25)]
    for e in events:
        spool.emit(e)
    expect_exactly_once(fake, events)
    assert {index for index, _ in fake.documents} == {
        "tuf-events-2024.05.01",
        "tuf-events-2024.05.02",
    }
    stored = fake.documents[("tuf-events-2024.05.01", events[0].event_id)]
    assert stored == events[0].to_document()
    poll(lambda: len(spool) == 0)
    assert shipper.stats()["shipped"] == 25


def test_versions_past_int64_ship_exactly_and_map_to_keyword_and_number(
    fake: FakeOpenSearch, spool: Spool, make_shipper: ShipperFactory
) -> None:
    big = {"previous": 2**63 - 1, "current": 2**63 + 5, "far": 10**30}
    jump = Event(kind=EventKind.ANOMALY, time=T0, repository="repo", endpoint="primary",
                 role="timestamp", versions=big, reason="version_jump")
    make_shipper()
    spool.emit(jump)
    expect_exactly_once(fake, [jump])
    assert fake.documents[("tuf-events-2024.05.01", jump.event_id)]["versions"] == big
    # a long would refuse 2**63 + 5: exact digits in a keyword, a number for ranges
    (versions,) = [t["versions"] for t in index_template("tuf-events")["template"]["mappings"]
                   ["dynamic_templates"] if "versions" in t]
    assert versions["mapping"]["type"] == "keyword"
    assert versions["mapping"]["fields"]["number"] == {"type": "unsigned_long",
                                                       "ignore_malformed": True}
    assert versions["match_mapping_type"] == "*"


def test_server_down_for_a_while_then_back(
    fake: FakeOpenSearch, spool: Spool, make_shipper: ShipperFactory
) -> None:
    shipper = make_shipper()
    first = [event(i) for i in range(10)]
    for e in first:
        spool.emit(e)
    expect_exactly_once(fake, first)
    fake.down()
    more = [event(i) for i in range(10, 40)]
    for e in more:
        spool.emit(e)
    poll(lambda: shipper.stats()["errors"].get("connection", 0) >= 3)
    assert len(spool) == 30
    fake.up()
    expect_exactly_once(fake, first + more)
    poll(lambda: len(spool) == 0)


def test_setup_waits_for_the_server(
    fake: FakeOpenSearch, spool: Spool, make_shipper: ShipperFactory
) -> None:
    fake.down()
    spool.emit(event(1))
    shipper = make_shipper()
    poll(lambda: shipper.stats()["errors"].get("setup", 0) >= 2)
    fake.up()
    expect_exactly_once(fake, [event(1)])
    assert "tuf-events" in fake.templates and "tuf-events-retention" in fake.policies


def test_429_and_500_are_retried_and_nothing_doubles(
    fake: FakeOpenSearch, spool: Spool, make_shipper: ShipperFactory
) -> None:
    shipper = make_shipper()
    poll(lambda: "tuf-events" in fake.templates)
    fake.fail_next(2, 429)
    fake.fail_next(2, 500)
    fake.fail_items(3, 429)
    fake.fail_items(2, 503)
    events = [event(i) for i in range(30)]
    for e in events:
        spool.emit(e)
    expect_exactly_once(fake, events)
    errors = shipper.stats()["errors"]
    assert errors.get("throttled", 0) >= 2 and errors.get("server_error", 0) >= 2
    poll(lambda: len(spool) == 0)
    assert spool.dropped() == {}


def test_a_conflict_means_already_there(
    fake: FakeOpenSearch, spool: Spool, make_shipper: ShipperFactory, tmp_path: Path
) -> None:
    events = [event(i) for i in range(5)]
    make_shipper()
    for e in events:
        spool.emit(e)
    expect_exactly_once(fake, events)
    # the same events again from a second spool (as after a crash before the ack)
    with Spool(tmp_path / "other.sqlite") as other:
        shipper = make_shipper(spool=other)
        for e in events:
            other.emit(e)
        poll(lambda: len(other) == 0)
        # the count moves just after the acknowledgement that emptied the spool
        poll(lambda: shipper.stats()["shipped"] == 5)
    assert sum(fake.conflicts.values()) == 5
    expect_exactly_once(fake, events)


def test_a_rejected_document_is_set_aside_while_others_flow(
    fake: FakeOpenSearch, spool: Spool, make_shipper: ShipperFactory
) -> None:
    fake.reject(lambda doc: doc["repository"] == "bad")
    shipper = make_shipper()
    good = [event(i) for i in range(12)]
    bad = event(100, repository="bad")
    for e in [*good[:6], bad, *good[6:]]:
        spool.emit(e)
    expect_exactly_once(fake, good)
    poll(lambda: len(spool) == 0)
    letters = spool.dead_letters()
    assert [d.event_id for d in letters] == [bad.event_id]
    assert letters[0].status == 400 and "mapper_parsing_exception" in letters[0].error
    assert spool.dropped() == {"rejected": 1}
    families = {f.name: f for f in shipper.metrics()}
    dropped = families["tuf_exporter_events_dropped"].samples
    assert {s.labels["cause"]: s.value for s in dropped if s.value} == {"rejected": 1}


def test_template_and_retention_policy(
    fake: FakeOpenSearch, spool: Spool, make_shipper: ShipperFactory
) -> None:
    make_shipper()
    poll(lambda: "tuf-events" in fake.templates)
    template = fake.templates["tuf-events"]
    assert template == index_template("tuf-events")
    properties = template["template"]["mappings"]["properties"]
    for name in ("kind", "repository", "endpoint", "role", "reason", "keyids", "event_id"):
        assert properties[name] == {"type": "keyword"}, name
    assert properties["@timestamp"]["type"] == properties["time"]["type"] == "date"
    policy = fake.policies["tuf-events-retention"]["policy"]
    assert policy["states"][0]["transitions"][0]["conditions"] == {"min_index_age": "90d"}
    assert policy["ism_template"][0]["index_patterns"] == ["tuf-events-*"]
    # a restart with another retention updates the existing policy instead of failing
    sink = OpenSearchSink(
        OpenSearch(hosts=(fake.url,), index_prefix="tuf-events", retention=7 * 86400)
    )
    try:
        sink.setup()
    finally:
        sink.close()
    policy = fake.policies["tuf-events-retention"]["policy"]
    assert policy["states"][0]["transitions"][0]["conditions"] == {"min_index_age": "7d"}
    assert timevalue(90) == "90s" and timevalue(7200) == "2h"


def test_credentials_come_from_the_environment_or_a_file(
    fake: FakeOpenSearch, tmp_path: Path
) -> None:
    settings = OpenSearch(hosts=(fake.url,), username_env="OS_USER", password_env="OS_PASS")
    env = {"OS_USER": "shipper", "OS_PASS": "s3cret"}
    assert read_credentials(settings, env) == ("shipper", "s3cret")
    with pytest.raises(ValueError, match="OS_PASS") as info:
        read_credentials(settings, {"OS_USER": "shipper"})
    assert "s3cret" not in str(info.value)
    secret = tmp_path / "password"
    secret.write_text("from-file\n")
    from_file = OpenSearch(hosts=(fake.url,), username_env="OS_USER", password_file=secret)
    assert read_credentials(from_file, env) == ("shipper", "from-file")
    sink = OpenSearchSink(settings, environ=env)
    try:
        sink.setup()
    finally:
        sink.close()
    assert fake.authorizations[-1] is not None and fake.authorizations[-1].startswith("Basic ")
    assert redact("GET http://user:pw@host:9200/x") == "GET http://***@host:9200/x"


def test_stop_flushes_what_it_can(
    fake: FakeOpenSearch, spool: Spool, make_shipper: ShipperFactory
) -> None:
    shipper = make_shipper(batch_size=100, batch_interval=30.0)
    poll(lambda: "tuf-events" in fake.templates)
    events = [event(i) for i in range(7)]
    for e in events:
        spool.emit(e)
    assert shipper.stop(timeout=5.0) is True
    assert not shipper.running
    expect_exactly_once(fake, events)


def test_stop_with_the_server_down_keeps_the_backlog(
    fake: FakeOpenSearch, spool: Spool, make_shipper: ShipperFactory
) -> None:
    shipper = make_shipper()
    poll(lambda: "tuf-events" in fake.templates)
    fake.down()
    spool.emit(event(1))
    started = time.monotonic()
    assert shipper.stop(timeout=0.5) is False
    assert time.monotonic() - started < 3
    assert len(spool) == 1


def test_metrics_are_the_six_catalogue_families(
    fake: FakeOpenSearch, spool: Spool, make_shipper: ShipperFactory
) -> None:
    shipper = make_shipper()
    spool.emit(event(1))
    expect_exactly_once(fake, [event(1)])
    poll(lambda: shipper.stats()["shipped"] == 1)
    names = {f.name for f in shipper.collect()}
    expected = {
        catalogue.spec(n).family_name
        for n in (
            "tuf_exporter_events_total",
            "tuf_exporter_events_shipped_total",
            "tuf_exporter_events_spooled",
            "tuf_exporter_events_dropped_total",
            "tuf_exporter_shipper_errors_total",
            "tuf_exporter_shipper_last_success_timestamp_seconds",
        )
    }
    assert names == expected
    families = {f.name: f for f in shipper.metrics()}
    assert families["tuf_exporter_events"].samples[0].labels == {"kind": "verification"}
    assert families["tuf_exporter_events_shipped"].samples[0].value == 1
    assert families["tuf_exporter_shipper_last_success_timestamp_seconds"].samples[0].value > 0


_CHILD = """
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path
from exporter.config import OpenSearch
from exporter.events import Event, EventKind
from exporter.events import OpenSearchSink
from exporter.events import Backoff, Shipper
from exporter.events import Spool

spool = Spool(Path(sys.argv[1]))
t0 = datetime(2024, 5, 1, tzinfo=UTC)
for i in range(int(sys.argv[3])):
    spool.emit(Event(kind=EventKind.ROLLBACK, time=t0 + timedelta(seconds=i), repository="r"))
print("spooled", flush=True)
sink = OpenSearchSink(OpenSearch(hosts=(sys.argv[2],), index_prefix="tuf-events"))
shipper = Shipper(spool, sink, batch_size=5, batch_interval=0.01, backoff=Backoff(0.01, 0.05))
shipper.start()
import time
while True:
    time.sleep(1)
"""


def test_sigkill_with_a_backlog_then_restart(fake: FakeOpenSearch, tmp_path: Path) -> None:
    total = 200
    script = tmp_path / "child.py"
    script.write_text(_CHILD)
    path = tmp_path / "spool.sqlite"
    fake.delay = 0.02  # ship slowly
    child = subprocess.Popen(
        [sys.executable, str(script), str(path), fake.url, str(total)],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert child.stdout is not None
        assert child.stdout.readline().strip() == "spooled"
        poll(lambda: len(fake.ids()) >= 30, timeout=20)
        child.send_signal(signal.SIGKILL)
        child.wait(10)
    finally:
        if child.poll() is None:
            child.kill()
            child.wait(10)
        if child.stdout is not None:
            child.stdout.close()
    before = len(fake.ids())
    assert 30 <= before < total  # killed with a backlog
    fake.delay = 0.0
    t0 = datetime(2024, 5, 1, tzinfo=UTC)
    expected = {
        Event(kind=EventKind.ROLLBACK, time=t0 + timedelta(seconds=i), repository="r").event_id
        for i in range(total)
    }
    with Spool(path) as spool:
        assert 0 < len(spool) <= total - before + 5  # at most one batch in flight not acked
        sink = OpenSearchSink(OpenSearch(hosts=(fake.url,), index_prefix="tuf-events"))
        shipper = Shipper(spool, sink, batch_size=20, batch_interval=0.01, backoff=FAST)
        shipper.start()
        try:
            poll(lambda: fake.ids() == expected)
            poll(lambda: len(spool) == 0)
        finally:
            shipper.stop(timeout=1.0)
    assert len(fake.documents) == total
    assert all(count == 1 for count in fake.created.values())


# ---------------------------------------------------------------------------------------------
# The JSON Lines file sink


def read_lines(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_file_sink_through_the_spool_and_shipper(tmp_path: Path) -> None:
    config = Config(repositories=(), state_dir=tmp_path)
    with Spool(tmp_path / "spool.sqlite") as spool:
        shipper = Shipper.from_config(config, spool, batch_interval=0.02, backoff=FAST)
        assert isinstance(shipper.sink, FileSink)
        assert shipper.sink.path == tmp_path / "events.jsonl"
        shipper.start()
        try:
            events = [event(i) for i in range(15)]
            for e in events:
                spool.emit(e)
            poll(lambda: len(spool) == 0)
        finally:
            assert shipper.stop(timeout=2.0)
    lines = read_lines(tmp_path / "events.jsonl")
    assert [line["event_id"] for line in lines] == [e.event_id for e in events]
    assert lines[0] == events[0].to_document()
    assert all(line["@timestamp"].endswith("Z") for line in lines)


def test_file_sink_rotates_by_size_and_keeps_backups(tmp_path: Path) -> None:
    path = tmp_path / "events.jsonl"
    one = len(json.dumps(event(0).to_document())) + 1
    sink = FileSink(path, max_bytes=one * 4, backups=2)
    sink.setup()
    events = [event(i) for i in range(20)]
    for e in events:
        sink.send([e.to_document()])
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "events.jsonl", "events.jsonl.1", "events.jsonl.2",
    ]  # fmt: skip
    seen: list[str] = []
    for name in ("events.jsonl.2", "events.jsonl.1", "events.jsonl"):
        lines = read_lines(tmp_path / name)
        assert 0 < len(lines) <= 4
        assert (tmp_path / name).stat().st_size <= one * 4 + 8
        for line in lines:
            assert Event.from_document(line).event_id == line["event_id"]
        seen += [line["event_id"] for line in lines]
    assert seen == [e.event_id for e in events[-len(seen) :]]  # newest kept, in order
    no_backups = FileSink(tmp_path / "solo.jsonl", max_bytes=one * 2, backups=0)
    for e in events[:5]:
        no_backups.send([e.to_document()])
    assert sorted(p.name for p in tmp_path.glob("solo*")) == ["solo.jsonl"]


def test_file_sink_repairs_a_torn_tail_and_does_not_write_twice(tmp_path: Path) -> None:
    path = tmp_path / "events.jsonl"
    events = [event(i) for i in range(4)]
    first = FileSink(path, max_bytes=1 << 20, backups=1)
    first.setup()
    first.send([e.to_document() for e in events[:3]])
    with path.open("ab") as handle:  # a crash in the middle of the next write
        handle.write(b'{"event_id": "torn')
    # restart: the last batch was written but (say) never acknowledged, so it comes again
    again = FileSink(path, max_bytes=1 << 20, backups=1)
    again.setup()
    again.send([e.to_document() for e in events])
    assert [line["event_id"] for line in read_lines(path)] == [e.event_id for e in events]


def test_a_partial_batch_waits_for_the_interval_and_a_full_one_ships_at_once(
    fake: FakeOpenSearch, spool: Spool, make_shipper: ShipperFactory
) -> None:
    make_shipper(batch_size=10, batch_interval=30.0)
    poll(lambda: "tuf-events" in fake.templates)
    events = [event(i) for i in range(10)]
    for e in events[:9]:
        spool.emit(e)
    time.sleep(0.3)
    assert fake.ids() == set()  # 9 < batch_size: no wake-up, waits for the interval
    spool.emit(events[9])  # the backlog reaches the batch size: shipped without waiting
    expect_exactly_once(fake, events)


def test_new_events_do_not_cut_a_backoff_short(
    fake: FakeOpenSearch, spool: Spool, make_shipper: ShipperFactory
) -> None:
    shipper = make_shipper(batch_size=2, backoff=Backoff(initial=30.0, maximum=30.0, jitter=0))
    poll(lambda: "tuf-events" in fake.templates)
    fake.down()
    spool.emit(event(0))
    spool.emit(event(1))
    poll(lambda: shipper.stats()["errors"].get("connection", 0) >= 1)
    for i in range(2, 40):
        spool.emit(event(i))  # each finds a full batch waiting, but the shipper backs off
    time.sleep(0.3)
    assert shipper.stats()["errors"].get("connection", 0) == 1
    started = time.monotonic()
    assert shipper.stop(timeout=0.5) is False  # stop still ends the backoff at once
    assert time.monotonic() - started < 3


def test_the_tail_of_a_burst_ships_without_waiting_for_the_interval(
    fake: FakeOpenSearch, spool: Spool, make_shipper: ShipperFactory
) -> None:
    make_shipper(batch_size=10, batch_interval=30.0)
    poll(lambda: "tuf-events" in fake.templates)
    burst = [event(i) for i in range(25)]
    started = time.monotonic()
    for e in burst:
        spool.emit(e)
    expect_exactly_once(fake, burst)  # 10 + 10 + the 5 left, long before the 30 s interval
    # half the interval: the tail did not wait for it, however loaded the machine is
    assert time.monotonic() - started < 15
    poll(lambda: len(spool) == 0)
    time.sleep(0.2)
    trickle = [event(i) for i in range(100, 103)]
    for e in trickle:
        spool.emit(e)
    time.sleep(0.3)
    assert fake.ids() == {e.event_id for e in burst}  # after the burst: waits for the interval


def test_a_burst_slower_than_the_shipper_still_ships_its_tail_at_once(
    fake: FakeOpenSearch, spool: Spool, make_shipper: ShipperFactory
) -> None:
    """The shipper empties the spool between two parts of a burst (its producers are slower
    than shipping): the burst goes on, its tail does not wait for the 30 s interval."""
    peek = spool.peek
    empty: list[int] = []  # documents OpenSearch held when the shipper found the spool empty

    def watched_peek(n: int, *, after: int = 0) -> list[SpooledEvent]:
        batch = peek(n, after=after)
        if not batch:
            empty.append(len(fake.ids()))
        return batch

    spool.peek = watched_peek  # type: ignore[method-assign]
    make_shipper(batch_size=10, batch_interval=30.0, burst_idle=3.0)
    poll(lambda: "tuf-events" in fake.templates)
    first = [event(i) for i in range(10)]
    spool.emit_many(first)
    # the shipper shipped the first part and found the spool empty
    poll(lambda: any(held == len(first) for held in empty))
    tail = [event(i) for i in range(10, 15)]
    started = time.monotonic()
    spool.emit_many(tail)  # within burst_idle of the first part: the same burst
    expect_exactly_once(fake, first + tail)
    assert time.monotonic() - started < 15  # half the interval, however loaded the machine


class RecordingSink:
    """A sink that records what it was given, serialised or as dicts."""

    name = "recording"

    def __init__(self, serialized: bool) -> None:
        self.texts: list[tuple[str, str]] = []
        self.documents: list[dict[str, Any]] = []
        if serialized:
            self.send_serialized = self._send_serialized

    def setup(self) -> None:
        pass

    def send(self, documents: Any) -> list[ItemResult]:
        self.documents.extend(dict(d) for d in documents)
        return [ItemResult(str(d["event_id"]), Outcome.OK) for d in documents]

    def _send_serialized(self, pairs: Any) -> list[ItemResult]:
        self.texts.extend(pairs)
        return [ItemResult(event_id, Outcome.OK) for event_id, _text in pairs]

    def close(self) -> None:
        pass


@pytest.mark.parametrize("serialized", [True, False])
def test_stored_json_is_shipped_verbatim_to_sinks_that_take_it(
    spool: Spool, serialized: bool
) -> None:
    sink = RecordingSink(serialized)
    shipper = Shipper(spool, sink, batch_size=3, batch_interval=0.05)
    events = [event(i) for i in range(3)]
    for e in events:
        spool.emit(e)
    assert shipper.ship(spool.peek(10)) is True
    if serialized:
        assert sink.texts == [(e.event_id, e.to_json()) for e in events] and not sink.documents
    else:
        assert sink.documents == [e.to_document() for e in events] and not sink.texts
    assert len(spool) == 0


def test_the_daily_index_of_a_serialised_document() -> None:
    sink = OpenSearchSink(OpenSearch(hosts=("http://127.0.0.1:9",), index_prefix="p"))
    try:
        e = event(5)  # 2024-05-02T00:00:03Z
        assert sink.index_for_text(e.to_json()) == sink.index_for(e.to_document())
        assert sink.index_for_text(e.to_json()) == "p-2024.05.02"
        # not canonical (no leading @timestamp): parsed, by "time" as index_for does
        assert sink.index_for_text('{"time": "2023-01-31T10:00:00Z"}') == "p-2023.01.31"
    finally:
        sink.close()


# ---------------------------------------------------------------------------------------------
# The shipper thread survives its own errors


class _LockingSink(FileSink):
    """A file sink during whose first batch another connection takes the spool's write lock
    (as a full disk, a slow fsync or an operator's sqlite3 session would)."""

    def __init__(self, path: Path, lock: sqlite3.Connection) -> None:
        super().__init__(path, max_bytes=10**8, backups=1)
        self.lock = lock
        self.calls = 0

    def send_serialized(self, documents: Sequence[tuple[str, str]]) -> list[ItemResult]:
        results = super().send_serialized(documents)
        self.calls += 1
        if self.calls == 1:
            self.lock.execute("BEGIN IMMEDIATE")
        return results


def test_a_failed_acknowledgement_is_counted_and_the_shipper_goes_on(tmp_path: Path) -> None:
    path = tmp_path / "spool.sqlite"
    lock = sqlite3.connect(path, isolation_level=None, timeout=10, check_same_thread=False)
    with Spool(path, busy_timeout=0.2) as spool:
        sink = _LockingSink(tmp_path / "events.jsonl", lock)
        shipper = Shipper(spool, sink, batch_size=5, batch_interval=0.02, backoff=FAST)
        events = [event(i) for i in range(10)]
        for e in events[:5]:
            spool.emit(e)
        shipper.start()
        try:
            poll(lambda: shipper.stats()["errors"].get("spool", 0) >= 1)
            assert shipper.running
            lock.execute("ROLLBACK")
            for e in events[5:]:
                spool.emit(e)
            poll(lambda: spool.backlog == 0 and len(spool) == 0)
            assert shipper.running
        finally:
            shipper.stop(timeout=1.0)
            lock.close()
    shipped = [d["event_id"] for d in read_lines(tmp_path / "events.jsonl")]
    assert sorted(shipped) == sorted(e.event_id for e in events), "each once"
    assert shipper.stats()["errors"]["spool"] >= 1


def test_a_bug_in_a_step_is_counted_and_the_shipper_goes_on(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with Spool(tmp_path / "spool.sqlite") as spool:
        real_ack = spool.ack
        calls = []

        def ack(ids: Any) -> int:
            calls.append(1)
            if len(calls) == 1:
                raise KeyError("a bug of ours")
            return real_ack(ids)

        monkeypatch.setattr(spool, "ack", ack)
        sink = FileSink(tmp_path / "events.jsonl", max_bytes=10**8, backups=1)
        shipper = Shipper(spool, sink, batch_size=5, batch_interval=0.02, backoff=FAST)
        events = [event(i) for i in range(7)]
        for e in events:
            spool.emit(e)
        shipper.start()
        try:
            poll(lambda: len(spool) == 0)
            assert shipper.running
        finally:
            shipper.stop(timeout=1.0)
    assert shipper.stats()["errors"] == {"exception": 1}
    shipped = [d["event_id"] for d in read_lines(tmp_path / "events.jsonl")]
    assert sorted(shipped) == sorted(e.event_id for e in events)


def test_finding_events_move_from_the_history_outbox_and_a_failure_waits_in_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from exporter.config import Policy
    from exporter.history import HistoryStore
    from exporter.probe import ProbeResult, RoleFacts

    def probe(version: int, seconds: float) -> ProbeResult:
        role = RoleFacts(name="timestamp", version=version, expires=T0 + timedelta(days=1),
                         size_bytes=10, sha256=f"{version:064x}", signed_by=("k",),
                         unknown_signers=(), threshold=1)
        return ProbeResult(repository="r", endpoint="primary", success=True,
                           started_at=T0 + timedelta(seconds=seconds), duration_seconds=0.1,
                           roles={"timestamp": role})

    with HistoryStore.open(tmp_path / "h.sqlite") as history, \
            Spool(tmp_path / "spool.sqlite") as spool:
        history.observe(probe(1, 0), Policy(), T0)
        found = history.observe(probe(2, 60), Policy(), T0 + timedelta(seconds=60))
        assert found
        real_put_many = spool.put_many
        failures = [sqlite3.OperationalError("database or disk is full")] * 2

        def put_many(events: Any) -> list[bool]:
            if failures:
                raise failures.pop()
            return real_put_many(events)

        monkeypatch.setattr(spool, "put_many", put_many)
        spool.emit(event(1))  # already spooled: ships while the outbox cannot drain
        sink = FileSink(tmp_path / "events.jsonl", max_bytes=10**8, backups=1)
        shipper = Shipper(spool, sink, batch_size=5, batch_interval=0.02, backoff=FAST,
                          outbox=history)
        shipper.start()
        try:
            poll(lambda: history.outbox_pending == 0 and len(spool) == 0)
            assert shipper.running
        finally:
            shipper.stop(timeout=1.0)
        assert shipper.stats()["errors"] == {"outbox": 2}
    shipped = [d["event_id"] for d in read_lines(tmp_path / "events.jsonl")]
    assert sorted(shipped) == sorted([event(1).event_id, *(f.to_event().event_id for f in found)])


def test_the_next_batch_is_sent_while_the_previous_one_is_acknowledged(spool: Spool) -> None:
    """Draining a backlog, a full batch's acknowledgement (a spool commit) overlaps the next
    batch's request; every event is still shipped once and acknowledged."""
    import threading

    sink = RecordingSink(serialized=True)
    second_sent = threading.Event()
    overlapped: list[bool] = []
    send = sink._send_serialized

    def send_serialized(pairs: Any) -> list[ItemResult]:
        results = send(pairs)
        if len(sink.texts) > 4:
            second_sent.set()
        return results

    sink.send_serialized = send_serialized  # type: ignore[attr-defined]
    ack = spool.ack

    def slow_ack(event_ids: Any) -> int:
        ids = list(event_ids)
        if not overlapped:  # the first batch's acknowledgement waits for the second request
            overlapped.append(second_sent.wait(5.0))
        return ack(ids)

    spool.ack = slow_ack  # type: ignore[method-assign]
    events = [event(i) for i in range(10)]
    spool.emit_many(events)
    shipper = Shipper(spool, sink, batch_size=4, batch_interval=0.05, backoff=FAST)
    shipper.start()
    try:
        poll(lambda: len(spool) == 0 and shipper.stats()["shipped"] == 10)
    finally:
        shipper.stop(2.0)
    assert overlapped == [True]
    assert sorted(event_id for event_id, _ in sink.texts) == sorted(e.event_id for e in events)


def test_a_failed_overlapped_acknowledgement_keeps_its_batch_and_ships_it_again(
    spool: Spool,
) -> None:
    """The batch whose acknowledgement failed on the acker thread is not skipped: it stays
    spooled, is sent again (the sink deduplicates) and acknowledged; the error is counted."""
    sink = RecordingSink(serialized=True)
    ack = spool.ack
    failed: list[str] = []

    def failing_once(delivered: Any) -> int:
        items = list(delivered)
        if not failed:
            failed.extend(item.event_id for item in items)
            raise sqlite3.OperationalError("disk I/O error")
        return ack(items)

    spool.ack = failing_once  # type: ignore[method-assign]
    events = [event(i) for i in range(12)]
    spool.emit_many(events)
    shipper = Shipper(spool, sink, batch_size=4, batch_interval=0.05, backoff=FAST)
    shipper.start()
    try:
        poll(lambda: len(spool) == 0)
    finally:
        shipper.stop(2.0)
    sent = [event_id for event_id, _ in sink.texts]
    assert failed and all(sent.count(event_id) == 2 for event_id in failed)
    assert set(sent) == {e.event_id for e in events}
    assert shipper.stats()["errors"].get("spool") == 1
    assert shipper.stats()["shipped"] == 12
