"""Clock steps: ``tuf-exporter serve`` under libfaketime, its wall clock stepped while it runs.

libfaketime (``faketime`` package) fakes the wall clock of the exporter process only; its
monotonic clock stays real (``FAKETIME_DONT_FAKE_MONOTONIC``), as a real NTP step or a resumed
VM would leave it. The simulated repository runs in the test process, on the real clock.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families
from support import Sim, free_port, poll, stop_process

ROOT = Path(__file__).resolve().parents[2]
LIBFAKETIME = next(
    (p for p in (Path("/usr/lib/x86_64-linux-gnu/faketime/libfaketimeMT.so.1"),
                 Path("/usr/lib/aarch64-linux-gnu/faketime/libfaketimeMT.so.1"),
                 Path("/usr/lib/faketime/libfaketimeMT.so.1")) if p.exists()),
    None,
)

pytestmark = pytest.mark.skipif(LIBFAKETIME is None, reason="libfaketime is not installed")



def _samples(port: int) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        text = response.read().decode()
    return {(s.name, frozenset(s.labels.items())): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def _value(samples: dict[tuple[str, frozenset[tuple[str, str]]], float], name: str,
           **labels: str) -> float | None:
    for (sample, got), value in samples.items():
        if sample == name and set(labels.items()) <= got:
            return value
    return None


@pytest.fixture
def stepped_exporter(sim: Sim, tmp_path: Path) -> Iterator[tuple[int, Path]]:
    """A ``serve`` process whose wall-clock offset is read from the returned file."""
    primary = sim.server.endpoint_urls("primary")
    config = tmp_path / "config.yml"
    config.write_text(yaml.safe_dump({
        "state_dir": str(tmp_path / "state"),
        "jitter": 0,
        "repositories": [{
            "name": "sim", "metadata_url": primary[0], "targets_url": primary[1],
            "trusted_root": str(sim.trusted_root), "interval": "1s", "timeout": "3s",
            "policy": {"cadence": {"timestamp": "10m"}},
        }],
    }))
    offset = tmp_path / "faketime"
    offset.write_text("+0\n")
    port = free_port()
    env = {**os.environ, "LD_PRELOAD": str(LIBFAKETIME), "FAKETIME_TIMESTAMP_FILE": str(offset),
           "FAKETIME_NO_CACHE": "1", "FAKETIME_DONT_FAKE_MONOTONIC": "1"}
    with (tmp_path / "stderr").open("wb") as err:
        proc = subprocess.Popen(
            [sys.executable, "-m", "exporter.cli", "serve", "--config", str(config),
             "--web.listen-address", f"127.0.0.1:{port}"],
            cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=err,
        )
    try:
        yield port, offset
    finally:
        stop_process(proc)


def test_a_wall_clock_step_forward_raises_no_freeze_and_no_late_role(
    stepped_exporter: tuple[int, Path], sim: Sim
) -> None:
    port, offset = stepped_exporter
    rollbacks = {"repository": "sim", "endpoint": "primary", "role": "timestamp"}

    def probes() -> float:
        try:
            samples = _samples(port)
        except OSError:
            return 0.0
        return _value(samples, "tuf_probes_total", endpoint="primary", result="success") or 0.0

    poll(lambda: probes() >= 2, timeout=30)
    assert _value(_samples(port), "tuf_rollbacks_detected_total", **rollbacks) == 0
    assert _value(_samples(port), "tuf_signer_cadence_ok", repository="sim", role="timestamp") == 1
    # Two hours forward, far past the configured 10 minute cadence of the unchanged timestamp.
    offset.write_text("+2h\n")
    poll(lambda: (_value(_samples(port), "tuf_exporter_last_probe_timestamp_seconds",
                         repository="sim", endpoint="primary") or 0) > time.time() + 3600,
         timeout=30)
    seen = probes()
    poll(lambda: probes() >= seen + 3, timeout=30)
    samples = _samples(port)
    assert _value(samples, "tuf_rollbacks_detected_total", **rollbacks) == 0, "a false freeze"
    assert _value(samples, "tuf_signer_cadence_ok", repository="sim", role="timestamp") == 1
    assert _value(samples, "tuf_probe_success", endpoint="primary") == 1
