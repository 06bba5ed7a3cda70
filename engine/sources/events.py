"""Request and file bodies -> a list of events (JSON objects), all or nothing.

A body is one JSON object, a JSON array of objects, or NDJSON (one object per line), parsed as
`json_body.loads` has it (UTF-8, finite numbers, at most MAX_DEPTH levels, lone surrogates replaced).
Any bad item makes the whole body invalid: `EventError` names the problem, the index of the item at
fault and the path of the value in it.
"""

from __future__ import annotations

from typing import Any

from engine.sources.json_body import MAX_DEPTH, JsonError, Path, decode, loads, where

__all__ = ["MAX_DEPTH", "EventError", "parse_events"]


class EventError(ValueError):
    """A body that is not a valid list of events; `index` is the item at fault, if one is, and `path` the
    value at fault inside it (`http.status`), if one is."""

    def __init__(self, message: str, index: int | None = None, path: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.index = index
        self.path = path


def parse_events(body: bytes, *, ndjson: bool) -> list[dict[str, Any]]:
    """Parse a body into events; NDJSON when `ndjson`, else a JSON object or array of objects."""
    try:
        text = decode(body)
    except JsonError as exc:
        raise EventError(exc.message) from None
    if ndjson:
        events: list[dict[str, Any]] = []
        for line in text.split("\n"):  # only \n ends a line: JSON strings may hold U+2028 and the like
            if line.strip():
                events.append(_object(_loads(line, len(events)), len(events)))
        return events
    value = _loads(text, None)
    if isinstance(value, list):
        return [_object(item, i) for i, item in enumerate(value)]
    return [_object(value, None)]


def _loads(text: str, index: int | None) -> Any:
    try:
        return loads(text)
    except JsonError as exc:
        path: Path = exc.path
        if index is None and path and isinstance(path[0], int):  # in an item of an array body
            index, path = path[0], path[1:]
        message = f"{where(path)}: {exc.reason}" if path else exc.reason
        raise EventError(message, index, where(path) if path else None) from None


def _object(value: Any, index: int | None) -> dict[str, Any]:
    if not isinstance(value, dict):
        kind = "an array" if isinstance(value, list) else type(value).__name__ if value is not None else "null"
        raise EventError(f"an event must be a JSON object, not {kind}", index)
    return value
