"""The ``tuf-exporter`` command line.

Exit codes: 0 success, 1 a probe failed, 2 a configuration or usage error.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from exporter import __version__
from exporter.config import Config, ConfigError, load_config
from exporter.prober import Prober, TrustedRootError, load_trusted_root
from exporter.results import ProbeResult, rfc3339

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2

_SHORT = {"root": "r", "timestamp": "ts", "snapshot": "s", "targets": "t"}


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # type: ignore[override]
        self.print_usage(sys.stderr)
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message}\n")


def _load(path: Path) -> Config:
    config = load_config(path)
    for repo in config.repositories:
        load_trusted_root(repo.trusted_root)
    return config


def cmd_check_config(args: argparse.Namespace) -> int:
    """Validate a configuration file, including that every trusted root is usable."""
    config = _load(args.config)
    endpoints = sum(len(r.endpoints) for r in config.repositories)
    print(
        f"{args.config}: OK ({len(config.repositories)} repositories, {endpoints} endpoints, "
        f"{len(config.signers)} signers)"
    )
    return EXIT_OK


def cmd_probe(args: argparse.Namespace) -> int:
    """Probe every (repository, endpoint) once, now, and print the results."""
    config = _load(args.config)
    repos = config.repositories
    if args.repository:
        repos = tuple(r for r in repos if r.name == args.repository)
        if not repos:
            raise ConfigError(f"{args.config}: no repository is called {args.repository!r}")
    prober = Prober(config.state_dir)
    jobs = [(repo, endpoint) for repo in repos for endpoint in repo.endpoints]
    with ThreadPoolExecutor(max_workers=max(1, min(config.workers, len(jobs)))) as pool:
        results = list(pool.map(lambda job: prober.probe(*job), jobs))
    if args.json:
        print(json.dumps(_as_json(results), indent=2))
    else:
        _print_table(results)
    return EXIT_OK if all(r.success for r in results) else EXIT_FAILED


def _as_json(results: Sequence[ProbeResult]) -> dict[str, Any]:
    repositories: dict[str, list[dict[str, Any]]] = {}
    for result in results:
        repositories.setdefault(result.repository, []).append(result.to_json())
    return {
        "repositories": [
            {"name": name, "endpoints": endpoints} for name, endpoints in repositories.items()
        ]
    }


def _print_table(results: Sequence[ProbeResult]) -> None:
    rows = [("REPOSITORY", "ENDPOINT", "RESULT", "ROLE", "SECONDS", "VERSIONS", "EARLIEST EXPIRY")]
    for r in results:
        versions = " ".join(f"{_SHORT[name]}{facts.version}" for name, facts in r.roles.items())
        expiries = [f.expires for f in r.roles.values()]
        rows.append((
            r.repository,
            r.endpoint,
            "ok" if r.success else str(r.reason),
            "" if r.role is None else str(r.role),
            f"{r.duration_seconds:.3f}",
            versions,
            (rfc3339(min(expiries)) or "") if expiries else "",
        ))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for row in rows:
        print("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip())
    for r in results:
        if not r.success:
            print(f"{r.repository}/{r.endpoint}: {r.message}", file=sys.stderr)


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of every subcommand."""
    parser = _Parser(prog="tuf-exporter", description=__doc__)
    parser.add_argument("--version", action="version", version=f"tuf-exporter {__version__}")
    parser.add_argument("--log.level", dest="log_level", default="info",
                        choices=["debug", "info", "warn", "error"], help="log level")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    check = sub.add_parser("check-config", help="validate a configuration file")
    check.add_argument("config", type=Path)
    check.set_defaults(func=cmd_check_config)

    probe = sub.add_parser("probe", help="probe every repository and mirror once, now")
    probe.add_argument("--config", type=Path, required=True)
    probe.add_argument("--repository", help="probe only this repository")
    probe.add_argument("--json", action="store_true", help="print JSON instead of a table")
    probe.set_defaults(func=cmd_probe)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the console script."""
    parser = build_parser()
    args = parser.parse_args(argv)
    func: Callable[[argparse.Namespace], int] = args.func
    try:
        return func(args)
    except (ConfigError, TrustedRootError) as exc:
        print(f"tuf-exporter: {exc}", file=sys.stderr)
        return EXIT_USAGE


if __name__ == "__main__":
    sys.exit(main())
