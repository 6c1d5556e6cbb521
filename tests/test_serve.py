"""``tuf-exporter serve`` and ``demo`` as processes: HTTP, reload, TLS and auth, SIGKILL."""

from __future__ import annotations

import os
import resource
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import bcrypt
import pytest
import requests
import yaml
from conftest import Sim, free_port, poll, stop_process
from prometheus_client.parser import text_string_to_metric_families
from test_web import PKI, pki  # noqa: F401 - the web tests' certificate fixture

ROOT = Path(__file__).resolve().parents[1]


class Exporter:
    """A ``tuf-exporter`` subprocess; always stopped by the fixture that made it."""

    def __init__(self, *args: str, port: int | None = None,
                 open_files: int | None = None) -> None:
        """``open_files``: the process's RLIMIT_NOFILE (soft and hard); None inherits ours."""
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = open(os.devnull, "wb")  # noqa: SIM115 - closed in stop()

        def limit() -> None:
            if open_files is not None:
                resource.setrlimit(resource.RLIMIT_NOFILE, (open_files, open_files))

        self.proc = subprocess.Popen(
            [sys.executable, "-m", "exporter.cli", *args,
             "--web.listen-address", f"127.0.0.1:{self.port}"],
            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, preexec_fn=limit,
        )

    def stop(self) -> None:
        stop_process(self.proc)
        for stream in (self.proc.stdout, self.proc.stderr):
            if stream is not None:
                stream.close()
        self.log.close()

    def kill(self) -> None:
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=15)

    def metrics(self, **kwargs: object) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
        response = requests.get(f"{self.url}/metrics", timeout=5, **kwargs)  # type: ignore[arg-type]
        response.raise_for_status()
        return {
            (s.name, frozenset(s.labels.items())): s.value
            for fam in text_string_to_metric_families(response.text)
            for s in fam.samples
        }

    def up(self) -> bool:
        assert self.proc.poll() is None, self.proc.stderr.read().decode()[-3000:]  # type: ignore[union-attr]
        try:
            return requests.get(f"{self.url}/-/ready", timeout=2).status_code == 200
        except requests.ConnectionError:
            return False


def get(samples: dict[tuple[str, frozenset[tuple[str, str]]], float], name: str,
        **labels: str) -> float | None:
    for (sample, got), value in samples.items():
        if sample == name and set(labels.items()) <= got:
            return value
    return None


def _config(sim: Sim, tmp_path: Path) -> Path:
    primary = sim.server.endpoint_urls("primary")
    mirror = sim.server.endpoint_urls("mirror1")
    path = tmp_path / "config.yml"
    path.write_text(yaml.safe_dump({
        "state_dir": str(tmp_path / "state"),
        "jitter": 0,
        "repositories": [{
            "name": "sim", "metadata_url": primary[0], "targets_url": primary[1],
            "trusted_root": str(sim.trusted_root), "interval": "1s", "timeout": "3s",
            "mirrors": [{"name": "mirror1", "metadata_url": mirror[0],
                         "targets_url": mirror[1]}],
        }],
    }))
    return path


@pytest.fixture
def exporters() -> Iterator[list[Exporter]]:
    started: list[Exporter] = []
    try:
        yield started
    finally:
        for exporter in started:
            exporter.stop()


def test_demo_serves_metrics_within_a_minute(tmp_path: Path, exporters: list[Exporter]) -> None:
    demo = Exporter("demo", "--state-dir", str(tmp_path / "demo"), "--interval", "1s",
                    "--publish-every", "1s")
    exporters.append(demo)
    started = time.monotonic()

    def all_probed() -> bool:
        if not demo.up():
            return False
        samples = demo.metrics()
        return all(get(samples, "tuf_probe_success", endpoint=e) == 1
                   for e in ("primary", "mirror-lagging", "mirror-ok"))

    poll(all_probed, timeout=60, interval=0.2)
    assert time.monotonic() - started < 60
    poll(lambda: (get(demo.metrics(), "tuf_mirror_lag_versions", endpoint="mirror-lagging",
                      role="timestamp") or 0) >= 1, timeout=30)


def test_reload_on_sighup_and_post(sim: Sim, tmp_path: Path, exporters: list[Exporter]) -> None:
    config = _config(sim, tmp_path)
    exporter = Exporter("serve", "--config", str(config))
    exporters.append(exporter)
    poll(exporter.up, timeout=30)
    poll(lambda: get(exporter.metrics(), "tuf_probe_success", endpoint="mirror1") == 1,
         timeout=30)
    good = config.read_text()
    config.write_text(good + "oops: [\n")
    response = requests.post(f"{exporter.url}/-/reload", timeout=10)
    assert response.status_code == 500 and "not valid YAML" in response.text
    assert get(exporter.metrics(), "tuf_exporter_config_last_reload_successful") == 0
    assert get(exporter.metrics(), "tuf_probe_success", endpoint="mirror1") == 1
    document = yaml.safe_load(good)
    document["repositories"][0]["mirrors"] = []
    config.write_text(yaml.safe_dump(document))
    exporter.proc.send_signal(signal.SIGHUP)
    poll(lambda: get(exporter.metrics(), "tuf_probe_success", endpoint="mirror1") is None,
         timeout=20)
    assert get(exporter.metrics(), "tuf_exporter_config_last_reload_successful") == 1


def test_scrapes_answer_at_once_while_a_probe_hangs(
    sim: Sim, tmp_path: Path, exporters: list[Exporter]
) -> None:
    sim.server.inject("never-answers", endpoint="mirror1")
    exporter = Exporter("serve", "--config", str(_config(sim, tmp_path)))
    exporters.append(exporter)
    poll(exporter.up, timeout=30)
    poll(lambda: get(exporter.metrics(), "tuf_probe_success", endpoint="primary") == 1,
         timeout=30)
    durations = []
    for _ in range(20):
        started = time.monotonic()
        exporter.metrics()
        durations.append(time.monotonic() - started)
    durations.sort()
    assert durations[len(durations) // 2] < 0.1, durations


def test_tls_and_basic_auth_from_the_web_config(
    sim: Sim, tmp_path: Path, exporters: list[Exporter], pki: PKI  # noqa: F811
) -> None:
    ca, cert, key = pki.ca, pki.server_cert, pki.server_key
    hashed = bcrypt.hashpw(b"s3cret", bcrypt.gensalt(rounds=4)).decode()
    web = tmp_path / "web.yml"
    web.write_text(yaml.safe_dump({
        "tls_server_config": {"cert_file": str(cert), "key_file": str(key)},
        "basic_auth_users": {"prometheus": hashed},
    }))
    exporter = Exporter("serve", "--config", str(_config(sim, tmp_path)),
                        "--web.config.file", str(web))
    exporters.append(exporter)
    url = f"https://127.0.0.1:{exporter.port}"

    def ready() -> bool:
        try:
            return requests.get(f"{url}/-/ready", verify=str(ca), auth=("prometheus", "s3cret"),
                                timeout=2).status_code == 200
        except requests.ConnectionError:
            return False

    poll(ready, timeout=30)
    ok = requests.get(f"{url}/metrics", verify=str(ca), auth=("prometheus", "s3cret"), timeout=5)
    assert ok.status_code == 200 and "tuf_exporter_build_info" in ok.text
    wrong = requests.get(f"{url}/metrics", verify=str(ca), auth=("prometheus", "nope"), timeout=5)
    assert wrong.status_code == 401
    assert requests.get(f"{url}/metrics", verify=str(ca), timeout=5).status_code == 401
    with pytest.raises(requests.ConnectionError):
        requests.get(f"http://127.0.0.1:{exporter.port}/metrics", timeout=5)


def test_sigkill_mid_probing_then_restart_keeps_history(
    sim: Sim, tmp_path: Path, exporters: list[Exporter]
) -> None:
    sim.server.hold_mirror("mirror1", states_behind=0)
    for _ in range(3):
        sim.repo.publish()
    sim.server.hold_mirror("mirror1", states_behind=3)
    config = _config(sim, tmp_path)
    first = Exporter("serve", "--config", str(config))
    exporters.append(first)
    poll(first.up, timeout=30)
    poll(lambda: get(first.metrics(), "tuf_mirror_lag_versions", endpoint="mirror1",
                     role="timestamp") == 3, timeout=30)
    lag_before = get(first.metrics(), "tuf_mirror_lag_seconds", endpoint="mirror1") or 0
    first.kill()  # probes run every second: this lands in the middle of one
    second = Exporter("serve", "--config", str(config), port=first.port)
    exporters.append(second)
    poll(second.up, timeout=30)

    def probed_again() -> bool:
        samples = second.metrics()
        return (get(samples, "tuf_probes_total", endpoint="mirror1", result="success") or 0) >= 2

    poll(probed_again, timeout=30)
    samples = second.metrics()
    assert get(samples, "tuf_mirror_lag_versions", endpoint="mirror1", role="timestamp") == 3
    assert (get(samples, "tuf_mirror_lag_seconds", endpoint="mirror1") or 0) >= lag_before
    rollbacks = [v for (name, _), v in samples.items() if name == "tuf_rollbacks_detected_total"]
    anomalies = [v for (name, _), v in samples.items() if name == "tuf_anomalies_total"]
    assert sum(rollbacks) == 0 and sum(anomalies) == 0, "no false alarm after the restart"
    # detection continues: a real rollback on the primary is still seen
    sim.server.inject("rollback")
    poll(lambda: (get(second.metrics(), "tuf_rollbacks_detected_total", endpoint="primary",
                      role="timestamp") or 0) == 1, timeout=30)
