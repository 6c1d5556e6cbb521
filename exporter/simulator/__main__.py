"""``python -m exporter.simulator``: serve a simulated repository until Ctrl-C.

Prints the endpoint URLs and the path of the trusted root to bootstrap from.
"""

from __future__ import annotations

import argparse
import tempfile
import threading
from pathlib import Path

from exporter.simulator.faults import FAULTS
from exporter.simulator.repository import SimulatedRepository
from exporter.simulator.server import PRIMARY, SimulatorServer


def main(argv: list[str] | None = None) -> int:
    """Run the simulator; returns the exit status."""
    parser = argparse.ArgumentParser(prog="python -m exporter.simulator", description=__doc__)
    parser.add_argument("--port", type=int, default=0, help="TCP port (default: a free one)")
    parser.add_argument("--mirror", default="mirror1", help="name of the mirror endpoint")
    parser.add_argument("--targets", type=int, default=3, help="number of demo targets")
    parser.add_argument("--fault", choices=sorted(FAULTS), action="append", default=[],
                        help="fault to inject on the mirror (repeatable)")
    parser.add_argument("--publish-every", type=float, default=0.0, metavar="SECONDS",
                        help="re-sign timestamp every SECONDS (0: never)")
    args = parser.parse_args(argv)

    repo = SimulatedRepository()
    repo.delegate("delegated", ["delegated/*"])
    repo.add_target("delegated/file.txt", b"delegated target\n", role="delegated")
    for i in range(args.targets):
        repo.add_target(f"file{i}.txt", f"target {i}\n".encode())
    repo.publish()
    workdir = Path(tempfile.mkdtemp(prefix="tuf-simulator-"))
    root_path = repo.write_trusted_root(workdir / "root.json")

    stop = threading.Event()
    with SimulatorServer(repo, port=args.port) as server:
        server.add_mirror(args.mirror)
        for fault in args.fault:
            server.inject(fault, endpoint=args.mirror)
        for name in (PRIMARY, args.mirror):
            metadata_url, targets_url = server.endpoint_urls(name)
            print(f"{name}: metadata {metadata_url}  targets {targets_url}")
        print(f"trusted root: {root_path}")
        print("Ctrl-C to stop", flush=True)
        try:
            while not stop.wait(args.publish_every or 3600):
                if args.publish_every:
                    repo.resign("timestamp")
        except KeyboardInterrupt:
            pass
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
