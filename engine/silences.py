"""Silences as operators post them (`POST /v1/silences`), checked and compiled; and as stored.

A silence's `match` is a condition in the rule language, evaluated against
`{"rule": <rule name>, "dedup_key": <the alert's dedup key>, "event": <the event>}`, so a silence can
cover a rule (`{field: rule, equals: disk-full}`), one alert, or anything in the events
(`{field: event.host, prefix: db-}`). Matches it covers are counted, not paged, until `until`.
"""

from __future__ import annotations

import difflib
import json
from collections.abc import Iterator
from typing import Any

from engine.rules.conditions import Condition, Definitions, compile_condition, parse_field
from engine.rules.errors import Path, Problem, shown
from engine.rules.validate import condition_problems
from engine.state import Silence
from engine.units import parse_moment

FIELDS = ("match", "until", "comment", "created_by")
ROOTS = ("rule", "dedup_key", "event")  # what a silence's condition sees
ROOT_WHAT = {"rule": "rule's name", "dedup_key": "alert's dedup key"}
MAX_DURATION = 365 * 86400.0  # a silence ends within a year; a rule to stop for good is disabled instead


class SilenceError(ValueError):
    """A silence that cannot be made: the message says what is wrong with which field."""


def parse_silence(body: Any, *, ident: int, now: float) -> Silence:
    """A new silence from an API body `{match, until, comment, created_by}`."""
    if not isinstance(body, dict):
        raise SilenceError("a silence is a JSON object: {match, until, comment, created_by}")
    unknown = sorted(set(body) - set(FIELDS))
    if unknown:
        which = f"field {unknown[0]}" if len(unknown) == 1 else f"fields {', '.join(unknown)}"
        raise SilenceError(f"unknown {which}: a silence has {', '.join(FIELDS)}")
    for name in ("match", "until"):
        if name not in body:
            raise SilenceError(f"missing '{name}'")
    until = parse_until(body["until"], now)
    if until <= now:
        raise SilenceError("'until' is in the past")
    if until > now + MAX_DURATION:
        raise SilenceError("'until' is more than 365 days ahead: a silence ends within a year "
                           "(to stop a rule for good, set `enabled: false` on it)")
    for name in ("comment", "created_by"):
        if not isinstance(body.get(name, ""), str):
            raise SilenceError(f"'{name}' must be a string")
    return Silence(ident, body["match"], compile_match(body["match"]), until, body.get("comment", ""),
                   body.get("created_by", ""), now)


def restore_silence(text: str) -> Silence:
    """A stored silence (its JSON, as `Silence.dump` wrote it), compiled again (as it was accepted then:
    one stored before fields had to be rooted is kept, though it covers nothing)."""
    data = json.loads(text)
    return Silence(data["id"], data["match"], _compile(data["match"]), data["until"], data["comment"],
                   data["created_by"], data["created"], data["covered"])


def compile_match(match: Any) -> Condition:
    """A new silence's condition: valid, and every field rooted at `rule`, `dedup_key` or `event.`, the only
    things a silence sees; any other field can never match, so the silence is refused with a hint."""
    condition = _compile(match)
    for path, field in _fields(match, ()):
        hint = _unrooted(field)
        if hint:
            raise SilenceError(f"{_where(path)}: {shown(field)} can never match: {hint}")
    return condition


def _compile(match: Any) -> Condition:
    problems: list[Problem] = condition_problems("match", match)
    if not problems:
        condition = compile_condition(match, file="match", path=(), definitions=Definitions(), problems=problems)
    if problems:
        raise SilenceError(f"{_where(problems[0].path)}: {problems[0].message}")
    return condition


def _where(path: Path) -> str:
    return ".".join(str(x) for x in ("match", *path))


def _fields(node: Any, path: Path) -> Iterator[tuple[Path, Any]]:
    """(path, field) of every leaf of a schema-valid condition."""
    for kind in ("all", "any"):
        for i, child in enumerate(node.get(kind, ())):
            yield from _fields(child, (*path, kind, i))
    if "not" in node:
        yield from _fields(node["not"], (*path, "not"))
    if "field" in node:
        yield (*path, "field"), node["field"]


def _unrooted(spec: Any) -> str | None:
    """Why a silence on field `spec` would never match, with the field it probably means; None if it can."""
    field = parse_field(spec)
    root, rest = field[0], field[1:]
    if root == "event" or (root in ROOT_WHAT and not rest):
        return None
    if root in ROOT_WHAT:
        return f"{root} is a string (the {ROOT_WHAT[root]}): use field: {root}"
    close = difflib.get_close_matches(str(root), ROOTS, n=1, cutoff=0.6)
    meant = (close[0], *rest) if close else ("event", *field)
    shown_meant = ".".join(map(str, meant)) if isinstance(spec, str) else shown(list(meant))
    return f"a silence sees only rule, dedup_key and event.* (did you mean {shown_meant}?)"


def parse_until(value: Any, now: float) -> float:
    """An ISO 8601 time with a zone, or a duration from now (`2h`)."""
    if not isinstance(value, str):
        raise SilenceError("'until' must be an ISO 8601 time (2026-12-24T08:00:00Z) or a duration (2h)")
    try:
        return parse_moment(value, now, ago=False, what="'until'")
    except ValueError as exc:
        raise SilenceError(str(exc)) from None
