"""Debian's nginx serving a simulated repository from disk, on loopback (issue #18).

The simulator (:mod:`exporter.simulator`) still builds and signs the repository; here its
published files are written to a document root in the layout a client fetches
(``<root>/<endpoint>/metadata/...`` and ``<root>/<endpoint>/targets/...``) and nginx serves
them: HTTP/1.1 with keep-alive, ``sendfile``, one worker process (the machine the benchmark
was written for has two cores, shared with the exporter under test). Every path of nginx
(configuration, pid file, logs, temporary directories) is in a private directory, so it needs
no root and touches nothing of a system nginx.

Request counts come from nginx's access log (one line per request, written unbuffered when the
request ends); :meth:`Nginx.requests` first requests a marker and waits for its line, so every
request answered before the call has been logged.
"""

from __future__ import annotations

import ctypes
import grp
import http.client
import os
import pwd
import shutil
import signal
import socket
import subprocess
import time
from collections import Counter
from pathlib import Path
from urllib.parse import unquote

from exporter.simulator import View

#: Where Debian puts nginx.
_CANDIDATES = ("/usr/sbin/nginx", "/usr/local/sbin/nginx")
#: Debian packages that provide it, smallest first.
_PACKAGES = ("nginx-light", "nginx")
#: How long nginx gets to start, to stop, and to log a marker.
_DEADLINE = 10.0
#: The path of the marker request (not a file: answered 404, only logged).
_MARKER = "/.bench-marker/"


class NginxError(RuntimeError):
    """nginx is missing and cannot be installed, or does not start."""


def ensure_nginx() -> str:
    """The path of the nginx binary, installing Debian's package with apt-get if missing.

    Raises :class:`NginxError` when it is missing and cannot be installed (not root, no
    apt-get, or the installation failed): run with ``--server simulator`` then.
    """
    found = shutil.which("nginx") or next((p for p in _CANDIDATES if os.access(p, os.X_OK)), None)
    if found:
        return found
    apt = shutil.which("apt-get")
    if apt is None or os.geteuid() != 0:
        raise NginxError(
            "nginx is not installed and cannot be installed here (needs root and apt-get): "
            "install nginx-light, or run with --server simulator"
        )
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    errors = []
    for package in _PACKAGES:
        done = subprocess.run(
            [apt, "install", "-y", "--no-install-recommends", package],
            capture_output=True, text=True, env=env, timeout=600, check=False,
        )
        if done.returncode == 0:
            break
        errors.append(f"{package}: {done.stderr.strip()[-300:]}")
    found = shutil.which("nginx") or next((p for p in _CANDIDATES if os.access(p, os.X_OK)), None)
    if not found:
        raise NginxError("cannot install nginx: " + "; ".join(errors))
    return found


def _die_with_parent() -> None:
    """In the forked child before exec: SIGTERM nginx's master when its parent (the
    benchmark's server process) dies, so a crashed benchmark leaves no nginx behind."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
    return port


def configuration(prefix: Path, docroot: Path, port: int) -> str:
    """The nginx configuration: every path under ``prefix``, serving ``docroot`` on
    ``127.0.0.1:port`` with keep-alive and sendfile, one line per request in ``access.log``."""
    user = ""
    if os.geteuid() == 0:  # the worker would otherwise drop to nobody and not read docroot
        user = (f"user {pwd.getpwuid(os.getuid()).pw_name} "
                f"{grp.getgrgid(os.getgid()).gr_name};\n")
    temp = "\n".join(
        f"    {kind}_temp_path {prefix / (kind + '_temp')};"
        for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
    )
    return f"""{user}daemon off;
master_process on;
worker_processes 1;
pid {prefix / 'nginx.pid'};
error_log {prefix / 'error.log'} warn;
events {{
    worker_connections 4096;
}}
http {{
{temp}
    types {{
        application/json json;
    }}
    default_type application/octet-stream;
    log_format bench '$uri';
    access_log {prefix / 'access.log'} bench;
    sendfile on;
    tcp_nopush on;
    tcp_nodelay on;
    keepalive_timeout 75s;
    keepalive_requests 1000000;
    server_tokens off;
    server {{
        listen 127.0.0.1:{port} reuseport;
        root {docroot};
        location / {{
            try_files $uri =404;
        }}
    }}
}}
"""


class Nginx:
    """nginx serving ``docroot`` on loopback; :meth:`start` / :meth:`stop` (or ``with``)."""

    def __init__(self, docroot: Path, prefix: Path) -> None:
        self.docroot = docroot
        self.prefix = prefix
        self.port = 0
        self._process: subprocess.Popen[bytes] | None = None
        self._log_offset = 0
        self._markers = 0

    @property
    def base_url(self) -> str:
        """``http://127.0.0.1:PORT``."""
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> Nginx:
        """Write the configuration, start nginx, wait until it accepts connections.

        Raises :class:`NginxError` when it exits or does not listen within 10 s (the error log
        is quoted).
        """
        binary = ensure_nginx()
        self.prefix.mkdir(parents=True, exist_ok=True)
        self.docroot.mkdir(parents=True, exist_ok=True)
        self.port = _free_port()
        conf = self.prefix / "nginx.conf"
        conf.write_text(configuration(self.prefix, self.docroot, self.port))
        (self.prefix / "access.log").touch()
        self._process = subprocess.Popen(
            [binary, "-p", str(self.prefix), "-c", str(conf), "-e", str(self.prefix / "error.log")],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            preexec_fn=_die_with_parent,  # prctl only: safe after fork
        )
        deadline = time.monotonic() + _DEADLINE
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                break
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                return self
            except OSError:
                time.sleep(0.02)
        self.stop()
        raise NginxError(f"nginx did not start: {self._error_log()}")

    def _error_log(self) -> str:
        try:
            return (self.prefix / "error.log").read_text(errors="replace").strip()[-1000:]
        except OSError as exc:
            return f"(no error log: {exc})"

    def stop(self) -> None:
        """Graceful stop (SIGQUIT), then SIGKILL after 10 s; the process is reaped."""
        process, self._process = self._process, None
        if process is None:
            return
        if process.poll() is None:
            process.send_signal(signal.SIGQUIT)
            try:
                process.wait(_DEADLINE)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(_DEADLINE)

    def __enter__(self) -> Nginx:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- requests ------------------------------------------------------------------------------

    def _logged_marker(self) -> None:
        """Request a marker and wait until its line is in the access log: nginx logs each
        request when it ends, so every request answered before this one is logged too."""
        self._markers += 1
        path = f"{_MARKER}{self._markers}".encode()
        log = self.prefix / "access.log"
        scanned = log.stat().st_size  # the marker's line can only come after this
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=_DEADLINE)
        try:
            conn.request("GET", path.decode())
            conn.getresponse().read()
        finally:
            conn.close()
        deadline = time.monotonic() + _DEADLINE
        with log.open("rb") as f:
            f.seek(scanned)
            pending = b""
            while time.monotonic() < deadline:
                pending += f.read()
                lines = pending.split(b"\n")
                pending = lines.pop()  # a line not written to its end yet
                if path in lines:
                    return
                time.sleep(0.005)
        raise NginxError(f"the marker {path.decode()} did not reach nginx's access log")

    def requests(self, endpoint: str) -> Counter[str]:
        """Requests for files of ``endpoint`` since the last :meth:`reset_requests`, by file
        (``metadata/...``, ``targets/...``), as the simulator counts them."""
        self._logged_marker()
        counts: Counter[str] = Counter()
        prefix = f"/{endpoint}/"
        with (self.prefix / "access.log").open("rb") as f:
            f.seek(self._log_offset)
            for raw in f:
                line = unquote(raw.decode("utf-8", "replace").rstrip("\n"))
                if line.startswith(prefix):
                    counts[line[len(prefix):]] += 1
        return counts

    def reset_requests(self) -> None:
        """Count requests from now on."""
        self._logged_marker()
        self._log_offset = (self.prefix / "access.log").stat().st_size


class DocRoot:
    """The files of one endpoint's view written under ``<docroot>/<endpoint>/``; mirrors that
    follow the same view are symbolic links to it."""

    def __init__(self, docroot: Path, endpoint: str) -> None:
        self.root = docroot / endpoint
        self.root.mkdir(parents=True, exist_ok=True)
        #: file name -> the bytes object last written (a published file's bytes never change)
        self._written: dict[str, bytes] = {}

    def sync(self, view: View) -> int:
        """Write what ``view`` serves that is not on disk yet; return the files written.

        Each file is written to a temporary name and renamed into place, and
        ``metadata/timestamp.json`` last, so a client never sees a timestamp that points to a
        file not written yet. Raises ValueError for a view with response rules (slow, endless,
        reset responses): only the simulator's own server can serve those.
        """
        if view.rules:
            raise ValueError("this fault changes responses, not files: use --server simulator")
        names = set(view.state) | set(view.files)
        last = "metadata/timestamp.json"
        written = 0
        for name in sorted(names, key=lambda n: n == last):
            data = view.get(name)
            path = self.root / name
            if data is None:
                if self._written.pop(name, None) is not None:
                    path.unlink(missing_ok=True)
                continue
            if self._written.get(name) is data:
                continue
            path.parent.mkdir(parents=True, exist_ok=True)
            part = path.with_name(path.name + ".part")
            part.write_bytes(data)
            os.replace(part, path)
            self._written[name] = data
            written += 1
        return written

    def link(self, docroot: Path, mirror: str) -> None:
        """Serve this endpoint's files as endpoint ``mirror`` too."""
        (docroot / mirror).symlink_to(self.root.name)
