"""External TUF clients shipped with tuf-exporter: programs speaking the client-under-test CLI
of the TUF conformance suite (theupdateframework/tuf-conformance, ``CLIENT-CLI.md``).

Each adapter is a standalone program run in a child process, never imported:

- :data:`TUF_JS_CLIENT`: Node script on the npm package ``tuf-js`` (pinned in the
  ``package.json`` and ``package-lock.json`` beside it); install its dependencies once with
  ``npm ci --prefix <TUF_JS_DIR>``, run it with ``node``.
- :data:`PYTHON_TUF_CLIENT`: Python script on python-tuf's ngclient, run by the interpreter of
  a virtual environment pinned to the python-tuf release to watch (``tuf==X.Y.Z``, 2.0.0 to
  7.x); it imports nothing from ``exporter``.

See docs/clients.md for the protocol, the conformance results and the known divergences.
"""

from pathlib import Path

_HERE = Path(__file__).resolve().parent

TUF_JS_DIR = _HERE / "tuf-js"
"""The tuf-js adapter's folder (``package.json``, lock file; ``node_modules`` after ``npm ci``)."""

TUF_JS_CLIENT = TUF_JS_DIR / "tuf-client.mjs"
"""The tuf-js adapter's entry point, run as ``node TUF_JS_CLIENT ...``."""

PYTHON_TUF_CLIENT = _HERE / "python_tuf_client.py"
"""The python-tuf adapter, run as ``<venv>/bin/python PYTHON_TUF_CLIENT ...``."""

__all__ = ["PYTHON_TUF_CLIENT", "TUF_JS_CLIENT", "TUF_JS_DIR"]
