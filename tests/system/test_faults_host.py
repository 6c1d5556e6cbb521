"""Faults of this host are the exporter's, never the repository's (reason ``exporter_error``).

Real faults where the suite can make them: a full tmpfs under ``state_dir`` (the suite runs as
root; skipped where mounting is not allowed), descriptor exhaustion of a ``tuf-exporter serve``
process (its RLIMIT_NOFILE lowered under it with prlimit), a real socket opened with no
descriptor left, a closed history or spool. Each checks the reason and cause, the counter
that moved, that nothing a repository alert reads changed, and that probes recover.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import resource
import subprocess
import sys
import textwrap
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
import requests
import yaml
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families
from support import Sim, free_port, poll, stop_process
from tuf.api import exceptions

from exporter.config import Endpoint
from exporter.probe import ErrorCause, Prober, ProbeResult, Reason
from exporter.probe.classify import exporter_error_result, host_fault, reason_of
from exporter.probe.inspector import Inspected, Inspector
from exporter.serve import Service
from exporter.serve.collector import ProbeStore
from exporter.simulator import closed_port

ROOT = Path(__file__).resolve().parents[2]

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]

#: Failure reasons a repository alert or the SLO may read as the repository's.
REPOSITORY_REASONS = {str(r) for r in Reason} - {str(Reason.EXPORTER_ERROR)}


def parse(text: str) -> Samples:
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for fam in text_string_to_metric_families(text)
        for s in fam.samples
    }


def get(samples: Samples, name: str, **labels: str) -> float | None:
    for (sample, got), value in samples.items():
        if sample == name and set(labels.items()) <= got:
            return value
    return None


def total(samples: Samples, name: str, **labels: str) -> float:
    return sum(v for (sample, got), v in samples.items()
               if sample == name and set(labels.items()) <= got)


def until(read: Callable[[], Samples | None], check: Callable[[Samples], bool],
          timeout: float = 30.0) -> Samples:
    """Scrape with ``read`` until ``check`` holds (deadline ``timeout``); the last scrape."""
    def ready() -> Samples | None:
        samples = read()
        return samples if samples is not None and check(samples) else None
    found: Samples = poll(ready, timeout=timeout, interval=0.2)
    return found


def repository_failures(samples: Samples) -> float:
    """Failed probes counted against a repository (what the SLO and the pages read)."""
    return total(samples, "tuf_probes_total", result="failure") + sum(
        v for (sample, got), v in samples.items()
        if sample == "tuf_probe_failures_total" and dict(got)["reason"] in REPOSITORY_REASONS)


# ---------------------------------------------------------------------------------------------
# Classification


@pytest.mark.parametrize(("code", "cause"), [
    (errno.ENOSPC, ErrorCause.DISK), (errno.EDQUOT, ErrorCause.DISK),
    (errno.EROFS, ErrorCause.DISK), (errno.EFBIG, ErrorCause.DISK),
    (errno.EMFILE, ErrorCause.DESCRIPTORS), (errno.ENFILE, ErrorCause.DESCRIPTORS),
    (errno.ENOMEM, ErrorCause.MEMORY),
    (errno.ECONNREFUSED, None), (errno.ECONNRESET, None), (errno.ETIMEDOUT, None),
    (errno.EHOSTUNREACH, None), (errno.ENOENT, None),
])
def test_host_faults_by_errno_however_wrapped(code: int, cause: ErrorCause | None) -> None:
    bare = OSError(code, os.strerror(code))
    try:
        try:
            raise bare
        except OSError as inner:
            raise exceptions.DownloadError("failed to download") from inner
    except exceptions.DownloadError as wrapped:
        assert host_fault(bare) == host_fault(wrapped) == cause
        assert (reason_of(wrapped) is Reason.EXPORTER_ERROR) == (cause is not None)
    assert host_fault(MemoryError()) is ErrorCause.MEMORY
    assert host_fault(ValueError("x")) is None


def test_a_refused_connection_stays_the_repositorys(sim: Sim) -> None:
    prober = Prober(sim.state_dir)
    config = sim.config()
    port = closed_port()
    refused = Endpoint("primary", f"http://127.0.0.1:{port}/metadata/",
                       f"http://127.0.0.1:{port}/targets/")
    res = prober.probe(config, refused, sim.trusted_root.read_bytes())
    assert (res.reason, res.cause) == (Reason.DOWNLOAD_ERROR, None), res.message


def test_no_descriptor_for_a_socket_is_ours(sim: Sim) -> None:
    """In a child process: every descriptor taken, then the fetcher opens a socket."""
    url = sim.server.endpoint_urls("primary")[0] + "timestamp.json"
    code = textwrap.dedent(f"""
        import os, resource, time
        from exporter.probe.classify import host_fault, reason_of
        from exporter.probe.fetcher import Fetcher, new_session
        resource.setrlimit(resource.RLIMIT_NOFILE, (128, 128))
        fetcher = Fetcher(new_session(1), lambda url: "timestamp", connect_timeout=1,
                          read_timeout=1, deadline=time.monotonic() + 5)
        held = []
        try:
            while True:
                held.append(os.open(os.devnull, os.O_RDONLY))
        except OSError:
            pass
        try:
            b"".join(fetcher.fetch({url!r}))  # the socket (ngclient's temporary file aside)
        except Exception as exc:
            print(reason_of(exc), host_fault(exc))
        for fd in held:
            os.close(fd)
        b"".join(fetcher.fetch({url!r}))
        print("recovered")
    """)
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True,
                         text=True, timeout=60, check=True).stdout.split()
    assert out == ["exporter_error", "descriptors", "recovered"]


def test_cache_facts_unreadable_for_want_of_descriptors_are_ours(sim: Sim) -> None:
    """Facts the client cache holds but no descriptor is left to read: the probe's fault is
    ours (before, the listing came back empty and the result lost those roles' facts)."""
    config = sim.config()
    prober = Prober(sim.state_dir)
    assert prober.probe(config, config.primary).success
    metadata = prober.cache_dir(config, config.primary) / "metadata"
    code = textwrap.dedent(f"""
        import os, resource
        from pathlib import Path
        from exporter.probe.classify import host_fault
        from exporter.probe.prober import _cache_files
        resource.setrlimit(resource.RLIMIT_NOFILE, (128, 128))
        held = []
        try:
            while True:
                held.append(os.open(os.devnull, os.O_RDONLY))
        except OSError:
            pass
        try:
            print(len(_cache_files(Path({str(metadata)!r}), {{}})))
        except OSError as exc:
            print(host_fault(exc))
        for fd in held:
            os.close(fd)
        print(len(_cache_files(Path({str(metadata)!r}), {{}})) > 0)
    """)
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True,
                         text=True, timeout=60, check=True).stdout.split()
    assert out == ["descriptors", "True"]


# ---------------------------------------------------------------------------------------------
# The prober, the store and the service


class _BrokenInspector(Inspector):
    """An inspector with a bug: fact gathering is our code, so its crash is ours."""

    def inspect(self, files: object, **facts: object) -> Inspected:  # type: ignore[override]
        raise KeyError("a bug of ours")


def test_a_bug_in_fact_gathering_is_an_internal_exporter_error(sim: Sim) -> None:
    config = sim.config()
    res = Prober(sim.state_dir, _BrokenInspector()).probe(config, config.primary)
    assert not res.success
    assert (res.reason, res.cause) == (Reason.EXPORTER_ERROR, ErrorCause.INTERNAL)
    assert "a bug of ours" in (res.message or "")
    assert res.to_json()["cause"] == "internal"
    # and the same prober works again once the bug is gone (nothing was left half-done)
    assert Prober(sim.state_dir).probe(config, config.primary).success


def test_the_store_keeps_the_last_verdict_through_exporter_errors(sim: Sim) -> None:
    config = sim.config()
    store = ProbeStore()
    store.expect({("sim", "primary")})
    good = Prober(sim.state_dir).probe(config, config.primary)
    store.started()
    store.record(good)
    fault = exporter_error_result("sim", "primary", datetime.now(UTC), 0.1,
                                  OSError(errno.ENOSPC, "No space left on device"))
    store.started()
    store.record(fault)
    snap = store.snapshot()
    latest, probes, failures = snap.latest, snap.probes, snap.failures
    errors, in_flight = snap.exporter_errors, snap.in_flight
    assert latest == [good] and in_flight == 0
    assert probes[("sim", "primary", "exporter_error")] == 1
    assert probes[("sim", "primary", "failure")] == 0
    assert failures == {("sim", "primary", "exporter_error", "root"): 1}
    assert errors[("disk",)] == 1 and errors[("history",)] == 0


def _service_config(sim: Sim, path: Path, state_dir: Path) -> Path:
    primary = sim.server.endpoint_urls("primary")
    mirror = sim.server.endpoint_urls("mirror1")
    path.write_text(yaml.safe_dump({
        "state_dir": str(state_dir),
        "jitter": 0,
        "repositories": [{
            "name": "sim", "metadata_url": primary[0], "targets_url": primary[1],
            "trusted_root": str(sim.trusted_root), "interval": "1s", "timeout": "3s",
            "canary_targets": ["files/a.txt", "team/b.txt"],
            "mirrors": [{"name": "mirror1", "metadata_url": mirror[0],
                         "targets_url": mirror[1]}],
        }],
    }))
    return path


def scrape(service: Service) -> Samples:
    return parse(generate_latest(service.registry).decode())


def test_history_and_spool_failures_count_as_ours_and_the_verdict_stands(
    sim: Sim, tmp_path: Path
) -> None:
    service = Service(_service_config(sim, tmp_path / "c.yml", tmp_path / "state"))
    repo = service.config.repositories[0]
    service.history.close()  # every observation now raises (a closed database)
    service.spool.close()
    result = service._probe(repo, repo.primary)  # the call the scheduler makes
    assert result.success, result.message
    samples = scrape(service)
    assert get(samples, "tuf_exporter_errors_total", cause="history") == 1
    assert get(samples, "tuf_exporter_errors_total", cause="spool") == 1
    assert get(samples, "tuf_probe_success", endpoint="primary") == 1
    assert get(samples, "tuf_probes_total", endpoint="primary", result="success") == 1


# ---------------------------------------------------------------------------------------------
# Disk full: a small tmpfs as state_dir


@pytest.fixture
def small_tmpfs(tmp_path: Path) -> Iterator[Path]:
    mount = tmp_path / "state"
    mount.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=16m", "tmpfs", str(mount)],
                          capture_output=True, text=True, check=False)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.strip()}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def fill(directory: Path) -> Path:
    """Write a file in ``directory`` until the file system is full; return it."""
    filler = directory / "filler"
    with filler.open("wb", buffering=0) as handle:
        for size in (1 << 20, 1 << 12, 1):
            block = b"\0" * size
            with contextlib.suppress(OSError):
                while True:
                    handle.write(block)
    with pytest.raises(OSError) as full:
        (directory / "probe").write_bytes(b"x" * 4096)
    assert full.value.errno == errno.ENOSPC
    (directory / "probe").unlink(missing_ok=True)
    return filler


def both_verified(samples: Samples) -> bool:
    return all(get(samples, "tuf_probe_success", endpoint=e) == 1 for e in ("primary", "mirror1"))


def newer(samples: Samples, version: float | None) -> bool:
    seen = get(samples, "tuf_metadata_version", endpoint="primary", role="timestamp")
    return seen is not None and seen > (version or 0)


def test_disk_full_on_state_dir_is_ours_and_probes_recover(
    sim: Sim, tmp_path: Path, small_tmpfs: Path
) -> None:
    service = Service(_service_config(sim, tmp_path / "c.yml", small_tmpfs),
                      first_run_within=0.1)
    service.start()
    try:
        before = until(lambda: scrape(service), both_verified)
        version = get(before, "tuf_metadata_version", endpoint="primary", role="timestamp")
        filler = fill(small_tmpfs)
        sim.repo.publish()  # a new version: the client cache must be written
        faulted = until(lambda: scrape(service), lambda s: (get(
            s, "tuf_probes_total", endpoint="primary", result="exporter_error") or 0) >= 2)
        assert (get(faulted, "tuf_exporter_errors_total", cause="disk") or 0) >= 2
        assert get(faulted, "tuf_probe_failures_total", endpoint="primary",
                   reason="exporter_error") is not None
        # nothing a repository alert or the SLO reads moved
        assert repository_failures(faulted) == repository_failures(before) == 0
        for endpoint in ("primary", "mirror1"):
            assert get(faulted, "tuf_probe_success", endpoint=endpoint) == 1
        assert get(faulted, "tuf_metadata_version", endpoint="primary",
                   role="timestamp") == version
        filler.unlink()  # the fault goes: probes recover by themselves
        recovered = until(lambda: scrape(service), lambda s: newer(s, version))
        assert get(recovered, "tuf_probe_success", endpoint="primary") == 1
        assert repository_failures(recovered) == 0
    finally:
        service.stop()


# ---------------------------------------------------------------------------------------------
# Descriptor exhaustion of a running `tuf-exporter serve`


class _Serve:
    """``tuf-exporter serve`` in a child process, its log in a file."""

    def __init__(self, config: Path, log: Path) -> None:
        self.port = free_port()
        self.log = log
        self._out = log.open("wb")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "exporter.cli", "serve", "--config", str(config),
             "--web.listen-address", f"127.0.0.1:{self.port}"],
            cwd=ROOT, stdout=self._out, stderr=subprocess.STDOUT)

    def metrics(self) -> Samples:
        assert self.proc.poll() is None, self.log.read_text()[-3000:]
        response = requests.get(f"http://127.0.0.1:{self.port}/metrics", timeout=5)
        response.raise_for_status()
        return parse(response.text)

    def scraped(self) -> Samples | None:
        try:
            return self.metrics()
        except requests.RequestException:
            return None

    def lines(self) -> list[dict[str, object]]:
        out = []
        for line in self.log.read_text(errors="replace").splitlines():
            with contextlib.suppress(ValueError):
                out.append(json.loads(line))
        return out

    def open_descriptors(self) -> int:
        return len(os.listdir(f"/proc/{self.proc.pid}/fd"))

    def stop(self) -> None:
        stop_process(self.proc)
        self._out.close()


@pytest.mark.skipif(not hasattr(resource, "prlimit"), reason="needs prlimit (Linux)")
def test_descriptor_exhaustion_is_ours_and_probes_recover(sim: Sim, tmp_path: Path) -> None:
    serve = _Serve(_service_config(sim, tmp_path / "c.yml", tmp_path / "state"),
                   tmp_path / "serve.log")
    try:
        first = until(serve.scraped, both_verified, timeout=60)
        version = get(first, "tuf_metadata_version", endpoint="primary", role="timestamp")
        original = resource.prlimit(serve.proc.pid, resource.RLIMIT_NOFILE)
        # No new descriptor from now on: "Too many open files" for every file and socket.
        resource.prlimit(serve.proc.pid, resource.RLIMIT_NOFILE,
                         (max(8, serve.open_descriptors() - 3), original[1]))
        mark = len(serve.lines())
        sim.repo.publish()  # a new version: files must be written, sockets may be opened

        def ours() -> list[dict[str, object]]:
            return [line for line in serve.lines()[mark:]
                    if line.get("msg") == "probe failed"
                    and line.get("reason") == "exporter_error"
                    and line.get("cause") == "descriptors"]

        poll(lambda: len(ours()) >= 2, timeout=30, interval=0.2)
        failed = [line for line in serve.lines()[mark:] if line.get("msg") == "probe failed"]
        assert {line.get("reason") for line in failed} == {"exporter_error"}, failed[:3]
        resource.prlimit(serve.proc.pid, resource.RLIMIT_NOFILE, original)  # the fault goes
        samples = until(serve.scraped, lambda s: newer(s, version))
        assert (get(samples, "tuf_exporter_errors_total", cause="descriptors") or 0) >= 2
        assert total(samples, "tuf_probes_total", result="exporter_error") >= 2
        assert repository_failures(samples) == 0  # no repository reason, nothing burned
        for endpoint in ("primary", "mirror1"):
            assert get(samples, "tuf_probe_success", endpoint=endpoint) == 1
    finally:
        serve.stop()


def test_exporter_error_results_say_so_in_json() -> None:
    result: ProbeResult = exporter_error_result(
        "r", "primary", datetime.now(UTC), 0.0, OSError(errno.EMFILE, "Too many open files"))
    out = result.to_json()
    assert (out["success"], out["reason"], out["cause"]) == (False, "exporter_error",
                                                            "descriptors")
    assert "Too many open files" in out["message"]
