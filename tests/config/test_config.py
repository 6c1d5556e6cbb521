"""Configuration: defaults, durations, and errors that name the file, line and field."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from exporter.config.durations import format_duration, parse_duration
from exporter.config.model import ConfigError, Mode, load_config, parse_config, safe_name

MINIMAL = """
repositories:
  - name: sigstore
    metadata_url: https://tuf.example/
    trusted_root: root.json
"""


def test_minimal_configuration_takes_defaults(tmp_path: Path) -> None:
    config = parse_config(MINIMAL, "c.yml", tmp_path)
    [repo] = config.repositories
    assert repo.primary.name == "primary"
    assert repo.primary.targets_url == "https://tuf.example/targets/"
    assert repo.trusted_root == tmp_path / "root.json"
    assert repo.mode is Mode.WARM and repo.interval == 300 and repo.timeout == 30
    assert repo.retries == 0 and repo.canary_targets == () and repo.mirrors == ()
    assert config.state_dir == tmp_path / "state"
    assert (config.shard_index, config.shard_count) == (0, 1)


def test_everything_spelled_out(tmp_path: Path) -> None:
    text = """
state_dir: /var/lib/tuf-exporter
workers: 4
jitter: 0.2
shard: 1/3
repositories:
  - name: pkgs
    metadata_url: https://pkgs.example/metadata
    targets_url: https://cdn.example/targets
    trusted_root: /etc/tuf/root.json
    interval: 1m30s
    timeout: 20s
    mode: cold
    canary_targets: [a/b.txt]
    full_refresh_every: 5
    retries: 1
    limits: {targets_max_length: 200000000}
    policy:
      cadence: {timestamp: 1h}
      max_lifetime: {timestamp: 1d}
      max_version_jump: 10
    mirrors:
      - name: eu
        metadata_url: https://eu.example/metadata/
signers:
  - name: online
    uri: file:/keys/ts.pem?encrypted=false
    repository: pkgs
    role: timestamp
    secret_env: TS_PIN
opensearch:
  hosts: [https://os.example:9200]
  password_env: OS_PASSWORD
"""
    config = parse_config(text, "c.yml", tmp_path)
    [repo] = config.repositories
    assert repo.interval == 90 and repo.timeout == 20 and repo.mode is Mode.COLD
    assert repo.primary.metadata_url == "https://pkgs.example/metadata/"
    assert repo.mirrors[0].targets_url == "https://eu.example/metadata/targets/"
    assert repo.limits.targets_max_length == 200_000_000
    assert repo.policy.cadence == {"timestamp": 3600} and repo.policy.max_version_jump == 10
    assert (config.shard_index, config.shard_count) == (1, 3)
    assert config.signers[0].secret_env == "TS_PIN"
    assert config.opensearch is not None and config.opensearch.hosts == ("https://os.example:9200",)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "the file is empty"),
        ("repositories: []", "needs at least one repository"),
        ("repositories:\n  - metadata_url: http://x/\n    trusted_root: r",
         "c.yml:2: repositories[0].name: is required"),
        (MINIMAL + "    interval: soon\n",
         "c.yml:6: repositories[0].interval: expected a duration"),
        (MINIMAL + "    intervall: 5m\n", "c.yml:6: repositories[0].intervall: unknown key"),
        (MINIMAL + "    mode: lukewarm\n",
         "c.yml:6: repositories[0].mode: expected one of warm, cold, got 'lukewarm'"),
        ("clients:\n  - name: c\n    command: [c]\n    mode: fresh\n" + MINIMAL,
         "c.yml:4: clients[0].mode: expected one of returning, new, got 'fresh'"),
        (MINIMAL + "    canary_targets: [../etc/passwd]\n", "no '..' parts"),
        (MINIMAL + "    mirrors:\n      - name: primary\n        metadata_url: http://m/\n",
         "endpoint name 'primary' is used twice"),
        (MINIMAL.replace("https://tuf.example/", "ftp://x"), "expected an http:// or https:// URL"),
        (MINIMAL + "shard: 3/3\n", "shard: expected INDEX/COUNT"),
        (MINIMAL + MINIMAL.replace("repositories:\n", ""), "used twice"),
        ("repositories: [\n", "not valid YAML"),
        (MINIMAL + "    allowed_redirect_hosts: [https://cdn.example]\n",
         "repositories[0].allowed_redirect_hosts: 'https://cdn.example' is not a host or"),
        (MINIMAL + "    allowed_redirect_hosts: ['cdn.example:99999']\n",
         "repositories[0].allowed_redirect_hosts: 'cdn.example:99999' is not a host or"),
    ],
)
def test_errors_name_the_field(tmp_path: Path, text: str, message: str) -> None:
    with pytest.raises(ConfigError, match=None) as error:
        parse_config(text, "c.yml", tmp_path)
    assert message in str(error.value)


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("30s", 30), ("5m", 300), ("1h", 3600), ("7d", 604800), ("1h30m", 5400), ("250ms", 0.25),
     (45, 45), ("45", 45), (1.5, 1.5), ("2w", 1209600)],
)
def test_durations(text: object, seconds: float) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("bad", ["", "5 minutes", "-1s", "1x", True, None, [1]])
def test_bad_durations(bad: object) -> None:
    with pytest.raises(ValueError, match="duration"):
        parse_duration(bad)


def test_format_duration() -> None:
    assert format_duration(5400) == "1h30m"
    assert format_duration(0.25) == "250ms"


def test_safe_names_never_escape() -> None:
    names = {safe_name(n) for n in ("a/b", "a_b", "..", ".", "a\\b", "x" * 300)}
    assert len(names) == 6
    for name in names:
        assert "/" not in name and "\\" not in name and not name.startswith(".")
        assert len(name) <= 60


def test_check_config_exit_codes(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yml"
    bad.write_text("repositories: 3\n")
    done = subprocess.run([sys.executable, "-m", "exporter.cli", "check-config", str(bad)],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 2
    assert "bad.yml:1: repositories: must be a list" in done.stderr
    missing = subprocess.run(
        [sys.executable, "-m", "exporter.cli", "check-config", str(tmp_path / "nope.yml")],
        capture_output=True, text=True, timeout=60)
    assert missing.returncode == 2 and "cannot read" in missing.stderr


_INVALID = Path(__file__).resolve().parents[1] / "invalid_configs"


def _load_any(path: Path) -> object:
    from exporter.generate.alerts import AlertOptions
    from exporter.serve.web import load_web_config

    if path.name.startswith("web-"):
        return load_web_config(path)
    if path.name.startswith("alerts-"):
        return AlertOptions.from_yaml(path)
    return load_config(path)


@pytest.mark.parametrize("path", sorted(p for p in _INVALID.iterdir() if p.suffix != ".md"),
                         ids=lambda p: p.name)
def test_invalid_example_files_give_their_expected_errors(path: Path) -> None:
    """Every file the exporter reads goes through the one YAML reader: its error names the
    file, the line and the field (tests/invalid_configs/README.md)."""
    first = path.read_text(encoding="utf-8").splitlines()[0]
    line, _, expected = first.removeprefix("# expect: ").partition(" ")
    with pytest.raises(ConfigError) as info:
        _load_any(path)
    assert f"{path}:{line}: {expected}" in str(info.value)
    assert info.value.line == int(line)


def test_a_duplicate_key_names_the_file_line_and_field(tmp_path: Path) -> None:
    text = MINIMAL + "    mode: warm\n    mode: cold\n"
    with pytest.raises(ConfigError, match=r"^c\.yml:7: repositories\[0\]\.mode: duplicate key$"):
        parse_config(text, "c.yml", tmp_path)


# -- client views (issue 16) ---------------------------------------------------------------------


def test_client_view_keys_default_and_resolve_paths(tmp_path: Path) -> None:
    [repo] = parse_config(MINIMAL, "c.yml", tmp_path).repositories
    assert repo.new_client_interval == 600 and repo.bootstrap_roots == ()
    text = MINIMAL + ("    new_client_interval: 0\n"
                      "    bootstrap_roots: [roots/1.json, /abs/5.json]\n")
    [repo] = parse_config(text, "c.yml", tmp_path).repositories
    assert repo.new_client_interval == 0
    assert repo.bootstrap_roots == (tmp_path / "roots" / "1.json", Path("/abs/5.json"))


def _roots(tmp_path: Path) -> dict[int, Path]:
    """root.json versions 1 and 2 of a simulated repository, and a copy of version 1."""
    from exporter.simulator import SimulatedRepository

    repo = SimulatedRepository()
    repo.rotate_keys("root", remove=1)
    repo.publish()
    paths = {}
    for version in (1, 2):
        paths[version] = tmp_path / f"{version}.root.json"
        paths[version].write_bytes(repo.latest[f"metadata/{version}.root.json"])
    return paths


def _view_config(tmp_path: Path, roots: list[str]) -> Path:
    path = tmp_path / "c.yml"
    path.write_text(MINIMAL.replace("root.json", "2.root.json")
                    + f"    bootstrap_roots: [{', '.join(roots)}]\nstate_dir: state\n")
    return path


def test_bootstrap_roots_are_loaded_by_version(tmp_path: Path) -> None:
    from exporter.serve.service import load

    roots = _roots(tmp_path)
    loaded = load(_view_config(tmp_path, ["1.root.json", "2.root.json"]))
    assert loaded.bootstrap_roots == {
        "sigstore": {1: roots[1].read_bytes(), 2: roots[2].read_bytes()}}


@pytest.mark.parametrize(("files", "message"), [
    (["1.root.json", "bad.json"], r"python-tuf cannot use .*bad\.json as a trusted root"),
    (["missing.json"], r"cannot read trusted root .*missing\.json"),
    (["1.root.json", "copy.json"],
     r"bootstrap roots .*1\.root\.json and .*copy\.json are both root version 1"),
])
def test_a_bootstrap_root_python_tuf_cannot_use_is_a_configuration_error(
    tmp_path: Path, files: list[str], message: str
) -> None:
    from exporter.probe.roots import TrustedRootError
    from exporter.serve.service import load

    roots = _roots(tmp_path)
    (tmp_path / "bad.json").write_text('{"signed": {}, "signatures": []}')
    (tmp_path / "copy.json").write_bytes(roots[1].read_bytes())
    config = _view_config(tmp_path, files)
    with pytest.raises(TrustedRootError, match=message):
        load(config)
    done = subprocess.run([sys.executable, "-m", "exporter.cli", "check-config", str(config)],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 2, done.stderr
    assert files[-1] in done.stderr
CLIENTS = """
clients:
  - name: tuf-js
    command: [node, adapters/tuf-client.mjs]
  - name: python-tuf-5
    command: [./venv/bin/python, client.py, -v]
    interval: 1h
    timeout: 2m
    mode: new
    canary_targets: [files/a.txt]
    env: {NODE_OPTIONS: "--max-old-space-size=128"}
client_concurrency: 3
repositories:
  - name: all
    metadata_url: https://tuf.example/
    trusted_root: root.json
    canary_targets: [x/y.txt]
  - name: one
    metadata_url: https://tuf.example/
    trusted_root: root.json
    clients: [python-tuf-5]
  - name: none
    metadata_url: https://tuf.example/
    trusted_root: root.json
    clients: []
"""


def test_external_clients_defaults_and_which_repository_runs_which(tmp_path: Path) -> None:
    config = parse_config(CLIENTS, "c.yml", tmp_path)
    js, py = config.clients
    assert js.command == ("node", "adapters/tuf-client.mjs")  # a bare program: from PATH
    assert (js.interval, js.timeout, str(js.mode), js.canary_targets, dict(js.env)) == (
        600.0, 60.0, "returning", None, {})
    assert py.command == (str(tmp_path / "venv/bin/python"), "client.py", "-v")
    assert (py.interval, py.timeout, str(py.mode), py.canary_targets) == (
        3600.0, 120.0, "new", ("files/a.txt",))
    assert dict(py.env) == {"NODE_OPTIONS": "--max-old-space-size=128"}
    assert config.client_concurrency == 3
    assert [r.clients for r in config.repositories] == [
        ("tuf-js", "python-tuf-5"), ("python-tuf-5",), ()]
    assert js.targets_for(config.repository("all")) == ("x/y.txt",)  # the repository's
    assert py.targets_for(config.repository("all")) == ("files/a.txt",)
    assert parse_config(MINIMAL, "c.yml", tmp_path).client_concurrency == 2


@pytest.mark.parametrize(("name", "error"), [
    ("new", "own client views"), ("bootstrap-root-v1", "own client views"),
    ("Tuf_JS", "a-z, 0-9 and '-'"), ("", "non-empty string"),
])
def test_external_client_names_are_refused(tmp_path: Path, name: str, error: str) -> None:
    text = CLIENTS.replace("name: tuf-js", f"name: {name!r}").replace(
        "    clients: [python-tuf-5]\n", "").replace("    clients: []\n", "")
    with pytest.raises(ConfigError, match=r"c\.yml:3: clients\[0\]\.name: .*" + re.escape(error)):
        parse_config(text, "c.yml", tmp_path)


def test_an_external_client_needs_a_command(tmp_path: Path) -> None:
    text = "clients:\n  - name: c\n    command: []\n" + MINIMAL
    with pytest.raises(ConfigError, match=r"c\.yml:3: clients\[0\]\.command: needs at least"):
        parse_config(text, "c.yml", tmp_path)


def test_files_the_configuration_names_are_errors_with_their_key_and_line(
    tmp_path: Path
) -> None:
    """A trusted or bootstrap root that cannot be read, a client program that does not exist
    or cannot run: refused at load (check-config, serve, probe, reload), naming the file, the
    line and the key, and saying what to do; not a probe that fails later."""
    from exporter.probe.roots import TrustedRootError
    from exporter.serve.service import load

    _roots(tmp_path)
    (tmp_path / "client.py").write_text("print('no x bit')\n")
    (tmp_path / "roots").mkdir()
    good = MINIMAL.replace("root.json", "2.root.json")

    def client(command: str) -> str:
        return f"clients:\n  - name: c\n    command: [{command}]\n" + good

    cases: list[tuple[str, type[Exception], str]] = [
        (MINIMAL.replace("root.json", "missing.json"), TrustedRootError,
         r"c\.yml:5: repositories\[0\]\.trusted_root: cannot read trusted root .*missing\.json"),
        (good + "    bootstrap_roots: [1.root.json, gone.json]\n", TrustedRootError,
         r"c\.yml:6: repositories\[0\]\.bootstrap_roots: cannot read trusted root .*gone"),
        (client("./no-such-client"), ConfigError,
         r"c\.yml:3: clients\[0\]\.command: program .*/no-such-client does not exist; "
         r"install the client there \(`tuf-exporter clients install"),
        (client("no-such-program-on-path"), ConfigError,
         r"c\.yml:3: clients\[0\]\.command: 'no-such-program-on-path' is not on PATH"),
        (client("./roots"), ConfigError,
         r"c\.yml:3: clients\[0\]\.command: program .*/roots is not a file; install"),
        (client("./client.py"), ConfigError,
         r"c\.yml:3: clients\[0\]\.command: program .*/client\.py is not executable"),
    ]
    config = tmp_path / "c.yml"
    for text, kind, message in cases:
        config.write_text(text)
        with pytest.raises(kind, match=message):
            load(config)
    config.write_text(client(sys.executable))
    assert load(config).config.clients[0].command == (sys.executable,)
    config.write_text(client("./no-such-client"))
    done = subprocess.run([sys.executable, "-m", "exporter.cli", "check-config", str(config)],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 2, done.stderr
    assert "c.yml:3: clients[0].command: program" in done.stderr
