"""The JSON Lines file sink: appends JSON Lines to a size-rotated file: the embedded default when no
OpenSearch is configured, fed through the same spool and shipper.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from exporter.events.model import canonical_json
from exporter.events.sinks import ItemResult, Outcome, SinkError

log = logging.getLogger("exporter.events.shipper")  # the shipper and its sinks log as one


class FileSink:
    """Appends one canonical JSON document per line, fsynced; rotates by size.

    In: the file's ``path``, ``max_bytes`` (size before rotation), ``backups`` (rotated files
    kept), ``remember`` (ids of the last documents kept to skip duplicates). :meth:`send` /
    :meth:`send_serialized` return an ``ok`` :class:`~exporter.events.sinks.ItemResult` per
    document once the batch is on disk; a write that fails raises
    :class:`~exporter.events.sinks.SinkError` (cause ``file_error``) and leaves the file as it
    was, so the shipper retries the whole batch.

    ``path`` is rotated to ``path.1`` (``path.1`` to ``path.2``, ...) before a batch that would
    take it over ``max_bytes``; ``backups`` rotated files are kept. At start the tail of the
    current file is read back: a partial last line (a crash mid-write) is cut off, and ids of
    the last documents written are remembered so a batch written just before a crash but not
    yet acknowledged is not written twice.
    """

    name = "file"

    def __init__(self, path: Path, *, max_bytes: int, backups: int, remember: int = 10_000) -> None:
        self.path = path
        self.max_bytes = max_bytes
        self.backups = backups
        self.remember = remember
        self._recent: dict[str, None] = {}

    def setup(self) -> None:
        """Create the directory, repair the tail and remember the last ids written."""
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            if self.path.exists():
                self._repair_and_load()
        except OSError as exc:
            raise SinkError(
                f"cannot prepare the event file {self.path}: {exc}", "file_error"
            ) from exc

    def _repair_and_load(self) -> None:
        window = 8 * 1024 * 1024
        with self.path.open("rb+") as handle:
            size = handle.seek(0, os.SEEK_END)
            start = max(0, size - window)
            handle.seek(start)
            tail = handle.read()
            end = tail.rfind(b"\n") + 1
            if end < len(tail):
                log.warning(
                    "event file %s ends with a partial line (an interrupted write); cutting "
                    "%d bytes",
                    self.path,
                    len(tail) - end,
                )
                handle.truncate(start + end)
                handle.flush()
                os.fsync(handle.fileno())
        lines = tail[:end].splitlines()
        if start > 0 and lines:
            lines = lines[1:]  # the first line may be cut by the window
        for line in lines[-self.remember :]:
            try:
                self._remember(str(json.loads(line)["event_id"]))
            except (ValueError, KeyError, TypeError):
                continue

    def _remember(self, event_id: str) -> None:
        self._recent[event_id] = None
        while len(self._recent) > self.remember:
            del self._recent[next(iter(self._recent))]

    def send(self, documents: Sequence[Mapping[str, Any]]) -> list[ItemResult]:
        """Append the documents (skipping any just written) and fsync."""
        return self.send_serialized(
            [(str(d["event_id"]), canonical_json(dict(d)).decode("utf-8")) for d in documents]
        )

    def send_serialized(self, documents: Sequence[tuple[str, str]]) -> list[ItemResult]:
        """Like :meth:`send` for ``(event_id, canonical JSON text)`` pairs, written verbatim."""
        fresh = [(i, text) for i, text in documents if i not in self._recent]
        data = "".join(text + "\n" for _i, text in fresh).encode("utf-8")
        if data:
            try:
                self._append(data)
            except OSError as exc:
                raise SinkError(
                    f"cannot write the event file {self.path}: {exc}", "file_error"
                ) from exc
            for event_id, _text in fresh:
                self._remember(event_id)
        return [ItemResult(event_id, Outcome.OK) for event_id, _text in documents]

    def _append(self, data: bytes) -> None:
        size = self.path.stat().st_size if self.path.exists() else 0
        if size > 0 and size + len(data) > self.max_bytes:
            self.rotate()
        with self.path.open("ab") as handle:
            position = handle.tell()
            try:
                handle.write(data)
                handle.flush()
                os.fsync(handle.fileno())
            except OSError:
                handle.truncate(position)
                raise

    def rotate(self) -> None:
        """``path`` -> ``path.1`` -> ... -> ``path.<backups>``; the oldest is deleted."""
        if self.backups <= 0:
            self.path.unlink(missing_ok=True)
            return
        for number in range(self.backups - 1, 0, -1):
            older = Path(f"{self.path}.{number}")
            if older.exists():
                older.replace(Path(f"{self.path}.{number + 1}"))
        self.path.replace(Path(f"{self.path}.1"))
        log.info("rotated the event file %s", self.path)

    def close(self) -> None:
        """Nothing to release: every batch is written and closed."""

