"""The benchmark harness still runs against the code (issue 18): ``bench/`` has no goal of its own
in the suite (timing and memory goals live in ``bench/``, not in timed tests), but a bench case
that no longer runs is found only when someone needs its figures. The one-hour soak is the case
run least often: its summary read ``ProbeStore.snapshot()`` as a tuple after it became a
``StoreSnapshot``, and the hour's run of session 5 crashed at its end. This runs the soak for 30
seconds on 100 endpoints over the simulator and checks the shape of what it prints, never its
figures.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_a_short_soak_runs_to_its_table() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "bench", "--case", "soak", "--quick", "--minutes", "0.5",
         "--no-write", "--server", "simulator"],
        cwd=ROOT, capture_output=True, text=True, timeout=300, check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    rows = [line for line in done.stdout.splitlines() if line.startswith("| 9 soak")]
    names = [row.split("|")[1].split(":", 1)[1].split("(", 1)[0].strip() for row in rows]
    assert names == ["resident memory growth after warm-up", "Python heap", "native memory",
                     "CPU after warm-up, share of one core", "probes on time"], rows
