"""External TUF clients (issue 17): a run of a program speaking tuf-conformance's client CLI is
contained (its own process group killed at the timeout, bounded output, explicit environment,
a bounded number at once) and measured from the exporter's side (the loopback forwarder's
request log names the failing role).

The clients here are tiny Python programs written by the tests (``FAKE_CLIENT``), that fetch
through the forwarder with urllib, against the simulated repository of ``conftest.sim``.
"""

from __future__ import annotations

import itertools
import json
import logging
import os
import socket
import struct
import subprocess
import sys
import threading
import time
import tracemalloc
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
import requests
import yaml
from support import Sim, poll, scrape, value

from exporter import cli
from exporter.config.model import Client, ClientMode
from exporter.probe import install
from exporter.probe.external import (
    CANCELLED,
    OUTPUT_BOUND,
    Forwarder,
    client_dir,
    run_client,
)
from exporter.probe.results import ProbeResult
from exporter.serve.service import Service

pytestmark = pytest.mark.timeout(120)

FAKE_CLIENT = r'''
import json, os, shutil, subprocess, sys, time, urllib.error, urllib.request

args = sys.argv[1:]
command = args[-1] if args[-1] in ("refresh", "download") else args[-2]
opts = {args[i]: args[i + 1] for i in range(0, len(args) - 1, 2) if args[i].startswith("--")}
behaviour = os.environ.get("FAKE", "ok")
out = os.environ.get("FAKE_OUT")


def note(line):
    if out:
        fd = os.open(out, os.O_WRONLY | os.O_APPEND | os.O_CREAT)
        os.write(fd, (line + "\n").encode())
        os.close(fd)


def get(url):
    with urllib.request.urlopen(url, timeout=10) as response:
        return response.read()


note(f"start {command} {time.monotonic()}")
if os.environ.get("FAKE_NOTE_URL") and "--metadata-url" in opts:
    note(f"url {opts['--metadata-url']}")
if behaviour == "env":
    note(json.dumps(dict(os.environ)))
if command == "init":
    os.makedirs(opts["--metadata-dir"], exist_ok=True)
    shutil.copyfile(args[-1], os.path.join(opts["--metadata-dir"], "root.json"))
    sys.exit(0)
if behaviour == "sleep":
    time.sleep(0.5)
if os.environ.get("FAKE_MEET") and command == "refresh":  # until that many refreshes started
    until = time.monotonic() + 30
    while sum(line.startswith("start refresh") for line in open(out).read().splitlines()) < int(
            os.environ["FAKE_MEET"]):
        if time.monotonic() > until:
            sys.exit("the other refreshes never started")
        time.sleep(0.01)
if behaviour == "hang":
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(1000)"])
    note(f"child {child.pid}")
    import signal
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    time.sleep(1000)
if behaviour == "flood":
    chunk = b"x" * 1024 * 1024
    for _ in range(100):
        sys.stdout.buffer.write(chunk)
    sys.stdout.buffer.write(b"\nthe last line of stdout\n")
    sys.stdout.flush()
    sys.exit(1)
base = opts["--metadata-url"]
try:
    get(base + "99.root.json")
except urllib.error.HTTPError as error:
    assert error.code == 404, error.code
timestamp = get(base + "timestamp.json")
snapshot = get(base + "snapshot.json")
if behaviour == "reject":
    print("role: targets (a client's words are not trusted)", file=sys.stderr)
    print("snapshot refused", file=sys.stderr)
    sys.exit(1)
targets = get(base + "targets.json")
with open(os.path.join(opts["--metadata-dir"], "timestamp.json"), "wb") as f:
    f.write(timestamp)
if command == "download":
    name = opts["--target-name"]
    data = get(opts["--target-base-url"] + name)
    path = os.path.join(opts["--target-dir"], name.replace("/", "_"))
    with open(path, "wb") as f:
        f.write(data)
    note(f"downloaded {name} {len(data)}")
note(f"end {command} {time.monotonic()}")
'''


@pytest.fixture
def fake(tmp_path: Path) -> Path:
    path = tmp_path / "fake_client.py"
    path.write_text(FAKE_CLIENT, encoding="utf-8")
    return path


@pytest.fixture
def plain(sim: Sim) -> Sim:
    """The simulated repository without consistent snapshots: the fake client fetches
    ``snapshot.json`` and targets by their plain names."""
    sim.repo.set_consistent_snapshot(False)
    sim.repo.publish()
    return sim


def _client(fake: Path, behaviour: str = "ok", out: Path | None = None, **changes: object
            ) -> Client:
    env = {"FAKE": behaviour, **({"FAKE_OUT": str(out)} if out is not None else {})}
    client = Client("fake", (sys.executable, str(fake)), timeout=20.0, env=env)
    return replace(client, **changes)  # type: ignore[arg-type]


def _run(sim: Sim, client: Client) -> ProbeResult:
    repo = sim.config()
    return run_client(client, repo, repo.primary, sim.trusted_root.read_bytes(), sim.state_dir)


def test_success_fetches_through_the_forwarder_and_records_every_request(
        plain: Sim, fake: Path, tmp_path: Path) -> None:
    out = tmp_path / "notes"
    client = _client(fake, out=out)
    result = _run(plain, client)
    assert result.success, result.message
    assert result.client == "fake"
    requests_ = result.requests
    # refresh, then one download per canary (each refreshes again), all seen by the exporter
    roles = [r.role for r in requests_]
    assert roles[:4] == ["root", "timestamp", "snapshot", "targets"]
    assert roles.count("target") == 2 and roles.count("timestamp") == 3
    assert [r.status for r in requests_][:2] == [404, 200]
    assert all(r.url.startswith(tuple(plain.server.endpoint_urls("primary"))) for r in requests_)
    targets = result.targets
    assert [(t.path, t.success, t.length) for t in targets] == [
        ("files/a.txt", True, len(b"hello from a\n")), ("team/b.txt", True, len(b"hello from b\n"))]
    notes = out.read_text().splitlines()
    assert [n.split()[1] for n in notes if n.startswith("start")] == [
        "init", "refresh", "download", "download"]
    # returning mode: the metadata directory stays, init is not run again; run dirs are gone
    base = client_dir(plain.state_dir, "fake", "sim", "primary")
    assert (base / "metadata" / "timestamp.json").is_file()
    assert [p.name for p in base.iterdir()] == ["metadata"]
    out.unlink()
    left = base / "run-left-by-a-crash"  # an exporter killed mid-run leaves its run directory
    (left / "home").mkdir(parents=True)
    os.utime(left, (time.time() - 2 * 86400, time.time() - 2 * 86400))
    assert _run(plain, client).success
    assert "init" not in out.read_text()
    assert not left.exists()


def test_new_mode_inits_a_fresh_directory_every_run(plain: Sim, fake: Path, tmp_path: Path
                                                    ) -> None:
    out = tmp_path / "notes"
    client = _client(fake, out=out, mode=ClientMode.NEW, canary_targets=())
    assert _run(plain, client).success
    assert _run(plain, client).success
    starts = [n.split()[1] for n in out.read_text().splitlines() if n.startswith("start")]
    assert starts == ["init", "refresh", "init", "refresh"]
    assert list(client_dir(plain.state_dir, "fake", "sim", "primary").iterdir()) == []


def test_a_rejection_is_attributed_to_the_last_role_the_exporter_forwarded(
        plain: Sim, fake: Path) -> None:
    result = _run(plain, _client(fake, "reject"))
    assert not result.success
    assert (str(result.reason), str(result.role)) == (
        "client_rejected", "snapshot")
    assert "refresh exited with status 1" in (result.message or "")
    assert "snapshot refused" in (result.message or "")


def test_a_client_that_cannot_start_is_a_fault_of_this_host(plain: Sim, tmp_path: Path) -> None:
    """A missing or non-executable program says nothing about the repository: exporter_error
    with cause ``client`` (the view keeps its last verdict, TufExporterErrors tickets it)."""
    client = Client("missing", (str(tmp_path / "no-such-client"),), timeout=5.0)
    result = _run(plain, client)
    assert (str(result.reason), str(result.cause)) == ("exporter_error", "client")
    assert "init could not be started" in (result.message or "")


def _gone(pid: int) -> bool:
    """The process has exited (and is no longer running, a zombie left to init counts)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return True
    return state in ("Z", "X")


def test_a_hanging_client_and_its_child_are_killed_with_the_group_at_the_timeout(
        plain: Sim, fake: Path, tmp_path: Path) -> None:
    out = tmp_path / "notes"
    client = _client(fake, "hang", out=out, timeout=2.0)
    t0 = time.monotonic()
    result = _run(plain, client)
    elapsed = time.monotonic() - t0
    assert (str(result.reason), str(result.role)) == (
        "client_timeout", "root")
    # 2 s of timeout, 2 s of grace (the client ignores SIGTERM), then SIGKILL
    assert 2.0 <= elapsed < 8.0, elapsed
    child = int(next(n for n in out.read_text().splitlines() if n.startswith("child")).split()[1])
    poll(lambda: _gone(child), timeout=5.0)


def test_a_client_printing_100_mb_is_bounded_and_reported(plain: Sim, fake: Path) -> None:
    tracemalloc.start()
    try:
        result = _run(plain, _client(fake, "flood"))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert (str(result.reason), str(result.role)) == (
        "client_rejected", "root")
    message = result.message or ""
    assert "the last line of stdout" in message
    assert "earlier bytes not kept" in message and len(message) < 5000
    dropped = int(message.split("[", 1)[1].split()[0])
    assert dropped == 100 * 1024 * 1024 + len("\nthe last line of stdout\n") - 4096
    assert peak < 8 * OUTPUT_BOUND, peak  # a few tails' worth, not 100 MB


def test_the_environment_is_explicit(plain: Sim, fake: Path, tmp_path: Path,
                                     monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OPENSEARCH_PASSWORD", "not for clients")
    out = tmp_path / "notes"
    assert _run(plain, _client(fake, "env", out=out, canary_targets=())).success
    env = json.loads(next(line for line in out.read_text().splitlines() if line.startswith("{")))
    assert "OPENSEARCH_PASSWORD" not in env
    assert set(env) - {"PWD", "LC_CTYPE"} == {"PATH", "LANG", "HOME", "TMPDIR", "FAKE",
                                              "FAKE_OUT"}
    assert env["PATH"] == os.environ["PATH"]
    assert Path(env["HOME"]).parent.parent == client_dir(plain.state_dir, "fake", "sim",
                                                         "primary")


def test_the_concurrency_bound_holds(plain: Sim, fake: Path, tmp_path: Path) -> None:
    out = tmp_path / "notes"
    client = _client(fake, "sleep", out=out, mode=ClientMode.NEW, canary_targets=())
    slots = threading.Semaphore(2)
    repo = plain.config()
    endpoints = [*repo.endpoints, *repo.endpoints]
    results: list[ProbeResult] = []
    threads = [threading.Thread(target=lambda e=e: results.append(run_client(
        client, repo, e, plain.trusted_root.read_bytes(), plain.state_dir / str(id(e)),
        slots))) for e in endpoints]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert len(results) == 4 and all(r.success for r in results)
    events = []
    for line in out.read_text().splitlines():
        kind, command, moment = line.split()
        if command == "refresh":
            events.append((float(moment), 1 if kind == "start" else -1))
    running, most = 0, 0
    for _, change in sorted(events):
        running += change
        most = max(most, running)
    assert most == 2


def test_the_forwarder_passes_statuses_on_and_refuses_paths_outside_the_endpoint(
        plain: Sim) -> None:
    repo = plain.config()
    with Forwarder() as forwarder, \
            forwarder.route(repo, repo.primary, time.monotonic() + 10) as route:
        ok = requests.get(route.metadata_url + "timestamp.json", timeout=5)
        assert ok.status_code == 200 and json.loads(ok.content)["signed"]["_type"] == "timestamp"
        assert requests.get(route.metadata_url + "9.root.json", timeout=5).status_code == 404
        for path in ("../secret", "%2e%2e/x", "a//b", "timestamp.json?x=1"):
            assert requests.get(route.metadata_url + path, timeout=5).status_code == 404
        assert requests.get(route.base_url + "/other/x", timeout=5).status_code == 404
        for path in ("/metadata/timestamp.json", "/no-such-run/metadata/timestamp.json", "/"):
            assert requests.get(forwarder.base_url + path, timeout=5).status_code == 404
        assert [(r.role, r.status) for r in route.records] == [
            ("timestamp", 200), ("root", 404)]


def test_a_client_resetting_its_connection_is_logged_not_printed(
        plain: Sim, caplog: pytest.LogCaptureFixture, capfd: pytest.CaptureFixture[str]) -> None:
    repo = plain.config()
    caplog.set_level(logging.DEBUG, logger="exporter.probe.external")
    with Forwarder() as forwarder, forwarder.route(repo, repo.primary, time.monotonic() + 10):
        port = int(forwarder.base_url.rsplit(":", 1)[1])
        with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        # closed with SO_LINGER 0: a reset while the handler waits for a request line
        poll(lambda: any("went away" in r.getMessage() for r in caplog.records), timeout=10)
    assert "Traceback" not in capfd.readouterr().err


def test_closing_a_forwarder_does_not_wait_half_a_second(plain: Sim) -> None:
    repo = plain.config()
    took = []
    for _ in range(5):  # serve_forever's default poll (0.5 s) made each close wait 0-0.5 s
        forwarder = Forwarder()
        with forwarder.route(repo, repo.primary, time.monotonic() + 10) as route:
            assert requests.get(route.metadata_url + "timestamp.json", timeout=5).ok
        start = time.monotonic()
        forwarder.close()
        took.append(time.monotonic() - start)
        assert not forwarder.running
    assert sum(took) < 0.6, took


def test_kept_alive_requests_through_the_forwarder_wait_for_no_delayed_ack(plain: Sim) -> None:
    # a response written as headers, then chunks, then the last chunk, without TCP_NODELAY,
    # waited for the client's delayed ACK (40 ms on Linux) on every request of a kept-alive
    # connection but the first: a client's whole session paid it (median 41-52 ms a request);
    # loopback requests take a few ms, so half of them at 35 ms or more is a stall, not load
    repo = plain.config()
    took = []
    with Forwarder() as forwarder, \
            forwarder.route(repo, repo.primary, time.monotonic() + 60) as route, \
            requests.Session() as session:
        for name in ["timestamp.json", "snapshot.json", "targets.json", "9.root.json"] * 10:
            start = time.monotonic()
            session.get(route.metadata_url + name, timeout=5)
            took.append(time.monotonic() - start)
        assert len(route.records) == 40
    took.sort()
    assert took[len(took) // 2] < 0.035, took


def test_runs_share_one_forwarder_and_each_logs_only_its_own_requests(
        plain: Sim, fake: Path, tmp_path: Path) -> None:
    out = tmp_path / "notes"
    client = _client(fake, out=out, mode=ClientMode.NEW)
    client = replace(client, env={**client.env, "FAKE_NOTE_URL": "1"})
    meeting = replace(client, env={**client.env, "FAKE_MEET": "3"})
    repo = plain.config()
    root = plain.trusted_root.read_bytes()
    with Forwarder() as forwarder:
        assert not forwarder.running  # started by the first run, not before
        first = run_client(client, repo, repo.primary, root, plain.state_dir,
                           forwarder=forwarder)
        assert first.success, first.message
        base = forwarder.base_url
        # two runs at once on the same endpoint (their refreshes wait for each other)
        results: list[ProbeResult] = []
        threads = [threading.Thread(target=lambda: results.append(run_client(
            meeting, repo, repo.primary, root, plain.state_dir, forwarder=forwarder)))
            for _ in range(2)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(60)
        assert forwarder.base_url == base  # the same server served every run
        # refresh: 99.root.json (404), timestamp, snapshot, targets; each of the two
        # downloads: the same four and its target
        for result in [first, *results]:
            assert result.success, result.message
            assert len(result.requests) == 14, [r.url for r in result.requests]
            assert [r.role for r in result.requests].count("target") == 2
        # each run had a prefix of its own, served no more once the run ended
        given = {n.split()[1] for n in out.read_text().splitlines() if n.startswith("url ")}
        assert len(given) == 3 and all(url.startswith(base + "/") for url in given)
        for url in given:
            assert requests.get(url + "timestamp.json", timeout=5).status_code == 404
        assert len(first.requests) == 14  # no request of a later run was added to it
    assert not forwarder.running
    with pytest.raises(requests.ConnectionError):
        requests.get(base + "/", timeout=5)


def _service_config(sim: Sim, path: Path, fake: Path, notes: Path) -> Path:
    primary = sim.server.endpoint_urls("primary")
    client = {"command": [sys.executable, str(fake)], "interval": "1s", "mode": "returning"}
    document = {
        "state_dir": str(path.parent / "state"),
        "jitter": 0,
        "client_concurrency": 2,
        "clients": [
            {**client, "name": "hang", "timeout": "3s",
             "env": {"FAKE": "hang", "FAKE_OUT": str(notes)}},
            {**client, "name": "flood", "timeout": "20s", "env": {"FAKE": "flood"}},
        ],
        "repositories": [{
            "name": "sim", "metadata_url": primary[0], "targets_url": primary[1],
            "trusted_root": str(sim.trusted_root), "interval": "1s", "timeout": "3s",
            "canary_targets": ["files/a.txt"],
        }],
    }
    path.write_text(yaml.safe_dump(document))
    return path


def test_hanging_and_flooding_clients_never_delay_the_python_tuf_probes_or_a_scrape(
        sim: Sim, fake: Path, tmp_path: Path) -> None:
    notes = tmp_path / "notes"
    service = Service(_service_config(sim, tmp_path / "config.yml", fake, notes),
                      first_run_within=0.1)
    service.start()
    try:
        poll(lambda: notes.is_file() and "child" in notes.read_text(), timeout=20)
        # while the hanging client hangs (3 s) and the flood runs: probes on time, scrapes fast
        changes: list[float] = []
        last = None
        slowest_scrape = 0.0
        until = time.monotonic() + 4.0
        while time.monotonic() < until:
            t0 = time.monotonic()
            samples = scrape(service)
            slowest_scrape = max(slowest_scrape, time.monotonic() - t0)
            now = value(samples, "tuf_exporter_last_probe_timestamp_seconds",
                         endpoint="primary")
            if now is not None and now != last:
                changes.append(time.monotonic())
                last = now
            time.sleep(0.05)
        gaps = [b - a for a, b in itertools.pairwise(changes)]
        assert len(changes) >= 3 and max(gaps) < 2.5, gaps  # every 1 s, as configured
        assert slowest_scrape < 1.0, slowest_scrape

        def both_failed() -> dict[str, dict[str, str]] | None:
            samples = scrape(service)
            failed = {labels["client"]: labels for labels, value in
                      samples.get("tuf_client_update_failures_total", []) if value > 0}
            return failed if {"hang", "flood"} <= set(failed) else None

        failed = poll(both_failed, timeout=30)
        assert failed["hang"]["reason"] == "client_timeout"
        assert (failed["flood"]["reason"], failed["flood"]["role"]) == ("client_rejected", "root")
        samples = scrape(service)
        assert value(samples, "tuf_client_update_success", client="hang") == 0
        assert value(samples, "tuf_client_update_success", client="returning") == 1
        # the python-tuf probe's own series stay the returning view's alone
        assert len(samples["tuf_probe_success"]) == 1
        log = service.store.endpoint_log("sim", "primary")
        assert log.latest is not None and log.latest.client == "returning"
        assert service.forwarder.running  # one forwarder for every run, kept between runs
        base = service.forwarder.base_url
    finally:
        service.stop()
    assert not service.forwarder.running  # closed with the service
    with pytest.raises(requests.ConnectionError):
        requests.get(base + "/", timeout=5)



# --- a stop or a reload ends the runs at once ----------------------------------------------


def _group(pid: int) -> int:
    """The process group of a running process (``pgrp`` in ``/proc/<pid>/stat``)."""
    return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[2])


def _group_members(pgid: int) -> list[int]:
    """Every process of group ``pgid`` still in /proc that is not a zombie."""
    members = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (FileNotFoundError, ProcessLookupError):
            continue
        if int(fields[2]) == pgid and fields[0] not in ("Z", "X"):
            members.append(int(stat.parent.name))
    return members


def _hung_child(notes: Path) -> int | None:
    """The pid of the hung client's hung child, once the client noted it."""
    if not notes.is_file():
        return None
    return next((int(n.split()[1]) for n in notes.read_text().splitlines()
                 if n.startswith("child")), None)


def _events_of(service: Service, client: str) -> list[str]:
    """The shipped events (the default file sink) that name ``client``."""
    path = service.config.state_dir / "events.jsonl"
    lines = path.read_text().splitlines() if path.is_file() else []
    return [line for line in lines if f'"{client}"' in line]


def _hung_service(sim: Sim, tmp_path: Path, fake: Path, notes: Path) -> tuple[Service, int]:
    """A started service whose only client hangs (ignoring SIGTERM, with a hung child) far
    longer than any bound below: its timeout is 30 s. Returns the service and the client's
    process group, once the child runs."""
    config = _service_config(sim, tmp_path / "config.yml", fake, notes)
    document = yaml.safe_load(config.read_text())
    document["clients"] = [{**document["clients"][0], "timeout": "30s"}]
    config.write_text(yaml.safe_dump(document))
    service = Service(config, first_run_within=0.1)
    service.start()
    try:
        child = poll(lambda: _hung_child(notes), timeout=20)
        group = _group(child)
        assert child in _group_members(group) and group in _group_members(group)
    except BaseException:
        service.stop()
        raise
    return service, group


def test_stop_ends_a_hung_client_and_its_child_at_once(
        sim: Sim, fake: Path, tmp_path: Path) -> None:
    service, group = _hung_service(sim, tmp_path, fake, tmp_path / "notes")
    t0 = time.monotonic()
    service.stop()
    took = time.monotonic() - t0
    # SIGTERM, 2 s of grace (the client ignores SIGTERM), SIGKILL: far below the 30 s timeout
    # and Kubernetes' 30 s before its SIGKILL
    assert took < 8.0, took
    poll(lambda: not _group_members(group), timeout=2.0)
    # no verdict of anyone: the view records nothing
    assert service.store.endpoint_log("sim", "primary", "hang").latest is None
    assert not _events_of(service, "hang")


@pytest.mark.parametrize("removed", ["client", "repository"])
def test_a_reload_removing_the_client_or_its_repository_ends_its_run_at_once(
        sim: Sim, fake: Path, tmp_path: Path, removed: str) -> None:
    service, group = _hung_service(sim, tmp_path, fake, tmp_path / "notes")
    try:
        config = tmp_path / "config.yml"
        document = yaml.safe_load(config.read_text())
        if removed == "client":
            document["clients"] = []
        else:  # "sim" goes, "renamed" comes (and runs the client anew)
            document["repositories"][0]["name"] = "renamed"
        config.write_text(yaml.safe_dump(document))
        t0 = time.monotonic()
        assert service.reload()[0]
        poll(lambda: not _group_members(group), timeout=6.0)
        assert time.monotonic() - t0 < 6.0
        assert service.store.endpoint_log("sim", "primary", "hang").latest is None
        t0 = time.monotonic()
    finally:
        service.stop()
    assert time.monotonic() - t0 < 8.0
    assert not _events_of(service, "hang")


def test_a_cancelled_run_kills_its_group_and_is_no_verdict(
        plain: Sim, fake: Path, tmp_path: Path) -> None:
    out = tmp_path / "notes"
    client = _client(fake, "hang", out=out, timeout=30.0)
    repo = plain.config()
    cancel = threading.Event()
    results: list[ProbeResult] = []
    runner = threading.Thread(target=lambda: results.append(run_client(
        client, repo, repo.primary, plain.trusted_root.read_bytes(), plain.state_dir,
        threading.Semaphore(1), cancel)))
    runner.start()
    group = _group(poll(lambda: _hung_child(out), timeout=20))
    t0 = time.monotonic()
    cancel.set()
    runner.join(timeout=8.0)
    assert not runner.is_alive() and time.monotonic() - t0 < 8.0
    poll(lambda: not _group_members(group), timeout=2.0)
    [result] = results
    assert (result.success, str(result.reason), result.message) == (
        False, "exporter_error", CANCELLED)
    # a set cancel starts nothing, not even a wait for a slot
    taken = threading.Semaphore(0)
    t0 = time.monotonic()
    result = run_client(client, repo, repo.primary, plain.trusted_root.read_bytes(),
                        plain.state_dir, taken, cancel)
    assert result.message == CANCELLED and time.monotonic() - t0 < 1.0


def test_a_cancelled_init_leaves_no_half_written_metadata(
        plain: Sim, fake: Path, tmp_path: Path) -> None:
    stall = tmp_path / "stall_client.py"  # writes some metadata during init, then hangs
    stall.write_text(
        "import os, sys, time\n"
        "d = sys.argv[sys.argv.index('--metadata-dir') + 1]\n"
        "os.makedirs(d, exist_ok=True)\n"
        "open(os.path.join(d, 'root.json'), 'w').write('{')\n"
        "open(os.path.join(d, 'written'), 'w').close()\n"
        "time.sleep(1000)\n", encoding="utf-8")
    client = Client("stall", (sys.executable, str(stall)), timeout=30.0)
    repo = plain.config()
    metadata = client_dir(plain.state_dir, "stall", "sim", "primary") / "metadata"
    cancel = threading.Event()
    runner = threading.Thread(target=run_client, args=(
        client, repo, repo.primary, plain.trusted_root.read_bytes(), plain.state_dir, None,
        cancel))
    runner.start()
    poll(lambda: (metadata / "written").is_file(), timeout=20)
    cancel.set()
    runner.join(timeout=8.0)
    assert not runner.is_alive()
    # the next run inits again rather than refreshing from a half-written root
    assert not metadata.is_dir() or not any(metadata.iterdir())


# --- tuf-exporter clients install ------------------------------------------------------------

STAND_IN_ADAPTER = "import tuf, tuf.ngclient, sys; print('adapter on tuf', tuf.__version__)\n"


def test_clients_install_refuses_an_unknown_client_and_a_used_directory(tmp_path: Path,
                                                                        capsys: Any) -> None:
    assert cli.main(["clients", "install", "python-tuf", "--dir", str(tmp_path / "d")]) == 2
    assert "expected python-tuf==X.Y.Z or tuf-js" in capsys.readouterr().err
    (tmp_path / "used").mkdir()
    (tmp_path / "used" / "file").write_text("mine")
    adapter = tmp_path / "adapter.py"
    adapter.write_text(STAND_IN_ADAPTER)
    with pytest.raises(install.InstallError, match="exists and is not empty"):
        install.install_python_tuf("7.0.1", tmp_path / "used", adapter=adapter)
    assert (tmp_path / "used" / "file").read_text() == "mine"  # nothing lost


@pytest.mark.install
@pytest.mark.skipif(not os.environ.get("TUF_EXPORTER_INSTALL_TESTS"),
                    reason="a real pip install (> 30 s): set TUF_EXPORTER_INSTALL_TESTS=1")
@pytest.mark.timeout(600)
def test_clients_install_python_tuf_makes_a_pinned_environment_with_the_adapter(
        tmp_path: Path) -> None:
    """A real install (pip, from the configured index) of the release the project runs."""
    import tuf

    adapter = tmp_path / "python_tuf_client.py"
    adapter.write_text(STAND_IN_ADAPTER)
    installed = install.install_python_tuf(tuf.__version__, tmp_path / "client", adapter=adapter)
    line = installed.config_line()
    command = yaml.safe_load(line)["command"]
    assert command == [str(tmp_path / "client" / "venv" / "bin" / "python"),
                       str(tmp_path / "client" / "python_tuf_client.py")]
    done = subprocess.run(command, capture_output=True, text=True, check=True, timeout=60)
    assert done.stdout.strip() == f"adapter on tuf {tuf.__version__}"
    with pytest.raises(install.InstallError, match="not empty"):
        install.install_python_tuf(tuf.__version__, tmp_path / "client", adapter=adapter)


def test_clients_install_tuf_js_copies_the_adapter_and_runs_npm_ci(tmp_path: Path) -> None:
    source = tmp_path / "tuf-js"
    source.mkdir()
    for name in install.TUF_JS_FILES:
        (source / name).write_text(f"// {name}\n")
    npm = tmp_path / "npm"
    npm.write_text(f"#!{sys.executable}\nimport os, sys\nos.mkdir('node_modules')\n"
                   "open('node_modules/argv', 'w').write(' '.join(sys.argv[1:]))\n")
    npm.chmod(0o755)
    installed = install.install_tuf_js(tmp_path / "client", npm=str(npm), source=source)
    client = tmp_path / "client"
    assert (client / "node_modules" / "argv").read_text() == "ci --no-audit --no-fund"
    assert sorted(p.name for p in client.iterdir()) == sorted(
        [*install.TUF_JS_FILES, "node_modules"])
    assert installed.command[1] == str(client / "tuf-client.mjs")
    failing = tmp_path / "npm-fails"
    failing.write_text(f"#!{sys.executable}\nimport sys\nsys.exit('npm ERR! no network')\n")
    failing.chmod(0o755)
    with pytest.raises(install.InstallError, match=r"npm ci failed.*no network"):
        install.install_tuf_js(tmp_path / "other", npm=str(failing), source=source)


def test_the_probe_command_runs_the_configured_clients_too(
        plain: Sim, fake: Path, tmp_path: Path, capsys: Any) -> None:
    config = _service_config(plain, tmp_path / "config.yml", fake, tmp_path / "notes")
    document = yaml.safe_load(config.read_text())
    document["clients"] = [{"name": "ok", "command": [sys.executable, str(fake)],
                            "timeout": "20s", "env": {"FAKE": "ok"}},
                           {"name": "rejects", "command": [sys.executable, str(fake)],
                            "timeout": "20s", "env": {"FAKE": "reject"}}]
    config.write_text(yaml.safe_dump(document))
    assert cli.main(["probe", "--config", str(config), "--json"]) == 1  # one client rejects
    [repository] = json.loads(capsys.readouterr().out)["repositories"]
    [endpoint] = repository["endpoints"]  # the returning view, with its other views
    verdicts = {e["client"]: (e["success"], e["reason"], e["role"])
                for e in [endpoint, *endpoint["views"]]}
    assert verdicts == {"returning": (True, None, None), "new": (True, None, None),
                        "ok": (True, None, None),
                        "rejects": (False, "client_rejected", "snapshot")}
