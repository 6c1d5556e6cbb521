#!/usr/bin/env python3
"""python-tuf client for tuf-exporter's external client views: the client-under-test CLI of the
TUF conformance suite (theupdateframework/tuf-conformance, ``CLIENT-CLI.md``) on python-tuf's
ngclient ``Updater``.

Usage::

    python_tuf_client.py --metadata-dir DIR init TRUSTED_ROOT
    python_tuf_client.py --metadata-dir DIR --metadata-url URL refresh
    python_tuf_client.py --metadata-dir DIR --metadata-url URL --target-name PATH
        [--target-name PATH ...] --target-base-url URL --target-dir DIR download

Exit status 0 when the command succeeded fully, 1 otherwise (bad usage included); the reason
goes to stderr. ``-v`` logs python-tuf at INFO, ``-vv`` at DEBUG.

This file is a standalone script, not part of the ``exporter`` package's code: it runs under a
separate virtual environment pinned to the python-tuf release being watched (``tuf==X.Y.Z``)
and imports nothing but the standard library and ``tuf.ngclient``. It uses only the ngclient
API that python-tuf 2.0.0 to 7.x share (``Updater(metadata_dir, metadata_base_url,
target_dir, target_base_url)``, ``refresh``, ``get_targetinfo``, ``find_cached_target``,
``download_target``; default ``UpdaterConfig``; ``bootstrap=None`` where the release knows
the keyword), so every verdict is that release's own. It
has been run against the tuf-conformance suite with python-tuf 2.0.0, 5.1.0 and 7.0.x (see
docs/clients.md).

``METADATA_DIR`` holds the trusted metadata under unversioned names (``root.json``,
``timestamp.json``, ``<role>.json``), which is how ngclient persists it.
"""

from __future__ import annotations

import argparse
import inspect
import logging
import shutil
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NoReturn

from tuf.ngclient import Updater

USAGE_ERROR = 1  # the protocol has one failure status; argparse's own (2) is mapped to it


class _Parser(argparse.ArgumentParser):
    """An argument parser that fails with the protocol's exit status 1."""

    def error(self, message: str) -> NoReturn:
        self.print_usage(sys.stderr)
        sys.stderr.write(f"{self.prog}: error: {message}\n")
        sys.exit(USAGE_ERROR)


def _parser() -> argparse.ArgumentParser:
    parser = _Parser(description="tuf-conformance client CLI on python-tuf's ngclient")
    parser.add_argument("--metadata-dir", required=True)
    parser.add_argument("--metadata-url")
    parser.add_argument("--target-name", action="append")
    parser.add_argument("--target-base-url")
    parser.add_argument("--target-dir")
    parser.add_argument("-v", "--verbose", action="count", default=0)
    commands = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    init = commands.add_parser("init", help="trust the given root.json")
    init.add_argument("trusted_root")
    commands.add_parser("refresh", help="update the top-level metadata")
    commands.add_parser("download", help="download and verify targets")
    return parser


def init(metadata_dir: str, trusted_root: str) -> None:
    """Trust ``trusted_root`` as is: copy it to ``METADATA_DIR/root.json`` (the protocol asks for
    no checks and no requests; ngclient verifies it when it loads it on the next refresh)."""
    Path(metadata_dir).mkdir(parents=True, exist_ok=True)
    shutil.copyfile(trusted_root, Path(metadata_dir) / "root.json")


def _updater(metadata_dir: str, metadata_url: str, target_dir: str | None = None,
             target_base_url: str | None = None) -> Updater:
    """An ``Updater`` that starts from ``METADATA_DIR/root.json``, on every release.

    python-tuf 5.0 added the keyword ``bootstrap`` (the initial root as bytes) and 7.0 made it
    required; ``bootstrap=None`` asks for the local root.json, which is what releases without
    the keyword always read.
    """
    extra: dict[str, Any] = {}
    if "bootstrap" in inspect.signature(Updater).parameters:
        extra["bootstrap"] = None
    return Updater(metadata_dir, metadata_url, target_dir, target_base_url, **extra)


def refresh(metadata_dir: str, metadata_url: str) -> None:
    """Run ngclient's top-level metadata update (root, timestamp, snapshot, targets)."""
    _updater(metadata_dir, metadata_url).refresh()


def download(
    metadata_dir: str,
    metadata_url: str,
    target_names: Sequence[str],
    target_base_url: str,
    target_dir: str,
) -> None:
    """Refresh, then download ``target_names`` in order with one ``Updater``; stop at the first
    that fails. A target already in ``target_dir`` with matching length and hashes is kept."""
    Path(target_dir).mkdir(parents=True, exist_ok=True)
    updater = _updater(metadata_dir, metadata_url, target_dir, target_base_url)
    updater.refresh()
    for name in target_names:
        info = updater.get_targetinfo(name)
        if info is None:
            raise LookupError(f"target {name!r} not found in the repository")
        if updater.find_cached_target(info) is None:
            updater.download_target(info)


def main(argv: Sequence[str] | None = None) -> int:
    """Run one protocol command; return the exit status (0 success, 1 failure)."""
    parser = _parser()
    args = parser.parse_args(argv)
    level = {0: logging.WARNING, 1: logging.INFO}.get(args.verbose, logging.DEBUG)
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s")
    missing = {
        "init": (),
        "refresh": ("metadata_url",),
        "download": ("metadata_url", "target_name", "target_base_url", "target_dir"),
    }[args.command]
    for name in missing:
        if not getattr(args, name):
            parser.error(f"{args.command} needs --{name.replace('_', '-')}")
    try:
        if args.command == "init":
            init(args.metadata_dir, args.trusted_root)
        elif args.command == "refresh":
            refresh(args.metadata_dir, args.metadata_url)
        else:
            download(args.metadata_dir, args.metadata_url, args.target_name,
                     args.target_base_url, args.target_dir)
    except Exception as error:  # noqa: BLE001 - every failure is the protocol's exit status 1
        reason = f"{type(error).__name__}: {error}"
        if error.__cause__ is not None:
            reason += f" (caused by {type(error.__cause__).__name__}: {error.__cause__})"
        sys.stderr.write(f"python-tuf client: {args.command} failed: {reason}\n")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
