"""Basic auth (bcrypt, with a cache), the rate limit, client-certificate SANs and gzip negotiation
of the web server."""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import ipaddress
import secrets
import threading
import time
from collections import OrderedDict
from collections.abc import Mapping
from typing import Any, Final

import bcrypt

from exporter.serve.web_config import RateLimit

_AUTH_CACHE_SIZE: Final = 256  # successful (user, password) verifications remembered
_BCRYPT_MAX_PASSWORD: Final = 72  # bcrypt only uses the first 72 bytes (as Go and htpasswd)
_SAN_KINDS: Final = ("DNS", "IP Address", "email", "URI")


class _BasicAuth:
    """bcrypt basic-auth checks with a cache of successful verifications.

    The cache holds HMAC-SHA256 digests of (user, hash, password) under a random per-process
    key, so neither passwords nor anything usable offline is kept. An unknown user is
    checked against a configured hash anyway, so timing does not tell which users exist.
    Like exporter-toolkit, one bcrypt check runs at a time, so a flood of bad passwords
    costs at most one core; the server answers cached credentials without a thread
    (:meth:`cached`) and runs :meth:`verify` on its single auth thread, so cached scrapes
    never wait for it.
    """

    def __init__(self) -> None:
        self._key = secrets.token_bytes(32)
        self._cache: OrderedDict[bytes, None] = OrderedDict()
        self._lock = threading.Lock()
        self._bcrypt_lock = threading.Lock()

    def cached(self, users: Mapping[str, str], header: str | None) -> bool | None:
        """True for remembered credentials, False for a missing or malformed header (or no
        users), None when only a bcrypt check (:meth:`verify`) can tell; microseconds."""
        checked = self._credentials(users, header)
        if checked is None:
            return False
        _, _, known, digest = checked
        with self._lock:
            if known and digest in self._cache:
                self._cache.move_to_end(digest)
                return True
        return None

    def verify(self, users: Mapping[str, str], header: str | None) -> bool:
        """Whether the ``Authorization`` header carries a valid user and password: a bcrypt
        check (one at a time, milliseconds to seconds by the hash's cost); remembered if valid."""
        checked = self._credentials(users, header)
        if checked is None:
            return False
        password, reference, known, digest = checked
        with self._bcrypt_lock:
            ok = _bcrypt_matches(password, reference) and known
        if ok:
            with self._lock:
                self._cache[digest] = None
                while len(self._cache) > _AUTH_CACHE_SIZE:
                    self._cache.popitem(last=False)
        return ok

    def _credentials(self, users: Mapping[str, str],
                     header: str | None) -> tuple[bytes, str, bool, bytes] | None:
        """(password, hash to check it against, user known, cache digest); None if no users
        or no usable ``Basic`` credentials."""
        credentials = _parse_basic(header)
        if credentials is None or not users:
            return None
        user, password = credentials
        hashed = users.get(user)
        reference = hashed if hashed is not None else next(iter(users.values()))
        return password, reference, hashed is not None, self._digest(user, reference, password)

    def _digest(self, user: str, hashed: str, password: bytes) -> bytes:
        mac = hmac.new(self._key, digestmod=hashlib.sha256)
        for part in (user.encode("utf-8"), hashed.encode("ascii"), password):
            mac.update(len(part).to_bytes(8, "big"))
            mac.update(part)
        return mac.digest()


def _parse_basic(header: str | None) -> tuple[str, bytes] | None:
    """Decode ``Basic base64(user:password)``; None when absent or malformed."""
    if not header:
        return None
    scheme, _, token = header.strip().partition(" ")
    if scheme.lower() != "basic":
        return None
    try:
        decoded = base64.b64decode(token.strip(), validate=True)
        user_bytes, sep, password = decoded.partition(b":")
        user = user_bytes.decode("utf-8")
    except (binascii.Error, UnicodeDecodeError):
        return None
    return (user, password) if sep else None


def _bcrypt_matches(password: bytes, hashed: str) -> bool:
    """Constant-time bcrypt check; like Go and htpasswd only the first 72 bytes count."""
    try:
        return bcrypt.checkpw(password[:_BCRYPT_MAX_PASSWORD], hashed.encode("ascii"))
    except ValueError:
        return False


class _TokenBucket:
    """exporter-toolkit's ``rate_limit``: ``burst`` tokens, one more every ``interval`` s."""

    def __init__(self, limit: RateLimit) -> None:
        self.limit = limit
        self._tokens = float(limit.burst)
        self._at = time.monotonic()
        self._lock = threading.Lock()

    def allow(self) -> bool:
        """Take a token if there is one."""
        with self._lock:
            now = time.monotonic()
            refill = (now - self._at) / self.limit.interval
            self._tokens = min(float(self.limit.burst), self._tokens + refill)
            self._at = now
            if self._tokens >= 1.0:
                self._tokens -= 1.0
                return True
            return False


def _san_allowed(peer: Mapping[str, Any] | None, allowed: tuple[str, ...]) -> bool:
    """Whether the client certificate has a SAN exactly equal to one of ``allowed``."""
    if not allowed:
        return True
    names = {_normalize_san(str(value)) for kind, value in (peer or {}).get("subjectAltName", ())
             if kind in _SAN_KINDS}
    return any(_normalize_san(want) in names for want in allowed)


def _normalize_san(value: str) -> str:
    """Canonical text of an IP SAN (Python prints IPv6 long-hand); others unchanged."""
    try:
        return str(ipaddress.ip_address(value.strip()))
    except ValueError:
        return value.strip()


def _gzip_accepted(accept_encoding: str) -> bool:
    """Whether ``Accept-Encoding`` allows gzip (``gzip;q=0`` refuses it)."""
    for item in accept_encoding.split(","):
        coding, *params = (part.strip() for part in item.split(";"))
        if coding.lower() not in ("gzip", "x-gzip"):
            continue
        for param in params:
            name, _, value = param.partition("=")
            if name.strip().lower() == "q":
                try:
                    return float(value) > 0
                except ValueError:
                    return False
        return True
    return False

