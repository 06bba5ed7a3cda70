"""Silences as operators post them (`POST /v1/silences`), checked and compiled; and as stored.

A silence's `match` is a condition in the rule language, evaluated against
`{"rule": <rule name>, "dedup_key": <the alert's dedup key>, "event": <the event>}`, so a silence can
cover a rule (`{field: rule, equals: disk-full}`), one alert, or anything in the events
(`{field: event.host, prefix: db-}`). Matches it covers are counted, not paged, until `until`.
"""

from __future__ import annotations

import json
from typing import Any

from engine.rules.conditions import Definitions, compile_condition
from engine.rules.errors import Problem
from engine.rules.validate import condition_problems
from engine.state import Silence
from engine.units import parse_moment

FIELDS = ("match", "until", "comment", "created_by")
MAX_DURATION = 365 * 86400.0  # a silence ends within a year; a rule to stop for good is disabled instead


class SilenceError(ValueError):
    """A silence that cannot be made: the message says what is wrong with which field."""


def parse_silence(body: Any, *, ident: int, now: float) -> Silence:
    """A new silence from an API body `{match, until, comment, created_by}`."""
    if not isinstance(body, dict):
        raise SilenceError("a silence is a JSON object: {match, until, comment, created_by}")
    unknown = sorted(set(body) - set(FIELDS))
    if unknown:
        raise SilenceError(f"unknown field(s) {', '.join(unknown)}: a silence has {', '.join(FIELDS)}")
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
    """A stored silence (its JSON, as `Silence.dump` wrote it), compiled again."""
    data = json.loads(text)
    return Silence(data["id"], data["match"], compile_match(data["match"]), data["until"], data["comment"],
                   data["created_by"], data["created"], data["covered"])


def compile_match(match: Any) -> Any:
    problems: list[Problem] = condition_problems("match", match)
    if not problems:
        condition = compile_condition(match, file="match", path=(), definitions=Definitions(), problems=problems)
    if problems:
        p = problems[0]
        where = ".".join(str(x) for x in ("match", *p.path))
        raise SilenceError(f"{where}: {p.message}")
    return condition


def parse_until(value: Any, now: float) -> float:
    """An ISO 8601 time with a zone, or a duration from now (`2h`)."""
    if not isinstance(value, str):
        raise SilenceError("'until' must be an ISO 8601 time (2026-12-24T08:00:00Z) or a duration (2h)")
    try:
        return parse_moment(value, now, ago=False, what="'until'")
    except ValueError as exc:
        raise SilenceError(str(exc)) from None
