"""The child processes of an external client's run: one command in its own session and process
group, ``stdin`` closed, its output kept to a bounded tail, killed as a group (SIGTERM, then
SIGKILL after :data:`KILL_GRACE` seconds) at the run's deadline, when its leader exits, or at
once when the run is cancelled (the exporter stops, or a reload removes the client view).

:func:`run_process` gives a :class:`Step` (exit status, timed out or not, output tails, seconds);
a fault of this host starting it is raised, a program that cannot be started is a failed step.
Used by :mod:`exporter.probe.external`.
"""

from __future__ import annotations

import os
import selectors
import signal
import subprocess
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from exporter.probe.classify import describe, host_fault

#: Bytes of each of stdout and stderr kept per command (the tail).
OUTPUT_BOUND = 64 * 1024
#: Seconds between SIGTERM and SIGKILL to a client's process group at its timeout.
KILL_GRACE = 2.0
#: Seconds between checks of a child (the default ``poll`` of :func:`run_process`) where Linux's
#: pidfd (which wakes the wait the moment the leader exits) is not available, and while the
#: process group gets its ``grace``.
POLL = 0.05
#: Seconds the pipes are still read after the leader exited and its group was killed (a
#: process outside the group may hold them).
DRAIN = 1.0
_READ = 64 * 1024


class _Tail:
    """The last ``bound`` bytes of a stream and the count of those before them."""

    def __init__(self, bound: int) -> None:
        self._bound = bound
        self._buf = bytearray()
        self.total = 0

    def add(self, data: bytes) -> None:
        self.total += len(data)
        self._buf += data
        if len(self._buf) > 2 * self._bound:  # trim in batches: amortized O(1) per byte
            del self._buf[: len(self._buf) - self._bound]

    def output(self) -> Output:
        tail = bytes(self._buf[-self._bound:])
        return Output(tail, self.total - len(tail))


@dataclass(frozen=True)
class Output:
    """What was kept of one output stream: its ``tail`` (at most the bound) and how many bytes
    came before it (``dropped``)."""

    tail: bytes
    dropped: int

    def text(self, limit: int = OUTPUT_BOUND) -> str:
        """The last ``limit`` bytes of the tail as text (invalid UTF-8 replaced), with a note
        of how many bytes came before them."""
        kept = self.tail[-limit:]
        before = self.dropped + len(self.tail) - len(kept)
        text = kept.decode("utf-8", errors="replace")
        return f"[{before} earlier bytes not kept] {text}" if before else text


@dataclass(frozen=True)
class Step:
    """One command of a run, as it ended.

    ``status`` is the exit status (negative: killed by that signal; None: not started or not
    reaped), ``timed_out`` whether the deadline killed it, ``start_error`` why it could not be
    started, ``cancelled`` whether the run's ``cancel`` event killed it (no verdict).
    """

    command: str
    status: int | None
    timed_out: bool
    stdout: Output
    stderr: Output
    seconds: float
    start_error: str | None = None
    cancelled: bool = False

    @property
    def ok(self) -> bool:
        """Exited 0 in time, not cancelled."""
        return self.status == 0 and not self.timed_out and not self.cancelled


def _signal_group(pgid: int, signum: int) -> bool:
    """Send ``signum`` to the process group; False when the group is gone."""
    try:
        os.killpg(pgid, signum)
    except ProcessLookupError:
        return False
    except PermissionError:  # only when the group id was reused by another user's group
        return False
    return True


def _terminate(proc: subprocess.Popen[bytes], grace: float, poll: float) -> None:
    """SIGTERM to the process group, up to ``grace`` seconds for it to go (checked every
    ``poll`` seconds), then SIGKILL."""
    pgid = proc.pid
    if _signal_group(pgid, signal.SIGTERM):
        until = time.monotonic() + grace
        while time.monotonic() < until:
            proc.poll()  # reap the leader, so an exited group is seen as gone
            if not _signal_group(pgid, 0):
                break
            time.sleep(poll)
    _signal_group(pgid, signal.SIGKILL)


def _pidfd(pid: int) -> int | None:
    """A pidfd of the child ``pid`` (Linux 5.3+), or None where there is none: the wait for
    the child's exit then checks it every :data:`POLL` seconds."""
    try:
        return os.pidfd_open(pid)
    except (AttributeError, OSError):  # not Linux, an old kernel, or no descriptor left
        return None


def run_process(
    argv: Sequence[str],
    *,
    command: str,
    cwd: Path,
    env: dict[str, str],
    deadline: float,
    bound: int = OUTPUT_BOUND,
    grace: float = KILL_GRACE,
    poll: float = POLL,
    cancel: threading.Event | None = None,
) -> Step:
    """Run ``argv`` in its own session and process group until it exits or ``deadline``
    (monotonic seconds) passes; the group is killed either way (SIGTERM, ``grace`` seconds,
    SIGKILL at the deadline; SIGKILL to what is left once the leader exited). Once ``cancel``
    is set the group is killed the same way within ``poll`` seconds and the step is
    ``cancelled`` (a ``cancel`` set before the start starts nothing).

    The wait ends the moment the leader exits (on Linux, a pidfd wakes it; elsewhere the
    leader is checked every ``poll`` seconds). stdout and stderr are read as they come; the
    last ``bound`` bytes of each are kept.
    Raises only for a fault of this host (no descriptor or memory for the child:
    :func:`~exporter.probe.classify.host_fault`); a program that cannot be started (missing,
    not executable) is a :class:`Step` with ``start_error``.
    """
    t0 = time.monotonic()
    out, err = _Tail(bound), _Tail(bound)
    if cancel is not None and cancel.is_set():
        return Step(command, None, False, out.output(), err.output(), 0.0, cancelled=True)
    try:
        proc = subprocess.Popen(  # noqa: S603 - the configured client, argv without a shell
            list(argv), cwd=cwd, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
            stderr=subprocess.PIPE, start_new_session=True, close_fds=True,
        )
    except OSError as exc:
        if host_fault(exc) is not None:
            raise
        return Step(command, None, False, out.output(), err.output(),
                    time.monotonic() - t0, describe(exc))
    timed_out = cancelled = False
    finished_at: float | None = None  # when the leader exited or was killed
    assert proc.stdout is not None and proc.stderr is not None
    pidfd = _pidfd(proc.pid)
    try:
        with selectors.DefaultSelector() as selector:
            selector.register(proc.stdout, selectors.EVENT_READ, out)
            selector.register(proc.stderr, selectors.EVENT_READ, err)
            if pidfd is not None:  # readable once the leader exited
                selector.register(pidfd, selectors.EVENT_READ, None)
            pipes = 2
            try:
                while pipes or finished_at is None:
                    now = time.monotonic()
                    if finished_at is None and cancel is not None and cancel.is_set():
                        cancelled = True
                        _terminate(proc, grace, poll)
                        finished_at = time.monotonic()
                    elif finished_at is None and now >= deadline:
                        timed_out = True
                        _terminate(proc, grace, poll)
                        finished_at = time.monotonic()
                    elif finished_at is None and proc.poll() is not None:
                        _signal_group(proc.pid, signal.SIGKILL)  # what the leader left behind
                        finished_at = now
                    if finished_at is not None:
                        if pidfd is not None and pidfd in selector.get_map():
                            selector.unregister(pidfd)
                        if not pipes:
                            break
                        wait = finished_at + DRAIN - time.monotonic()
                        if wait <= 0:
                            break  # a process outside the group holds a pipe: stop reading
                    else:
                        wait = max(deadline - now, 0)
                        if pidfd is None or cancel is not None:
                            wait = min(wait, poll)  # a cancel is an event, not a descriptor
                    for key, _ in selector.select(timeout=wait):
                        if key.data is None:  # the pidfd: the leader exited (reaped next turn)
                            continue
                        stream: IO[bytes] = key.fileobj  # type: ignore[assignment]
                        data = os.read(stream.fileno(), _READ)
                        if data:
                            key.data.add(data)
                        else:
                            selector.unregister(stream)
                            pipes -= 1
            finally:
                # an exception of ours: wait for the deadline or the cancel, polling
                while proc.poll() is None:
                    if cancel is not None and cancel.is_set():
                        cancelled = True
                    elif time.monotonic() >= deadline:
                        timed_out = True
                    else:
                        time.sleep(poll)
                        continue
                    _terminate(proc, grace, poll)
                    break
                _signal_group(proc.pid, signal.SIGKILL)
                proc.wait()
                proc.stdout.close()
                proc.stderr.close()
    finally:
        if pidfd is not None:
            os.close(pidfd)
    return Step(command, proc.returncode, timed_out, out.output(), err.output(),
                time.monotonic() - t0, cancelled=cancelled)
