"""Request and file bodies -> a list of events (JSON objects), all or nothing.

A body is one JSON object, a JSON array of objects, or NDJSON (one object per line). Any bad item makes
the whole body invalid: `EventError` names the problem and the index of the item at fault.
"""

from __future__ import annotations

import json
from typing import Any

MAX_DEPTH = 64  # deeper nesting is refused: no legitimate event needs it, and it costs recursion


class EventError(ValueError):
    """A body that is not a valid list of events; `index` is the item at fault, if one is."""

    def __init__(self, message: str, index: int | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.index = index


def parse_events(body: bytes, *, ndjson: bool) -> list[dict[str, Any]]:
    """Parse a body into events; NDJSON when `ndjson`, else a JSON object or array of objects."""
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise EventError(f"body is not valid UTF-8 (byte {exc.start})") from None
    if ndjson:
        events = []
        for line in text.splitlines():
            if line.strip():
                events.append(_object(_loads(line, len(events)), len(events), line))
        return events
    value = _loads(text, None)
    if isinstance(value, list):
        return [_object(item, i) for i, item in enumerate(value)]
    return [_object(value, None, text)]


def _loads(text: str, index: int | None) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise EventError(f"invalid JSON: {exc.msg} at line {exc.lineno} column {exc.colno}", index) from None
    except RecursionError:
        raise EventError(f"JSON nested deeper than {MAX_DEPTH} levels", index) from None


def _object(value: Any, index: int | None, text: str | None = None) -> dict[str, Any]:
    """`value` as an event; `text`, when it is the value's own JSON, lets a shallow one skip the depth walk."""
    if not isinstance(value, dict):
        kind = "an array" if isinstance(value, list) else type(value).__name__ if value is not None else "null"
        raise EventError(f"an event must be a JSON object, not {kind}", index)
    if (text is None or text.count("{") + text.count("[") > MAX_DEPTH) and _depth(value) > MAX_DEPTH:
        raise EventError(f"event nested deeper than {MAX_DEPTH} levels", index)
    return value


def _depth(value: Any) -> int:
    """Nesting depth, iteratively, so that a hostile body cannot exhaust the stack here."""
    deepest, stack = 0, [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if depth > deepest:
            deepest = depth
            if deepest > MAX_DEPTH:
                return deepest
        if isinstance(item, dict):
            stack.extend((v, depth + 1) for v in item.values() if isinstance(v, (dict, list)))
        elif isinstance(item, list):
            stack.extend((v, depth + 1) for v in item if isinstance(v, (dict, list)))
    return deepest
