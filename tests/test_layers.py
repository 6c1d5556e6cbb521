"""The layers of the ``exporter`` package: which part may import which (issue 15).

Every module is parsed (``ast``, nothing is imported) and every import of an ``exporter`` module
it makes, wherever it is written (top level, inside a function, under ``TYPE_CHECKING``), is
checked against :data:`ALLOWED`. The pipeline reads bottom-up:

    catalogue, config, sqlite_files     the vocabulary: metric catalogue, settings, SQLite files
    adapters                            external TUF clients shipped as programs (imports nothing)
    probe                               one probe of one endpoint (python-tuf decides)
    events                              the event model, the durable spool, the shipper and sinks
    history                             what endpoints served over time, and what it reveals
    generate                            alerts and dashboards, from the catalogue alone
    serve                               the running exporter: scheduler, service, HTTP
    simulator                           a TUF repository to test and demo against
    cli, logs                           the entry point and its logging setup: wires everything

A new import that points up (a probe module reaching into the history, say) fails
:func:`test_no_module_imports_a_layer_above_its_own`; a new top-level module or subpackage
fails :func:`test_every_module_belongs_to_a_layer` until it is given its place here.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "exporter"

#: The package's root (``exporter/__init__.py``: the version); every layer may import it.
ROOT = ""

_BOTTOM = frozenset({"catalogue", "config", "sqlite_files"})

#: Layer -> the layers its modules may import (besides itself and the package root).
ALLOWED: dict[str, frozenset[str]] = {
    ROOT: frozenset({"compat"}),
    "catalogue": _BOTTOM,
    "config": _BOTTOM,
    "sqlite_files": _BOTTOM,
    "adapters": frozenset(),
    # the 0.1 import paths (aliases made at import time; no static import of another layer)
    "compat": frozenset(),
    "probe": frozenset({"config", "catalogue", "adapters"}),
    "events": frozenset({"probe", "config", "catalogue", "sqlite_files"}),
    "history": frozenset({"probe", "events", "config", "catalogue", "sqlite_files"}),
    "generate": frozenset({"catalogue", "config"}),
    "serve": frozenset(
        {"catalogue", "config", "sqlite_files", "adapters", "probe", "events", "history",
         "generate", "simulator", "logs"}
    ),
    "simulator": frozenset({"catalogue"}),
    "cli": frozenset(
        {"catalogue", "config", "sqlite_files", "probe", "events", "history", "generate",
         "serve", "simulator", "logs"}
    ),
    # the logging setup belongs to the entry point: only cli uses it
    "logs": frozenset(
        {"catalogue", "config", "sqlite_files", "probe", "events", "history", "generate",
         "serve", "simulator"}
    ),
}


def module_name(path: Path) -> str:
    """``exporter/history/recorder.py`` -> ``exporter.history.recorder`` (a package: its name)."""
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def layer_of(module: str) -> str:
    """The layer of a module: the first name below ``exporter`` (ROOT for the package)."""
    parts = module.split(".")
    assert parts[0] == "exporter", module
    return parts[1] if len(parts) > 1 else ROOT


def imported_modules(source: str, module: str, is_package: bool = False) -> Iterator[str]:
    """Every ``exporter`` module ``source`` (the text of ``module``) imports, anywhere in it.

    ``from exporter import catalogue`` names ``exporter.catalogue``; ``from exporter import
    __version__`` names the package itself; relative imports are resolved against ``module``.
    """
    package = module if is_package else module.rpartition(".")[0]
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            yield from (a.name for a in node.names if a.name.split(".")[0] == "exporter")
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")
                anchor = anchor[: len(anchor) - (node.level - 1)]
                base = ".".join([*anchor, base] if base else anchor)
            if base.split(".")[0] != "exporter":
                continue
            if base == "exporter":  # from exporter import catalogue, __version__
                for alias in node.names:
                    submodule = PACKAGE / alias.name
                    known = submodule.is_dir() or submodule.with_suffix(".py").is_file()
                    yield f"exporter.{alias.name}" if known else "exporter"
            else:
                yield base


def violations(source: str, module: str, is_package: bool = False) -> list[str]:
    """The imports of ``module`` its layer may not make, as readable lines."""
    layer = layer_of(module)
    allowed = ALLOWED[layer] | {layer, ROOT}
    return [
        f"{module} imports {target} ({layer or 'exporter'} may not import {layer_of(target)})"
        for target in imported_modules(source, module, is_package)
        if layer_of(target) not in allowed
    ]


def modules() -> list[tuple[str, Path]]:
    """(module name, file) of every module of the package."""
    return sorted((module_name(p), p) for p in PACKAGE.rglob("*.py"))


def test_every_module_belongs_to_a_layer() -> None:
    unplaced = sorted({layer_of(name) for name, _ in modules()} - ALLOWED.keys())
    assert not unplaced, f"give these a place in ALLOWED (tests/test_layers.py): {unplaced}"


def test_no_module_imports_a_layer_above_its_own() -> None:
    found = [
        line
        for name, path in modules()
        for line in violations(path.read_text(encoding="utf-8"), name,
                               path.name == "__init__.py")
    ]
    assert not found, "imports against the layers:\n" + "\n".join(found)


def private_imports(source: str, module: str, is_package: bool = False) -> list[str]:
    """The imports of ``module`` that reach a private module (``_name``) of another package."""
    found = []
    for target in imported_modules(source, module, is_package):
        parts = target.split(".")
        private = [i for i, part in enumerate(parts) if part.startswith("_")]
        owner = ".".join(parts[: private[0]]) if private else ""
        if private and module != owner and not module.startswith(owner + "."):
            found.append(f"{module} imports {target}, private to {owner}")
    return found


def test_private_modules_are_imported_only_inside_their_package() -> None:
    tests = Path(__file__).resolve().parent
    sources = [(name, path) for name, path in modules()] + [
        (f"tests.{path.stem}", path) for path in sorted(tests.rglob("*.py"))
    ]
    found = [
        line
        for name, path in sources
        for line in private_imports(path.read_text(encoding="utf-8"), name,
                                    path.name == "__init__.py")
    ]
    assert not found, "import the package's public names instead:\n" + "\n".join(found)
    planted = "from exporter.history._rules import PRIMARY\n"
    assert private_imports(planted, "exporter.serve.service")
    assert not private_imports(planted, "exporter.history.recorder")


@pytest.mark.parametrize(
    ("module", "source"),
    [
        ("exporter.probe.signers", "from exporter.events.model import Event\n"),
        ("exporter.probe.signers", "import exporter.history.recorder as r\n"),
        ("exporter.probe.signers", "def f():\n    from exporter.serve import web\n"),
        ("exporter.probe.signers",
         "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from exporter import cli\n"),
        ("exporter.probe.signers", "from ..events import model\n"),
        ("exporter.config.model", "from exporter.probe.fetcher import redirect_origin\n"),
        ("exporter.generate.alerts", "from exporter import probe\n"),
        ("exporter.simulator.server", "from exporter.config.model import Config\n"),
        ("exporter.serve.web", "from exporter.cli import main\n"),
        ("exporter.catalogue", "from exporter.probe.results import rfc3339\n"),
    ],
)
def test_an_upward_import_is_found_wherever_it_is_written(module: str, source: str) -> None:
    assert violations(source, module), f"{source!r} in {module} was not caught"


@pytest.mark.parametrize(
    ("module", "source"),
    [
        ("exporter.probe.signers", "from exporter.config import model\n"),
        ("exporter.probe.signers", "from exporter import __version__, catalogue\n"),
        ("exporter.probe.signers", "from . import results\nfrom .results import rfc3339\n"),
        ("exporter.history.recorder", "from exporter.events.model import Event\n"),
        ("exporter.serve.service", "from exporter.history import HistoryStore\n"),
        ("exporter.cli", "from exporter.serve.web import ExporterServer\n"),
        ("exporter.config.model", "import json\nfrom exporter.config.durations import x\n"),
    ],
)
def test_imports_the_layers_allow_pass(module: str, source: str) -> None:
    assert violations(source, module) == []
