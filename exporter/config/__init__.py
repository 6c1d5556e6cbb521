"""Configuration: the YAML file read into typed, immutable settings; the vocabulary of the rest.

In: a path (:func:`load_config`) or YAML text (:func:`parse_config`). Out: a frozen
:class:`Config` (repositories and their endpoints, policies, signers, events settings).
Errors: :class:`ConfigError`, naming the file, the line and the key's path. Durations are
seconds (float) everywhere; :func:`parse_duration` reads Prometheus-style ``30s``/``5m``/``1h``.
Nothing here imports another layer (see tests/test_layers.py).
"""

from exporter.config.durations import format_duration, parse_duration
from exporter.config.model import (
    ALWAYS_ONLINE,
    Config,
    ConfigError,
    Endpoint,
    Events,
    Limits,
    Mode,
    OpenSearch,
    Policy,
    Repository,
    Signer,
    check_client_programs,
    default_delegation_processes,
    field_error,
    load_config,
    parse_config,
    parse_shard,
    safe_name,
)
from exporter.config.redirects import redirect_origin
from exporter.config.yamlfile import read_yaml

__all__ = [
    "ALWAYS_ONLINE",
    "Config",
    "ConfigError",
    "Endpoint",
    "Events",
    "Limits",
    "Mode",
    "OpenSearch",
    "Policy",
    "Repository",
    "Signer",
    "check_client_programs",
    "default_delegation_processes",
    "field_error",
    "format_duration",
    "load_config",
    "parse_config",
    "parse_duration",
    "parse_shard",
    "read_yaml",
    "redirect_origin",
    "safe_name",
]
