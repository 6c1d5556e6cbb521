"""Case 7: memory of one probe against a hostile mirror that pads every delegated role.

The mirror serves each of N delegated roles padded to just under ``targets_max_length`` (the
simulator's ``padded-delegations`` fault: signatures intact, so python-tuf accepts every one;
the snapshot lists no lengths, so only the cap bounds a download). One probe (an empty cache,
``delegation_workers`` 8) runs in a fresh child process, and the growth of its peak resident
memory (``VmHWM``) over what it had before the probe is reported, plus the peak resident
memory of the delegation worker processes if the sweep started any (it does not for so few
roles). The goal is the bound the delegation sweep promises: at most
``delegation_workers x cap`` plus a constant, whatever N.
Before the sweep spooled bodies to files, the growth was several times N x cap (0.4, 1.3,
2.4, 4.9 GB for 1, 4, 8, 16 roles at the 100 MB default cap).

``python -m bench.sweep_memory --child SPEC`` is the child's entry point (SPEC is JSON).
"""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

from bench.common import Goal, Row, repository, scratch
from bench.service_run import peak_rss_mb
from bench.simproc import SimProcess, Spec

WORKERS = 8
#: What the bound allows beyond ``WORKERS x cap``: one body verified and parsed at a time,
#: the inspector reading one, the HTTP and thread machinery of 8 downloads.
CONSTANT_MB = 48.0


def _child(spec: dict[str, object]) -> dict[str, object]:
    """One probe in this (fresh) process; the peak resident memory before and after."""
    from exporter.config import Limits
    from exporter.probe import Prober, delegations

    urls = spec["urls"]
    assert isinstance(urls, list)
    repo = replace(
        repository((str(urls[0]), str(urls[1]))),
        delegation_workers=int(str(spec["workers"])),
        limits=Limits(targets_max_length=int(str(spec["cap"]))),
    )
    root = Path(str(spec["root"])).read_bytes()
    prober = Prober(Path(str(spec["state"])))
    before = peak_rss_mb()
    result = prober.probe(repo, repo.primary, root)
    workers = [peak_rss_mb(pid) for pid in delegations.process_ids()]
    delegations.stop_processes()
    return {
        "before_mb": before,
        "peak_mb": peak_rss_mb(),
        "workers_mb": sum(workers),  # delegation worker processes, if the sweep started any
        "success": result.success,
        "message": result.message,
        "roles": result.delegations.count,
        "largest": max((f.size_bytes for f in result.delegated.values()), default=0),
    }


def measure(roles: int, cap: int) -> dict[str, object]:
    """Serve ``roles`` roles padded to just under ``cap``; probe once in a child process."""
    with SimProcess(Spec(targets=1, roles=roles, padded=cap - 1024)) as sim, scratch() as tmp:
        root = tmp / "root.json"
        root.write_bytes(sim.built.trusted_root)
        spec = {"urls": list(sim.built.urls["primary"]), "root": str(root),
                "state": str(tmp / "state"), "workers": WORKERS, "cap": cap}
        done = subprocess.run(
            [sys.executable, "-m", "bench.sweep_memory", "--child", json.dumps(spec)],
            capture_output=True, text=True, check=True, timeout=600,
        )
    found: dict[str, object] = json.loads(done.stdout.strip().splitlines()[-1])
    return found


def run(quick: bool) -> list[Row]:
    """Rows of case 7: 16 and 64 roles at the cap."""
    cap = (2 if quick else 8) << 20
    bound = WORKERS * cap / 2**20 + CONSTANT_MB
    rows = []
    for roles in (16, 64):
        found = measure(roles, cap)
        workers_mb = float(str(found.get("workers_mb", 0.0)))
        growth = float(str(found["peak_mb"])) - float(str(found["before_mb"])) + workers_mb
        ok = found["success"] is True and found["roles"] == roles
        rows.append(Row(
            f"7 {roles} roles padded to the cap ({cap >> 20} MB), {WORKERS} workers: peak RSS "
            "growth of a probe", growth, "MB", None, "",
            Goal("value<=", bound, f"<= {WORKERS} x cap + {CONSTANT_MB:g} MB = {bound:g}"), 1,
            verdict=None if ok and growth <= bound else False,
            note=f"{roles} x {cap >> 20} MB served and accepted; peak RSS "
                 f"{float(str(found['peak_mb'])):.0f} MB, delegation worker processes "
                 f"{workers_mb:.0f} MB (counted in the growth); "
                 f"{found['message'] or 'success'}",
        ))
    return rows


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--child":
        print(json.dumps(_child(json.loads(sys.argv[2]))))
    else:
        for row in run("--quick" in sys.argv):
            print(row)
