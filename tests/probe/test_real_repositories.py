"""The prober against six real, published TUF repositories, served on loopback.

They are read in place from ``../shared/fixtures/real`` (see its README). Every one has expired
by now, so with today's clock the verdict is ``expired``; under a fixed clock inside its valid
window (Debian's ``faketime``) the probe succeeds, canary and delegated targets included, and
versions, expiry and thresholds match the folder's ``FACTS.txt``.
"""

from __future__ import annotations

import functools
import http.server
import json
import os
import re
import shutil
import subprocess
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from support import REAL

if not REAL.is_dir():
    pytest.skip(f"real repositories not available: {REAL} is absent", allow_module_level=True)

# folder -> (trusted root, valid until) as the fixtures' README states them
REPOSITORIES = {
    "sigstore-2026-08-21": ("5.root.json", "2026-08-28T19:25:56Z"),
    "sigstore-2025-05-19": ("5.root.json", "2025-05-26T01:55:42Z"),
    "sigstore-legacy-2023-12-26": ("5.root.json", "2024-01-02T16:06:36Z"),
    "sigstore-staging-2026-08-21": ("1.root.json", "2026-08-28T19:23:59Z"),
    "docker-tuf-2024-12-03": ("1.root.json", "2024-12-05T13:25:18Z"),
    "jku-tuf-demo-2026-08-21": ("1.root.json", "2026-08-23T19:35:30Z"),
}


@dataclass
class Facts:
    roles: dict[str, tuple[int, str, int]]  # role -> (version, expires, signatures)
    thresholds: dict[str, int]
    targets: list[str]


def _facts(folder: Path) -> Facts:
    text = (folder / "FACTS.txt").read_text()
    roles = {
        m["role"]: (int(m["version"]), m["expires"], int(m["sigs"]))
        for m in re.finditer(
            r"^  (?P<role>\S+)\s+\S+\.json\s+v(?P<version>\d+)\s+expires (?P<expires>\S+)"
            r"\s+sigs (?P<sigs>\d+)$",
            text,
            re.M,
        )
    }
    thresholds = {
        m[1]: int(m[2]) for m in re.finditer(r"^  (\w+)\s+threshold (\d+) of \d+:", text, re.M)
    }
    targets = re.findall(r"^  \[[^\]]+\] (\S+) length \d+", text, re.M)
    return Facts(roles, thresholds, targets)


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture(scope="module")
def server() -> Iterator[str]:
    handler = functools.partial(_QuietHandler, directory=str(REAL))
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}"
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join()


def _config(tmp_path: Path, base: str, folder: str, targets: list[str]) -> Path:
    root, _ = REPOSITORIES[folder]
    config = tmp_path / "config.yml"
    config.write_text(json.dumps({
        "state_dir": str(tmp_path / "state"),
        "repositories": [{
            "name": folder,
            "metadata_url": f"{base}/{folder}/",
            "targets_url": f"{base}/{folder}/targets/",
            "trusted_root": str(REAL / folder / root),
            "canary_targets": targets,
            "mode": "cold",
        }],
    }))
    return config


def _probe(config: Path, clock: str | None) -> tuple[int, dict[str, Any]]:
    command = [sys.executable, "-m", "exporter.cli", "probe", "--config", str(config), "--json"]
    env = dict(os.environ)
    if clock is not None:
        command = ["faketime", clock, *command]
        env.update(TZ="UTC", FAKETIME_DONT_FAKE_MONOTONIC="1")
    done = subprocess.run(command, capture_output=True, text=True, env=env, timeout=120)
    assert done.returncode in (0, 1), done.stderr
    [repo] = json.loads(done.stdout)["repositories"]
    [endpoint] = repo["endpoints"]
    return done.returncode, endpoint


@pytest.mark.parametrize("folder", sorted(REPOSITORIES))
def test_expired_with_todays_clock(server: str, tmp_path: Path, folder: str) -> None:
    facts = _facts(REAL / folder)
    code, endpoint = _probe(_config(tmp_path, server, folder, facts.targets), None)
    assert code == 1
    assert endpoint["reason"] == "expired"
    now = datetime.now(UTC)
    root_expired = datetime.fromisoformat(facts.roles["root"][1]) < now
    assert endpoint["role"] == ("root" if root_expired else "timestamp"), endpoint["message"]


@pytest.mark.skipif(shutil.which("faketime") is None, reason="Debian's faketime is not installed")
@pytest.mark.parametrize("folder", sorted(REPOSITORIES))
def test_valid_under_a_fixed_clock(server: str, tmp_path: Path, folder: str) -> None:
    facts = _facts(REAL / folder)
    valid_until = datetime.fromisoformat(REPOSITORIES[folder][1])
    clock = (valid_until - timedelta(hours=1)).strftime("%Y-%m-%d %H:%M:%S")
    code, endpoint = _probe(_config(tmp_path, server, folder, facts.targets), clock)
    assert code == 0, endpoint["message"]
    for role in ("root", "timestamp", "snapshot", "targets"):
        version, expires, signatures = facts.roles[role]
        seen = endpoint["roles"][role]
        assert seen["version"] == version, role
        assert seen["expires"] == expires, role
        assert seen["threshold"] == facts.thresholds[role], role
        assert facts.thresholds[role] <= seen["signatures_valid"] <= signatures, role
    # root as python-tuf judged it: every real rotation is signed by the previous root's keys
    # (those signatures are never unknown signers) and nothing newer was refused
    root = endpoint["roles"]["root"]
    assert root["unknown_signers"] == [], root
    assert root["rejected_root"] is None
    if root["version"] > int(REPOSITORIES[folder][0].split(".")[0]):
        assert root["previous_root_signatures_valid"] >= root["previous_root_threshold"] >= 1
    delegated = {r for r in facts.roles if r not in ("root", "timestamp", "snapshot", "targets")}
    assert set(endpoint["delegations"]["roles"]) == delegated
    assert endpoint["delegations"]["failing"] == 0
    for name in delegated:
        assert endpoint["delegations"]["roles"][name]["version"] == facts.roles[name][0]
    assert [t["path"] for t in endpoint["targets"]] == facts.targets
    assert all(t["success"] for t in endpoint["targets"]), endpoint["targets"]


@pytest.mark.parametrize("version", [1, 2, 3, 4])
def test_roots_python_tuf_cannot_read_are_refused_clearly(
    tmp_path: Path, version: int
) -> None:
    root = REAL / "sigstore-2026-08-21" / f"{version}.root.json"
    config = tmp_path / "config.yml"
    config.write_text(json.dumps({"repositories": [{
        "name": "sigstore", "metadata_url": "http://127.0.0.1:9/", "trusted_root": str(root),
    }]}))
    for command in ("probe", "check-config"):
        args = ["probe", "--config", str(config)] if command == "probe" else [command, str(config)]
        done = subprocess.run([sys.executable, "-m", "exporter.cli", *args],
                              capture_output=True, text=True, timeout=60)
        assert done.returncode == 2
        assert f"cannot use {root} as a trusted root" in done.stderr
        assert "Traceback" not in done.stderr


def _current_root(folder: Path) -> Path:
    return max(folder.glob("[0-9]*.root.json"), key=lambda p: int(p.name.split(".")[0]))


@pytest.mark.skipif(shutil.which("faketime") is None, reason="Debian's faketime is not installed")
@pytest.mark.parametrize("folder", sorted(REPOSITORIES))
def test_a_client_with_the_oldest_usable_root_reaches_the_current_root(
    server: str, tmp_path: Path, folder: str
) -> None:
    """Issue 16: the view ``bootstrap-root-v<N>`` from the oldest root python-tuf can start
    from (5 for sigstore, 1 otherwise) walks the real root chain to the current root and
    succeeds, as does the view ``new`` from the current root."""
    facts = _facts(REAL / folder)
    oldest, valid_until = REPOSITORIES[folder]
    config = _config(tmp_path, server, folder, facts.targets)
    document = json.loads(config.read_text())
    document["repositories"][0].update({
        "trusted_root": str(_current_root(REAL / folder)),
        "bootstrap_roots": [str(REAL / folder / oldest)],
    })
    config.write_text(json.dumps(document))
    clock = (datetime.fromisoformat(valid_until) - timedelta(hours=1)).strftime(
        "%Y-%m-%d %H:%M:%S")
    code, endpoint = _probe(config, clock)
    views = {view["client"]: view for view in endpoint["views"]}
    first = int(oldest.split(".")[0])
    assert set(views) == {"new", f"bootstrap-root-v{first}"}
    for view in views.values():
        assert view["success"], (view["client"], view["message"])
        assert view["roles"]["root"]["version"] == facts.roles["root"][0], view["client"]
        assert [t["success"] for t in view["targets"]] == [True] * len(facts.targets)
    assert code == 0


@pytest.mark.parametrize("version", [1, 2, 3, 4])
def test_bootstrap_roots_python_tuf_cannot_read_are_configuration_errors(
    tmp_path: Path, version: int
) -> None:
    folder = REAL / "sigstore-2026-08-21"
    root = folder / f"{version}.root.json"
    config = tmp_path / "config.yml"
    config.write_text(json.dumps({"repositories": [{
        "name": "sigstore", "metadata_url": "http://127.0.0.1:9/",
        "trusted_root": str(folder / "5.root.json"), "bootstrap_roots": [str(root)],
    }]}))
    for args in (["probe", "--config", str(config)], ["check-config", str(config)]):
        done = subprocess.run([sys.executable, "-m", "exporter.cli", *args],
                              capture_output=True, text=True, timeout=60)
        assert done.returncode == 2
        assert f"cannot use {root} as a trusted root" in done.stderr
        assert "Traceback" not in done.stderr
