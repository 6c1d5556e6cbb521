"""The one YAML reader of the exporter: the configuration, the web configuration and the
alert options are read here, into nodes that know their lines, so every error names the file,
the line and the field (:class:`ConfigError`).

A leaf module (PyYAML only): the generators of rules and dashboards may use it without the
configuration model.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml


class ConfigError(ValueError):
    """A file the exporter reads is invalid; the message names the file, line and field.

    Built with :meth:`at`, the parts are kept as attributes too (``source``, ``line``,
    ``key``, ``detail``; None where unknown) so a caller can word them its own way.
    """

    source: str | None = None
    line: int | None = None
    key: str | None = None
    detail: str = ""

    @classmethod
    def at(cls, source: str, line: int | None, key: str | None, detail: str) -> ConfigError:
        """``<source>:<line>: <key>: <detail>`` (line and key left out when unknown)."""
        where = source if line is None else f"{source}:{line}"
        error = cls(f"{where}: {key}: {detail}" if key else f"{where}: {detail}")
        error.source, error.line, error.key, error.detail = source, line, key, detail
        return error



class Node:
    """A YAML value with the line it came from, for error messages: a dict of nodes, a list
    of nodes, or a plain scalar."""

    __slots__ = ("line", "value")

    def __init__(self, value: Any, line: int) -> None:
        self.value = value
        self.line = line

    def plain(self) -> Any:
        """The value as plain Python (dicts, lists, scalars), as ``yaml.safe_load`` gives it."""
        if isinstance(self.value, dict):
            return {key: node.plain() for key, node in self.value.items()}
        if isinstance(self.value, list):
            return [node.plain() for node in self.value]
        return self.value

    def line_of(self, field_name: str) -> int:
        """The line of ``field_name`` (``a.b[2].c``; a key may itself hold dots), or of the
        deepest part of it that exists."""
        node, rest = self, field_name
        while rest:
            if isinstance(node.value, list) and rest.startswith("["):
                index, _, rest = rest[1:].partition("]")
                rest = rest.removeprefix(".")
                if not index.isdigit() or int(index) >= len(node.value):
                    break
                node = node.value[int(index)]
                continue
            if not isinstance(node.value, dict):
                break
            key = next((k for k in sorted(node.value, key=len, reverse=True)
                        if rest == k or rest.startswith((k + ".", k + "["))), None)
            if key is None:
                break
            node, rest = node.value[key], rest[len(key):].removeprefix(".")
        return node.line


def _to_nodes(node: yaml.Node, source: str, where: str = "") -> Node:
    """``node`` as :class:`Node`; ``where`` is its field (``a.b[2]``), for errors."""
    line = node.start_mark.line + 1
    if isinstance(node, yaml.MappingNode):
        out: dict[str, Node] = {}
        for key_node, value_node in node.value:
            key = key_node.value
            if not isinstance(key_node, yaml.ScalarNode):
                raise ConfigError.at(source, line, where or None,
                                     "mapping keys must be plain strings")
            field_name = f"{where}.{key}" if where else str(key)
            if key in out:
                raise ConfigError.at(source, key_node.start_mark.line + 1, field_name,
                                     "duplicate key")
            out[str(key)] = _to_nodes(value_node, source, field_name)
        return Node(out, line)
    if isinstance(node, yaml.SequenceNode):
        return Node([_to_nodes(item, source, f"{where}[{i}]")
                      for i, item in enumerate(node.value)], line)
    try:
        value = yaml.constructor.SafeConstructor().construct_object(node)
    except yaml.YAMLError as exc:
        raise ConfigError.at(source, line, where or None, f"not valid YAML: {exc}") from None
    return Node(value, line)


def parse_yaml(text: str, source: str) -> Node | None:
    """The one YAML reader of the exporter (the configuration, the web configuration, the
    alert options): the document of ``text`` as nodes that know their lines; None when empty.

    Stricter than ``yaml.safe_load``: a duplicate key or a key that is not a plain scalar is
    an error, not silently the last one. Raises :class:`ConfigError` naming ``source`` and
    the line.
    """
    try:
        document = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None) or getattr(exc, "context_mark", None)
        line = None if mark is None else mark.line + 1
        raise ConfigError.at(source, line, None, f"not valid YAML: {exc}") from None
    return None if document is None else _to_nodes(document, source)


def read_yaml(path: Path) -> Node | None:
    """:func:`parse_yaml` of the file at ``path``; ConfigError when it cannot be read."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError.at(str(path), None, None, f"cannot read: {exc}") from None
    return parse_yaml(text, str(path))
