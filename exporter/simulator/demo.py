"""``tuf-exporter demo``: the exporter against a built-in simulated repository, on loopback.

The demo serves a real TUF repository (python-tuf Metadata API, ed25519 keys) with a delegation
and two mirrors: ``mirror-lagging`` is held a few versions behind, ``mirror-ok`` follows the
primary. A publisher adds a target every few seconds; an optional fault from the simulator's
catalogue is injected after a delay. The exporter probes all of it and serves ``/metrics``.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass
from pathlib import Path

import yaml

from exporter.simulator import FAULTS, SimulatedRepository, SimulatorServer

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class DemoOptions:
    """What the demo runs; every field has a default fit for a first look."""

    state_dir: Path
    interval: float = 5.0
    publish_every: float = 5.0
    lag: int = 3
    fault: str | None = None
    fault_after: float = 30.0
    fault_endpoint: str = "primary"


class DemoRepository:
    """The simulated repository, its server and the publisher thread."""

    def __init__(self, options: DemoOptions) -> None:
        if options.fault is not None and options.fault not in FAULTS:
            raise ValueError(f"unknown fault {options.fault!r}; known: {', '.join(FAULTS)}")
        self.options = options
        self._count = 0
        self.repo = SimulatedRepository()
        self.repo.add_target("demo/hello.txt", b"hello from the tuf-exporter demo\n")
        self.repo.delegate("team", ["team/*"])
        self.repo.add_target("team/notes.txt", b"a delegated target\n", role="team")
        self.repo.publish()
        for _ in range(options.lag):
            self._publish()
        self.server = SimulatorServer(self.repo)
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []

    def _publish(self) -> None:
        self._count += 1
        self.repo.add_target(f"demo/release-{self._count}.txt", f"release {self._count}\n".encode())
        self.repo.publish()

    def start(self) -> Path:
        """Serve, start publishing, schedule the fault; return the configuration file."""
        self.server.start()
        self.server.add_mirror("mirror-lagging")
        self.server.hold_mirror("mirror-lagging", states_behind=self.options.lag)
        self.server.add_mirror("mirror-ok")
        self._spawn(self._publisher, "demo-publisher")
        if self.options.fault is not None:
            self._spawn(self._injector, "demo-fault")
        return self.write_config()

    def _spawn(self, target: object, name: str) -> None:
        thread = threading.Thread(target=target, name=name, daemon=True)  # type: ignore[arg-type]
        thread.start()
        self._threads.append(thread)

    def _publisher(self) -> None:
        while not self._stop.wait(self.options.publish_every):
            self._publish()

    def _injector(self) -> None:
        if self._stop.wait(self.options.fault_after):
            return
        assert self.options.fault is not None
        self.server.inject(self.options.fault, endpoint=self.options.fault_endpoint)
        log.warning("demo fault injected", extra={"fault": self.options.fault,
                                                  "endpoint": self.options.fault_endpoint})

    def write_config(self) -> Path:
        """Write the exporter configuration for this repository into the state directory."""
        state = self.options.state_dir
        state.mkdir(parents=True, exist_ok=True)
        root = self.repo.write_trusted_root(state / "demo-root.json")
        primary = self.server.endpoint_urls("primary")
        mirrors = [
            {"name": name, "metadata_url": urls[0], "targets_url": urls[1]}
            for name in ("mirror-lagging", "mirror-ok")
            for urls in [self.server.endpoint_urls(name)]
        ]
        document = {
            "state_dir": str(state),
            "repositories": [{
                "name": "demo",
                "metadata_url": primary[0],
                "targets_url": primary[1],
                "trusted_root": str(root),
                "interval": f"{self.options.interval:g}s",
                "timeout": "4s",
                "canary_targets": ["demo/hello.txt", "team/notes.txt"],
                "policy": {"cadence": {"timestamp": f"{self.options.publish_every * 3:g}s"}},
                "mirrors": mirrors,
            }],
        }
        path = state / "demo-config.yml"
        path.write_text(yaml.safe_dump(document, sort_keys=False))
        return path

    def stop(self) -> None:
        """Stop publishing and serving."""
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=5)
        self.server.stop()
