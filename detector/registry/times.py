"""``--since`` values: a duration back from now (``90s``, ``30m``, ``2h``, ``7d``) or an ISO-8601 time."""

from __future__ import annotations

import re
import time
from datetime import UTC, datetime

_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}
_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhd])\s*$")


def parse_since(value: str, now_ns: int | None = None) -> int:
    """The time ``value`` names, in ns since the epoch (UTC); raises ValueError with the accepted forms."""
    now_ns = time.time_ns() if now_ns is None else now_ns
    match = _DURATION.match(value)
    if match:
        return now_ns - int(float(match.group(1)) * _UNITS[match.group(2)] * 1e9)
    try:
        moment = datetime.fromisoformat(value.strip())
    except ValueError:
        raise ValueError(f"--since {value!r}: expected a duration such as 90s, 30m, 2h, 7d "
                         "or an ISO time such as 2026-11-29T08:00:00+00:00") from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return int(moment.timestamp() * 1e9)


def parse_duration(value: str) -> float:
    """Seconds of a duration such as ``90s``, ``30m``, ``2h``, ``7d``; raises ValueError with the accepted forms."""
    match = _DURATION.match(value)
    if not match:
        raise ValueError(f"expected a duration such as 90s, 30m, 2h or 7d, got {value!r}")
    return float(match.group(1)) * _UNITS[match.group(2)]


def iso(ns: int) -> str:
    """ns since the epoch as an ISO-8601 UTC time with milliseconds."""
    return datetime.fromtimestamp(ns / 1e9, UTC).isoformat(timespec="milliseconds")
