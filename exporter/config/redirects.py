"""The ``allowed_redirect_hosts`` entries of the configuration, read once for both readers:
the configuration checks them at load, the fetcher matches redirects against them."""

from __future__ import annotations

from urllib.parse import urlsplit

__all__ = ["redirect_origin"]


def redirect_origin(entry: str) -> tuple[str, int | None]:
    """An ``allowed_redirect_hosts`` entry as (lower-case host, port or None).

    ``host`` allows that host on the default port of the redirect's scheme (80 for http, 443
    for https); ``host:port`` allows that port only; an IPv6 address is written in brackets
    (``[2001:db8::1]:8443``). Raises ValueError for anything else (a scheme, a path, a port
    out of range).
    """
    text = entry.strip()
    if not text or any(c in text for c in "/?#@ ") or "://" in text:
        raise ValueError(f"{entry!r} is not a host or host:port")
    parts = urlsplit(f"//{text}")
    try:
        port = parts.port
    except ValueError:
        raise ValueError(f"{entry!r} is not a host or host:port (port 1 to 65535)") from None
    host = (parts.hostname or "").lower()
    if not host or port == 0:
        raise ValueError(f"{entry!r} is not a host or host:port")
    return host, port
