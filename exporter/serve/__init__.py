"""The running exporter: schedule probes, keep their results, answer Prometheus over HTTP.

In: a configuration file (:class:`Service`, which builds the prober, the history, the event
spool and shipper, the signer monitor and the scheduler from it, and reloads it) and a listen
address with an optional exporter-toolkit web configuration (:class:`ExporterServer`, errors:
:class:`WebConfigError` naming file, line and key). Out: ``/metrics`` (every family of the
catalogue, rendered at scrape time from memory), ``/-/healthy``, ``/-/ready``, ``/-/reload``
and the status page. May use every other layer except the command line.
"""

from exporter.serve.service import Service
from exporter.serve.web import (
    ExporterServer,
    connection_limit,
    parse_listen_address,
    raise_open_files_limit,
)
from exporter.serve.web_config import WebConfig, WebConfigError, load_web_config

__all__ = [
    "ExporterServer",
    "Service",
    "WebConfig",
    "WebConfigError",
    "connection_limit",
    "load_web_config",
    "parse_listen_address",
    "raise_open_files_limit",
]
