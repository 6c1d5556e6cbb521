"""The simulated repository, served from a separate process.

Benchmarks measure the exporter's process: its CPU time, its memory and its wall time. A
simulator served from the same interpreter would compete for the GIL and add its allocations
to tracemalloc's count, so it runs in a child process (``multiprocessing``, spawn) and is
driven over a pipe with a few commands: build, change one target, request counts, stop.

Two servers (``--server`` of ``python -m bench``, :func:`use_server`):

* ``nginx`` (the default): the child writes the published files to a document root and runs
  Debian's nginx on loopback (:mod:`bench.nginx`: HTTP/1.1 keep-alive, sendfile), like the web
  server or CDN a real repository sits behind. ``change`` writes the new files, the timestamp
  last. Request counts come from nginx's access log.
* ``simulator``: the simulator's own HTTP server in the child, HTTP/1.0 with a connection per
  request (every request of every client pays a TCP connect), kept for comparison.

Ours and the baselines of a row always use the same server in the same run.
"""

from __future__ import annotations

import multiprocessing
import multiprocessing.connection
import os
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.nginx import DocRoot, Nginx
from exporter.simulator import SimulatedRepository, SimulatorServer

#: The servers a benchmark can use; the first is the default.
SERVERS = ("nginx", "simulator")
_server = [SERVERS[0]]


def use_server(name: str) -> None:
    """Serve the repositories of the following :class:`SimProcess` es with ``name``."""
    if name not in SERVERS:
        raise ValueError(f"unknown server {name!r}: one of {', '.join(SERVERS)}")
    _server[0] = name


def server_name() -> str:
    """The server the next :class:`SimProcess` uses."""
    return _server[0]


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
    #: Root key rotations published after the first state (each a new root version signed by
    #: the old and the new root keys): the current root is version ``root_rotations + 1``.
    root_rotations: int = 0


@dataclass(frozen=True)
class Built:
    """What the parent needs to know about a built repository."""

    urls: dict[str, tuple[str, str]]
    trusted_root: bytes
    #: Bin name -> a target path that lives in it (when ``Spec.one_per_bin``).
    bin_targets: dict[str, str] = field(default_factory=dict)
    #: A target path present in the repository (a canary).
    canary: str = ""
    #: The current root.json (``trusted_root`` is version 1); equal to it without rotations.
    current_root: bytes = b""


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


#: The fault of :meth:`SimProcess.fail` that takes an endpoint away.
OUTAGE = "outage"


def _relink(docroot: Path, name: str, target: str) -> None:
    """Point endpoint ``name`` at directory ``target`` in one rename (no moment without it)."""
    link = docroot / f".{name}.link"
    link.unlink(missing_ok=True)
    link.symlink_to(target)
    os.replace(link, docroot / name)


class _Child:
    """The command loop of the child process."""

    def __init__(self) -> None:
        self.repo: SimulatedRepository | None = None
        self.server: SimulatorServer | None = None
        self.nginx: Nginx | None = None
        self.docroot: DocRoot | None = None
        self.counter = 0
        #: nginx: the directory of a failing endpoint's faulted files, by endpoint
        self.faulted: dict[str, DocRoot] = {}

    def build(self, spec: Spec, server_kind: str, directory: str) -> Built:
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
        for _ in range(spec.root_rotations):
            repo.rotate_keys("root", add=1, remove=1)
            repo.publish()
        server = SimulatorServer(repo)
        self.repo, self.server = repo, server
        if server_kind == "nginx":
            urls = self._nginx(spec, Path(directory))
        else:
            server.start()
            if spec.padded:
                server.inject("padded-delegations", size=spec.padded)
            for i in range(spec.mirrors):
                server.add_mirror(f"mirror{i:04d}")
            urls = {name: server.endpoint_urls(name) for name in server.endpoints}
        canary = "files/0.txt" if spec.targets else next(iter(bin_targets.values()), "")
        return Built(urls, repo.trusted_root_bytes(), bin_targets, canary,
                     repo.latest.metadata("root"))

    def _nginx(self, spec: Spec, directory: Path) -> dict[str, tuple[str, str]]:
        """Write the primary's view to disk, mirrors as links to it, and start nginx."""
        assert self.server is not None
        docroot = directory / "docroot"
        primary = DocRoot(docroot, "primary")
        if spec.padded:
            if spec.mirrors:
                raise ValueError("padded mirrors are served by the simulator only")
            self.server.inject("padded-delegations", size=spec.padded)
        primary.sync(self.server.view("primary"))
        names = ["primary"] + [f"mirror{i:04d}" for i in range(spec.mirrors)]
        for name in names[1:]:
            primary.link(docroot, name)
        self.docroot = primary
        self.nginx = Nginx(docroot, directory / "nginx").start()
        base = self.nginx.base_url
        return {name: (f"{base}/{name}/metadata/", f"{base}/{name}/targets/") for name in names}

    def change(self, path: str | None = None) -> int:
        """Add or replace one target (``path``, or a new one in ``targets``) and publish."""
        assert self.repo is not None and self.server is not None
        self.counter += 1
        name = path or f"changes/{self.counter}.txt"
        self.repo.add_target(name, f"change {self.counter}\n".encode())
        serial = self.repo.publish().serial
        if self.docroot is not None:
            self.docroot.sync(self.server.view("primary"))
        return serial

    def fail(self, endpoints: list[str], fault: str) -> None:
        """Make ``endpoints`` (mirrors) fail: ``fault`` is a simulator fault that changes files
        (served by nginx from a directory of their own) or ``outage`` (nginx: the endpoint's
        directory taken away, 404 for every file; the simulator: ``http-500``)."""
        assert self.server is not None
        for name in endpoints:
            if self.nginx is None:
                self.server.inject("http-500" if fault == OUTAGE else fault, name)
                continue
            assert self.docroot is not None
            docroot = self.docroot.root.parent
            if fault == OUTAGE:
                (docroot / name).unlink()
                continue
            if name not in self.server.endpoints:
                if not self.server.running:  # it names mirrors by its URLs; nginx serves
                    self.server.start()
                self.server.add_mirror(name)
            self.server.clear(name)
            self.server.inject(fault, name)
            files = self.faulted.get(name) or DocRoot(docroot, f".faulted-{name}")
            self.faulted[name] = files
            files.sync(self.server.view(name))
            _relink(docroot, name, files.root.name)

    def recover(self, endpoints: list[str]) -> None:
        """Serve ``endpoints`` the primary's files again."""
        assert self.server is not None
        for name in endpoints:
            if self.nginx is None:
                self.server.clear(name)
                continue
            assert self.docroot is not None
            _relink(self.docroot.root.parent, name, self.docroot.root.name)

    def requests(self, endpoint: str) -> dict[str, int]:
        if self.nginx is not None:
            return dict(self.nginx.requests(endpoint))
        assert self.server is not None
        return dict(self.server.requests(endpoint))

    def reset_requests(self) -> None:
        if self.nginx is not None:
            self.nginx.reset_requests()
            return
        assert self.server is not None
        self.server.reset_requests()

    def stop(self) -> None:
        if self.nginx is not None:
            self.nginx.stop()
        if self.server is not None:
            self.server.stop()


def _main(conn: multiprocessing.connection.Connection) -> None:
    child = _Child()
    commands: dict[str, Callable[..., Any]] = {
        "build": child.build,
        "change": child.change,
        "requests": child.requests,
        "reset_requests": child.reset_requests,
        "fail": child.fail,
        "recover": child.recover,
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
        #: the server this repository is served by (``nginx`` or ``simulator``)
        self.server = server_name()
        self._directory = tempfile.TemporaryDirectory(prefix="tuf-bench-serve-")
        context = multiprocessing.get_context("spawn")
        self._conn, child_conn = context.Pipe()
        self._process = context.Process(target=_main, args=(child_conn,), daemon=True)
        self._process.start()
        child_conn.close()
        try:
            self.built: Built = self._call("build", spec, self.server, self._directory.name)
        except BaseException:
            self.close()
            raise

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

    def fail(self, endpoints: list[str], fault: str) -> None:
        """Make mirrors ``endpoints`` fail with simulator fault ``fault`` (one that changes
        files, over nginx) or :data:`OUTAGE`, until :meth:`recover`."""
        self._call("fail", endpoints, fault)

    def recover(self, endpoints: list[str]) -> None:
        """Let ``endpoints`` serve the repository again."""
        self._call("recover", endpoints)

    def close(self) -> None:
        """Stop the server and the child process."""
        if self._process.is_alive():
            self._conn.send(("stop", ()))
            self._process.join(10)
        if self._process.is_alive():
            self._process.kill()
            self._process.join(5)
        self._conn.close()
        self._directory.cleanup()

    def __enter__(self) -> SimProcess:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
