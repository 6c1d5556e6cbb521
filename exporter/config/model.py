"""Configuration: the YAML file, validated into typed, immutable settings.

Every key is optional except what has no sane default (a repository's ``name``, URLs and
``trusted_root``; a signer's ``name``, ``uri``, ``repository`` and ``role``). Errors name the
field by its path (``repositories[0].mirrors[1].metadata_url``) and the file and line.
Unknown keys are errors too: a misspelt key must never be silently ignored.

Each section's reader lives here next to the dataclass it builds; the generic mapping reader and
the value converters are in ``exporter.config._reader``.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any

from exporter.config._reader import (
    _bool,
    _choice,
    _duration,
    _fraction,
    _int,
    _name,
    _path,
    _paths,
    _positive_duration,
    _Reader,
    _redirect_hosts,
    _role_durations,
    _string,
    _strings,
    _target_paths,
    _url,
)
from exporter.config.yamlfile import ConfigError as ConfigError
from exporter.config.yamlfile import Node, parse_yaml

_NONE: tuple[str, ...] = ()
_SAFE = re.compile(r"[^A-Za-z0-9._-]")


def safe_name(name: str) -> str:
    """A file-system-safe, collision-free directory name for a repository or endpoint name.

    Characters other than letters, digits, ``.``, ``_`` and ``-`` become ``_``; a short hash of
    the original name keeps ``a/b`` and ``a_b`` apart; leading dots are replaced so the result
    is never ``.`` or ``..`` or hidden.
    """
    slug = _SAFE.sub("_", name)[:48].lstrip(".") or "_"
    digest = hashlib.sha256(name.encode("utf-8")).hexdigest()[:8]
    return f"{slug}-{digest}"


#: Roles always treated as online (signed by keys kept online, on a schedule), whatever a
#: policy's ``online_roles`` says.
ALWAYS_ONLINE: tuple[str, ...] = ("timestamp", "snapshot")


class Mode(StrEnum):
    """How the prober behaves as a client."""

    WARM = "warm"  #: a returning client with a persistent cache
    COLD = "cold"  #: a first-boot client that starts from the trusted root every probe


@dataclass(frozen=True)
class Endpoint:
    """Where one copy of a repository is served: the primary or a mirror."""

    name: str
    metadata_url: str
    targets_url: str


@dataclass(frozen=True)
class Limits:
    """Length caps in bytes (python-tuf's defaults are too small for package indexes)."""

    root_max_length: int = 512_000
    timestamp_max_length: int = 16_384
    snapshot_max_length: int = 20_000_000
    targets_max_length: int = 100_000_000
    target_max_length: int = 100_000_000
    max_root_rotations: int = 256
    max_delegations: int = 100_000


@dataclass(frozen=True)
class Policy:
    """What the repository's owners promise; the history store flags what breaks it."""

    #: Expected re-signing period of online roles (role -> seconds). Learned when absent.
    cadence: Mapping[str, float] = field(default_factory=dict)
    #: Roles signed online (``ALWAYS_ONLINE`` are always treated as online).
    online_roles: tuple[str, ...] = ALWAYS_ONLINE
    #: Longest allowed metadata lifetime per role (role -> seconds), for expiry_beyond_policy.
    max_lifetime: Mapping[str, float] = field(default_factory=dict)
    #: Largest version increase between two observations not flagged as version_jump.
    max_version_jump: int = 1000


class ClientMode(StrEnum):
    """How an external client keeps its trusted metadata between runs."""

    RETURNING = "returning"  #: one metadata directory per endpoint, kept between runs
    NEW = "new"  #: a fresh metadata directory every run, from the trusted root


#: Client view names that belong to the exporter's own python-tuf views (issue 16); an external
#: client may not take them (``bootstrap-root-<anything>`` is refused too).
RESERVED_CLIENT_NAMES: tuple[str, ...] = ("returning", "new")
_CLIENT_NAME = re.compile(r"[a-z0-9-]{1,63}")
_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


@dataclass(frozen=True)
class Client:
    """An external TUF client speaking tuf-conformance's client CLI (``CLIENT-CLI.md``).

    Run by :func:`exporter.probe.external.run_client` as one more client view of every
    endpoint of the repositories that list it; ``name`` is its ``client`` label.
    """

    name: str
    #: The program and its first arguments; the protocol's flags and command are appended.
    command: tuple[str, ...]
    interval: float = 600.0
    #: Deadline of one run (``init``, ``refresh`` and every ``download`` together), seconds.
    timeout: float = 60.0
    mode: ClientMode = ClientMode.RETURNING
    #: Targets downloaded after the refresh; None: the repository's ``canary_targets``.
    canary_targets: tuple[str, ...] | None = None
    #: Variables added to the client's environment (which holds nothing else of the
    #: exporter's but ``PATH`` and ``LANG``).
    env: Mapping[str, str] = field(default_factory=dict)

    def targets_for(self, repository: Repository) -> tuple[str, ...]:
        """The canary targets of a run against ``repository``."""
        if self.canary_targets is None:
            return repository.canary_targets
        return self.canary_targets


@dataclass(frozen=True)
class Repository:
    """One TUF repository and its mirrors."""

    name: str
    trusted_root: Path
    primary: Endpoint
    mirrors: tuple[Endpoint, ...] = ()
    interval: float = 300.0
    timeout: float = 30.0
    connect_timeout: float = 5.0
    read_timeout: float = 10.0
    retries: int = 0
    mode: Mode = Mode.WARM
    canary_targets: tuple[str, ...] = ()
    full_refresh_every: int = 10
    verify_delegations: bool = True
    delegation_workers: int = 8
    allowed_redirect_hosts: tuple[str, ...] = ()
    limits: Limits = field(default_factory=Limits)
    policy: Policy = field(default_factory=Policy)
    #: Seconds between two view passes of each endpoint (the client views ``new`` and
    #: ``bootstrap-root-v<N>``, issue 16); 0: no view is probed.
    new_client_interval: float = 600.0
    #: root.json files clients in the field start from; each is the view ``bootstrap-root-v<N>``.
    bootstrap_roots: tuple[Path, ...] = ()
    #: Names of the external clients (``Config.clients``) run against every endpoint.
    clients: tuple[str, ...] = ()

    @property
    def endpoints(self) -> tuple[Endpoint, ...]:
        """The primary first, then the mirrors."""
        return (self.primary, *self.mirrors)


@dataclass(frozen=True)
class Signer:
    """An active signing probe: sign a challenge with a key the role should authorize."""

    name: str
    uri: str
    repository: str
    role: str
    interval: float = 300.0
    timeout: float = 30.0
    #: Name of the environment variable or path of the file holding a secret (HSM PIN, ...).
    secret_env: str | None = None
    secret_file: Path | None = None
    #: securesystemslib public key of the signer (JSON file); read from the URI where absent.
    public_key_file: Path | None = None


@dataclass(frozen=True)
class OpenSearch:
    """Where events are shipped. Credentials never come from this file's text."""

    hosts: tuple[str, ...]
    index_prefix: str = "tuf-exporter-events"
    verify_tls: bool = True
    ca_file: Path | None = None
    username_env: str | None = None
    password_env: str | None = None
    password_file: Path | None = None
    batch_size: int = 500
    batch_interval: float = 2.0
    retention: float = 90 * 86400.0


@dataclass(frozen=True)
class Events:
    """The durable spool and the local sink used when no OpenSearch is configured."""

    spool_max_bytes: int = 256 * 1024 * 1024
    spool_max_age: float = 7 * 86400.0
    file: Path | None = None  #: JSON Lines file; default ``<state_dir>/events.jsonl``
    file_max_bytes: int = 64 * 1024 * 1024
    file_backups: int = 5


def default_delegation_processes() -> int:
    """The default of ``delegation_processes``: one worker process per CPU beside the one the
    exporter's own threads use, at most 4 (0 on a single CPU)."""
    return max(0, min(4, (os.cpu_count() or 1) - 1))


@dataclass(frozen=True)
class Config:
    """The whole configuration."""

    repositories: tuple[Repository, ...]
    signers: tuple[Signer, ...] = ()
    state_dir: Path = Path("state")
    workers: int = 8
    jitter: float = 0.1
    history_retention: float = 90 * 86400.0
    shard_index: int = 0
    shard_count: int = 1
    opensearch: OpenSearch | None = None
    events: Events = field(default_factory=Events)
    #: External clients; each repository lists those it runs (all of them by default).
    clients: tuple[Client, ...] = ()
    #: External client processes running at once, at most.
    client_concurrency: int = 2
    #: Worker processes that verify the delegated roles of large delegation sweeps (0: none,
    #: the probe's own thread verifies them).
    delegation_processes: int = field(default_factory=default_delegation_processes)
    source: Path | None = None

    def client(self, name: str) -> Client:
        """The external client called ``name``; KeyError when there is none."""
        for client in self.clients:
            if client.name == name:
                return client
        raise KeyError(name)

    def repository(self, name: str) -> Repository:
        """The repository called ``name``; KeyError when there is none."""
        for repo in self.repositories:
            if repo.name == name:
                return repo
        raise KeyError(name)


# ---------------------------------------------------------------------------------------------
# Loading


def parse_shard(value: Any) -> tuple[int, int]:
    """``INDEX/COUNT`` with 0 <= INDEX < COUNT, as (INDEX, COUNT); ValueError otherwise."""
    text = str(value)
    match = re.fullmatch(r"(\d+)/(\d+)", text)
    if not match or int(match.group(2)) < 1 or int(match.group(1)) >= int(match.group(2)):
        raise ValueError(f"expected INDEX/COUNT with 0 <= INDEX < COUNT, got {text!r}")
    return int(match.group(1)), int(match.group(2))


def _endpoint(reader: _Reader, name: str | None) -> Endpoint:
    endpoint_name = name if name is not None else reader.require("name", _name)
    metadata_url = reader.require("metadata_url", _url)
    targets_url = reader.get("targets_url", _url, metadata_url + "targets/")
    return Endpoint(endpoint_name, metadata_url, targets_url)


def _limits(reader: _Reader | None) -> Limits:
    if reader is None:
        return Limits()
    d = Limits()
    limits = Limits(
        **{
            name: reader.get(name, _int(1), getattr(d, name))
            for name in (
                "root_max_length",
                "timestamp_max_length",
                "snapshot_max_length",
                "targets_max_length",
                "target_max_length",
                "max_root_rotations",
                "max_delegations",
            )
        }
    )
    reader.done()
    return limits


def _policy(reader: _Reader | None) -> Policy:
    if reader is None:
        return Policy()
    policy = Policy(
        cadence=_role_durations(reader.child("cadence")),
        online_roles=tuple(
            sorted({*ALWAYS_ONLINE, *reader.get("online_roles", _strings, _NONE)})
        ),
        max_lifetime=_role_durations(reader.child("max_lifetime")),
        max_version_jump=reader.get("max_version_jump", _int(1), 1000),
    )
    reader.done()
    return policy


def _client_name(value: Any) -> str:
    name = _string(value)
    if not _CLIENT_NAME.fullmatch(name):
        raise ValueError(f"a client name is 1 to 63 of a-z, 0-9 and '-', got {name!r}")
    if name in RESERVED_CLIENT_NAMES or name.startswith("bootstrap-root-"):
        raise ValueError(f"{name!r} is the name of one of the exporter's own client views "
                         "(returning, new, bootstrap-root-*)")
    return name


def _command(base: Path) -> Callable[[Any], tuple[str, ...]]:
    """An argv list; a program given as a relative path with a ``/`` is taken from ``base``
    (a bare name is looked up on ``PATH``)."""
    def convert(value: Any) -> tuple[str, ...]:
        argv = _strings(value)
        if not argv:
            raise ValueError("needs at least the program")
        program = argv[0]
        if "/" in program and not Path(program).expanduser().is_absolute():
            program = str(base / program)
        return (str(Path(program).expanduser()) if "/" in program else program, *argv[1:])

    return convert


def _env(value: Any) -> dict[str, str]:
    if not isinstance(value, dict):
        raise ValueError("expected a mapping of variable names to strings")
    out: dict[str, str] = {}
    for key, node in value.items():
        text = node.value if isinstance(node, Node) else node
        if not _ENV_NAME.fullmatch(str(key)):
            raise ValueError(f"{key!r} is not an environment variable name")
        if not isinstance(text, str) or "\0" in text:
            raise ValueError(f"the value of {key} must be a string (quote numbers), "
                             f"got {text!r}")
        out[str(key)] = text
    return out


def _client(reader: _Reader, base: Path) -> Client:
    client = Client(
        name=reader.require("name", _client_name),
        command=reader.require("command", _command(base)),
        interval=reader.get("interval", _positive_duration, 600.0),
        timeout=reader.get("timeout", _positive_duration, 60.0),
        mode=reader.get("mode", _choice(ClientMode), ClientMode.RETURNING),
        canary_targets=reader.optional("canary_targets", _target_paths),
        env=reader.get("env", _env, {}),
    )
    reader.done()
    return client


def _repository_clients(reader: _Reader, defined: tuple[str, ...]) -> tuple[str, ...]:
    """The repository's ``clients`` list: names of top-level clients; absent: all of them."""
    node = reader.raw("clients")
    if node is None:
        return defined if "clients" not in reader.items else ()
    if not isinstance(node.value, list):
        raise reader.error("clients", "must be a list of client names")
    names: list[str] = []
    for i, item in enumerate(node.value):
        field_name = f"{reader.path}.clients[{i}]"
        if not isinstance(item.value, str) or item.value not in defined:
            known = ", ".join(defined) or "none is defined"
            raise ConfigError.at(reader.source, item.line, field_name,
                                 f"no client is called {item.value!r} in the top-level "
                                 f"'clients' (defined: {known})")
        if item.value in names:
            raise ConfigError.at(reader.source, item.line, field_name,
                                 f"client {item.value!r} is listed twice")
        names.append(item.value)
    return tuple(names)


def _repository(reader: _Reader, base: Path, clients: tuple[str, ...] = ()) -> Repository:
    name = reader.require("name", _name)
    primary = _endpoint(reader, "primary")
    mirrors = []
    names = {"primary"}
    for mirror_reader in reader.children("mirrors"):
        mirror = _endpoint(mirror_reader, None)
        mirror_reader.done()
        if mirror.name in names:
            raise mirror_reader.error("name", f"endpoint name {mirror.name!r} is used twice")
        names.add(mirror.name)
        mirrors.append(mirror)
    interval = reader.get("interval", _positive_duration, 300.0)
    timeout = reader.get("timeout", _positive_duration, min(30.0, interval))
    repo = Repository(
        name=name,
        trusted_root=reader.require("trusted_root", _path(base)),
        primary=primary,
        mirrors=tuple(mirrors),
        interval=interval,
        timeout=timeout,
        connect_timeout=reader.get("connect_timeout", _positive_duration, min(5.0, timeout)),
        read_timeout=reader.get("read_timeout", _positive_duration, min(10.0, timeout)),
        retries=reader.get("retries", _int(0), 0),
        mode=reader.get("mode", _choice(Mode), Mode.WARM),
        canary_targets=reader.get("canary_targets", _target_paths, _NONE),
        full_refresh_every=reader.get("full_refresh_every", _int(1), 10),
        verify_delegations=reader.get("verify_delegations", _bool, True),
        delegation_workers=reader.get("delegation_workers", _int(1), 8),
        allowed_redirect_hosts=reader.get("allowed_redirect_hosts", _redirect_hosts, _NONE),
        limits=_limits(reader.child("limits")),
        policy=_policy(reader.child("policy")),
        new_client_interval=reader.get("new_client_interval", _duration, 600.0),
        bootstrap_roots=reader.get("bootstrap_roots", _paths(base), ()),
        clients=_repository_clients(reader, clients),
    )
    reader.done()
    return repo


def _signer(reader: _Reader, base: Path) -> Signer:
    signer = Signer(
        name=reader.require("name", _name),
        uri=reader.require("uri", _string),
        repository=reader.require("repository", _name),
        role=reader.require("role", _name),
        interval=reader.get("interval", _positive_duration, 300.0),
        timeout=reader.get("timeout", _positive_duration, 30.0),
        secret_env=reader.optional("secret_env", _string),
        secret_file=reader.optional("secret_file", _path(base)),
        public_key_file=reader.optional("public_key_file", _path(base)),
    )
    reader.done()
    return signer


def _opensearch(reader: _Reader | None, base: Path) -> OpenSearch | None:
    if reader is None:
        return None
    hosts = reader.require("hosts", _strings)
    if not hosts:
        raise reader.error("hosts", "needs at least one host")
    result = OpenSearch(
        hosts=hosts,
        index_prefix=reader.get("index_prefix", _name, "tuf-exporter-events"),
        verify_tls=reader.get("verify_tls", _bool, True),
        ca_file=reader.optional("ca_file", _path(base)),
        username_env=reader.optional("username_env", _string),
        password_env=reader.optional("password_env", _string),
        password_file=reader.optional("password_file", _path(base)),
        batch_size=reader.get("batch_size", _int(1), 500),
        batch_interval=reader.get("batch_interval", _positive_duration, 2.0),
        retention=reader.get("retention", _positive_duration, 90 * 86400.0),
    )
    reader.done()
    return result


def _events(reader: _Reader | None, base: Path) -> Events:
    if reader is None:
        return Events()
    d = Events()
    result = Events(
        spool_max_bytes=reader.get("spool_max_bytes", _int(1024), d.spool_max_bytes),
        spool_max_age=reader.get("spool_max_age", _positive_duration, d.spool_max_age),
        file=reader.optional("file", _path(base)),
        file_max_bytes=reader.get("file_max_bytes", _int(1024), d.file_max_bytes),
        file_backups=reader.get("file_backups", _int(0), d.file_backups),
    )
    reader.done()
    return result


def parse_config(text: str, source: str = "<config>", base: Path | None = None) -> Config:
    """Parse and validate configuration text; relative paths are taken from ``base``."""
    base = base if base is not None else Path.cwd()
    document = parse_yaml(text, source)
    if document is None:
        raise ConfigError.at(source, None, None,
                             "the file is empty; it needs a 'repositories' list")
    root = _Reader(document, "", source)
    defaults = Config(repositories=())
    shard = root.get("shard", parse_shard, (0, 1))
    state_dir = root.get("state_dir", _path(base), base / "state")
    clients: list[Client] = []
    for client_reader in root.children("clients"):
        client = _client(client_reader, base)
        if any(c.name == client.name for c in clients):
            raise client_reader.error("name", f"client name {client.name!r} is used twice")
        clients.append(client)
    client_names = tuple(c.name for c in clients)
    repos: list[Repository] = []
    seen: set[str] = set()
    for repo_reader in root.children("repositories"):
        repo = _repository(repo_reader, base, client_names)
        if repo.name in seen:
            raise repo_reader.error("name", f"repository name {repo.name!r} is used twice")
        seen.add(repo.name)
        repos.append(repo)
    if not repos:
        raise root.error("repositories", "needs at least one repository")
    signers: list[Signer] = []
    for signer_reader in root.children("signers"):
        signer = _signer(signer_reader, base)
        if signer.repository not in seen:
            raise signer_reader.error(
                "repository", f"no repository is called {signer.repository!r}"
            )
        if any(s.name == signer.name for s in signers):
            raise signer_reader.error("name", f"signer name {signer.name!r} is used twice")
        signers.append(signer)
    config = Config(
        repositories=tuple(repos),
        signers=tuple(signers),
        state_dir=state_dir,
        workers=root.get("workers", _int(1), defaults.workers),
        jitter=root.get("jitter", _fraction, defaults.jitter),
        history_retention=root.get("history_retention", _positive_duration, 90 * 86400.0),
        shard_index=shard[0],
        shard_count=shard[1],
        opensearch=_opensearch(root.child("opensearch"), base),
        events=_events(root.child("events"), base),
        clients=tuple(clients),
        client_concurrency=root.get("client_concurrency", _int(1), defaults.client_concurrency),
        delegation_processes=root.get("delegation_processes", _int(0),
                                      defaults.delegation_processes),
        source=Path(source) if source != "<config>" else None,
    )
    root.done()
    return config


def field_error(config: Config, field_name: str, detail: str) -> ConfigError:
    """A :class:`ConfigError` for a check made after parsing (a file the configuration names):
    ``<file>:<line>: <field_name>: <detail>``, the line read again from ``config.source``
    (none when the configuration did not come from a file or the file no longer parses)."""
    if config.source is None:
        return ConfigError.at("<config>", None, field_name, detail)
    source = str(config.source)
    try:
        document = parse_yaml(config.source.read_text(encoding="utf-8"), source)
    except (OSError, UnicodeDecodeError, ConfigError):
        document = None
    line = document.line_of(field_name) if document is not None else None
    return ConfigError.at(source, line, field_name, detail)


def check_client_programs(config: Config) -> None:
    """Every external client's program can be started: a path names an executable file, a
    bare name is found on ``PATH`` (the ``PATH`` its runs get). Raises :class:`ConfigError`
    naming ``clients[i].command`` and its line. A program that goes missing later fails its
    runs as ``exporter_error`` (cause ``client``), the host's fault, never the repository's."""
    for i, client in enumerate(config.clients):
        program = client.command[0]
        if "/" not in program:
            if shutil.which(program) is None:
                raise field_error(config, f"clients[{i}].command",
                                  f"{program!r} is not on PATH ({os.environ.get('PATH', '')}); "
                                  "give the program's full path")
            continue
        path = Path(program)
        if not path.is_file():
            hint = ("install the client there (`tuf-exporter clients install ... --dir DIR` "
                    "prints the command to configure) or correct the path")
            what = "is not a file" if path.exists() else "does not exist"
            raise field_error(config, f"clients[{i}].command", f"program {program} {what}; {hint}")
        if not os.access(path, os.X_OK):
            raise field_error(config, f"clients[{i}].command",
                              f"program {program} is not executable (chmod +x, or name its "
                              "interpreter first: [/usr/bin/node, script.mjs])")


def load_config(path: Path) -> Config:
    """Read, parse and validate the configuration file at ``path``."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError.at(str(path), None, None, f"cannot read the configuration: {exc}") \
            from None
    return parse_config(text, str(path), path.resolve().parent)
