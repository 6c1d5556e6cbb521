"""The exporter service: scheduled probes, /metrics from the catalogue, reload, isolation."""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path

import pytest
import yaml
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families
from support import Sim, poll, scrape, value
from tuf.api.metadata import Metadata

from exporter.catalogue import METRICS, Subsystem, sample_names
from exporter.config import Endpoint, Repository
from exporter.probe import ProbeResult
from exporter.serve import Service
from exporter.simulator import closed_port


def _write_config(sim: Sim, path: Path, *, interval: str = "1s", extra: list[dict] | None = None
                  ) -> Path:
    primary = sim.server.endpoint_urls("primary")
    mirror = sim.server.endpoint_urls("mirror1")
    document = {
        "state_dir": str(path.parent / "state"),
        "jitter": 0,
        "repositories": [{
            "name": "sim",
            "metadata_url": primary[0],
            "targets_url": primary[1],
            "trusted_root": str(sim.trusted_root),
            "interval": interval,
            "timeout": "3s",
            "canary_targets": ["files/a.txt", "team/b.txt"],
            "mirrors": [{"name": "mirror1", "metadata_url": mirror[0], "targets_url": mirror[1]}],
        }, *(extra or [])],
    }
    path.write_text(yaml.safe_dump(document))
    return path


@pytest.fixture
def service(sim: Sim, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> Iterator[Service]:
    svc = Service(_write_config(sim, tmp_path / "config.yml"), first_run_within=0.1)
    svc.start()
    try:
        yield svc
    finally:
        svc.stop()
    crashes = [r.getMessage() for r in caplog.records
               if r.levelname == "ERROR" and "reload refused" not in r.getMessage()]
    assert not crashes, "nothing may crash in the service"


# counters labelled by what happened: no sample until it does
HAPPENS_LATER = {"tuf_probe_failures_total", "tuf_client_update_failures_total",
                 "tuf_exporter_events_dropped_total",
                 "tuf_root_previous_signatures_valid", "tuf_root_previous_signature_threshold",
                 "tuf_root_rejected_version",
                 "tuf_exporter_shipper_errors_total"}


def _both_probed(service: Service) -> dict[str, list[tuple[dict[str, str], float]]] | None:
    samples = scrape(service)
    done = [lab for lab, v in samples.get("tuf_probe_success", []) if v == 1]
    return samples if len(done) == 2 else None


def test_history_signers_cadence_and_shipper_are_collectors_of_their_own(
    service: Service,
) -> None:
    """The service registers each subsystem's collector; its own collector does not reach
    into them, and /metrics serves each family once."""
    own = {m.name for m in service.collector.collect()}
    served = [f.name for f in
              text_string_to_metric_families(generate_latest(service.registry).decode())]
    assert len(served) == len(set(served)), "a family is served twice"
    for subsystem in (service.history, service.signers, service.cadence, service.shipper):
        names = {m.name for m in subsystem.collect()}
        assert names, subsystem
        assert not names & own, f"the service's collector still serves {names & own}"
        assert names <= set(served)


def test_every_catalogue_metric_is_served_with_the_metadata_values(
    service: Service, sim: Sim
) -> None:
    history = [m.name for m in METRICS.values() if m.subsystem is Subsystem.HISTORY]

    def probed_and_recorded() -> dict[str, list[tuple[dict[str, str], float]]] | None:
        # The history records a result after the probe's own series change: wait for both.
        samples = _both_probed(service)
        return samples if samples and any(name in samples for name in history) else None

    samples = poll(probed_and_recorded, timeout=20)
    wanted = [m for m in METRICS.values()
              if m.subsystem in (Subsystem.PROBE, Subsystem.EXPORTER, Subsystem.EVENTS)]
    text = generate_latest(service.registry).decode()
    for metric in wanted:
        names = sample_names(metric)
        assert f"# HELP {metric.name} " in text, f"{metric.name} is missing from /metrics"
        if metric.name not in HAPPENS_LATER:
            assert any(n in samples for n in names), f"{metric.name} has no sample"
        for name in names:
            for labels, _ in samples.get(name, []):
                assert set(labels) == set(metric.labels), (name, labels)
    latest = sim.repo.latest
    for role in ("root", "timestamp", "snapshot", "targets"):
        signed = Metadata.from_bytes(latest.metadata(role)).signed
        labels = {"repository": "sim", "endpoint": "primary", "role": role}
        got = value(samples, "tuf_metadata_version", **labels)
        assert got is not None and got <= signed.version
        assert value(samples, "tuf_metadata_expiry_timestamp_seconds", **labels) is not None
        margin = value(samples, "tuf_metadata_expiry_margin_seconds", **labels)
        assert margin is not None and 0 < margin <= (signed.expires.timestamp() - time.time()) + 5
    assert value(samples, "tuf_metadata_signature_threshold", role="targets") == 2
    assert value(samples, "tuf_metadata_signatures_valid", role="targets") == 2
    assert value(samples, "tuf_delegated_roles", endpoint="primary") == 1
    assert value(samples, "tuf_probes_total", endpoint="primary", result="success") >= 1


def test_a_fault_shows_on_the_next_scrape(service: Service, sim: Sim) -> None:
    poll(lambda: _both_probed(service), timeout=20)
    sim.server.inject("expired-timestamp", endpoint="mirror1")

    def failing() -> bool:
        samples = scrape(service)
        return (value(samples, "tuf_probe_success", endpoint="mirror1") == 0
                and (value(samples, "tuf_probe_failures_total", endpoint="mirror1",
                           reason="expired", role="timestamp") or 0) >= 1)

    poll(failing, timeout=20)
    assert value(scrape(service), "tuf_probe_success", endpoint="primary") == 1
    page = service.status_page.overview().html
    assert page.index("endpoint=mirror1") < page.index("endpoint=primary")  # failing first
    assert "expired" in page and "tuf-metadata-expired.md" in page


def test_the_exporters_own_health_is_served(service: Service) -> None:
    """process_*, python_info and python_gc_* as every Python exporter serves them."""
    samples = scrape(service)
    for name in ("process_resident_memory_bytes", "process_cpu_seconds_total",
                 "process_open_fds", "process_max_fds", "process_start_time_seconds"):
        assert (value(samples, name) or 0) > 0, name
    assert value(samples, "python_info") == 1
    assert value(samples, "python_gc_collections_total", generation="0") is not None


def test_a_repository_that_never_answers_delays_nothing(sim: Sim, tmp_path: Path) -> None:
    silent = SilentServer()
    try:
        hung = {"name": "hung", "metadata_url": silent.url, "trusted_root": str(sim.trusted_root),
                "interval": "1s", "timeout": "3s", "read_timeout": "3s"}
        svc = Service(_write_config(sim, tmp_path / "config.yml", extra=[hung]),
                      first_run_within=0.1)
        svc.start()
        try:
            poll(lambda: silent.connections >= 1, timeout=10)
            # while the hung probe runs, scrapes answer at once and the others keep going
            started = time.monotonic()
            before = value(scrape(svc), "tuf_probes_total", repository="sim", endpoint="primary",
                           result="success") or 0
            # far less than the hung probe's 3 s timeout: the scrape did not wait for it
            assert time.monotonic() - started < 1.5
            started = time.monotonic()
            page = svc.status_page.overview()
            assert time.monotonic() - started < 0.1, "the status page waits for no probe"
            assert page.status == 200 and "repository=hung&amp;endpoint=primary" in page.html
            poll(lambda: (value(scrape(svc), "tuf_probes_total", repository="sim",
                                endpoint="primary", result="success") or 0) >= before + 2,
                 timeout=10)
            hung_done = value(scrape(svc), "tuf_probes_total", repository="hung",
                              endpoint="primary", result="failure") or 0
            assert hung_done <= 2, "the hung repository cannot have finished many probes"
        finally:
            svc.stop()
    finally:
        silent.close()


def test_reload_with_a_broken_file_keeps_the_old_configuration(
    service: Service, sim: Sim
) -> None:
    poll(lambda: _both_probed(service), timeout=20)
    good = service.config_path.read_text()
    service.config_path.write_text(good + "\nbogus_key: 1\n")
    ok, message = service.reload()
    assert not ok and "bogus_key" in message
    assert value(scrape(service), "tuf_exporter_config_last_reload_successful") == 0
    assert [r.name for r in service.config.repositories] == ["sim"]
    # a good change applies: drop the mirror
    document = yaml.safe_load(good)
    document["repositories"][0]["mirrors"] = []
    service.config_path.write_text(yaml.safe_dump(document))
    ok, _ = service.reload()
    assert ok
    samples = scrape(service)
    assert value(samples, "tuf_exporter_config_last_reload_successful") == 1
    assert value(samples, "tuf_probe_success", endpoint="mirror1") is None


@pytest.mark.skipif(shutil.which("promtool") is None, reason="promtool is not installed")
def test_promtool_check_metrics_on_a_real_scrape(service: Service) -> None:
    poll(lambda: _both_probed(service), timeout=20)
    text = generate_latest(service.registry)
    done = subprocess.run(["promtool", "check", "metrics"], input=text, capture_output=True,
                          timeout=30)
    assert done.returncode == 0, done.stdout.decode() + done.stderr.decode()


class SilentServer:
    """Accepts connections and never answers: a repository that hangs."""

    def __init__(self) -> None:
        import socket
        import threading

        self._sock = socket.socket()
        self._sock.bind(("127.0.0.1", 0))
        self._sock.listen(16)
        self._sock.settimeout(0.1)
        self.url = f"http://127.0.0.1:{self._sock.getsockname()[1]}/"
        self.connections = 0
        self._held: list[socket.socket] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._accept, daemon=True)
        self._thread.start()

    def _accept(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self._sock.accept()
            except OSError:
                continue
            self.connections += 1
            self._held.append(conn)

    def close(self) -> None:
        self._stop.set()
        self._thread.join()
        for conn in self._held:
            conn.close()
        self._sock.close()


def test_closed_port_helper_is_refused() -> None:
    import socket

    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", closed_port()), timeout=1)


def test_signer_probes_and_cadence_are_served(sim: Sim, tmp_path: Path,
                                              caplog: pytest.LogCaptureFixture) -> None:
    key = tmp_path / "timestamp.pem"
    sim.repo.export_private_key("timestamp", key)
    config = _write_config(sim, tmp_path / "config.yml")
    document = yaml.safe_load(config.read_text())
    document["signers"] = [{"name": "online-ts", "uri": f"file2:{key}", "repository": "sim",
                            "role": "timestamp", "interval": "1s"}]
    document["repositories"][0]["policy"] = {"cadence": {"timestamp": "1h"}}
    config.write_text(yaml.safe_dump(document))
    svc = Service(config, first_run_within=0.1)
    svc.start()
    try:
        def signer_ready() -> bool:
            samples = scrape(svc)
            return (value(samples, "tuf_signer_up", signer="online-ts") == 1
                    and value(samples, "tuf_signer_key_authorized", signer="online-ts") == 1
                    and value(samples, "tuf_signer_cadence_ok", role="timestamp") == 1)

        poll(signer_ready, timeout=20)
        samples = scrape(svc)
        assert (value(samples, "tuf_signer_sign_duration_seconds", signer="online-ts") or 0) > 0
        # the key is rotated out of root: the next probes say so
        sim.repo.rotate_keys("timestamp", add=1, remove=1)
        sim.repo.publish()
        poll(lambda: value(scrape(svc), "tuf_signer_key_authorized", signer="online-ts") == 0,
             timeout=20)
    finally:
        svc.stop()
    crashes = [r for r in caplog.records if r.levelname == "ERROR"]
    assert not crashes, [r.getMessage() for r in crashes]
    assert "file2:" not in caplog.text or str(key) in caplog.text


def test_shards_split_the_repositories(sim: Sim, tmp_path: Path) -> None:
    extra = [{"name": f"repo-{i}", "metadata_url": f"http://127.0.0.1:9/{i}/",
              "trusted_root": str(sim.trusted_root)} for i in range(12)]
    config = _write_config(sim, tmp_path / "config.yml", extra=extra)
    from exporter.serve.service import load

    everything = {(r.name, e.name) for r in load(config).config.repositories
                  for e in r.endpoints}
    seen: list[tuple[str, str]] = []
    for index in range(3):
        shard = load(config, (index, 3)).config
        assert (shard.shard_index, shard.shard_count) == (index, 3)
        seen += [(r.name, e.name) for r in shard.repositories for e in r.endpoints]
    assert sorted(seen) == sorted(everything), "every endpoint exactly once"


def _events(service: Service) -> list[dict]:
    import json

    path = service.config.state_dir / "events.jsonl"
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


@pytest.mark.parametrize(
    ("fault", "params", "kind", "reason", "counter"),
    [
        ("unknown-signer", {}, "anomaly", "unknown_signer",
         ("tuf_anomalies_total", {"kind": "unknown_signer"})),
        ("version-jump", {"by": 5000}, "anomaly", "version_jump",
         ("tuf_anomalies_total", {"kind": "version_jump"})),
        ("rollback", {}, "rollback", "rollback",
         ("tuf_rollbacks_detected_total", {"role": "timestamp"})),
    ],
)
def test_a_finding_is_counted_once_and_shipped_as_one_event(
    service: Service, sim: Sim, fault: str, params: dict, kind: str, reason: str,
    counter: tuple[str, dict[str, str]],
) -> None:
    poll(lambda: _both_probed(service), timeout=20)
    sim.repo.publish()
    poll(lambda: value(scrape(service), "tuf_metadata_version", endpoint="primary",
                       role="timestamp") == sim.repo.latest.signed("timestamp").signed.version,
         timeout=20)
    sim.server.inject(fault, **params)
    name, labels = counter
    poll(lambda: value(scrape(service), name, endpoint="primary", **labels) == 1, timeout=20)
    matching = poll(lambda: [e for e in _events(service)
                             if e["kind"] == kind and e["reason"] == reason], timeout=20)
    probes = value(scrape(service), "tuf_probes_total", endpoint="primary", result="success") or 0
    probes += value(scrape(service), "tuf_probes_total", endpoint="primary",
                    result="failure") or 0
    poll(lambda: sum(value(scrape(service), "tuf_probes_total", endpoint="primary", result=r)
                     or 0 for r in ("success", "failure")) >= probes + 3, timeout=20)
    assert value(scrape(service), name, endpoint="primary", **labels) == 1, "counted once"
    again = [e for e in _events(service) if e["kind"] == kind and e["reason"] == reason]
    assert len(again) == len(matching) == 1, "one event"
    assert again[0]["repository"] == "sim" and again[0]["endpoint"] == "primary"


def _series_of(service: Service, **labels: str) -> list[str]:
    text = generate_latest(service.registry).decode()
    wanted = [f'{k}="{v}"' for k, v in labels.items()]
    return [line for line in text.splitlines()
            if not line.startswith("#") and all(w in line for w in wanted)]


def test_a_probe_finishing_after_its_removal_records_nothing(sim: Sim, tmp_path: Path) -> None:
    primary = sim.server.endpoint_urls("primary")
    other = {"name": "B", "metadata_url": primary[0], "targets_url": primary[1],
             "trusted_root": str(sim.trusted_root), "interval": "1h",
             "new_client_interval": 0}  # no view pass of B: its probe is what is held
    config = _write_config(sim, tmp_path / "config.yml", interval="1h", extra=[other])
    svc = Service(config, first_run_within=0.1)
    entered, release = threading.Event(), threading.Event()
    probe = svc.prober.probe

    def held(repository: Repository, endpoint: Endpoint, root: bytes | None = None
             ) -> ProbeResult:
        if repository.name == "B":  # B's probe is in flight while B is removed
            entered.set()
            release.wait(20)
        return probe(repository, endpoint, root)

    svc.prober.probe = held  # type: ignore[method-assign]
    svc.start()
    try:
        poll(lambda: _both_probed(svc), timeout=20)
        poll(entered.is_set, timeout=20)
        document = yaml.safe_load(config.read_text())
        document["repositories"] = document["repositories"][:1]
        config.write_text(yaml.safe_dump(document))
        assert svc.reload()[0]
        release.set()
    finally:
        release.set()
        svc.stop()  # waits for the probe of B to finish
    assert _series_of(svc, repository="B") == []
    assert [e for e in _events(svc) if e["repository"] == "B"] == []
    assert _series_of(svc, repository="sim", endpoint="primary")
    assert value(scrape(svc), "tuf_exporter_probes_in_flight") == 0


def test_a_history_corrupted_while_running_loses_no_verification_event(
    sim: Sim, tmp_path: Path
) -> None:
    svc = Service(_write_config(sim, tmp_path / "config.yml"), first_run_within=0.1)
    svc.start()
    try:
        poll(lambda: _both_probed(svc), timeout=20)
        path = svc.history.path
        check = sqlite3.connect(path)
        check.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        check.close()
        size = path.stat().st_size
        with path.open("r+b") as f:  # damage every page but the first
            f.seek(4096)
            f.write(os.urandom(size - 4096))
        damaged = time.time()
        poll(lambda: svc.history.recoveries == 1, timeout=20)
        assert list(path.parent.glob("history.sqlite.corrupt-*"))

        def verified_after() -> list[dict]:
            return [e for e in _events(svc) if e["kind"] == "verification"
                    and e["endpoint"] == "primary"
                    and datetime.fromisoformat(e["time"]).timestamp() > damaged]

        # every probe still ships its verdict: as many events as primary probes since
        poll(lambda: len(verified_after()) >= 3, timeout=30)
        probes = sum(value(scrape(svc), "tuf_probes_total", endpoint="primary", result=r) or 0
                     for r in ("success", "failure"))
        poll(lambda: len([e for e in _events(svc) if e["kind"] == "verification"
                          and e["endpoint"] == "primary"]) >= probes, timeout=20)
        # the fresh history works: the primary's series come back
        poll(lambda: value(scrape(svc), "tuf_metadata_last_change_timestamp_seconds",
                           endpoint="primary", role="timestamp"), timeout=20)
        assert svc.history.recoveries == 1
    finally:
        svc.stop()


def test_churn_of_renamed_repositories_grows_neither_the_scrape_nor_the_state(
    sim: Sim, tmp_path: Path
) -> None:
    config = _write_config(sim, tmp_path / "config.yml", interval="1h")
    svc = Service(config, first_run_within=3600)  # probes run by hand below, not scheduled
    document = yaml.safe_load(config.read_text())
    sizes = []
    try:
        for i in range(100):
            document["repositories"][0]["name"] = f"repo-{i}"
            config.write_text(yaml.safe_dump(document))
            assert svc.reload()[0]
            repo = svc.config.repositories[0]
            for endpoint in repo.endpoints:
                assert svc._probe(repo, endpoint).success
            sizes.append(len(generate_latest(svc.registry)))
    finally:
        svc.stop()
    assert max(sizes[10:]) <= sizes[10] + 1000  # label values grow from 'repo-10' on
    # a restart loads the configured repository only, not the 99 others stored
    restarted = Service(config, first_run_within=3600)
    try:
        assert list(restarted.history._states) == ["repo-99"]
    finally:
        restarted.stop()


def test_a_dead_thread_fails_readiness_and_shows_in_thread_up(
    service: Service, monkeypatch: pytest.MonkeyPatch
) -> None:
    poll(lambda: _both_probed(service), timeout=20)
    assert service.ready()
    samples = scrape(service)
    assert value(samples, "tuf_exporter_thread_up", thread="scheduler") == 1
    assert value(samples, "tuf_exporter_thread_up", thread="shipper") == 1

    class Fatal(BaseException):
        """Not an Exception: what the shipper's own guard does not catch."""

    def die() -> bool:
        raise Fatal

    monkeypatch.setattr(threading, "excepthook", lambda args: None)
    monkeypatch.setattr(service.shipper, "_step", die)
    service.shipper._wake.set()
    service.shipper._halt.set()
    poll(lambda: not service.shipper.running, timeout=10)
    assert not service.ready()
    samples = scrape(service)
    assert value(samples, "tuf_exporter_thread_up", thread="shipper") == 0
    assert value(samples, "tuf_exporter_thread_up", thread="scheduler") == 1


def test_the_service_keeps_temporary_files_below_state_dir(
    sim: Sim, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # $TMPDIR unusable: anything written there (python-tuf's check of the trusted root
    # included) would fail
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "no-such-tmpdir"))
    svc = Service(_write_config(sim, tmp_path / "config.yml"), first_run_within=0.1)
    state_tmp = tmp_path / "state" / "tmp"
    assert tempfile.gettempdir() == str(state_tmp)  # for every library of the process too
    assert state_tmp.stat().st_mode & 0o777 == 0o700
    ok, message = svc.reload()
    assert ok, message
    assert list(state_tmp.iterdir()) == []
    svc.stop()
    assert tempfile.tempdir == str(tmp_path / "no-such-tmpdir")  # as it was before


# -- client views (issue 16) ---------------------------------------------------------------------


def _view_config(sim: Sim, tmp_path: Path, **repository: object) -> Path:
    """The service's configuration with client views every second, trusted root v2 and the
    bootstrap root v1 (a root rotation published first)."""
    sim.repo.timestamp_hashes = False  # the snapshot's version only, as sigstore's timestamp
    sim.repo.rotate_keys("root", remove=1)
    sim.repo.publish()
    latest = sim.repo.latest
    for version in (1, 2):
        (tmp_path / f"{version}.root.json").write_bytes(latest[f"metadata/{version}.root.json"])
    path = _write_config(sim, tmp_path / "config.yml")
    document = yaml.safe_load(path.read_text())
    document["repositories"][0].update({
        "trusted_root": str(tmp_path / "2.root.json"), "new_client_interval": "1s",
        "bootstrap_roots": ["1.root.json"], **repository})
    path.write_text(yaml.safe_dump(document))
    return path


def _views_of(service: Service, endpoint: str = "primary") -> dict[str, float]:
    samples = scrape(service).get("tuf_client_update_success", [])
    return {labels["client"]: v for labels, v in samples if labels["endpoint"] == endpoint}


def test_views_are_probed_on_their_interval_and_a_corrupted_snapshot_pages_only_new_clients(
    sim: Sim, tmp_path: Path
) -> None:
    service = Service(_view_config(sim, tmp_path), first_run_within=0.1)
    service.start()
    try:
        everything = {"returning": 1, "new": 1, "bootstrap-root-v1": 1}
        poll(lambda: _views_of(service) == everything, timeout=20)
        view = sim.server.view("primary")
        name = view.filename("snapshot")
        served = view.get(name) or b""
        sig = json.loads(served)["signatures"][0]["sig"].encode()
        view.put(name, served.replace(sig, (b"0" if sig[:1] != b"0" else b"1") + sig[1:]))
        poll(lambda: _views_of(service) == {**everything, "new": 0, "bootstrap-root-v1": 0},
             timeout=20)
        samples = scrape(service)
        assert value(samples, "tuf_probe_success", endpoint="primary") == 1
        assert value(samples, "tuf_client_update_failures_total", endpoint="primary",
                     client="new", reason="bad_signature", role="snapshot") >= 1
        changes = poll(lambda: [e for e in _events(service) if e["kind"] == "client_view"
                                and e["endpoint"] == "primary"], timeout=20)
        assert {e["details"]["client"] for e in changes} >= {"new"}
        assert changes[0]["reason"] == "bad_signature" and changes[0]["role"] == "snapshot"
        # what the new client was given differs from what returning clients were given
        found = poll(lambda: [e for e in _events(service) if e["reason"] == "equivocation"
                              and e["role"] == "snapshot"], timeout=20)
        assert "client view" in found[0]["message"]
        assert value(scrape(service), "tuf_anomalies_total", endpoint="primary",
                     kind="equivocation") == 1  # once, however many passes see it
        # a reload without the bootstrap root drops its view
        document = yaml.safe_load(service.config_path.read_text())
        document["repositories"][0]["bootstrap_roots"] = []
        service.config_path.write_text(yaml.safe_dump(document))
        assert service.reload()[0]
        assert "bootstrap-root-v1" not in _views_of(service)
        # a root python-tuf cannot start from is refused, naming the file; the old one runs
        (tmp_path / "bad.json").write_text('{"signed": {}, "signatures": []}')
        document["repositories"][0]["bootstrap_roots"] = ["bad.json"]
        service.config_path.write_text(yaml.safe_dump(document))
        ok, message = service.reload()
        assert not ok and "bad.json" in message
        assert service.config.repository("sim").bootstrap_roots == ()
        # and one added back is probed again
        document["repositories"][0]["bootstrap_roots"] = ["1.root.json"]
        service.config_path.write_text(yaml.safe_dump(document))
        assert service.reload()[0]
        poll(lambda: "bootstrap-root-v1" in _views_of(service), timeout=20)
        document["repositories"][0]["new_client_interval"] = 0
        service.config_path.write_text(yaml.safe_dump(document))
        assert service.reload()[0]
        assert set(_views_of(service)) == {"returning"}
    finally:
        service.stop()


def test_a_view_pass_moves_no_state_of_the_returning_client(sim: Sim, tmp_path: Path) -> None:
    """Views observe the history (equivocation) but never as the endpoint's returning client:
    no version of the endpoint, no lag, no rollback comes from them."""
    config = _view_config(sim, tmp_path)
    service = Service(config, first_run_within=0.1)
    try:
        service._apply(service.config, service._loaded.bootstrap_roots)
        repo = service.config.repository("sim")
        results = service._probe_views(repo, repo.mirrors[0])
        assert [r.success for r in results] == [True, True], [r.message for r in results]
        samples = scrape(service)
        assert value(samples, "tuf_probe_success", endpoint="mirror1") is None
        assert value(samples, "tuf_client_update_success", endpoint="mirror1", client="new") == 1
        assert service.history.last_change("sim", "mirror1", "timestamp") is None
        assert value(samples, "tuf_mirror_lag_versions", endpoint="mirror1") is None
    finally:
        service.stop()


def test_a_client_view_event_is_a_change_of_the_views_verdict() -> None:
    from dataclasses import replace as changed
    from datetime import UTC

    from exporter.probe.results import FailedRole, Reason
    from exporter.serve.service import client_view_event

    at = datetime(2027, 1, 1, tzinfo=UTC)
    ok = ProbeResult("r", "primary", True, at, 1.0, client="new")
    bad = changed(ok, success=False, reason=Reason.BAD_SIGNATURE, role=FailedRole.SNAPSHOT,
                  message="snapshot: signed by 0/1 keys")
    host = changed(ok, success=False, reason=Reason.EXPORTER_ERROR)
    assert client_view_event(None, ok) is None  # a first success changes nothing
    assert client_view_event(ok, ok) is None and client_view_event(bad, bad) is None
    assert client_view_event(ok, host) is None  # no verdict
    first = client_view_event(None, bad)
    assert first is not None and first.reason == "bad_signature" and first.role == "snapshot"
    assert first.details["client"] == "new" and first.details["previous"] is None
    recovered = client_view_event(bad, ok)
    assert recovered is not None and recovered.reason is None
    assert recovered.details["previous"] == {"success": False, "reason": "bad_signature",
                                             "role": "snapshot"}
    other = client_view_event(bad, changed(bad, reason=Reason.MISSING))
    assert other is not None and other.reason == "missing"
    assert client_view_event(host, bad) is not None  # host faults are not verdicts


def test_a_trusted_root_file_with_other_bytes_is_no_equivocation_of_a_view(
    sim: Sim, tmp_path: Path
) -> None:
    """The configured root may be a re-serialized copy of the served one (same signed content,
    other bytes): what a bootstrap view fetches for that root version is no equivocation."""
    config = _view_config(sim, tmp_path)
    current = tmp_path / "2.root.json"
    current.write_text(json.dumps(json.loads(current.read_bytes()), indent=4))  # other bytes
    service = Service(config, first_run_within=0.1)
    try:
        service._apply(service.config, service._loaded.bootstrap_roots)
        repo = service.config.repository("sim")
        assert service._probe(repo, repo.primary).success
        results = service._probe_views(repo, repo.primary)
        assert [r.success for r in results] == [True, True], [r.message for r in results]
        assert value(scrape(service), "tuf_anomalies_total", endpoint="primary",
                     kind="equivocation") == 0
    finally:
        service.stop()


_MMAP_PROBE = """
import ctypes, sys
from exporter.serve.service import MMAP_THRESHOLD, fix_mmap_threshold

class Info(ctypes.Structure):
    _fields_ = [(n, ctypes.c_size_t) for n in ("arena", "ordblks", "smblks", "hblks", "hblkhd",
                "usmblks", "fsmblks", "uordblks", "fordblks", "keepcost")]

libc = ctypes.CDLL(None)
libc.mallinfo2.restype = Info
libc.malloc.restype, libc.malloc.argtypes = ctypes.c_void_p, (ctypes.c_size_t,)
libc.free.argtypes = (ctypes.c_void_p,)
if sys.argv[1] == "fixed":
    assert fix_mmap_threshold()
libc.free(libc.malloc(16 << 20))  # a mapped 16 MiB block freed: glibc raises its threshold
before = libc.mallinfo2().hblkhd
# 64 x the threshold (8 MiB), below the raised threshold (16 MiB) but above any free chunk the
# imports leave in the heap: glibc serves a large request from a free chunk that fits before it
# considers mmap, so a block of a few thresholds came from the heap or not depending on what the
# imports had freed (the test failed that way once the service imported more)
block = libc.malloc(64 * MMAP_THRESHOLD)
print(libc.mallinfo2().hblkhd - before)
libc.free(block)
"""


@pytest.mark.skipif(not hasattr(__import__("ctypes").CDLL(None), "mallinfo2"),
                    reason="glibc's mallinfo2 (2.33+) is needed to see where a block lives")
def test_large_blocks_stay_mapped_after_a_large_block_was_freed() -> None:
    """The service fixes glibc's mmap threshold: a large block freed later is unmapped, not
    left in an arena's heap, even after a larger mapped block was freed (which raises glibc's
    dynamic threshold past it; the soak saw the freed heap memory stay resident)."""

    def mapped(mode: str) -> int:
        done = subprocess.run([sys.executable, "-c", _MMAP_PROBE, mode], capture_output=True,
                              text=True, timeout=60, check=True)
        return int(done.stdout)

    assert mapped("default") == 0  # glibc's own behaviour, which the fix changes
    assert mapped("fixed") >= 64 * 128 * 1024
