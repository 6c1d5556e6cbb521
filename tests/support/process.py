"""``tuf-exporter`` as a subprocess for the tests that run the real command."""

from __future__ import annotations

import os
import resource
import signal
import subprocess
import sys
from pathlib import Path

import requests
import yaml
from prometheus_client.parser import text_string_to_metric_families

from support import ROOT, Sim, free_port, stop_process


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


def serve_config(sim: Sim, tmp_path: Path) -> Path:
    """A ``serve`` configuration of the ``sim`` repository (primary and mirror1, every 1 s)."""
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
