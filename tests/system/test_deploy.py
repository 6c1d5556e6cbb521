"""Deployment files: the Dockerfile, the compose stack, the Kubernetes manifests, the
generated PrometheusRule and the configuration reference agree with the code they deploy.

No container engine or cluster is needed: files are parsed and cross-checked against the CLI
parser, the web server's routes, the configuration model and the generated rule files. The
compose file is validated against the Compose Specification's JSON schema (shipped by
check-jsonschema), the rendered Kubernetes manifests against the Kubernetes schemas (shipped by
kubernetes-validate) and the Prometheus Operator's fields they set; all offline. ``promtool``
is used when installed; the kustomizations are rendered by ``kubectl kustomize`` when installed,
else by a renderer here that a test holds to kubectl's output.
"""

from __future__ import annotations

import argparse
import ast
import fnmatch
import hashlib
import importlib.util
import itertools
import json
import re
import shlex
import shutil
import subprocess
import sys
import tomllib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from types import ModuleType
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml

from exporter import cli
from exporter.config.durations import parse_duration
from exporter.config.model import Config, ConfigError, parse_config
from exporter.generate.alerts import AlertOptions
from exporter.probe.roots import load_trusted_root
from exporter.serve.web import ExporterServer, parse_listen_address

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
COMPOSE = DEPLOY / "compose"
K8S = DEPLOY / "kubernetes"
PORT = parse_listen_address(cli.DEFAULT_LISTEN)[1]
HEALTHY, READY = "/-/healthy", "/-/ready"
STATE = "/var/lib/tuf-exporter"
VENV = "/opt/tuf-exporter"


def _yaml_docs(path: Path) -> list[Any]:
    return [doc for doc in yaml.safe_load_all(path.read_text(encoding="utf-8")) if doc]


def _option_strings(parser: argparse.ArgumentParser) -> set[str]:
    """Every option of ``parser`` and its subcommands, spelt out."""
    options: set[str] = set()
    for action in parser._actions:
        options.update(action.option_strings)
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                options |= _option_strings(sub)
    return options


def _parse_args(argv: list[str]) -> Any:
    """Parse ``argv`` with the real CLI parser; a usage error fails the test, and so does an
    abbreviated flag (argparse would accept ``--conf`` for ``--config``)."""
    known = _option_strings(cli.build_parser())
    for token in argv:
        if token.startswith("--"):
            assert token.split("=", 1)[0] in known, f"tuf-exporter has no flag {token}"
    try:
        return cli.build_parser().parse_args(argv)
    except SystemExit as exc:  # argparse exits on unknown commands and flags
        pytest.fail(f"tuf-exporter does not accept {argv}: exit {exc.code}")


def test_the_web_server_serves_the_health_paths() -> None:
    server = ExporterServer("127.0.0.1:0", None, ready=lambda: True, reload=lambda: (True, ""))  # type: ignore[arg-type]
    assert {HEALTHY, READY} <= set(server._routes)
    assert PORT == 9929


# ------------------------------------------------------------------------------- Dockerfile


@dataclass(frozen=True)
class Instruction:
    """One Dockerfile instruction, continuation lines joined."""

    keyword: str
    value: str
    stage: int


def _dockerfile() -> list[Instruction]:
    lines = (ROOT / "Dockerfile").read_text(encoding="utf-8").splitlines()
    out: list[Instruction] = []
    buffer = ""
    stage = -1
    for line in lines:
        stripped = line.strip()
        if not buffer and (not stripped or stripped.startswith("#")):
            continue
        if buffer and stripped.startswith("#"):
            continue  # comment lines inside a continued instruction
        if stripped.endswith("\\"):
            buffer += stripped[:-1] + " "
            continue
        text = buffer + stripped
        buffer = ""
        keyword, _, value = text.partition(" ")
        keyword = keyword.upper()
        if keyword == "FROM":
            stage += 1
        out.append(Instruction(keyword, value.strip(), stage))
    assert not buffer, "the Dockerfile ends inside a continued line"
    return out


def _one(keyword: str, stage: int | None = None) -> Instruction:
    found = [
        i for i in _dockerfile() if i.keyword == keyword and (stage is None or i.stage == stage)
    ]
    assert len(found) == 1, f"expected one {keyword}, found {found}"
    return found[0]


def _final_stage() -> int:
    return max(i.stage for i in _dockerfile())


def _env() -> dict[str, str]:
    env: dict[str, str] = {}
    for instruction in _dockerfile():
        if instruction.keyword == "ENV" and instruction.stage == _final_stage():
            for token in shlex.split(instruction.value):
                key, _, value = token.partition("=")
                env[key] = value
    return env


def _labels() -> dict[str, str]:
    labels: dict[str, str] = {}
    for instruction in _dockerfile():
        if instruction.keyword == "LABEL" and instruction.stage == _final_stage():
            for token in shlex.split(instruction.value):
                key, _, value = token.partition("=")
                labels[key] = value
    return labels


def _pyproject() -> dict[str, Any]:
    return tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))


def test_dockerfile_is_multi_stage_on_a_pinned_slim_base() -> None:
    froms = [i.value for i in _dockerfile() if i.keyword == "FROM"]
    assert len(froms) >= 2
    for value in froms:
        image = value.split()[0]
        assert re.fullmatch(r"python:3\.11-slim-bookworm(@sha256:[0-9a-f]{64})?", image), image
    assert froms[0].endswith(" AS builder")
    # the runtime stage copies the finished virtual environment from the builder and nothing
    # else: no source tree, no wheels, and no bind mount (podman leaves one from a cached
    # builder stage empty)
    runtime = [i for i in _dockerfile() if i.stage == _final_stage()]
    copies = [i.value.split() for i in runtime if i.keyword in ("COPY", "ADD")]
    assert copies == [["--from=builder", VENV, VENV]], copies
    run = " ".join(i.value for i in runtime if i.keyword == "RUN")
    assert "--mount" not in run and "pip" not in run, run
    # the builder installs from its own wheels only, then takes pip and setuptools out
    build = " ".join(i.value for i in _dockerfile() if i.keyword == "RUN" and i.stage == 0)
    assert "--no-index" in build
    assert re.search(rf"{VENV}/bin/python -m pip uninstall --yes pip setuptools", build), build


def _docker_runs(text: str) -> list[list[str]]:
    """Every ``docker run`` command in a text (shell line continuations and ``#`` comments
    of a Dockerfile header joined), as argv."""
    lines = [re.sub(r"^#\s?", "", line).strip() for line in text.splitlines()]
    joined = " ".join(line[:-1] if line.endswith("\\") else line + "\n" for line in lines)
    runs = [shlex.split(m.group(0).strip("`")) for m in re.finditer(r"docker run [^\n`]*", joined)]
    return [argv for argv in runs if any(a.startswith("tuf-exporter:") for a in argv)]


@pytest.mark.parametrize("document", ["Dockerfile", "deploy/README.md"])
def test_docker_run_in_the_docs_mounts_the_configuration_and_every_file_it_names(
    document: str,
) -> None:
    (argv,) = _docker_runs((ROOT / document).read_text(encoding="utf-8"))
    mounts: dict[str, Path] = {}
    for flag, value in itertools.pairwise(argv):
        if flag == "-v":
            host, container = value.split(":")[:2]
            if host.startswith("$PWD/"):
                mounts[container] = ROOT / host.removeprefix("$PWD/")
                assert mounts[container].exists(), f"{document}: {host} does not exist"
    assert any(v.endswith(f":{STATE}") for v in argv), "no volume for the state"
    image_at = next(i for i, a in enumerate(argv) if a.startswith("tuf-exporter:"))
    args = _parse_args(argv[image_at + 1:] or json.loads(_one("CMD").value))
    assert args.func is cli.cmd_serve

    def host_path(container: Path) -> Path:
        for target, source in mounts.items():
            if container == Path(target) or Path(target) in container.parents:
                return source / container.relative_to(target)
        raise AssertionError(f"{document}: {container} is not mounted")

    config_path = host_path(args.config)
    config = parse_config(config_path.read_text(), str(config_path), Path("/etc/tuf-exporter"))
    assert str(config.state_dir) == STATE
    for repo in config.repositories:
        load_trusted_root(host_path(repo.trusted_root))


def test_dockerfile_bakes_in_the_version_of_the_package() -> None:
    version = _pyproject()["project"]["version"]
    args = [i.value for i in _dockerfile() if i.keyword == "ARG"]
    assert f"VERSION={version}" in args, "ARG VERSION's default must be pyproject's version"
    assert _env()["TUF_EXPORTER_VERSION"] == "${VERSION}"
    labels = _labels()
    assert labels["org.opencontainers.image.version"] == "${VERSION}"
    for key in ("title", "description", "revision", "created", "source", "licenses"):
        assert f"org.opencontainers.image.{key}" in labels
    assert labels["org.opencontainers.image.licenses"] == _pyproject()["project"]["license"]["text"]


def test_dockerfile_runs_as_a_numeric_non_root_user_and_suits_a_read_only_root() -> None:
    user = _one("USER", _final_stage()).value
    uid = user.split(":")[0]
    assert uid.isdigit() and int(uid) != 0, user
    env = _env()
    assert env["PYTHONDONTWRITEBYTECODE"] == "1"
    assert env["HOME"] == STATE and env["TMPDIR"] == "/tmp"
    assert _one("VOLUME").value in (STATE, json.dumps([STATE]))
    assert _one("EXPOSE").value == str(PORT)


def test_dockerfile_entrypoint_and_cmd_are_a_valid_serve_command() -> None:
    entrypoint = json.loads(_one("ENTRYPOINT").value)
    cmd = json.loads(_one("CMD").value)
    assert entrypoint == ["tuf-exporter"]
    assert _pyproject()["project"]["scripts"]["tuf-exporter"] == "exporter.cli:main"
    args = _parse_args(cmd)
    assert args.func is cli.cmd_serve
    assert args.config == Path("/etc/tuf-exporter/config.yml")
    assert parse_listen_address(args.listen_address)[1] == PORT


def _healthcheck() -> tuple[dict[str, float], list[str]]:
    value = _one("HEALTHCHECK").value
    options: dict[str, float] = {}
    while value.startswith("--"):
        option, _, value = value.partition(" ")
        name, _, setting = option[2:].partition("=")
        options[name] = parse_duration(setting) if not setting.isdigit() else int(setting)
        value = value.strip()
    assert value.startswith("CMD ")
    return options, json.loads(value[4:])


def test_dockerfile_healthcheck_asks_the_served_health_path() -> None:
    options, command = _healthcheck()
    assert options["timeout"] < options["interval"]
    assert command[:2] == ["python", "-c"]
    url = _env()["TUF_EXPORTER_HEALTHCHECK_URL"]
    assert url == f"http://127.0.0.1:{PORT}{HEALTHY}"
    ast.parse(command[2])  # valid Python
    assert "urllib.request" in command[2] and "curl" not in command[2]


def _run_healthcheck(url: str) -> int:
    _, command = _healthcheck()
    done = subprocess.run(
        [sys.executable, "-c", command[2]],
        env={"TUF_EXPORTER_HEALTHCHECK_URL": url, "PATH": "/usr/bin:/bin"},
        capture_output=True, timeout=30, check=False,
    )
    return done.returncode


def test_dockerfile_healthcheck_passes_against_the_real_server_and_fails_without_it() -> None:
    server = ExporterServer(
        "127.0.0.1:0", None, ready=lambda: False, reload=lambda: (True, "")  # type: ignore[arg-type]
    )
    with server:
        port = server.address[1]
        base = _env()["TUF_EXPORTER_HEALTHCHECK_URL"].replace(f":{PORT}/", f":{port}/")
        assert _run_healthcheck(base) == 0
        # a non-2xx answer is unhealthy (here: /-/ready of a server that is not ready)
        assert _run_healthcheck(base.replace(HEALTHY, READY)) != 0
    assert _run_healthcheck(base) != 0  # nothing listens any more


def _dockerignore_allows(path: str) -> bool:
    """Whether ``path`` is sent in the build context: the last pattern matching the path or
    one of its parent directories decides (a simplified reading of Docker's rules)."""
    parts = PurePosixPath(path).parts
    candidates = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    allowed = True
    for line in (ROOT / ".dockerignore").read_text(encoding="utf-8").splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        negate = line.startswith("!")
        pattern = (line[1:] if negate else line).strip("/")
        if any(fnmatch.fnmatchcase(candidate, pattern) for candidate in candidates):
            allowed = negate
    return allowed


def test_dockerfile_copies_only_what_the_build_context_sends() -> None:
    sources = []
    for instruction in _dockerfile():
        if instruction.keyword == "COPY" and "--from" not in instruction.value:
            sources.extend(instruction.value.split()[:-1])
    assert sources
    for source in sources:
        assert (ROOT / source).exists(), source
        assert _dockerignore_allows(source), f"{source} is excluded by .dockerignore"
    # the wheel needs the package, pyproject.toml and the README it names
    assert set(sources) >= {"pyproject.toml", _pyproject()["project"]["readme"], "exporter"}
    for excluded in (".venv", ".git", "tests", "state", "tuf_exporter.egg-info"):
        assert not _dockerignore_allows(excluded), excluded


# ------------------------------------------------------------------------- compose stack


def _compose() -> dict[str, Any]:
    (document,) = _yaml_docs(COMPOSE / "compose.yaml")
    return document


def _mounts(service: dict[str, Any]) -> dict[str, Path]:
    """Container path -> host path of a service's bind mounts (relative to compose.yaml)."""
    out = {}
    for volume in service.get("volumes", []):
        host, container = volume.split(":")[:2]
        if host.startswith("."):
            out[container] = (COMPOSE / host).resolve()
    return out


def test_compose_has_the_whole_stack_and_every_bind_mount_exists() -> None:
    services = _compose()["services"]
    assert {
        "exporter", "prometheus", "alertmanager", "grafana", "opensearch", "opensearch-dashboards",
    } <= set(services)
    for name, service in services.items():
        for container, host in _mounts(service).items():
            assert host.exists(), f"{name}: {host} (mounted at {container}) does not exist"
        for port in service.get("ports", []):
            assert str(port).startswith("127.0.0.1:"), f"{name} publishes {port} beyond localhost"
    named = {v.split(":")[0] for s in services.values() for v in s.get("volumes", [])}
    assert {n for n in named if not n.startswith(".")} <= set(_compose()["volumes"])


def test_compose_exporter_runs_the_demo_on_the_default_port() -> None:
    exporter = _compose()["services"]["exporter"]
    assert exporter["build"] == {"context": "../..", "dockerfile": "Dockerfile",
                                 "args": {"VERSION": _pyproject()["project"]["version"]}}
    args = _parse_args(exporter["command"])
    assert args.func is cli.cmd_demo
    host, port = parse_listen_address(args.listen_address)
    assert (host, port) == ("0.0.0.0", PORT)  # reachable from the other containers
    assert exporter["read_only"] is True and "/tmp" in exporter["tmpfs"]
    assert f"127.0.0.1:{PORT}:{PORT}" in exporter["ports"]


def test_compose_sigstore_profile_config_is_valid_and_matches_its_mounts() -> None:
    service = _compose()["services"]["exporter-sigstore"]
    args = _parse_args(service["command"])
    assert args.func is cli.cmd_serve
    mounts = _mounts(service)
    config_path = mounts[str(args.config)]
    config = parse_config(config_path.read_text(), str(config_path), Path("/etc/tuf-exporter"))
    assert str(config.state_dir) == STATE
    assert any(v.endswith(f":{STATE}") for v in service["volumes"])
    for repo in config.repositories:
        load_trusted_root(mounts[str(repo.trusted_root)])
    assert config.opensearch is not None
    assert config.opensearch.hosts == ("http://opensearch:9200",)


def test_compose_prometheus_loads_the_generated_rules_and_scrapes_the_exporter() -> None:
    compose = _compose()
    prometheus = compose["services"]["prometheus"]
    mounts = _mounts(prometheus)
    config_file = next(a.split("=", 1)[1] for a in prometheus["command"]
                       if a.startswith("--config.file="))
    settings = yaml.safe_load(mounts[config_file].read_text())
    rule_targets = {mounts[path] for path in settings["rule_files"]}
    assert rule_targets == {ROOT / "alerts" / "recording_rules.yml",
                            ROOT / "alerts" / "alert_rules.yml"}
    jobs = {job["job_name"]: job for job in settings["scrape_configs"]}
    # TufExporterDown watches this job name
    exporter_job = jobs[AlertOptions().exporter_job]
    targets = [t for sc in exporter_job["static_configs"] for t in sc["targets"]]
    assert targets == [f"exporter:{PORT}"]
    assert exporter_job["dns_sd_configs"][0]["names"] == ["exporter-sigstore"]
    alertmanagers = settings["alerting"]["alertmanagers"][0]["static_configs"][0]["targets"]
    assert alertmanagers == ["alertmanager:9093"]


@pytest.mark.skipif(shutil.which("promtool") is None, reason="promtool is not installed")
def test_compose_prometheus_config_passes_promtool(tmp_path: Path) -> None:
    text = (COMPOSE / "prometheus.yml").read_text()
    text = text.replace("/etc/prometheus/rules/", f"{ROOT / 'alerts'}/")
    (tmp_path / "prometheus.yml").write_text(text)
    done = subprocess.run(["promtool", "check", "config", str(tmp_path / "prometheus.yml")],
                          capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stdout + done.stderr


def test_compose_alertmanager_uses_the_generated_example() -> None:
    alertmanager = _compose()["services"]["alertmanager"]
    mounts = _mounts(alertmanager)
    config_file = next(a.split("=", 1)[1] for a in alertmanager["command"]
                       if a.startswith("--config.file="))
    assert mounts[config_file] == ROOT / "alerts" / "alertmanager.example.yml"


def test_compose_grafana_provisions_prometheus_and_the_generated_dashboards() -> None:
    grafana = _compose()["services"]["grafana"]
    mounts = _mounts(grafana)
    provisioning = mounts["/etc/grafana/provisioning"]
    (datasources,) = _yaml_docs(provisioning / "datasources" / "prometheus.yml")
    (source,) = datasources["datasources"]
    assert source["type"] == "prometheus" and source["isDefault"] is True
    assert source["url"] == "http://prometheus:9090"
    (providers,) = _yaml_docs(provisioning / "dashboards" / "tuf-exporter.yml")
    path = providers["providers"][0]["options"]["path"]
    assert mounts[path] == ROOT / "dashboards"
    dashboards = sorted((ROOT / "dashboards").glob("*.json"))
    assert dashboards
    for dashboard in dashboards:  # the dashboards choose a Prometheus data source by variable
        variables = json.loads(dashboard.read_text())["templating"]["list"]
        assert any(v["type"] == "datasource" and v["query"] == "prometheus" for v in variables)
    home = grafana["environment"]["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"]
    assert (mounts[path] / PurePosixPath(home).relative_to(path)).exists()


def test_compose_opensearch_is_a_single_node_without_security_for_local_use() -> None:
    services = _compose()["services"]
    env = services["opensearch"]["environment"]
    assert env["discovery.type"] == "single-node"
    assert env["DISABLE_SECURITY_PLUGIN"] == "true"
    dashboards = services["opensearch-dashboards"]["environment"]
    assert json.loads(dashboards["OPENSEARCH_HOSTS"]) == ["http://opensearch:9200"]
    assert dashboards["DISABLE_SECURITY_DASHBOARDS_PLUGIN"] == "true"


def _compose_spec_errors(path: Path) -> str:
    """What check-jsonschema reports for ``path`` against the Compose Specification's JSON
    schema it ships (``vendor.compose-spec``, read offline); empty when the file is valid."""
    done = subprocess.run(
        [sys.executable, "-m", "check_jsonschema", "--builtin-schema", "vendor.compose-spec",
         str(path)],
        capture_output=True, text=True, check=False, timeout=120,
    )
    return "" if done.returncode == 0 else (done.stdout + done.stderr).strip() or "failed"


def test_compose_file_matches_the_compose_specification() -> None:
    assert _compose_spec_errors(COMPOSE / "compose.yaml") == ""


@pytest.mark.parametrize(
    ("service", "key", "value", "reported"),
    [
        ("exporter", "read_olny", True, "'read_olny' was unexpected"),  # a misspelt key
        ("prometheus", "ports", {"9090": 9090}, "ports: {'9090': 9090} is not of type 'array'"),
        ("exporter-sigstore", "depends_on", {"opensearch": {"condition": "service_ready"}},
         "'service_ready' is not one of"),
        ("opensearch", "healthcheck", {"test": ["CMD-SHELL", "true"], "retries": [30]},
         "retries: [30] is not of type"),
    ],
)
def test_compose_specification_check_fails_on_a_broken_copy(
    tmp_path: Path, service: str, key: str, value: Any, reported: str
) -> None:
    broken = _compose()
    broken["services"][service][key] = value
    path = tmp_path / "compose.yaml"
    path.write_text(yaml.safe_dump(broken), encoding="utf-8")
    assert reported in _compose_spec_errors(path)


# ----------------------------------------------------------------------------- Kubernetes


def _k8s_files() -> list[Path]:
    return sorted(p for p in K8S.rglob("*.yaml") if p.name != "kustomization.yaml")


def _k8s_objects() -> Iterator[tuple[Path, dict[str, Any]]]:
    for path in _k8s_files():
        for doc in _yaml_docs(path):
            yield path, doc


def _object(kind: str, name: str, directory: Path = K8S) -> dict[str, Any]:
    found = [
        doc for path, doc in _k8s_objects()
        if doc["kind"] == kind and doc["metadata"]["name"] == name and path.parent == directory
    ]
    assert len(found) == 1, (kind, name, directory)
    return found[0]


def test_every_manifest_parses_and_every_kustomization_references_existing_files() -> None:
    objects = list(_k8s_objects())
    assert objects
    for path, doc in objects:
        assert {"apiVersion", "kind", "metadata"} <= set(doc), path
        assert doc["metadata"]["name"], path
    listed: set[Path] = set()
    for kustomization in K8S.rglob("kustomization.yaml"):
        (doc,) = _yaml_docs(kustomization)
        for resource in doc.get("resources", []):
            target = (kustomization.parent / resource).resolve()
            assert target.exists(), f"{kustomization}: {resource}"
            listed.add(target)
        for generator in doc.get("configMapGenerator", []) + doc.get("secretGenerator", []):
            for file in generator.get("files", []):
                assert (kustomization.parent / file.split("=")[-1]).exists(), file
    for path in _k8s_files():  # no manifest is forgotten by every kustomization
        assert path.resolve() in listed, f"{path} is in no kustomization"


def _pod_spec(workload: dict[str, Any]) -> dict[str, Any]:
    return workload["spec"]["template"]["spec"]


def _container(workload: dict[str, Any]) -> dict[str, Any]:
    (container,) = [c for c in _pod_spec(workload)["containers"] if c["name"] == "tuf-exporter"]
    return container


WORKLOADS = [("Deployment", "tuf-exporter", K8S), ("StatefulSet", "tuf-exporter", K8S / "sharded")]


def _probe_port(container: dict[str, Any], port: int | str) -> int:
    if isinstance(port, int):
        return port
    (match,) = [p["containerPort"] for p in container["ports"] if p["name"] == port]
    return int(match)


def _assert_hardened(security: dict[str, Any]) -> None:
    assert security["runAsNonRoot"] is True
    assert security["allowPrivilegeEscalation"] is False
    assert security["readOnlyRootFilesystem"] is True
    assert security["capabilities"]["drop"] == ["ALL"]
    assert security["seccompProfile"]["type"] == "RuntimeDefault"


@pytest.mark.parametrize(("kind", "name", "directory"), WORKLOADS)
def test_workload_probes_ports_and_security(kind: str, name: str, directory: Path) -> None:
    workload = _object(kind, name, directory)
    container = _container(workload)
    assert container["livenessProbe"]["httpGet"]["path"] == HEALTHY
    assert container["readinessProbe"]["httpGet"]["path"] == READY
    for probe in ("livenessProbe", "readinessProbe"):
        assert _probe_port(container, container[probe]["httpGet"]["port"]) == PORT
    assert {"name": "metrics", "containerPort": PORT, "protocol": "TCP"} in container["ports"]
    assert container["resources"]["requests"] and container["resources"]["limits"]
    pod = _pod_spec(workload)
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["seccompProfile"]["type"] == "RuntimeDefault"
    assert pod["securityContext"]["runAsUser"] == int(_one("USER").value.split(":")[0])
    for each in pod["containers"] + pod.get("initContainers", []):
        _assert_hardened(each["securityContext"])
    assert pod["automountServiceAccountToken"] is False


@pytest.mark.parametrize(("kind", "name", "directory"), WORKLOADS)
def test_workload_args_are_a_valid_serve_command_with_writable_state_and_tmp(
    kind: str, name: str, directory: Path
) -> None:
    workload = _object(kind, name, directory)
    container = _container(workload)
    args = _parse_args(container["args"])
    assert args.func is cli.cmd_serve
    assert parse_listen_address(args.listen_address)[1] == PORT
    mounts = {m["mountPath"]: m for m in container["volumeMounts"]}
    volumes = {v["name"]: v for v in _pod_spec(workload)["volumes"]}
    claims = {t["metadata"]["name"] for t in workload["spec"].get("volumeClaimTemplates", [])}
    for path in (STATE, "/tmp"):
        mount = mounts[path]
        assert not mount.get("readOnly", False)
        volume = volumes.get(mount["name"], {})
        assert "emptyDir" in volume or "persistentVolumeClaim" in volume or mount["name"] in claims
    # the configuration file is mounted where the args say
    config_dir = str(args.config.parent)
    assert str(args.config) in mounts or config_dir in mounts


def _k8s_config() -> Config:
    path = K8S / "common" / "config.yml"
    return parse_config(path.read_text(), str(path), Path("/etc/tuf-exporter"))


def test_kubernetes_config_is_valid_and_matches_the_deployment_mounts() -> None:
    config = _k8s_config()
    deployment = _object("Deployment", "tuf-exporter")
    container = _container(deployment)
    mounts = {m["mountPath"]: m for m in container["volumeMounts"]}
    volumes = {v["name"]: v for v in _pod_spec(deployment)["volumes"]}
    assert str(config.state_dir) == STATE and STATE in mounts
    assert config.shard_count == 1, "the shared config must not set shard (sharded/ adds it)"
    (generator_doc,) = _yaml_docs(K8S / "common" / "kustomization.yaml")
    generators = {g["name"]: g["files"] for g in generator_doc["configMapGenerator"]}
    # the config file comes from the generated ConfigMap
    config_mount = mounts[str(_parse_args(container["args"]).config)]
    assert volumes[config_mount["name"]]["configMap"]["name"] == "tuf-exporter-config"
    assert config_mount["subPath"] in [Path(f).name for f in generators["tuf-exporter-config"]]
    # every trusted root is a key of the trusted-roots ConfigMap, and python-tuf accepts it
    roots = mounts["/etc/tuf-exporter/trusted-roots"]
    assert volumes[roots["name"]]["configMap"]["name"] == "tuf-exporter-trusted-roots"
    files = {Path(f).name: K8S / "common" / f for f in generators["tuf-exporter-trusted-roots"]}
    for repo in config.repositories:
        assert repo.trusted_root.parent == Path(roots["mountPath"])
        load_trusted_root(files[repo.trusted_root.name])
    # the OpenSearch password is a file from a Secret; the user name an env var from it
    assert config.opensearch is not None and config.opensearch.password_file is not None
    secret_mount = mounts[str(config.opensearch.password_file.parent)]
    secret = volumes[secret_mount["name"]]["secret"]
    assert config.opensearch.password_file.name in [i["path"] for i in secret["items"]]
    env = {e["name"]: e for e in container["env"]}
    ref = env[config.opensearch.username_env]["valueFrom"]["secretKeyRef"]
    assert ref["name"] == secret["secretName"]


def test_service_and_servicemonitor_select_the_pods_on_port_metrics() -> None:
    monitor = _object("ServiceMonitor", "tuf-exporter", K8S / "common")
    assert monitor["spec"]["endpoints"][0]["port"] == "metrics"
    assert monitor["spec"]["endpoints"][0]["path"] == "/metrics"
    for service, workload in (
        (_object("Service", "tuf-exporter"), _object("Deployment", "tuf-exporter")),
        (_object("Service", "tuf-exporter-shards", K8S / "sharded"),
         _object("StatefulSet", "tuf-exporter", K8S / "sharded")),
    ):
        (port,) = service["spec"]["ports"]
        assert port["name"] == "metrics" and port["port"] == PORT
        pod_labels = workload["spec"]["template"]["metadata"]["labels"]
        assert service["spec"]["selector"].items() <= pod_labels.items()
        assert workload["spec"]["selector"]["matchLabels"].items() <= pod_labels.items()
        labels = service["metadata"].get("labels", {}) | {"app.kubernetes.io/name": "tuf-exporter"}
        assert monitor["spec"]["selector"]["matchLabels"].items() <= labels.items()
        # the job label comes from the Service and must be what TufExporterDown expects
        assert labels[monitor["spec"]["jobLabel"]] == AlertOptions().exporter_job
    assert _object("StatefulSet", "tuf-exporter", K8S / "sharded")["spec"]["serviceName"] == (
        "tuf-exporter-shards"
    )


def test_servicemonitor_and_prometheusrule_are_selected_by_the_same_release_label() -> None:
    # kube-prometheus-stack selects both by `release: <Helm release>`: a ServiceMonitor without
    # the label the PrometheusRule has loads the rules but never scrapes, and TufExporterDown
    # pages on a healthy install.
    monitor = _object("ServiceMonitor", "tuf-exporter", K8S / "common")
    rule = _object("PrometheusRule", "tuf-exporter", K8S / "common")
    release = rule["metadata"]["labels"]["release"]
    assert monitor["metadata"].get("labels", {}).get("release") == release
    assert f"release: {release}" in (DEPLOY / "README.md").read_text(encoding="utf-8")


def _shard_script_output(tmp_path: Path, pod: str, count: str) -> tuple[int, str]:
    statefulset = _object("StatefulSet", "tuf-exporter", K8S / "sharded")
    (init,) = _pod_spec(statefulset)["initContainers"]
    assert init["command"] == ["/bin/sh", "-c"]
    script = init["args"][0].replace("/etc/tuf-exporter", str(tmp_path))
    (tmp_path / "shard").mkdir(exist_ok=True)
    shutil.copy(K8S / "common" / "config.yml", tmp_path / "config.yml")
    done = subprocess.run(["/bin/sh", "-c", script], env={"POD_NAME": pod, "SHARD_COUNT": count},
                          capture_output=True, text=True, check=False)
    return done.returncode, done.stderr


def test_sharded_statefulset_takes_its_shard_from_the_pod_ordinal(tmp_path: Path) -> None:
    statefulset = _object("StatefulSet", "tuf-exporter", K8S / "sharded")
    replicas = statefulset["spec"]["replicas"]
    (init,) = _pod_spec(statefulset)["initContainers"]
    env = {e["name"]: e for e in init["env"]}
    assert int(env["SHARD_COUNT"]["value"]) == replicas, "SHARD_COUNT must equal replicas"
    assert env["POD_NAME"]["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.name"
    config_arg = _parse_args(_container(statefulset)["args"]).config
    for ordinal in range(replicas):
        code, err = _shard_script_output(tmp_path, f"tuf-exporter-{ordinal}", str(replicas))
        assert code == 0, err
        written = tmp_path / "shard" / config_arg.name
        config = parse_config(written.read_text(), str(written), Path("/etc/tuf-exporter"))
        assert (config.shard_index, config.shard_count) == (ordinal, replicas)
    assert _shard_script_output(tmp_path, f"tuf-exporter-{replicas}", str(replicas))[0] != 0
    assert _shard_script_output(tmp_path, "tuf-exporter-x", str(replicas))[0] != 0
    # each shard has its own volume for its state
    (claim,) = statefulset["spec"]["volumeClaimTemplates"]
    mounts = {m["name"]: m["mountPath"] for m in _container(statefulset)["volumeMounts"]}
    assert mounts[claim["metadata"]["name"]] == STATE


# ------------------------------------------------------------ rendered manifests, schemas

# Kubernetes releases the rendered manifests are validated against, with kubernetes-validate's
# strict schemas (an unknown field is an error; the package ships 1.25 to 1.37 and reads them
# offline): the oldest release supported upstream when this was written, and the newest.
KUBERNETES_VERSIONS = ("1.35", "1.37")
KUSTOMIZATIONS = [K8S, K8S / "sharded"]


class RenderError(Exception):
    """A kustomization that does not render."""


def _kubectl_kustomize(directory: Path) -> list[dict[str, Any]]:
    done = subprocess.run(["kubectl", "kustomize", str(directory)], capture_output=True,
                          text=True, check=False, timeout=120)
    if done.returncode != 0:
        raise RenderError(done.stderr.strip())
    return [doc for doc in yaml.safe_load_all(done.stdout) if doc]


# What _render_kustomization knows of kustomize: anything else in a kustomization is refused.
KUSTOMIZE_FIELDS = {"apiVersion", "kind", "namespace", "labels", "resources",
                    "configMapGenerator", "images"}
CLUSTER_SCOPED = {"Namespace"}
NAMESPACED = {"ServiceAccount", "ConfigMap", "Secret", "Service", "PersistentVolumeClaim",
              "Deployment", "StatefulSet", "ServiceMonitor", "PrometheusRule"}


def _configmap_hash(data: dict[str, str]) -> str:
    """kustomize's name suffix of a generated ConfigMap (api/hasher: SHA-256 of the JSON of
    kind, name and data as Go encodes it, first ten hex digits with 0 1 3 a e replaced; the
    name is hashed empty: kustomize v5 looks it up as one field named "metadata/name")."""
    encoded = json.dumps({"data": data, "kind": "ConfigMap", "name": ""}, sort_keys=True,
                         separators=(",", ":"), ensure_ascii=False)
    for char, escape in (("<", "\\u003c"), (">", "\\u003e"), ("&", "\\u0026"),
                         ("\u2028", "\\u2028"), ("\u2029", "\\u2029")):
        encoded = encoded.replace(char, escape)
    digest = hashlib.sha256(encoded.encode("utf-8")).hexdigest()[:10]
    return digest.translate(str.maketrans("013ae", "ghkmt"))


def _pod_spec_of(doc: dict[str, Any]) -> dict[str, Any] | None:
    if doc["kind"] in ("Deployment", "StatefulSet", "DaemonSet", "Job"):
        return _pod_spec(doc)
    return None


def _configmap_refs(pod: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """Every object in a pod spec whose ``name`` names a ConfigMap."""
    for volume in pod.get("volumes", []):
        if "configMap" in volume:
            yield volume["configMap"]
        for source in volume.get("projected", {}).get("sources", []):
            if "configMap" in source:
                yield source["configMap"]
    for container in pod.get("containers", []) + pod.get("initContainers", []):
        for env in container.get("env", []):
            if "configMapKeyRef" in env.get("valueFrom", {}):
                yield env["valueFrom"]["configMapKeyRef"]
        for source in container.get("envFrom", []):
            if "configMapRef" in source:
                yield source["configMapRef"]


def _render_kustomization(directory: Path) -> tuple[list[dict[str, Any]], dict[str, str]]:
    """The objects ``kubectl kustomize directory`` renders, and the generated ConfigMaps' new
    names by their given names, for the part of kustomize these kustomizations use
    (resources, configMapGenerator with files, namespace, labels without selectors or
    templates, images): anything else raises RenderError. Used where kubectl is missing
    (Debian's kubectl 1.20 cannot read ``labels``); a test checks it against kubectl."""
    (kustomization,) = _yaml_docs(directory / "kustomization.yaml")
    if unknown := set(kustomization) - KUSTOMIZE_FIELDS:
        raise RenderError(f"{directory}: cannot render {sorted(unknown)} without kubectl")
    objects: list[dict[str, Any]] = []
    renames: dict[str, str] = {}
    for resource in kustomization.get("resources", []):
        target = directory / resource
        if target.is_dir():
            rendered, renamed = _render_kustomization(target)
            objects += rendered
            renames |= renamed
        elif target.is_file():
            objects += _yaml_docs(target)
        else:
            raise RenderError(f"{directory}: resource {resource} does not exist")
    for generator in kustomization.get("configMapGenerator", []):
        if set(generator) != {"name", "files"}:
            raise RenderError(f"{directory}: cannot render generator {generator}")
        data = {}
        for entry in generator["files"]:
            key, _, file = entry.rpartition("=")
            if not (directory / file).is_file():
                raise RenderError(f"{directory}: {file} does not exist")
            data[key or Path(file).name] = (directory / file).read_text(encoding="utf-8")
        name = generator["name"]
        renames[name] = f"{name}-{_configmap_hash(data)}"
        objects.append({"apiVersion": "v1", "kind": "ConfigMap",
                        "metadata": {"name": renames[name]}, "data": data})
    labels: dict[str, str] = {}
    for entry in kustomization.get("labels", []):
        if set(entry) - {"pairs", "includeSelectors", "includeTemplates"} or any(
            entry.get(flag) for flag in ("includeSelectors", "includeTemplates")
        ):
            raise RenderError(f"{directory}: cannot render labels {entry}")
        labels |= entry["pairs"]
    images = {image["name"]: image for image in kustomization.get("images", [])}
    if any(set(image) - {"name", "newName", "newTag"} for image in images.values()):
        raise RenderError(f"{directory}: cannot render images {list(images.values())}")
    for doc in objects:
        metadata = doc["metadata"]
        if labels:
            metadata["labels"] = metadata.get("labels", {}) | labels
        if "namespace" in kustomization:
            if doc["kind"] not in NAMESPACED | CLUSTER_SCOPED:
                raise RenderError(f"{directory}: the scope of a {doc['kind']} is unknown")
            if doc["kind"] in NAMESPACED:
                metadata["namespace"] = kustomization["namespace"]
        pod = _pod_spec_of(doc)
        if pod is None:
            continue
        for ref in _configmap_refs(pod):
            ref["name"] = renames.get(ref["name"], ref["name"])
        for container in pod["containers"] + pod.get("initContainers", []):
            name, tag = container["image"], ""
            if "@" not in name and name.rfind(":") > name.rfind("/"):
                name, _, tag = name.rpartition(":")
            if name in images:
                new_name = images[name].get("newName", name)
                new_tag = images[name].get("newTag", tag)
                container["image"] = f"{new_name}:{new_tag}" if new_tag else new_name
    return objects, renames


def _render(directory: Path) -> list[dict[str, Any]]:
    """The objects the kustomization in ``directory`` renders: by ``kubectl kustomize`` where
    kubectl is installed, else by _render_kustomization. Raises RenderError."""
    if shutil.which("kubectl"):
        return _kubectl_kustomize(directory)
    return _render_kustomization(directory)[0]


# The fields of the Prometheus Operator's resources these manifests set, transcribed from
# its CRDs (monitoring.coreos.com/v1, example/prometheus-operator-crd/ in its repository): no
# package ships those schemas for offline use. The API server drops an unknown field of a
# custom resource silently, so a misspelt one is refused here. Add a field after checking it
# in the CRD.
OPERATOR_DURATION = (
    r"^(0|(([0-9]+)y)?(([0-9]+)w)?(([0-9]+)d)?(([0-9]+)h)?(([0-9]+)m)?(([0-9]+)s)?(([0-9]+)ms)?)$"
)
_STRINGS = {"type": "object", "additionalProperties": {"type": "string"}}
_DURATION = {"type": "string", "pattern": OPERATOR_DURATION}


def _operator_object(kind: str, spec: dict[str, Any]) -> dict[str, Any]:
    return {
        "type": "object", "additionalProperties": False,
        "required": ["apiVersion", "kind", "metadata", "spec"],
        "properties": {
            "apiVersion": {"const": "monitoring.coreos.com/v1"},
            "kind": {"const": kind},
            "metadata": {
                "type": "object", "additionalProperties": False, "required": ["name"],
                "properties": {"name": {"type": "string", "minLength": 1},
                               "namespace": {"type": "string"},
                               "labels": _STRINGS, "annotations": _STRINGS},
            },
            "spec": spec,
        },
    }


OPERATOR_SCHEMAS: dict[str, dict[str, Any]] = {
    "ServiceMonitor": _operator_object("ServiceMonitor", {
        "type": "object", "additionalProperties": False, "required": ["selector", "endpoints"],
        "properties": {
            "jobLabel": {"type": "string"},
            "selector": {"type": "object", "additionalProperties": False,
                         "properties": {"matchLabels": _STRINGS}},
            "endpoints": {"type": "array", "minItems": 1, "items": {
                "type": "object", "additionalProperties": False, "required": ["port"],
                "properties": {"port": {"type": "string"}, "path": {"type": "string"},
                               "interval": _DURATION, "scrapeTimeout": _DURATION,
                               "honorLabels": {"type": "boolean"}},
            }},
        },
    }),
    "PrometheusRule": _operator_object("PrometheusRule", {
        "type": "object", "additionalProperties": False,
        "properties": {"groups": {"type": "array", "items": {
            "type": "object", "additionalProperties": False, "required": ["name"],
            "properties": {
                "name": {"type": "string", "minLength": 1},
                "interval": _DURATION, "query_offset": _DURATION, "limit": {"type": "integer"},
                "labels": _STRINGS,
                "rules": {"type": "array", "items": {
                    "type": "object", "additionalProperties": False, "required": ["expr"],
                    "oneOf": [{"required": ["record"]}, {"required": ["alert"]}],
                    "properties": {
                        "record": {"type": "string"}, "alert": {"type": "string"},
                        "expr": {"type": ["string", "integer"]},
                        "for": _DURATION, "keep_firing_for": {**_DURATION, "minLength": 1},
                        "labels": _STRINGS, "annotations": _STRINGS,
                    },
                }},
            },
        }}},
    }),
}


def _manifest_errors(directory: Path, versions: tuple[str, ...] = KUBERNETES_VERSIONS) -> list[str]:
    """Everything wrong with what ``directory`` renders: a render error, or per object the
    first error against the Kubernetes schemas of each of ``versions`` (kubernetes-validate,
    strict) or, for the Prometheus Operator's kinds, against OPERATOR_SCHEMAS and the rule
    that a scrape's timeout is at most its interval (Prometheus refuses the whole
    configuration otherwise)."""
    try:
        objects = _render(directory)
    except RenderError as exc:
        return [f"render: {exc}"]
    errors: list[str] = []
    for doc in objects:
        where = f"{doc.get('kind')}/{doc.get('metadata', {}).get('name')}"
        if doc.get("apiVersion", "").startswith("monitoring.coreos.com/"):
            schema = OPERATOR_SCHEMAS.get(doc["kind"])
            if schema is None:
                errors.append(f"{where}: no schema")
                continue
            found = [f"{where}: {'.'.join(map(str, e.path))}: {e.message}"
                     for e in jsonschema.Draft202012Validator(schema).iter_errors(doc)]
            for endpoint in doc["spec"].get("endpoints", []) if not found else []:
                if "interval" in endpoint and "scrapeTimeout" in endpoint and (
                    parse_duration(endpoint["scrapeTimeout"]) > parse_duration(endpoint["interval"])
                ):
                    found.append(f"{where}: scrapeTimeout exceeds interval")
            errors += found
            continue
        for version in versions:
            try:
                kubernetes_validate.validate(doc, version, strict=True)
            except kubernetes_validate.ValidationError as exc:
                errors.append(f"{where} ({version}): {'.'.join(map(str, exc.path))}: {exc.message}")
            except kubernetes_validate.SchemaNotFoundError as exc:
                errors.append(f"{where} ({version}): {exc.message}")
    return errors


def test_kubernetes_validate_has_the_chosen_releases() -> None:
    assert set(KUBERNETES_VERSIONS) <= {
        ".".join(v.split(".")[:2]) for v in kubernetes_validate.utils.all_versions()
    }


@pytest.mark.parametrize("directory", KUSTOMIZATIONS, ids=["base", "sharded"])
def test_rendered_manifests_are_valid_for_kubernetes_and_the_operator(directory: Path) -> None:
    objects = _render(directory)
    kinds = {doc["kind"] for doc in objects}
    assert {"ServiceMonitor", "PrometheusRule", "ConfigMap", "Service"} <= kinds
    assert _manifest_errors(directory) == []


@pytest.mark.skipif(shutil.which("kubectl") is None, reason="kubectl is not installed")
@pytest.mark.parametrize("directory", KUSTOMIZATIONS, ids=["base", "sharded"])
def test_python_rendering_matches_kubectl_kustomize(directory: Path) -> None:
    def key(doc: dict[str, Any]) -> tuple[str, str]:
        return doc["kind"], doc["metadata"]["name"]

    ours = sorted(_render_kustomization(directory)[0], key=key)
    theirs = sorted(_kubectl_kustomize(directory), key=key)
    assert [key(d) for d in ours] == [key(d) for d in theirs]
    for mine, kubectl in zip(ours, theirs, strict=True):
        assert mine == kubectl, key(mine)


@pytest.mark.parametrize("directory", ["", "sharded"])
def test_images_entry_points_every_container_at_your_registry(
    tmp_path: Path, directory: str
) -> None:
    # deploy/README.md: "write it by hand as `newName: registry.example.com/tuf-exporter` and
    # `newTag: 0.1.0`"; here with another tag, so that a change shows
    readme = (DEPLOY / "README.md").read_text(encoding="utf-8")
    assert "`newName: registry.example.com/tuf-exporter`" in readme
    copy = tmp_path / "kubernetes"
    shutil.copytree(K8S, copy)
    path = copy / directory / "kustomization.yaml"
    (kustomization,) = _yaml_docs(path)
    (image,) = kustomization["images"]
    image |= {"newName": "registry.example.com/tuf-exporter", "newTag": "9.9.9"}
    path.write_text(yaml.safe_dump(kustomization), encoding="utf-8")
    renderings = [_render_kustomization(copy / directory)[0]]
    if shutil.which("kubectl"):
        renderings.append(_kubectl_kustomize(copy / directory))
    for objects in renderings:
        pods = [pod for doc in objects if (pod := _pod_spec_of(doc)) is not None]
        assert pods
        for pod in pods:
            for container in pod["containers"] + pod.get("initContainers", []):
                assert container["image"] == "registry.example.com/tuf-exporter:9.9.9"


def _set(doc: dict[str, Any], path: str, value: Any) -> None:
    """Set ``value`` at a dotted ``path`` of ``doc`` (numbers index lists)."""
    *parents, leaf = path.split(".")
    node: Any = doc
    for part in parents:
        node = node[int(part)] if part.isdigit() else node[part]
    node[int(leaf) if leaf.isdigit() else leaf] = value


CONTAINER = "spec.template.spec.containers.0"


@pytest.mark.parametrize(
    ("directory", "file", "path", "value", "reported"),
    [
        ("", "deployment.yaml", f"{CONTAINER}.ports.0.containerPort", "metrics",
         "'metrics' is not of type 'integer'"),
        ("", "deployment.yaml", f"{CONTAINER}.readinesProbe", {"httpGet": {"port": 9929}},
         "'readinesProbe' was unexpected"),
        ("", "service.yaml", "spec.ports.0.port", "metrics", "'metrics' is not of type 'integer'"),
        ("sharded", "sharded/statefulset.yaml", "spec.replicas", "2",
         "'2' is not of type 'integer'"),
        ("sharded", "sharded/statefulset.yaml", f"{CONTAINER}.securityContext.runAsNonRoot",
         "yes", "'yes' is not of type 'boolean'"),
        ("", "common/servicemonitor.yaml", "spec.endpoints.0.port", PORT,
         f"{PORT} is not of type 'string'"),
        ("sharded", "common/servicemonitor.yaml", "spec.endpoints.0.interval", "30 seconds",
         "does not match"),
        ("", "common/servicemonitor.yaml", "spec.endpoints.0.scrapeTimeout", "1m",
         "scrapeTimeout exceeds interval"),
        ("", "common/servicemonitor.yaml", "spec.endpoints.0.scrapeInterval", "30s",
         "'scrapeInterval' was unexpected"),
        ("", "common/prometheusrule.yaml", "spec.groups.1.rules.0.labels.priority", 1,
         "1 is not of type 'string'"),
        ("sharded", "common/prometheusrule.yaml", "spec.groups.1.rules.0.record", "r",
         "is valid under each of"),
        ("", "kustomization.yaml", "resources.1", "pvcs.yaml", "render: "),
    ],
)
def test_manifest_checks_fail_on_a_broken_copy(
    tmp_path: Path, directory: str, file: str, path: str, value: Any, reported: str
) -> None:
    copy = tmp_path / "kubernetes"
    shutil.copytree(K8S, copy)
    (doc,) = _yaml_docs(copy / file)
    _set(doc, path, value)
    (copy / file).write_text(yaml.safe_dump(doc), encoding="utf-8")
    errors = _manifest_errors(copy / directory)
    assert any(reported in error for error in errors), errors


@pytest.mark.parametrize("directory", KUSTOMIZATIONS, ids=["base", "sharded"])
def test_kustomize_builds_with_consistent_generated_names(directory: Path) -> None:
    objects = _render(directory)
    kinds = {d["kind"] for d in objects}
    workload = "Deployment" if directory == K8S else "StatefulSet"
    assert {workload, "Service", "ConfigMap", "ServiceMonitor", "PrometheusRule"} <= kinds
    assert ({"Deployment", "StatefulSet"} - {workload}).isdisjoint(kinds)
    names = {d["metadata"]["name"] for d in objects if d["kind"] == "ConfigMap"}
    (monitor,) = [d for d in objects if d["kind"] == "ServiceMonitor"]
    services = [d for d in objects if d["kind"] == "Service"]
    assert services
    for service in services:  # scraped, with the job label TufExporterDown expects
        labels = service["metadata"]["labels"]
        assert monitor["spec"]["selector"]["matchLabels"].items() <= labels.items()
        assert labels[monitor["spec"]["jobLabel"]] == AlertOptions().exporter_job
    for d in objects:
        assert d["kind"] == "Namespace" or d["metadata"].get("namespace") == "tuf-exporter"
        if d["kind"] == workload:
            for volume in d["spec"]["template"]["spec"]["volumes"]:
                if "configMap" in volume:
                    assert volume["configMap"]["name"] in names


# ------------------------------------------------------------------------ PrometheusRule


def _generator() -> ModuleType:
    spec = importlib.util.spec_from_file_location(
        "generate_prometheusrule", K8S / "generate_prometheusrule.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_committed_prometheusrule_matches_the_generated_rule_files() -> None:
    generator = _generator()
    committed = (K8S / "common" / "prometheusrule.yaml").read_text(encoding="utf-8")
    assert committed == generator.render(), (
        "stale: run ./scripts/generate (python deploy/kubernetes/generate_prometheusrule.py)"
    )
    (rule,) = yaml.safe_load_all(committed)
    assert rule["apiVersion"] == "monitoring.coreos.com/v1" and rule["kind"] == "PrometheusRule"
    expected = [
        group
        for name in ("recording_rules.yml", "alert_rules.yml")
        for group in yaml.safe_load((ROOT / "alerts" / name).read_text())["groups"]
    ]
    assert rule["spec"]["groups"] == expected
    assert generator.main(["--check"]) == 0


def test_generator_check_fails_on_a_stale_file(tmp_path: Path) -> None:
    stale = tmp_path / "prometheusrule.yaml"
    stale.write_text("# stale\n")
    assert _generator().main(["--check", "--out", str(stale)]) == 1


@pytest.mark.skipif(shutil.which("promtool") is None, reason="promtool is not installed")
def test_prometheusrule_spec_passes_promtool(tmp_path: Path) -> None:
    (rule,) = _yaml_docs(K8S / "common" / "prometheusrule.yaml")
    path = tmp_path / "rules.yml"
    path.write_text(yaml.safe_dump(rule["spec"]))
    done = subprocess.run(["promtool", "check", "rules", str(path)], capture_output=True,
                          text=True, check=False)
    assert done.returncode == 0, done.stdout + done.stderr


# ------------------------------------------------------------------ configuration reference

DOC = ROOT / "docs" / "configuration.md"
MINIMAL = """
clients: [{name: c, command: [c]}]
repositories:
  - name: r
    metadata_url: https://repo.example/
    trusted_root: /r.json
    mirrors: [{name: m, metadata_url: https://mirror.example/}]
    limits: {}
    policy: {}
signers: [{name: s, uri: "file2:/k", repository: r, role: timestamp}]
opensearch: {hosts: ["https://o:9200"]}
events: {}
"""
REQUIRED = {
    "repositories", "repositories[].name", "repositories[].metadata_url",
    "repositories[].trusted_root", "repositories[].mirrors[].name",
    "repositories[].mirrors[].metadata_url", "signers[].name", "signers[].uri",
    "signers[].repository", "signers[].role", "opensearch.hosts", "clients[].name",
    "clients[].command",
}
# optional sections: their default is "absent" / "all defaults", their keys are listed too
SECTIONS = {"repositories[].mirrors", "repositories[].limits", "repositories[].policy",
            "signers", "opensearch", "events", "clients"}


def _accepted_keys() -> list[str]:
    """Every key the parser reads, as a path like ``repositories[].limits.root_max_length``."""
    from exporter.config import model as module

    seen: list[str] = []
    original = module._Reader.raw

    def raw(self: Any, key: str) -> Any:
        path = re.sub(r"\[\d+\]", "[]", self.path)
        seen.append(f"{path}.{key}" if path else key)
        return original(self, key)

    module._Reader.raw = raw  # type: ignore[method-assign]
    try:
        parse_config(MINIMAL)
    finally:
        module._Reader.raw = original  # type: ignore[method-assign]
    return list(dict.fromkeys(seen))


def _documented() -> dict[str, str]:
    """Key path -> default cell of the reference's tables."""
    rows: dict[str, str] = {}
    prefix = ""
    for line in DOC.read_text(encoding="utf-8").splitlines():
        heading = re.match(r"#+ (.*)", line)
        if heading:
            name = re.search(r"`([^`]+)`", heading.group(1))
            prefix = name.group(1) if name and name.group(1)[0].isalpha() else ""
            continue
        row = re.match(r"\| `([^`]+)` \| (.+?) \| .+ \|$", line)
        if row:
            key = f"{prefix}.{row.group(1)}" if prefix else row.group(1)
            assert key not in rows, f"{key} is documented twice"
            rows[key] = row.group(2)
    return rows


def _value(config: Config, key: str) -> Any:
    """The model's value for ``key`` in ``config`` (first repository, mirror, signer)."""
    node: Any = config
    for part in key.split("."):
        name = part.removesuffix("[]")
        if name == "shard":
            return f"{config.shard_index}/{config.shard_count}"
        node = getattr(node, name)
        if part.endswith("[]"):
            node = node[0]
    return node


def _same(documented: Any, actual: Any) -> bool:
    if isinstance(actual, bool) or actual is None:
        return documented is actual
    if isinstance(actual, float):
        value = parse_duration(documented) if isinstance(documented, str) else documented
        return abs(float(value) - actual) < 1e-9
    if isinstance(actual, tuple):
        return sorted(documented) == sorted(actual)
    return str(documented) == str(actual)


def test_reference_documents_every_key_the_parser_accepts_and_no_other() -> None:
    accepted = set(_accepted_keys())
    documented = set(_documented())
    assert accepted - documented == set(), "undocumented keys"
    assert documented - accepted == set(), "documented keys the parser does not accept"


def test_reference_defaults_match_the_model() -> None:
    documented = _documented()
    config = parse_config(MINIMAL)
    derived = 0
    for key, cell in documented.items():
        if key in REQUIRED:
            assert cell == "*required*", key
            continue
        assert "required" not in cell, key
        if cell.startswith("derived"):
            derived += 1
            continue
        if key in SECTIONS or key == "signers":
            assert cell.startswith(("none", "all defaults")), key
            continue
        actual = _value(config, key)
        if cell.startswith("none"):
            assert not actual, f"{key}: documented none, the model has {actual!r}"
            continue
        match = re.fullmatch(r"`([^`]+)`", cell)
        assert match, f"{key}: a default is `value`, *required*, none or derived: {cell}"
        assert _same(yaml.safe_load(match.group(1)), actual), (key, cell, actual)
    assert derived == 10


@pytest.mark.parametrize(
    ("snippet", "check"),
    [
        ("interval: 10s", lambda r: r.timeout == 10 and r.connect_timeout == 5
         and r.read_timeout == 10),
        ("interval: 2s", lambda r: r.timeout == 2 and r.connect_timeout == 2
         and r.read_timeout == 2),
        ("interval: 1h", lambda r: r.timeout == 30 and r.connect_timeout == 5
         and r.read_timeout == 10),
        ("timeout: 3s", lambda r: r.connect_timeout == 3 and r.read_timeout == 3),
    ],
)
def test_reference_derived_timeouts_match_the_model(snippet: str, check: Any) -> None:
    documented = _documented()
    assert "smaller of `30s` and `interval`" in documented["repositories[].timeout"]
    assert "smaller of `5s` and `timeout`" in documented["repositories[].connect_timeout"]
    assert "smaller of `10s` and `timeout`" in documented["repositories[].read_timeout"]
    text = MINIMAL.replace("    trusted_root: /r.json", f"    trusted_root: /r.json\n    {snippet}")
    assert check(parse_config(text).repository("r"))


def test_reference_derived_paths_and_urls_match_the_model(tmp_path: Path) -> None:
    documented = _documented()
    config = parse_config(MINIMAL, "config.yml", tmp_path)
    repo = config.repository("r")
    assert "`<metadata_url>targets/`" in documented["repositories[].targets_url"]
    assert repo.primary.targets_url == "https://repo.example/targets/"
    assert "`<metadata_url>targets/`" in documented["repositories[].mirrors[].targets_url"]
    assert repo.mirrors[0].targets_url == "https://mirror.example/targets/"
    assert "`state` in the configuration file's directory" in documented["state_dir"]
    assert config.state_dir == tmp_path / "state"
    assert "`<state_dir>/events.jsonl`" in documented["events.file"]
    assert config.events.file is None  # the sink puts it under state_dir


def _without(key: str) -> str:
    """MINIMAL without ``key`` (in the first repository, mirror, signer)."""
    document = yaml.safe_load(MINIMAL)
    *parents, leaf = key.split(".")
    node = document
    for part in parents:
        node = node[part.removesuffix("[]")]
        if part.endswith("[]"):
            node = node[0]
    del node[leaf]
    return yaml.safe_dump(document)


@pytest.mark.parametrize("key", sorted(REQUIRED))
def test_reference_required_keys_are_required(key: str) -> None:
    parse_config(MINIMAL)
    with pytest.raises(ConfigError, match=r"is required|needs at least one"):
        parse_config(_without(key))


def _paths(node: Any, prefix: str = "") -> Iterator[str]:
    if isinstance(node, dict):
        for key, value in node.items():
            path = f"{prefix}.{key}" if prefix else str(key)
            yield path
            if not path.endswith(("cadence", "max_lifetime")):
                yield from _paths(value, path)
    elif isinstance(node, list):
        for item in node:
            yield from _paths(item, prefix + "[]")


def test_reference_complete_example_is_valid_and_uses_every_key() -> None:
    text = DOC.read_text(encoding="utf-8")
    example = re.search(r"## Complete example.*?```yaml\n(.*?)```", text, re.S)
    assert example is not None
    config = parse_config(example.group(1))
    assert config.repositories and config.signers and config.opensearch is not None
    used = set(_paths(yaml.safe_load(example.group(1))))
    assert set(_accepted_keys()) - used == set()


def test_reference_yaml_examples_are_configurations() -> None:
    """Every YAML block of the reference is a whole configuration the parser accepts (the
    examples of "Plugging in another client" included), with what the block says."""
    text = DOC.read_text(encoding="utf-8")
    blocks = re.findall(r"```yaml\n(.*?)```", text, re.S)
    assert len(blocks) >= 4, "the reference lost its YAML examples"
    for block in blocks:
        config = parse_config(block, "docs/configuration.md")
        assert config.repositories, block
        document = yaml.safe_load(block)
        for repo, entry in zip(config.repositories, document["repositories"], strict=True):
            assert repo.clients == tuple(entry.get("clients", [c.name for c in config.clients]))
        assert [list(c.command) for c in config.clients] == [
            entry["command"] for entry in document.get("clients", [])], block


def test_readme_configuration_keys_are_in_the_reference() -> None:
    """Keys named in the README's configuration section are documented here too."""
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    section = readme.split("## Configuration", 1)[1].split("\n## ", 1)[0]
    block = re.search(r"```yaml\n(.*?)```", section, re.S)
    if block is None:
        pytest.skip("the README's configuration section has no YAML example")
    documented = set(_documented())
    for key in _paths(yaml.safe_load(block.group(1))):
        assert key in documented, key
