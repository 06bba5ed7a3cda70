"""Durations (`90s`, `5m`, `1h30m`, `7d`) and sizes (`10MiB`, `512KB`) as operators write them."""

from __future__ import annotations

import re
from datetime import UTC, datetime

_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h|d)")
_DURATION = re.compile(r"^(?:\d+(?:\.\d+)?(?:ms|s|m|h|d))+$")
_SECONDS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400}
_SIZE = re.compile(r"^(\d+)\s*(B|KB|MB|GB|KiB|MiB|GiB)?$")
_BYTES = {None: 1, "B": 1, "KB": 1000, "MB": 1000**2, "GB": 1000**3, "KiB": 1024, "MiB": 1024**2, "GiB": 1024**3}


def parse_duration(text: str | int | float) -> float:
    """Seconds in a duration: a number of seconds, or units `ms s m h d`, combinable (`1h30m`)."""
    if isinstance(text, (int, float)) and not isinstance(text, bool):
        return float(text)
    if not isinstance(text, str) or not _DURATION.match(text):
        raise ValueError(f"invalid duration {text!r}: use a number with a unit, like 30s, 5m, 1h30m, 7d")
    return sum(float(n) * _SECONDS[unit] for n, unit in _DURATION_PART.findall(text))


def parse_size(text: str | int) -> int:
    """Bytes in a size: a number of bytes, or `KB MB GB` (powers of 1000) / `KiB MiB GiB` (of 1024)."""
    if isinstance(text, int) and not isinstance(text, bool):
        return text
    match = _SIZE.match(text) if isinstance(text, str) else None
    if not match:
        raise ValueError(f"invalid size {text!r}: use a number with a unit, like 512KiB or 10MiB")
    return int(match.group(1)) * _BYTES[match.group(2)]


def parse_instant(text: str, what: str = "time") -> float:
    """Seconds since the epoch of an ISO 8601 time with a zone (`2026-12-24T00:00:00Z`, `…+01:00`);
    `what` names the value in the error."""
    try:
        moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except (ValueError, AttributeError):
        raise ValueError(f"invalid {what} {text!r}: use ISO 8601 with a zone, like 2026-12-24T00:00:00Z") from None
    if moment.tzinfo is None:
        raise ValueError(f"{what} {text!r} has no zone: add Z or an offset like +01:00")
    return moment.timestamp()


def parse_moment(text: str, now: float, *, ago: bool, what: str) -> float:
    """An ISO 8601 time with a zone, or a duration from `now`: back from it when `ago`, else ahead."""
    try:
        duration = parse_duration(text)
    except ValueError:
        pass
    else:
        return now - duration if ago else now + duration
    try:
        return parse_instant(text, what)
    except ValueError as exc:
        raise ValueError(f"{exc} (or a duration like 2h)") from None


def iso_seconds(moment: float) -> str:
    """Seconds since the epoch as ISO 8601 UTC to the second, with a trailing Z (`2026-11-28T09:46:20Z`)."""
    return datetime.fromtimestamp(moment, UTC).isoformat(timespec="seconds").replace("+00:00", "Z")
