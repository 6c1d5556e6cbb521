"""The ``tuf-exporter`` command line.

Exit codes: 0 success, 1 a probe failed, 2 a configuration or usage error.
"""

from __future__ import annotations

import argparse
import json
import logging
import signal
import sys
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from exporter import __version__, logs
from exporter.config.durations import parse_duration
from exporter.config.model import (
    Config,
    ConfigError,
    Endpoint,
    Repository,
    load_config,
    parse_shard,
)
from exporter.generate.alerts import AlertOptions
from exporter.history.store import HistoryError
from exporter.probe.external import Forwarder, run_client
from exporter.probe.prober import Prober, temporary_directory
from exporter.probe.results import ProbeResult, rfc3339
from exporter.probe.roots import TrustedRootError
from exporter.serve.service import Loaded, Service, load_files
from exporter.simulator import FAULTS

log = logging.getLogger("exporter")

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2

_SHORT = {"root": "r", "timestamp": "ts", "snapshot": "s", "targets": "t"}


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # type: ignore[override]
        self.print_usage(sys.stderr)
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message}\n")


def _load(path: Path, *, in_state_dir: bool = False) -> Loaded:
    """The configuration, every trusted and bootstrap root checked by python-tuf (which writes a
    client directory: below ``state_dir`` when ``in_state_dir``, else in ``$TMPDIR``, removed at
    once; check-config creates nothing below ``state_dir``)."""
    config = load_config(path)
    return load_files(config, temporary_directory(config.state_dir) if in_state_dir else None)


def cmd_check_config(args: argparse.Namespace) -> int:
    """Validate a configuration file, including that every trusted root is usable."""
    config = _load(args.config).config
    endpoints = sum(len(r.endpoints) for r in config.repositories)
    print(
        f"{args.config}: OK ({len(config.repositories)} repositories, {endpoints} endpoints, "
        f"{len(config.signers)} signers)"
    )
    return EXIT_OK


def cmd_probe(args: argparse.Namespace) -> int:
    """Probe every (repository, endpoint) once, now, as every client view, and print the
    results: the returning view, then (unless ``new_client_interval`` is 0) ``new`` and each
    ``bootstrap-root-v<N>``."""
    loaded = _load(args.config, in_state_dir=True)
    config = loaded.config
    repos = config.repositories
    if args.repository:
        repos = tuple(r for r in repos if r.name == args.repository)
        if not repos:
            names = ", ".join(r.name for r in config.repositories)
            raise ConfigError(f"{args.config}: --repository: no repository is called "
                              f"{args.repository!r} (configured: {names})")
    prober = Prober(config.state_dir)
    jobs = [(repo, endpoint) for repo in repos for endpoint in repo.endpoints]

    def every_view(repo: Repository, endpoint: Endpoint) -> list[ProbeResult]:
        results = [prober.probe(repo, endpoint, loaded.trusted_roots[repo.name])]
        if repo.new_client_interval > 0:
            results += prober.probe_views(repo, endpoint, loaded.trusted_roots[repo.name],
                                          loaded.bootstrap_roots[repo.name])
        return results

    with ThreadPoolExecutor(max_workers=max(1, min(config.workers, len(jobs)))) as pool:
        views = list(pool.map(lambda job: every_view(*job), jobs))
    external = _run_clients(config, repos, loaded.trusted_roots)
    for results in views:  # an external client's view goes with its endpoint's
        results += [r for r in external
                    if (r.repository, r.endpoint) == (results[0].repository, results[0].endpoint)]
    if args.json:
        print(json.dumps(_as_json(views), indent=2))
    else:
        _print_table([result for results in views for result in results])
    return EXIT_OK if all(r.success for results in views for r in results) else EXIT_FAILED


def _run_clients(config: Config, repos: Sequence[Repository],
                 roots: dict[str, bytes]) -> list[ProbeResult]:
    """One run of every external client of ``repos`` against each endpoint, at most
    ``client_concurrency`` at once."""
    jobs = [(config.client(name), repo, endpoint)
            for repo in repos for name in repo.clients for endpoint in repo.endpoints]
    if not jobs:
        return []
    slots = threading.Semaphore(config.client_concurrency)
    with Forwarder() as forwarder, \
            ThreadPoolExecutor(max_workers=min(config.client_concurrency, len(jobs))) as pool:
        return list(pool.map(lambda job: run_client(
            job[0], job[1], job[2], roots[job[1].name], config.state_dir, slots,
            forwarder=forwarder),
            jobs))


def cmd_clients_install(args: argparse.Namespace) -> int:
    """Install a shipped external client in a directory of its own; print its ``command:``."""
    from exporter.probe import install

    try:
        kind, version = install.parse_spec(args.spec)
    except ValueError as exc:
        print(f"tuf-exporter: {exc}", file=sys.stderr)
        return EXIT_USAGE
    try:
        if kind == "tuf-js":
            installed = install.install_tuf_js(args.dir)
        else:
            assert version is not None
            also = tuple(args.also) if args.also is not None else install.DEFAULT_ALSO
            installed = install.install_python_tuf(version, args.dir, also)
    except install.InstallError as exc:
        print(f"tuf-exporter: {exc}", file=sys.stderr)
        return EXIT_FAILED
    print(f"# {installed.description}; in the configuration's clients: list:")
    print(installed.config_line())
    return EXIT_OK


def _as_json(views: Sequence[Sequence[ProbeResult]]) -> dict[str, Any]:
    """Per repository, its endpoints; an endpoint is its returning view's result, with its
    other views (``new``, ``bootstrap-root-v<N>``) in ``views``."""
    repositories: dict[str, list[dict[str, Any]]] = {}
    for returning, *others in views:
        entry = {**returning.to_json(), "views": [view.to_json() for view in others]}
        repositories.setdefault(returning.repository, []).append(entry)
    return {
        "repositories": [
            {"name": name, "endpoints": endpoints} for name, endpoints in repositories.items()
        ]
    }


def _print_table(results: Sequence[ProbeResult]) -> None:
    rows = [("REPOSITORY", "ENDPOINT", "CLIENT", "RESULT", "ROLE", "SECONDS", "VERSIONS",
             "EARLIEST EXPIRY")]
    for r in results:
        versions = " ".join(f"{_SHORT[name]}{facts.version}" for name, facts in r.roles.items())
        refused = r.roles["root"].rejected_root if "root" in r.roles else None
        if refused is not None:  # the root python-tuf refused is not the trusted one
            versions += f" (r{refused.version} refused)"
        expiries = [f.expires for f in r.roles.values()]
        rows.append((
            r.repository,
            r.endpoint,
            r.client,
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
            print(f"{r.repository}/{r.endpoint} ({r.client}): {r.message}", file=sys.stderr)


DEFAULT_LISTEN = ":9929"
LOG_LEVELS = ("debug", "info", "warn", "error")


def _serve(service: Service, args: argparse.Namespace, banner: Callable[[str], None]) -> int:
    """Run ``service`` behind the HTTP server until SIGTERM or SIGINT; SIGHUP reloads."""
    from exporter.serve import ExporterServer, WebConfigError, raise_open_files_limit

    raise_open_files_limit()  # before the server sizes its connection cap from it
    try:
        server = ExporterServer(
            args.listen_address, service.registry, ready=service.ready, reload=service.reload,
            web_config_file=args.web_config_file, status_page=service.status_page,
        )
    except WebConfigError as exc:
        raise ConfigError(str(exc)) from None
    stop = threading.Event()

    def reload_all() -> None:
        service.reload()
        try:
            server.reload_web_config()
        except WebConfigError as exc:
            log.error("web configuration reload refused; the old one stays",
                      extra={"error": str(exc)})

    def on_hup(signum: int, frame: object) -> None:
        threading.Thread(target=reload_all, name="reload", daemon=True).start()

    def on_stop(signum: int, frame: object) -> None:
        stop.set()

    signal.signal(signal.SIGHUP, on_hup)
    signal.signal(signal.SIGTERM, on_stop)
    signal.signal(signal.SIGINT, on_stop)
    try:
        server.start()
    except OSError as exc:  # the address is taken, or the port is privileged
        print(f"tuf-exporter: cannot listen on --web.listen-address {args.listen_address}: "
              f"{exc.strerror or exc}; stop what holds it or choose another address",
              file=sys.stderr)
        return EXIT_USAGE
    try:
        service.start()
        banner(server.url)
        while not stop.wait(1.0):
            pass
    finally:
        server.stop()
        service.stop()
    return EXIT_OK


def cmd_serve(args: argparse.Namespace) -> int:
    """Probe on schedule and serve /metrics until stopped."""
    logs.setup(args.log_level)
    service = Service(args.config, history_on_corrupt=args.history_on_corrupt, shard=args.shard,
                      alert_options=_alert_options(args))
    return _serve(service, args, lambda url: None)  # the web server logs where it listens


def cmd_demo(args: argparse.Namespace) -> int:
    """Run the exporter against a built-in simulated repository on loopback."""
    logs.setup(args.log_level)
    import tempfile

    from exporter.simulator.demo import DemoOptions, DemoRepository

    state = args.state_dir or Path(tempfile.mkdtemp(prefix="tuf-exporter-demo-"))
    demo = DemoRepository(DemoOptions(
        state_dir=state, interval=args.interval, publish_every=args.publish_every,
        fault=args.fault, fault_after=args.fault_after, fault_endpoint=args.fault_endpoint,
    ))
    config = demo.start()
    try:
        service = Service(config, first_run_within=0.5, alert_options=_alert_options(args))
        metadata_url, _ = demo.server.endpoint_urls("primary")

        fault = "none"
        if args.fault:
            fault = f"{args.fault} (on {args.fault_endpoint} after {args.fault_after:g} s)"

        def banner(url: str) -> None:
            print(
                f"tuf-exporter demo\n  status:      {url}\n  metrics:     {url}metrics\n"
                f"  repository:  {metadata_url}\n  config:      {config}\n"
                f"  fault:       {fault}\nPress Ctrl-C to stop.",
                flush=True,
            )

        return _serve(service, args, banner)
    finally:
        demo.stop()


def cmd_dashboards(args: argparse.Namespace) -> int:
    """Write the generated Grafana dashboards."""
    from exporter.generate import build_dashboards

    for path in build_dashboards(args.out):
        print(path)
    return EXIT_OK


def cmd_alerts(args: argparse.Namespace) -> int:
    """Write the generated Prometheus rules and the Alertmanager example."""
    from exporter.generate import build_alerts

    options = AlertOptions.from_yaml(args.config) if args.config else None
    for path in build_alerts(args.out, options):
        print(path)
    return EXIT_OK


def _shard_flag(text: str) -> tuple[int, int]:
    try:
        return parse_shard(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _alert_options(args: argparse.Namespace) -> AlertOptions | None:
    """The ``--alerts.config`` options (runbook URL, thresholds) for the status page."""
    path: Path | None = args.alert_options
    if path is None:
        return None
    return AlertOptions.from_yaml(path)  # ConfigError names the file, line and option


def _web_flags(parser: argparse.ArgumentParser, default_listen: str) -> None:
    # Also after the command (`serve --log.level debug`), as Prometheus exporters take it; the
    # top-level flag's default holds when it is given neither place.
    parser.add_argument("--log.level", dest="log_level", default=argparse.SUPPRESS,
                        choices=LOG_LEVELS, help="log level (default info)")
    parser.add_argument("--web.listen-address", dest="listen_address", default=default_listen,
                        help=f"address to serve /metrics on (default {default_listen})")
    parser.add_argument("--web.config.file", dest="web_config_file", type=Path,
                        help="TLS and basic auth, in the Prometheus exporter-toolkit format")
    parser.add_argument("--alerts.config", dest="alert_options", type=Path, metavar="FILE",
                        help="alert options (YAML, as for `alerts build --config`): the status "
                             "page's runbook links and thresholds follow them")


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of every subcommand."""
    parser = _Parser(prog="tuf-exporter", description=__doc__)
    parser.add_argument("--version", action="version", version=f"tuf-exporter {__version__}")
    parser.add_argument("--log.level", dest="log_level", default="info", choices=LOG_LEVELS,
                        help="log level")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    check = sub.add_parser("check-config", help="validate a configuration file")
    check.add_argument("config", type=Path)
    check.set_defaults(func=cmd_check_config)

    probe = sub.add_parser("probe", help="probe every repository and mirror once, now")
    probe.add_argument("--config", type=Path, required=True)
    probe.add_argument("--repository", help="probe only this repository")
    probe.add_argument("--json", action="store_true", help="print JSON instead of a table")
    probe.set_defaults(func=cmd_probe)

    serve = sub.add_parser("serve", help="probe on schedule and serve /metrics")
    serve.add_argument("--config", type=Path, required=True)
    _web_flags(serve, DEFAULT_LISTEN)
    serve.add_argument("--history.on-corrupt", dest="history_on_corrupt", default="raise",
                       choices=["raise", "rename"],
                       help="a corrupt history file at start: refuse to start (raise) or move "
                            "it aside and start a new history (rename); corruption found while "
                            "running is always moved aside")
    serve.add_argument("--shard", type=_shard_flag, metavar="INDEX/COUNT",
                       help="probe only this shard's repositories (overrides the file's shard)")
    serve.set_defaults(func=cmd_serve)

    demo = sub.add_parser("demo", help="run against a built-in simulated repository")
    _web_flags(demo, "127.0.0.1:9929")
    demo.add_argument("--state-dir", type=Path, help="where the demo keeps its state")
    demo.add_argument("--interval", type=parse_duration, default=5.0, help="probe interval")
    demo.add_argument("--publish-every", type=parse_duration, default=5.0,
                      help="publish a new repository version this often")
    demo.add_argument("--fault", choices=sorted(FAULTS), help="inject this fault")
    demo.add_argument("--fault-after", type=parse_duration, default=30.0,
                      help="inject the fault this long after the start")
    demo.add_argument("--fault-endpoint", default="primary",
                      choices=["primary", "mirror-lagging", "mirror-ok"])
    demo.set_defaults(func=cmd_demo)

    clients = sub.add_parser("clients", help="external TUF clients (tuf-conformance client CLI)")
    clients_sub = clients.add_subparsers(dest="action", required=True, parser_class=_Parser)
    clients_install = clients_sub.add_parser(
        "install", help="install a shipped client in a directory and print its command: line")
    clients_install.add_argument("spec", metavar="python-tuf==X.Y.Z|tuf-js",
                                 help="which client: a python-tuf release, or tuf-js")
    clients_install.add_argument("--dir", type=Path, required=True,
                                 help="a new (or empty) directory to install it in")
    clients_install.add_argument(
        "--also", action="append", metavar="REQUIREMENT",
        help="python-tuf only: what pip installs beside tuf (repeatable; default "
             "securesystemslib[crypto]; e.g. 'securesystemslib[crypto,pynacl]==0.25.0' for "
             "python-tuf 2.x to 4.x)")
    clients_install.set_defaults(func=cmd_clients_install)

    dashboards = sub.add_parser("dashboards", help="Grafana dashboards")
    dash_sub = dashboards.add_subparsers(dest="action", required=True, parser_class=_Parser)
    dash_build = dash_sub.add_parser("build", help="write the dashboards as JSON")
    dash_build.add_argument("--out", type=Path, default=Path("dashboards"))
    dash_build.set_defaults(func=cmd_dashboards)

    alerts = sub.add_parser("alerts", help="Prometheus rules and alerts")
    alert_sub = alerts.add_subparsers(dest="action", required=True, parser_class=_Parser)
    alert_build = alert_sub.add_parser("build", help="write rules and the Alertmanager example")
    alert_build.add_argument("--out", type=Path, default=Path("alerts"))
    alert_build.add_argument("--config", type=Path, help="alert options (YAML)")
    alert_build.set_defaults(func=cmd_alerts)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the console script."""
    parser = build_parser()
    args = parser.parse_args(argv)
    func: Callable[[argparse.Namespace], int] = args.func
    try:
        return func(args)
    except (ConfigError, TrustedRootError, HistoryError) as exc:
        print(f"tuf-exporter: {exc}", file=sys.stderr)
        return EXIT_USAGE


if __name__ == "__main__":
    sys.exit(main())
