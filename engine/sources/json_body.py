"""A client's JSON body, parsed strictly: what cannot travel on as JSON is refused, naming where it is.

Every JSON body a client sends (events, Sentry webhooks, silences, test pages) is parsed by `loads`, so
that whatever is accepted can be stored in SQLite and sent to PagerDuty as valid JSON in UTF-8:

- UTF-8 only.
- Numbers: finite doubles, and integers of at most 4,300 digits (Python's limit for reading an integer).
  `NaN` and `Infinity` (not JSON, though Python's json.dumps writes them) and numbers beyond a double's
  range (`1e400`) are refused: no JSON can carry them on.
- Nesting: at most `max_depth` levels of objects and arrays, the body itself being level 1.
- Strings: JSON lets a string escape a lone UTF-16 surrogate (`"\\ud800"`), which no UTF-8 text can hold.
  Each one, in keys and values alike, becomes U+FFFD (the replacement character, as a UTF-8 decoder does
  with an invalid byte): an event truncated in the middle of an emoji still pages.

A refusal is a `JsonError` with the path of the value at fault (`("items", 3, "value")`), which `where`
writes as a rule's `field` would name it (`items.3.value`).
"""

from __future__ import annotations

import json
import math
import re
import sys
from typing import Any

MAX_DEPTH = 64  # deeper nesting is refused: no legitimate body needs it, and it costs recursion
Path = tuple[str | int, ...]

_SURROGATE = re.compile("[\ud800-\udfff]")
_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89a-fA-F]")  # in the text: maybe a lone surrogate, maybe a pair
_PATH_KEY_CHARS = 40  # a key longer than this is shortened in a path shown to the client
_LITERAL_CHARS = 20  # likewise a refused number
_PATH_CHARS = 200  # and a whole path, in its middle


class JsonError(ValueError):
    """A body that is not acceptable JSON: `reason`, and the `path` of the value at fault (() if none)."""

    def __init__(self, reason: str, path: Path = ()) -> None:
        self.reason = reason
        self.path = path
        self.message = f"{where(path)}: {reason}" if path else reason
        super().__init__(self.message)


class _Refused:
    """Stands in the parsed value for a number that cannot be sent on, until a walk finds its path."""

    __slots__ = ("reason",)
    made = 0  # how many were ever made: when a parse changes it, that parse (or, in another thread, another
    # parse: then the walk that follows finds nothing) made one

    def __init__(self, reason: str) -> None:
        self.reason = reason
        _Refused.made += 1


def _float(literal: str) -> float | _Refused:
    value = float(literal)
    return value if math.isfinite(value) else _Refused(f"{_short(literal, _LITERAL_CHARS)} is beyond the range "
                                                       "of a double")


def _int(literal: str) -> int | _Refused:
    try:
        return int(literal)
    except ValueError:
        return _Refused(f"an integer of {len(literal.lstrip('-'))} digits (at most {sys.get_int_max_str_digits()})")


def _constant(name: str) -> _Refused:
    return _Refused(f"{name} is not a JSON number")


def _same(value: dict[str, Any]) -> dict[str, Any]:
    """The object hook: a call back into Python for every object parsed, so that a parse running on a
    worker thread gives the interpreter lock up every switch interval (C's scanner alone never does) and
    the event loop keeps answering while a large body is parsed (measured: 92 ms -> 16 ms of loop stall
    for 10 MB of events, for 10% more parse time)."""
    return value


# Made once: json.loads with hooks would build a decoder per call. Integers take C's fast path; only a body
# whose integer was too long to read is parsed again with `_int`, to find where that integer is.
_DECODER = json.JSONDecoder(parse_float=_float, parse_constant=_constant, object_hook=_same)
_LONG_INT_DECODER = json.JSONDecoder(parse_float=_float, parse_constant=_constant, parse_int=_int,
                                     object_hook=_same)


def decode(body: bytes) -> str:
    try:
        return body.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise JsonError(f"body is not valid UTF-8 (byte {exc.start})") from None


def loads(body: bytes | str, *, max_depth: int = MAX_DEPTH) -> Any:
    """The JSON value of `body` under the rules above; JsonError when it breaks one."""
    text = body if isinstance(body, str) else decode(body)
    made = _Refused.made
    try:
        value = _decoded(text)
    except json.JSONDecodeError as exc:
        raise JsonError(f"invalid JSON: {exc.msg} at line {exc.lineno} column {exc.colno}") from None
    except RecursionError:
        raise JsonError(f"JSON nested deeper than {max_depth} levels") from None
    if _Refused.made != made or (text.count("{") + text.count("[") > max_depth and _too_deep(value, max_depth)):
        _raise_at_fault(value, max_depth)
    if "\\u" in text and _SURROGATE_ESCAPE.search(text):
        value = _without_surrogates(value)
    return value


def _decoded(text: str) -> Any:
    try:
        return _DECODER.decode(text)
    except json.JSONDecodeError:
        raise
    except ValueError:  # an integer too long to read
        return _LONG_INT_DECODER.decode(text)


def where(path: Path) -> str:
    """A path as a rule's `field` names one: `details.items.3.value`, long keys and paths shortened."""
    text = ".".join(str(part) if isinstance(part, int) else _short(part, _PATH_KEY_CHARS) for part in path)
    if len(text) <= _PATH_CHARS:
        return text
    return text[: _PATH_CHARS // 2] + "…" + text[-(_PATH_CHARS // 2) :]


def _too_deep(value: Any, max_depth: int) -> bool:
    """Nested deeper than `max_depth`? Iterative, so that no nesting can exhaust the stack here."""
    stack = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if depth > max_depth:
            return True
        if isinstance(item, dict):
            stack.extend((v, depth + 1) for v in item.values() if isinstance(v, dict | list))
        elif isinstance(item, list):
            stack.extend((v, depth + 1) for v in item if isinstance(v, dict | list))
    return False


def _raise_at_fault(value: Any, max_depth: int) -> None:
    """JsonError for the first refused number or too deep a level, in document order, with its path."""
    stack: list[tuple[Any, Path, int]] = [(value, (), 1)]
    while stack:
        node, path, depth = stack.pop()
        if isinstance(node, _Refused):
            raise JsonError(node.reason, path)
        if isinstance(node, dict | list):
            if depth > max_depth:
                raise JsonError(f"nested deeper than {max_depth} levels", path)
            items = node.items() if isinstance(node, dict) else enumerate(node)
            stack.extend(reversed([(item, (*path, key), depth + 1) for key, item in items]))


def _without_surrogates(value: Any) -> Any:
    """`value` with every lone surrogate, in keys and strings, replaced by U+FFFD (in place)."""
    if isinstance(value, str):
        return _replaced(value)
    stack = [value]
    while stack:
        node = stack.pop()
        if isinstance(node, dict):
            if any(_SURROGATE.search(key) for key in node):
                items = [(_replaced(key), item) for key, item in node.items()]
                node.clear()
                node.update(items)
            keys: Any = node
        elif isinstance(node, list):
            keys = range(len(node))
        else:
            continue
        for key in keys:
            item = node[key]
            if isinstance(item, str):
                node[key] = _replaced(item)
            elif isinstance(item, dict | list):
                stack.append(item)
    return value


def _replaced(text: str) -> str:
    return _SURROGATE.sub("\ufffd", text)


def _short(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"
