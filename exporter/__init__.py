"""tuf-exporter: a Prometheus exporter that watches TUF repositories with a real client."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("tuf-exporter")
except PackageNotFoundError:  # running from a source tree that is not installed
    __version__ = "0.0.0+unknown"

from exporter import compat

compat.install()  # the 0.1 import paths (exporter.prober, exporter.shipper, ...) keep working
