"""Structured JSON logs, one object per line, times in RFC 3339 UTC."""

from __future__ import annotations

import json
import logging
import sys
from datetime import UTC, datetime
from typing import Any, ClassVar

from exporter.probe import rfc3339

_LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warn": logging.WARNING,
           "error": logging.ERROR}


class JSONFormatter(logging.Formatter):
    """Formats a record as one JSON object; ``extra={...}`` fields are kept as keys."""

    _SKIP: ClassVar[frozenset[str]] = frozenset(vars(logging.makeLogRecord({})).keys()) | {
        "message", "asctime",
    }

    def format(self, record: logging.LogRecord) -> str:
        moment = datetime.fromtimestamp(record.created, UTC)
        out: dict[str, Any] = {
            "time": rfc3339(moment, "milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        for key, value in vars(record).items():
            if key not in self._SKIP and not key.startswith("_"):
                out[key] = value
        if record.exc_info:
            out["exception"] = self.formatException(record.exc_info)
        return json.dumps(out, default=str)


def setup(level: str = "info", stream: Any = None) -> None:
    """Send every log line to ``stream`` (stderr) as JSON, at ``level`` and above."""
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(JSONFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(_LEVELS[level])
    # Libraries kept to warnings: those that log a traceback for every refused connection, and
    # python-tuf and securesystemslib, which log at info every key that did not sign ("Key ...
    # failed to verify root", "No signature for keyid ...": normal on a healthy repository with
    # a threshold below its key count); the exporter logs python-tuf's verdicts itself.
    for noisy in ("opensearch", "urllib3", "apscheduler", "tuf", "securesystemslib"):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, _LEVELS[level]))
