"""The child processes of an external client's run (``run_process``): the wait for a
command ends when its leader exits, not at the next poll."""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import pytest

from exporter.probe.external import run_process

pytestmark = pytest.mark.timeout(120)


@pytest.mark.skipif(not hasattr(os, "pidfd_open"), reason="no pidfd on this platform")
def test_a_leader_that_exits_ends_its_step_at_once_not_at_the_next_poll(
        tmp_path: Path) -> None:
    # with a 30 s poll, only a wait woken by the exit itself ends these steps in time: the
    # leader exits while a child of its group holds stdout (so no end of file tells)
    script = ("import subprocess, sys, time; subprocess.Popen([sys.executable, '-c', "
              "'import time; time.sleep(60)']); print('started', flush=True)")
    env = {"PATH": os.environ.get("PATH", os.defpath)}
    took = []
    for _ in range(3):
        start = time.monotonic()
        step = run_process([sys.executable, "-c", script], command="refresh", cwd=tmp_path,
                           env=env, deadline=start + 60, poll=30.0)
        took.append(time.monotonic() - start)
        assert step.ok and step.stdout.tail == b"started\n", step
    assert min(took) < 10.0, took  # a loose bound: the 30 s poll would miss it every time
