"""Events replayed on a simulated clock through the daemon's own decide / tick / render: what
`alert-engine test` checks and `alert-engine eval` prints.

A timeline is a list of `Timed` (seconds since the start, event, origin). The clock starts at `start`
(seconds since the epoch) and runs until `until` seconds later or the last event, whichever is later.
Events are decided at their own time, in time order (as listed when times are equal); the timed work
(`tick`) runs once per second of simulated time, after the events of that second, as the daemon's does.
The state starts empty. Offline and pure: nothing reads the clock or touches the network.

`eval_timeline` places the events `eval` reads: at the times one of their fields gives (ISO 8601, or
seconds or milliseconds since the epoch, as the `timestamp` field of a page is read), from the earliest
of them; else one second apart from `DEFAULT_START`.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from engine.decide import decide, tick
from engine.decisions import Decision
from engine.fanout import render_decisions
from engine.render import Notification, parse_timestamp
from engine.rules.conditions import field_values, parse_field
from engine.rules.ruleset import RuleSet
from engine.sources.events import EventError
from engine.state import State

DEFAULT_START = datetime(2026, 1, 1, tzinfo=UTC)  # a fixed start: mute windows are reproducible

Timed = tuple[float, Mapping[str, Any], str | None]  # (seconds since the start, event, origin)


@dataclass(frozen=True)
class Played:
    """One decision on the timeline, and the notifications it sends (none for a hold)."""

    at: float  # seconds since the start
    event: int | None  # the index in the timeline of the event that caused it; None: the timed work
    decision: Decision
    notifications: tuple[Notification, ...]


def play(ruleset: RuleSet, events: Sequence[Timed], *, until: float = 0.0,
         start: float = DEFAULT_START.timestamp()) -> list[Played]:
    """Drive `decide` and `tick` over the timeline and render what they decide, in the order decided.

    Ticks run every whole second from 0 to `until` (at least to the last event). While the state holds no
    group and no silence a tick has nothing to do (it only walks those), so the clock skips ahead to the
    next event.
    """
    state = State(started=start)
    played: list[Played] = []
    order = sorted(range(len(events)), key=lambda i: events[i][0])
    pending = list(reversed(order))
    until = max([until, *(at for at, _, _ in events)])

    def record(at: float, event: int | None, decisions: list[Decision]) -> None:
        for decision in decisions:
            notifications = render_decisions(ruleset, [decision], start + at)
            played.append(Played(at, event, decision, tuple(notifications)))

    second = 0
    while second <= until:
        while pending and events[pending[-1]][0] <= second:
            i = pending.pop()
            at, event, origin = events[i]
            record(at, i, decide(ruleset, state, event, start + at, origin=origin))
        record(float(second), None, tick(ruleset, state, start + second))
        if state.groups or state.silences:
            second += 1
        elif pending:
            second = max(second + 1, math.ceil(events[pending[-1]][0]))
        else:
            break
    return played


def notifications(played: Sequence[Played]) -> list[tuple[float, Notification]]:
    """(seconds since the start, notification) for every notification sent, in order."""
    return [(p.at, n) for p in played for n in p.notifications]


def eval_timeline(events: Sequence[Mapping[str, Any]], *, time_field: str | None = None,
                  origin: str | None = None) -> tuple[float, list[Timed]]:
    """(the start, the timeline) of `eval`'s events, in their order: each at the time in `time_field`
    (a field path, `ts` or `meta.time`) from the earliest of them, or without one, one second apart from
    `DEFAULT_START`. An event without a time there is an `EventError` naming it."""
    if time_field is None:
        return DEFAULT_START.timestamp(), [(float(i), event, origin) for i, event in enumerate(events)]
    path = parse_field(time_field)
    times = []
    for i, event in enumerate(events):
        values = field_values(event, path)
        moment = parse_timestamp(values[0]) if values else None
        if moment is None:
            found = f"{json.dumps(values[0], ensure_ascii=False)} is not" if values else "there is no"
            raise EventError(f"{found} a time at {time_field} (ISO 8601, or seconds or milliseconds since the "
                             "epoch)", i, time_field)
        times.append(moment.timestamp())
    start = min(times, default=DEFAULT_START.timestamp())
    return start, [(t - start, event, origin) for t, event in zip(times, events, strict=True)]
