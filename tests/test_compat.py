"""The 0.1 import paths keep working after the move into subpackages (exporter/compat.py)."""

from __future__ import annotations

import importlib
import subprocess
import sys

import pytest

from exporter.compat import MOVED

# What code written for the flat layout imported from each old path (the names it offered).
USED = {
    "exporter.shipper": ("Shipper", "FileSink", "OpenSearchSink"),
    "exporter.spool": ("Spool",),
    "exporter.prober": ("Prober",),
    "exporter.results": ("ProbeResult", "Reason"),
    "exporter.history_store": ("HistoryError",),
    "exporter.web": ("ExporterServer",),
}


@pytest.mark.parametrize("old", sorted(MOVED))
def test_every_old_path_imports_as_its_new_module_with_a_warning(old: str) -> None:
    # in a fresh interpreter: this one may have imported the old path already
    code = (
        "import importlib, warnings\n"
        "with warnings.catch_warnings(record=True) as seen:\n"
        "    warnings.simplefilter('always')\n"
        f"    old = importlib.import_module({old!r})\n"
        f"new = importlib.import_module({MOVED[old]!r})\n"
        "assert old is new, (old, new)\n"
        "assert any(issubclass(w.category, DeprecationWarning)"
        f" and {MOVED[old]!r} in str(w.message) for w in seen), [str(w) for w in seen]\n"
        f"for name in {USED.get(old, ())!r}:\n"
        "    assert hasattr(old, name), name\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr


def test_new_paths_import_without_a_warning() -> None:
    code = ("import warnings\nwarnings.simplefilter('error')\n"
            + "".join(f"import {new}\n" for new in sorted(set(MOVED.values()))))
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr


def test_an_unknown_old_path_still_fails() -> None:
    with pytest.raises(ModuleNotFoundError):
        importlib.import_module("exporter.no_such_module")
