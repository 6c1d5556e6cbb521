"""The import paths of the flat 0.1 layout, kept working after the move into subpackages.

tuf-exporter 0.1 was one flat package (``exporter.prober``, ``exporter.shipper``, ...); issue 15
moved its modules into the pipeline's subpackages. Code written against the old paths (scripts,
tests of deployments, bug reproductions) keeps working: importing an old path gives the module or
package that holds its names now, under the old name too, with a :class:`DeprecationWarning`
naming the new path. :data:`MOVED` is the one table of old -> new paths. Registered once by
``exporter/__init__.py``; nothing in the package itself imports an old path (tests/test_layers.py).
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.machinery
import importlib.util
import sys
import warnings
from collections.abc import Sequence
from types import ModuleType

#: Old module path -> the module (or package) that holds its public names now. The spool and the
#: shipper were split further (sinks, spool layers): their old paths map to ``exporter.events``,
#: which offers all of their names.
MOVED: dict[str, str] = {
    "exporter.durations": "exporter.config.durations",
    "exporter.yamlfile": "exporter.config.yamlfile",
    "exporter.prober": "exporter.probe.prober",
    "exporter.fetcher": "exporter.probe.fetcher",
    "exporter.delegations": "exporter.probe.delegations",
    "exporter.inspector": "exporter.probe.inspector",
    "exporter.classify": "exporter.probe.classify",
    "exporter.results": "exporter.probe.results",
    "exporter.fingerprints": "exporter.probe.fingerprints",
    "exporter.signers": "exporter.probe.signers",
    "exporter.spool": "exporter.events",
    "exporter.shipper": "exporter.events",
    "exporter.history_store": "exporter.history.store",
    "exporter.cadence": "exporter.history.cadence",
    "exporter.service": "exporter.serve.service",
    "exporter.scheduler": "exporter.serve.scheduler",
    "exporter.sharding": "exporter.serve.sharding",
    "exporter.collector": "exporter.serve.collector",
    "exporter.web": "exporter.serve",
    "exporter.status_page": "exporter.serve.status_page",
    "exporter.alerts": "exporter.generate.alerts",
    "exporter.dashboards": "exporter.generate.dashboards",
    "exporter.demo": "exporter.simulator.demo",
}


class _OldPaths(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Finds the old paths of :data:`MOVED` and loads each as the module it moved to."""

    def find_spec(self, fullname: str, path: Sequence[str] | None,
                  target: ModuleType | None = None) -> importlib.machinery.ModuleSpec | None:
        if fullname not in MOVED:
            return None
        return importlib.util.spec_from_loader(fullname, self)

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> ModuleType:
        new = MOVED[spec.name]
        warnings.warn(f"{spec.name} is now {new}; the old path will go in a later release",
                      DeprecationWarning, stacklevel=2)
        return importlib.import_module(new)  # its own name, spec and file stay as they are

    def exec_module(self, module: ModuleType) -> None:
        """Nothing to run: the module was imported under its own path."""


def install() -> None:
    """Make the old paths importable (idempotent)."""
    if not any(isinstance(finder, _OldPaths) for finder in sys.meta_path):
        sys.meta_path.append(_OldPaths())
