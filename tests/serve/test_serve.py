"""``tuf-exporter serve`` and ``demo`` as processes: HTTP, reload, TLS and auth, SIGKILL."""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import bcrypt
import pytest
import requests
import yaml
from support import ROOT, Sim, poll
from support.pki import PKI
from support.process import Exporter, get, serve_config


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
    config = serve_config(sim, tmp_path)
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
    exporter = Exporter("serve", "--config", str(serve_config(sim, tmp_path)))
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
    sim: Sim, tmp_path: Path, exporters: list[Exporter], pki: PKI
) -> None:
    ca, cert, key = pki.ca, pki.server_cert, pki.server_key
    hashed = bcrypt.hashpw(b"s3cret", bcrypt.gensalt(rounds=4)).decode()
    web = tmp_path / "web.yml"
    web.write_text(yaml.safe_dump({
        "tls_server_config": {"cert_file": str(cert), "key_file": str(key)},
        "basic_auth_users": {"prometheus": hashed},
    }))
    exporter = Exporter("serve", "--config", str(serve_config(sim, tmp_path)),
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
    config = serve_config(sim, tmp_path)
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


def test_log_level_is_taken_before_or_after_the_command() -> None:
    """README writes `serve ... --log.level info`, as Prometheus exporters take it."""
    from exporter.cli import build_parser

    parser = build_parser()
    assert parser.parse_args(["serve", "--config", "c.yml", "--log.level", "debug"]).log_level \
        == "debug"
    assert parser.parse_args(["--log.level", "warn", "demo"]).log_level == "warn"
    assert parser.parse_args(["serve", "--config", "c.yml"]).log_level == "info"


def test_a_listen_address_in_use_is_a_clear_usage_error(sim: Sim, tmp_path: Path) -> None:
    """A second exporter on a taken port: which address, what to do, exit 2, no traceback."""
    config = serve_config(sim, tmp_path)
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        address = f"127.0.0.1:{holder.getsockname()[1]}"
        done = subprocess.run(
            [sys.executable, "-m", "exporter.cli", "serve", "--config", str(config),
             "--web.listen-address", address],
            cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 2, done.stderr[-3000:]
    assert f"cannot listen on --web.listen-address {address}: " in done.stderr
    assert "choose another address" in done.stderr
    assert "Traceback" not in done.stderr


def test_python_tuf_key_by_key_info_lines_stay_out_of_the_log() -> None:
    """python-tuf logs each key that did not sign at info ("Key ... failed to verify root"):
    on sigstore's healthy repository 50 such lines at start. The exporter's log keeps python-tuf
    and securesystemslib to warnings; its own info lines stay."""
    import io
    import logging

    from exporter import logs

    stream = io.StringIO()
    root = logging.getLogger()
    saved = (root.handlers[:], root.level)
    libraries = [logging.getLogger(name) for name in
                 ("opensearch", "urllib3", "apscheduler", "tuf", "securesystemslib")]
    levels = [library.level for library in libraries]
    try:
        logs.setup("info", stream)
        logging.getLogger("tuf.api._payload").info("Key abc failed to verify root")
        logging.getLogger("securesystemslib.signer").info("no signature")
        logging.getLogger("tuf.ngclient.updater").warning("kept")
        logging.getLogger("exporter.serve.service").info("probe succeeded")
    finally:
        root.handlers[:] = saved[0]
        root.setLevel(saved[1])
        for library, level in zip(libraries, levels, strict=True):
            library.setLevel(level)
    messages = [json.loads(line)["msg"] for line in stream.getvalue().splitlines()]
    assert messages == ["kept", "probe succeeded"]
