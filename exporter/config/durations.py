"""Prometheus-style durations (``30s``, ``5m``, ``1h30m``, ``7d``; a bare number means seconds)."""

from __future__ import annotations

import re

_UNITS: dict[str, float] = {
    "ms": 0.001,
    "s": 1.0,
    "m": 60.0,
    "h": 3600.0,
    "d": 86400.0,
    "w": 7 * 86400.0,
    "y": 365 * 86400.0,
}
_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h|d|w|y)")
_WHOLE = re.compile(r"(?:\d+(?:\.\d+)?(?:ms|s|m|h|d|w|y))+")


def parse_duration(value: object) -> float:
    """Return ``value`` in seconds.

    Accepts an int or float (seconds), a numeric string (seconds) or a Prometheus duration
    such as ``1h30m``. Raises ValueError with the accepted forms on anything else, including
    negative values and booleans.
    """
    if isinstance(value, bool):
        raise ValueError(f"expected a duration like 30s, 5m, 1h or 7d, got {value!r}")
    if isinstance(value, int | float):
        seconds = float(value)
    elif isinstance(value, str):
        text = value.strip()
        try:
            seconds = float(text)
        except ValueError:
            if not _WHOLE.fullmatch(text):
                raise ValueError(
                    f"expected a duration like 30s, 5m, 1h or 7d, got {value!r}"
                ) from None
            seconds = sum(float(n) * _UNITS[u] for n, u in _PART.findall(text))
    else:
        raise ValueError(f"expected a duration like 30s, 5m, 1h or 7d, got {value!r}")
    if seconds < 0 or seconds != seconds:  # negative or NaN
        raise ValueError(f"a duration cannot be negative, got {value!r}")
    return seconds


def format_duration(seconds: float) -> str:
    """Render seconds as a compact Prometheus duration (``90`` -> ``1m30s``)."""
    if seconds < 1:
        return f"{round(seconds * 1000)}ms"
    out = []
    rest = round(seconds)
    for unit in ("w", "d", "h", "m", "s"):
        size = int(_UNITS[unit])
        if rest >= size:
            out.append(f"{rest // size}{unit}")
            rest %= size
    return "".join(out) or "0s"
