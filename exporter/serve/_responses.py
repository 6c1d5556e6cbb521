"""The responses the web server sends: plain text, HTML pages and the fixed error answers."""

from __future__ import annotations

import html
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Final

from exporter import __version__

if TYPE_CHECKING:
    from exporter.serve.status_page import Page


REALM: Final = "tuf-exporter"
"""The basic-auth realm announced in ``WWW-Authenticate``."""


@dataclass(frozen=True)
class _Response:
    """What a route answers."""

    status: int
    body: bytes
    content_type: str = "text/plain; charset=utf-8"
    headers: tuple[tuple[str, str], ...] = ()


def _text(status: int, message: str, *headers: tuple[str, str]) -> _Response:
    return _Response(status, message.encode("utf-8"), headers=headers)


_NOT_FOUND: Final = _text(404, "404 page not found\n")
_UNAUTHORIZED: Final = _text(401, "Unauthorized\n", ("WWW-Authenticate", f'Basic realm="{REALM}"'))
_TOO_MANY: Final = _text(429, "Too Many Requests\n")
_TOO_LARGE: Final = _text(413, "Request Entity Too Large\n")
_READ_ONLY: Final = ("GET", "HEAD")
_RELOAD_METHODS: Final = ("POST", "PUT")


_Route = Callable[[Mapping[str, str], str], _Response]


def _method_not_allowed(allowed: tuple[str, ...]) -> _Response:
    return _text(405, "Method Not Allowed\n", ("Allow", ", ".join(allowed)))


def _html(page: Page) -> _Response:
    return _Response(page.status, page.html.encode("utf-8"), "text/html; charset=utf-8",
                     (("Cache-Control", "no-store"),))


def _landing_page() -> _Response:
    links = (("metrics", "Metrics"), ("-/healthy", "Health"), ("-/ready", "Readiness"))
    items = "\n".join(f'      <li><a href="{href}">{html.escape(label)}</a></li>'
                      for href, label in links)
    page = f"""<!DOCTYPE html>
<html lang="en">
  <head>
    <meta charset="utf-8">
    <title>TUF Exporter</title>
  </head>
  <body>
    <h1>TUF Exporter</h1>
    <p>Prometheus exporter that watches TUF repositories and their mirrors.</p>
    <ul>
{items}
    </ul>
    <p>Version {html.escape(__version__)}</p>
  </body>
</html>
"""
    return _Response(200, page.encode("utf-8"), "text/html; charset=utf-8")

