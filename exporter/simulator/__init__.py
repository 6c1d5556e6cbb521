"""A real TUF repository (python-tuf Metadata API; ed25519 keys, other schemes on rotation)
served over HTTP on 127.0.0.1 with mirrors and injectable faults, for tests, demos and benchmarks.

Typical use::

    repo = SimulatedRepository()
    repo.add_target("file.txt", b"hello")
    repo.publish()
    with SimulatorServer(repo) as server:
        server.add_mirror("mirror1")
        metadata_url, targets_url = server.endpoint_urls("primary")
        server.inject("expired-timestamp", endpoint="mirror1")
"""

from exporter.simulator.faults import FAULTS, ActiveFault, FaultInfo, View
from exporter.simulator.repository import (
    KEY_SCHEMES,
    ROOT,
    SNAPSHOT,
    TARGETS,
    TIMESTAMP,
    TOP_LEVEL_ROLES,
    RepositoryState,
    SimulatedRepository,
)
from exporter.simulator.server import PRIMARY, SimulatorServer, closed_port

__all__ = [
    "FAULTS",
    "KEY_SCHEMES",
    "PRIMARY",
    "ROOT",
    "SNAPSHOT",
    "TARGETS",
    "TIMESTAMP",
    "TOP_LEVEL_ROLES",
    "ActiveFault",
    "FaultInfo",
    "RepositoryState",
    "SimulatedRepository",
    "SimulatorServer",
    "View",
    "closed_port",
]
