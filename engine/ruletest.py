"""`alert-engine test`: rule unit tests, like `promtool test rules`, run offline on a driven clock
(`engine.replay`, the clock `alert-engine eval` runs on too).

A test file names `rule_files:` (relative to itself) and lists `tests:`, each with `events` and `expect`.
An item of `events` is an event, sent at `0s`, or `{at: <duration>, event: {...}, repeat: N, via: sentry}`
(any item with `at` is read this way): N copies of the event at that time since the test's start, come
in by POST /v1/events or, with `via: sentry`, by the Sentry endpoint (a flat event as docs/sentry.md
shows: Sentry's dedup key, summary and link, and its alerts tracked for Sentry's resolves). The clock
starts at `start` (ISO 8601 with a zone; default `DEFAULT_START`, so mute windows are reproducible) and
runs until `until` or the last event, whichever is later (see `engine.replay.play`). Every test has its
own state.

`expect` lists the notifications the timeline must send, as `{rule, service}` plus any of `action`
(`trigger`, the default, or `resolve`), `at` (when it was sent), `dedup_key`, `severity`, `summary`.
They must equal the notifications sent exactly: nothing missing, nothing unexpected.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path as FsPath
from typing import Any

import yaml

from engine.render import Notification
from engine.replay import DEFAULT_START, Timed, notifications, play
from engine.rules import load_ruleset
from engine.rules.errors import Problem, RuleError
from engine.rules.load import load_file
from engine.rules.validate import schema_problems
from engine.sources import sentry
from engine.units import parse_duration, parse_instant

COMPARED = ("rule", "service", "action", "at", "dedup_key", "severity", "summary")
_DEFAULTS = {"action": "trigger", "at": 0.0}  # left out of a sent notification's diff line
_UNITS = (("d", 86400), ("h", 3600), ("m", 60))
_ORIGINS = {"events": None, "sentry": sentry.ORIGIN}  # `via:` -> the origin decide is given


@dataclass(frozen=True)
class Outcome:
    """One test's result: what was expected but not sent, and what was sent but not expected."""

    file: str
    name: str
    missing: tuple[Mapping[str, Any], ...]
    unexpected: tuple[Mapping[str, Any], ...]

    @property
    def passed(self) -> bool:
        return not self.missing and not self.unexpected

    def report(self) -> str:
        lines = [f"{'ok  ' if self.passed else 'FAIL'}  {self.file}: {self.name}"]
        lines += [f"      - missing:    {_flow(item)}" for item in self.missing]
        lines += [f"      + unexpected: {_flow(_shown(item))}" for item in self.unexpected]
        return "\n".join(lines)


def run_test_file(file: str, start: datetime = DEFAULT_START) -> list[Outcome] | list[RuleError]:
    """Run every test in one file, from `start` unless a test sets its own; the file's own errors (or its
    rules') come back instead."""
    doc = load_file(file)
    if isinstance(doc, RuleError):
        return [doc]
    problems = schema_problems(file, doc.data, "ruletest")
    starts: list[float] = []
    for i, test in enumerate(doc.data["tests"] if not problems else ()):
        try:
            starts.append(parse_start(test["start"]) if "start" in test else start.timestamp())
        except ValueError as exc:
            problems.append(Problem(file, ("tests", i, "start"), str(exc)))
    base = FsPath(file).parent
    if not problems:
        problems = [Problem(file, ("rule_files", i), _not_found(path, base))
                    for i, path in enumerate(doc.data["rule_files"]) if not (base / path).exists()]
    if problems:
        return [doc.error(p) for p in problems]
    loaded = load_ruleset([str(base / p) for p in doc.data["rule_files"]], allow_missing_secrets=True)
    if loaded.ruleset is None:
        return list(loaded.errors)
    outcomes = []
    for test, begin in zip(doc.data["tests"], starts, strict=True):
        played = play(loaded.ruleset, timeline(test["events"]), until=parse_duration(test.get("until", "0s")),
                      start=begin)
        missing, unexpected = compare([expectation(item) for item in test["expect"]], notifications(played))
        outcomes.append(Outcome(file, test["name"], tuple(missing), tuple(unexpected)))
    return outcomes


def _not_found(path: str, base: FsPath) -> str:
    if FsPath(path).is_absolute():
        return f"rule file {path} does not exist"
    return (f"rule file {path} does not exist: rule_files paths are relative to the test file, so this is "
            f"{base / path}")


def parse_start(text: str) -> float:
    """A test's `start`: ISO 8601 with a zone, as seconds since the epoch."""
    return parse_instant(text, "start")


def timeline(items: list[Mapping[str, Any]]) -> list[Timed]:
    """(seconds since the start, event, origin) for every event, as listed (`play` puts them in time order)."""
    events: list[Timed] = []
    for item in items:
        if "at" in item:
            origin = _ORIGINS[item.get("via", "events")]
            events += [(parse_duration(item["at"]), item["event"], origin)] * item.get("repeat", 1)
        else:
            events.append((0.0, item, None))
    return events


def observed(at: float, n: Notification) -> dict[str, Any]:
    """The fields of a sent notification that a test can expect."""
    return {"rule": n.rule, "service": n.service, "action": n.action, "at": at, "dedup_key": n.dedup_key,
            "severity": n.severity, "summary": n.summary}


def expectation(item: Mapping[str, Any]) -> dict[str, Any]:
    """An `expect` item ready to compare: `at` in seconds."""
    return {**item, "at": parse_duration(item["at"])} if "at" in item else dict(item)


def compare(expect: list[Mapping[str, Any]], sent: list[tuple[float, Notification]]) -> tuple[list, list]:
    """Pair each expectation with a sent notification that has every field it names (`action` defaults to
    trigger); return the expectations left unpaired and the notifications left unexpected."""
    left = [observed(at, n) for at, n in sent]
    missing = []
    for item in expect:
        wanted = {"action": "trigger", **item}
        hit = next((i for i, got in enumerate(left) if all(got[k] == v for k, v in wanted.items())), None)
        if hit is None:
            missing.append(dict(item))
        else:
            del left[hit]
    return missing, left


def format_duration(seconds: float) -> str:
    """Seconds as a duration the test format accepts: `0s`, `90s` -> `1m30s`, `1h`, `1.5s`."""
    parts = []
    rest = seconds
    for unit, size in _UNITS:
        if rest >= size:
            count, rest = divmod(rest, size)
            parts.append(f"{int(count)}{unit}")
    if rest or not parts:
        parts.append(f"{rest:g}s")
    return "".join(parts)


def _shown(item: Mapping[str, Any]) -> dict[str, Any]:
    """A sent notification as its diff line shows it: `action` and `at` only when not the defaults."""
    return {k: v for k, v in item.items() if k not in _DEFAULTS or v != _DEFAULTS[k]}


def _flow(item: Mapping[str, Any]) -> str:
    """An item as YAML flow, ready to paste into `expect`; fields without a value (a v1 page's severity, a
    resolve's summary) left out."""
    shown = {k: format_duration(item[k]) if k == "at" else item[k] for k in COMPARED if item.get(k) not in (None, "")}
    return yaml.safe_dump(shown, default_flow_style=True, sort_keys=False, allow_unicode=True,
                          width=float("inf")).strip()
