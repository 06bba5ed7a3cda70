"""What a rule does beyond matching: thresholds, spikes, changes, absence, throttles, resolves,
maintenance windows and inhibition. Compiled once with the rule; read by `engine.decide`.

Pure: mute windows are computed from a `now` passed in (cron windows with apscheduler's CronTrigger,
in the window's own time zone, so a window at 02:00 Europe/Berlin stays at 02:00 across DST).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, tzinfo
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from apscheduler.triggers.cron import CronTrigger

from engine.rules.conditions import Condition, FieldPath, parse_field
from engine.rules.errors import Path, Problem, shown
from engine.rules.validate import did_you_mean
from engine.units import parse_duration, parse_instant


@dataclass(frozen=True)
class Threshold:
    count: int
    window: float  # seconds


@dataclass(frozen=True)
class Spike:
    ratio: float
    window: float
    min_count: int = 1


@dataclass(frozen=True)
class Inhibit:
    by: tuple[str, ...]  # rule names
    equal: tuple[FieldPath, ...]


@dataclass(frozen=True)
class MuteWindow:
    """A recurring (cron + duration, in a time zone) or a fixed (start, end) maintenance window."""

    renotify: bool = False  # on_end: renotify pages alerts that triggered inside and are still open
    cron: CronTrigger | None = None
    duration: float = 0.0
    start: float = 0.0  # fixed windows: seconds since the epoch
    end: float = 0.0

    def active(self, now: float) -> tuple[float, float] | None:
        """(start, end) of the occurrence of this window that contains `now`, if one does."""
        if self.cron is None:
            return (self.start, self.end) if self.start <= now < self.end else None
        # Occurrences start on whole seconds, so the one that may contain `now` starts at or after the
        # whole second `earliest`. Whole seconds, converted from UTC: apscheduler rounds a fraction up,
        # possibly onto a wall-clock time that DST skips (it then jumps a week), and wall-clock arithmetic
        # on an aware datetime resets `fold` (an hour off on the day DST ends).
        earliest = math.floor(now - self.duration)
        start = self.cron.get_next_fire_time(None, _local(earliest, self.cron.timezone))
        if start is not None and start.timestamp() + self.duration <= now:  # it started at `earliest`, ended
            start = self.cron.get_next_fire_time(None, _local(earliest + 1, self.cron.timezone))
        if start is None or start.timestamp() > now:
            return None
        return start.timestamp(), start.timestamp() + self.duration


def _local(seconds: float, tz: tzinfo) -> datetime:
    return datetime.fromtimestamp(seconds, UTC).astimezone(tz)


@dataclass(frozen=True)
class Policy:
    """Everything stateful about a rule. The default (all None / empty) pages on every match."""

    threshold: Threshold | None = None
    spike: Spike | None = None
    change: FieldPath | None = None
    absent: float | None = None  # seconds of silence that page
    expect: tuple[dict[str, Any], ...] = ()  # absent: the groups watched even if never seen, as events
    throttle: float | None = None
    resolve_after: float | None = None
    resolve_match: Condition | None = None
    mute: tuple[MuteWindow, ...] = ()
    inhibit: Inhibit | None = None


STATELESS = Policy()


def compile_policy(raw: Mapping[str, Any], *, file: str, path: Path, rule: str, problems: list[Problem],
                   resolve_match: Condition | None) -> Policy:
    """The policy of one schema-valid rule; semantic problems (cron, time zone, combinations) appended."""
    def problem(where: Path, message: str) -> None:
        problems.append(Problem(file, (*path, *where), message, rule))

    kinds = [k for k in ("threshold", "spike", "change", "absent") if k in raw]
    if len(kinds) > 1:
        problem((kinds[1],), f"'{kinds[0]}' and '{kinds[1]}' cannot be combined: a rule pages on one kind of "
                "condition")
    t, s = raw.get("threshold"), raw.get("spike")
    resolve = raw.get("resolve", {})
    inhibit = raw.get("inhibit")
    return Policy(
        threshold=Threshold(t["count"], parse_duration(t["window"])) if t else None,
        spike=Spike(float(s["ratio"]), parse_duration(s["window"]), s.get("min_count", 1)) if s else None,
        change=parse_field(raw["change"]["field"]) if "change" in raw else None,
        absent=parse_duration(raw["absent"]["for"]) if "absent" in raw else None,
        expect=_expected(raw, problem) if "expect" in raw.get("absent", {}) else (),
        throttle=parse_duration(raw["throttle"]) if "throttle" in raw else None,
        resolve_after=parse_duration(resolve["after"]) if "after" in resolve else None,
        resolve_match=resolve_match,
        mute=tuple(w for i, spec in enumerate(raw.get("mute", ()))
                   if (w := _mute(spec, lambda where, m, i=i: problem(("mute", i, *where), m))) is not None),
        inhibit=Inhibit(tuple(inhibit["by"]), tuple(parse_field(f) for f in inhibit.get("equal", ())))
        if inhibit else None,
    )


def _expected(raw: Mapping[str, Any], problem: Any) -> tuple[dict[str, Any], ...]:
    """The groups of `absent.expect`, each as the event a heartbeat of it would be: every group_by value
    placed at its field's path, so that its dedup key is computed as for a real event."""
    fields = {f if isinstance(f, str) else ".".join(map(str, f)): parse_field(f) for f in raw.get("group_by", ())}
    if not fields:
        problem(("absent", "expect"), "expect names groups by their group_by values, but this rule has no group_by")
        return ()
    names = ", ".join(fields)
    events = []
    for i, item in enumerate(raw["absent"]["expect"]):
        where = ("absent", "expect", i)
        unknown = [k for k in item if k not in fields]
        for key in unknown:
            problem((*where, key), f"'{key}' is not a group_by field of this rule{did_you_mean(key, fields)}: "
                    f"an expected group names exactly its group_by fields ({names})")
        missing = [k for k in fields if k not in item]
        if missing:
            keys = ", ".join(f"'{k}'" for k in missing)
            problem(where, f"missing group_by field{'s' if len(missing) > 1 else ''} {keys}: an expected group "
                    f"names exactly its group_by fields ({names})")
        if unknown or missing:
            continue
        event: dict[str, Any] = {}
        if _place_all(event, [(fields[k], v) for k, v in item.items()]):
            events.append(event)
        else:
            problem(where, f"the group_by fields {names} overlap (one lies inside another): they cannot be expected")
    return tuple(events)


def _place_all(event: dict[str, Any], values: list[tuple[FieldPath, Any]]) -> bool:
    """Put each value at its path in `event` (creating mappings on the way); False where paths overlap."""
    for path, value in values:
        at = event
        for segment in path[:-1]:
            at = at.setdefault(str(segment), {})
            if not isinstance(at, dict):
                return False
        if str(path[-1]) in at:
            return False
        at[str(path[-1])] = value
    return True


def _mute(spec: dict[str, Any], problem: Any) -> MuteWindow | None:
    renotify = spec.get("on_end", "drop") == "renotify"
    if "cron" in spec:
        tz: tzinfo
        try:
            tz = ZoneInfo(spec.get("timezone", "UTC"))
        except (ZoneInfoNotFoundError, ValueError):
            problem(("timezone",), f"unknown time zone {shown(spec['timezone'])} (use an IANA name like Europe/Berlin)")
            return None
        try:
            cron = CronTrigger.from_crontab(spec["cron"], timezone=tz)
        except ValueError as exc:
            problem(("cron",), f"invalid cron expression {shown(spec['cron'])}: {exc}")
            return None
        return MuteWindow(renotify, cron=cron, duration=parse_duration(spec["duration"]))
    instants: dict[str, float] = {}
    for key in ("start", "end"):
        try:
            instants[key] = parse_instant(spec[key])
        except ValueError as exc:
            problem((key,), str(exc))  # at the key at fault
    if len(instants) < 2:
        return None
    start, end = instants["start"], instants["end"]
    if end <= start:
        problem(("end",), "a mute window must end after it starts")
        return None
    return MuteWindow(renotify, start=start, end=end)
