"""The simulated repository, served from a separate process.

Benchmarks measure the exporter's process: its CPU time, its memory and its wall time. A
simulator served from the same interpreter would compete for the GIL and add its allocations
to tracemalloc's count, so it runs in a child process (``multiprocessing``, spawn) and is
driven over a pipe with a few commands: build, change one target, request counts, stop.

The simulator's HTTP server speaks HTTP/1.0 and closes every connection: each request of every
client (ours and the baselines alike) pays a TCP connect. That is noted in the results.
"""

from __future__ import annotations

import multiprocessing
import multiprocessing.connection
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from exporter.simulator import SimulatedRepository, SimulatorServer


@dataclass(frozen=True)
class Spec:
    """What to build: ``targets`` files in ``targets`` (or spread over ``bins`` hash bins)."""

    targets: int = 10
    bins: int = 0
    succinct: bool = True
    #: Extra endpoints serving the same repository (``mirror0000``, ...).
    mirrors: int = 0
    #: Put one target in every bin (``bins`` > 0) so a walk can visit each one.
    one_per_bin: bool = False
    #: Named delegations of top-level targets (``r0``, ``r1``, ...).
    roles: int = 0
    #: Serve every delegated role padded to this many bytes (the ``padded-delegations``
    #: fault: signatures intact, python-tuf accepts them); 0: not padded.
    padded: int = 0


@dataclass(frozen=True)
class Built:
    """What the parent needs to know about a built repository."""

    urls: dict[str, tuple[str, str]]
    trusted_root: bytes
    #: Bin name -> a target path that lives in it (when ``Spec.one_per_bin``).
    bin_targets: dict[str, str] = field(default_factory=dict)
    #: A target path present in the repository (a canary).
    canary: str = ""


def _targets_for_bins(repo: SimulatedRepository, bins: list[str]) -> dict[str, str]:
    """One target path per bin: try names until every bin has one."""
    wanted = set(bins)
    found: dict[str, str] = {}
    i = 0
    while len(found) < len(wanted):
        path = f"bins/file-{i}.txt"
        role = repo.role_for_target(path)
        if role not in found:
            found[role] = path
        i += 1
    return found


class _Child:
    """The command loop of the child process."""

    def __init__(self) -> None:
        self.repo: SimulatedRepository | None = None
        self.server: SimulatorServer | None = None
        self.counter = 0

    def build(self, spec: Spec) -> Built:
        repo = SimulatedRepository()
        bin_targets: dict[str, str] = {}
        if spec.bins:
            names = repo.delegate_hash_bins(spec.bins, succinct=spec.succinct)
            if spec.one_per_bin:
                bin_targets = _targets_for_bins(repo, names)
                repo.add_targets({path: path.encode() for path in bin_targets.values()})
        for i in range(spec.roles):
            repo.delegate(f"r{i}")
        repo.add_targets({f"files/{i}.txt": f"content {i}\n".encode() for i in range(spec.targets)})
        repo.publish()
        server = SimulatorServer(repo).start()
        if spec.padded:
            server.inject("padded-delegations", size=spec.padded)
        for i in range(spec.mirrors):
            server.add_mirror(f"mirror{i:04d}")
        self.repo, self.server = repo, server
        urls = {name: server.endpoint_urls(name) for name in server.endpoints}
        canary = "files/0.txt" if spec.targets else next(iter(bin_targets.values()), "")
        return Built(urls, repo.trusted_root_bytes(), bin_targets, canary)

    def change(self, path: str | None = None) -> int:
        """Add or replace one target (``path``, or a new one in ``targets``) and publish."""
        assert self.repo is not None
        self.counter += 1
        name = path or f"changes/{self.counter}.txt"
        self.repo.add_target(name, f"change {self.counter}\n".encode())
        return self.repo.publish().serial

    def requests(self, endpoint: str) -> dict[str, int]:
        assert self.server is not None
        return dict(self.server.requests(endpoint))

    def reset_requests(self) -> None:
        assert self.server is not None
        self.server.reset_requests()

    def stop(self) -> None:
        if self.server is not None:
            self.server.stop()


def _main(conn: multiprocessing.connection.Connection) -> None:
    child = _Child()
    commands: dict[str, Callable[..., Any]] = {
        "build": child.build,
        "change": child.change,
        "requests": child.requests,
        "reset_requests": child.reset_requests,
    }
    try:
        while True:
            name, args = conn.recv()
            if name == "stop":
                break
            try:
                conn.send(("ok", commands[name](*args)))
            except Exception as exc:  # noqa: BLE001 - reported to the parent, which raises
                conn.send(("error", repr(exc)))
    finally:
        child.stop()
        conn.close()


class SimProcess:
    """A simulator in a child process; use as a context manager."""

    def __init__(self, spec: Spec) -> None:
        self.spec = spec
        context = multiprocessing.get_context("spawn")
        self._conn, child_conn = context.Pipe()
        self._process = context.Process(target=_main, args=(child_conn,), daemon=True)
        self._process.start()
        child_conn.close()
        self.built: Built = self._call("build", spec)

    def _call(self, name: str, *args: Any) -> Any:
        self._conn.send((name, args))
        status, value = self._conn.recv()
        if status != "ok":
            raise RuntimeError(f"simulator command {name} failed: {value}")
        return value

    def change(self, path: str | None = None) -> int:
        """Publish a new targets (or bin) version with one target added or replaced."""
        return int(self._call("change", path))

    def requests(self, endpoint: str = "primary") -> dict[str, int]:
        """Requests seen by ``endpoint`` since the last reset, by file."""
        result: dict[str, int] = self._call("requests", endpoint)
        return result

    def reset_requests(self) -> None:
        """Forget the request counts of every endpoint."""
        self._call("reset_requests")

    def close(self) -> None:
        """Stop the server and the child process."""
        if self._process.is_alive():
            self._conn.send(("stop", ()))
            self._process.join(10)
        if self._process.is_alive():
            self._process.kill()
            self._process.join(5)
        self._conn.close()

    def __enter__(self) -> SimProcess:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
