"""Reading one mapping of the configuration file: :class:`_Reader` (typed values, unknown keys
refused, errors naming the file, the line and the key's path) and the value converters the
section readers of :mod:`exporter.config.model` hand it (durations in seconds, URLs, paths taken
from the file's directory, bounded integers, fractions, target paths). A converter raises
``TypeError``/``ValueError``; the reader turns that into a
:class:`~exporter.config.yamlfile.ConfigError`.
"""

from __future__ import annotations

from collections.abc import Callable
from enum import StrEnum
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlsplit

from exporter.config.durations import parse_duration
from exporter.config.redirects import redirect_origin
from exporter.config.yamlfile import ConfigError, Node

T = TypeVar("T")
E = TypeVar("E", bound=StrEnum)


class _Reader:
    """Reads one mapping of the configuration, collecting typed values and clear errors."""

    def __init__(self, node: Node, path: str, source: str) -> None:
        if not isinstance(node.value, dict):
            raise ConfigError.at(source, node.line, path or None,
                                 "must be a mapping" if path else "the file must be a mapping")
        self.node = node
        self.items: dict[str, Node] = node.value
        self.path = path
        self.source = source
        self.used: set[str] = set()

    def _field(self, key: str | None) -> str:
        if key is None:
            return self.path or "(top level)"
        return f"{self.path}.{key}" if self.path else key

    def error(self, key: str | None, message: str) -> ConfigError:
        line = self.items[key].line if key is not None and key in self.items else self.node.line
        return ConfigError.at(self.source, line, self._field(key), message)

    def raw(self, key: str) -> Node | None:
        self.used.add(key)
        node = self.items.get(key)
        return None if node is None or node.value is None else node

    def get(self, key: str, convert: Callable[[Any], T], default: T) -> T:
        node = self.raw(key)
        return default if node is None else self._convert(key, node, convert)

    def optional(self, key: str, convert: Callable[[Any], T]) -> T | None:
        node = self.raw(key)
        if node is None:
            return None
        return self._convert(key, node, convert)

    def _convert(self, key: str, node: Node, convert: Callable[[Any], T]) -> T:
        try:
            return convert(node.value)
        except (TypeError, ValueError) as exc:
            raise self.error(key, str(exc)) from None

    def require(self, key: str, convert: Callable[[Any], T]) -> T:
        node = self.raw(key)
        if node is None:
            raise self.error(key, "is required")
        return self._convert(key, node, convert)

    def child(self, key: str) -> _Reader | None:
        node = self.raw(key)
        return None if node is None else _Reader(node, self._field(key), self.source)

    def children(self, key: str) -> list[_Reader]:
        node = self.raw(key)
        if node is None:
            return []
        if not isinstance(node.value, list):
            raise self.error(key, "must be a list")
        return [
            _Reader(item, f"{self._field(key)}[{i}]", self.source)
            for i, item in enumerate(node.value)
        ]

    def done(self) -> None:
        unknown = sorted(set(self.items) - self.used)
        if unknown:
            key = unknown[0]
            raise self.error(key, f"unknown key (known keys: {', '.join(sorted(self.used))})")


def _string(value: Any) -> str:
    if not isinstance(value, str) or not value.strip():
        raise ValueError(f"expected a non-empty string, got {value!r}")
    return value


def _name(value: Any) -> str:
    text = _string(value)
    if len(text) > 200 or any(ord(c) < 32 for c in text):
        raise ValueError("a name must be at most 200 printable characters")
    return text


def _url(value: Any) -> str:
    text = _string(value)
    parts = urlsplit(text)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise ValueError(f"expected an http:// or https:// URL, got {text!r}")
    return text if text.endswith("/") else text + "/"


def _positive_duration(value: Any) -> float:
    seconds = parse_duration(value)
    if seconds <= 0:
        raise ValueError(f"must be greater than zero, got {value!r}")
    return seconds


def _duration(value: Any) -> float:
    return parse_duration(value)


def _paths(base: Path) -> Callable[[Any], tuple[Path, ...]]:
    def convert(value: Any) -> tuple[Path, ...]:
        if not isinstance(value, list):
            raise ValueError("expected a list of paths")
        return tuple(_path(base)(path) for path in _strings(value))

    return convert


def _int(minimum: int) -> Callable[[Any], int]:
    def convert(value: Any) -> int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ValueError(f"expected a whole number, got {value!r}")
        if value < minimum:
            raise ValueError(f"must be at least {minimum}, got {value}")
        return value

    return convert


def _choice(kind: type[E]) -> Callable[[Any], E]:
    """One of the values of ``kind``; the error lists them."""
    def convert(value: Any) -> E:
        try:
            return kind(value)
        except ValueError:
            raise ValueError(f"expected one of {', '.join(kind)}, got {value!r}") from None

    return convert


def _bool(value: Any) -> bool:
    if not isinstance(value, bool):
        raise ValueError(f"expected true or false, got {value!r}")
    return value


def _fraction(value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0 <= value < 1:
        raise ValueError(f"expected a number from 0 up to (not including) 1, got {value!r}")
    return float(value)


def _strings(value: Any) -> tuple[str, ...]:
    if not isinstance(value, list):
        raise ValueError("expected a list of strings")
    return tuple(_string(v.value if isinstance(v, Node) else v) for v in value)


def _redirect_hosts(value: Any) -> tuple[str, ...]:
    """``host`` or ``host:port`` entries, checked as the fetcher reads them."""
    hosts = _strings(value)
    for host in hosts:
        redirect_origin(host)
    return hosts


def _target_path(value: Any) -> str:
    path = _string(value)
    parts = path.split("/")
    if path.startswith("/") or ".." in parts or "\\" in path:
        raise ValueError(f"a target path must be relative with no '..' parts, got {path!r}")
    return path


def _target_paths(value: Any) -> tuple[str, ...]:
    return tuple(_target_path(path) for path in _strings(value))


def _role_durations(reader: _Reader | None) -> dict[str, float]:
    if reader is None:
        return {}
    out = {key: reader.get(key, _positive_duration, 0.0) for key in list(reader.items)}
    reader.done()
    return out


def _path(base: Path) -> Callable[[Any], Path]:
    def convert(value: Any) -> Path:
        path = Path(_string(value)).expanduser()
        return path if path.is_absolute() else base / path

    return convert
