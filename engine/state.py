"""The engine's memory between events: per-(rule, alert) groups and silences, and their stored form.

`engine.decide` reads and updates a `State` in place and marks what it touched (every group it changes
is touched before the step ends); `engine.intake` writes those changes in the same transaction as the
notifications they caused (`StateChanges`), so a restart resumes exactly where the last acknowledged
event left off, and puts the touched groups back as stored (`replace`) when that transaction fails.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from typing import Any

from engine.rules.conditions import Condition
from engine.sources import sentry


@dataclass
class Group:
    """One alert of one rule: its counters, whether it is open, and where its trigger went."""

    rule: str
    key: str  # the dedup key: the alert's identity
    labels: dict[str, Any] = field(default_factory=dict)  # field values other rules' inhibit.equal compare
    hits: list[float] = field(default_factory=list)  # threshold: match times inside the window
    buckets: dict[int, int] = field(default_factory=dict)  # spike: counts per bucket of window/SPIKE_BUCKETS
    value: Any = None  # change: the last value seen
    has_value: bool = False
    last_seen: float | None = None  # the last matching event
    event: dict[str, Any] | None = None  # the event a (re)notification is rendered from
    origin: str | None = None  # the endpoint that event came in by ("sentry": Sentry resolves it); None: /v1/events
    open: bool = False  # triggered and not resolved
    held: bool = False  # open, but its page was held by a mute window that renotifies at its end
    services: list[str] = field(default_factory=list)  # the services its trigger was sent to
    last_trigger: float | None = None  # when a trigger last went out (throttle)
    suppressed: int = 0  # triggers held back since the last one that went out
    suppressed_first: float | None = None
    suppressed_last: float | None = None

    def dump(self) -> str:
        data = asdict(self)
        data["buckets"] = {str(k): v for k, v in self.buckets.items()}
        return json.dumps(data, separators=(",", ":"), default=str)

    @classmethod
    def load(cls, text: str) -> Group:
        data = json.loads(text)
        data["buckets"] = {int(k): v for k, v in data.get("buckets", {}).items()}
        if "origin" not in data:  # stored before origins were: Sentry's events were those with source: sentry
            data["origin"] = sentry.ORIGIN if (data.get("event") or {}).get("source") == sentry.SOURCE else None
        return cls(**data)


@dataclass
class Silence:
    """An operator's silence: matches it covers are counted, not paged, until `until`."""

    id: int
    match: Any  # the condition as given, kept for display
    condition: Condition = field(repr=False)
    until: float
    comment: str = ""
    created_by: str = ""
    created: float = 0.0
    covered: int = 0  # matches held back by it

    def active(self, now: float) -> bool:
        return now < self.until

    def view(self) -> dict[str, Any]:
        return {"id": self.id, "match": self.match, "until": self.until, "comment": self.comment,
                "created_by": self.created_by, "created": self.created, "covered": self.covered}

    def dump(self) -> str:
        return json.dumps(self.view(), separators=(",", ":"))


@dataclass(frozen=True)
class StateChanges:
    """What to write: groups to upsert (rule, key, json) and delete (rule, key); silences likewise."""

    upserts: tuple[tuple[str, str, str], ...] = ()
    deletes: tuple[tuple[str, str], ...] = ()
    silences: tuple[tuple[int, str], ...] = ()
    silence_deletes: tuple[int, ...] = ()

    def __bool__(self) -> bool:
        return bool(self.upserts or self.deletes or self.silences or self.silence_deletes)


class State:
    """Every group by rule name and key, the silences, and what changed since the last `changes()`."""

    def __init__(self, started: float = 0.0) -> None:
        self.groups: dict[str, dict[str, Group]] = {}
        self.silences: dict[int, Silence] = {}
        self.started = started  # absent clocks never run from before this (no false "absent" at start-up)
        self.poisoned: str | None = None  # why the state can no longer be trusted (a rollback that failed)
        self._dirty: set[tuple[str, str]] = set()
        self._deleted: set[tuple[str, str]] = set()
        self._dirty_silences: set[int] = set()
        self._deleted_silences: set[int] = set()

    def group(self, rule: str, key: str) -> Group:
        by_key = self.groups.setdefault(rule, {})
        g = by_key.get(key)
        if g is None:
            g = by_key[key] = Group(rule, key)
            self._deleted.discard((rule, key))
        return g

    def touch(self, g: Group) -> None:
        self._dirty.add((g.rule, g.key))

    def drop(self, g: Group) -> None:
        by_key = self.groups.get(g.rule, {})
        if by_key.pop(g.key, None) is not None:
            self._dirty.discard((g.rule, g.key))
            self._deleted.add((g.rule, g.key))
        if not by_key:
            self.groups.pop(g.rule, None)

    def touch_silence(self, silence: Silence) -> None:
        self.silences[silence.id] = silence
        self._dirty_silences.add(silence.id)

    def drop_silence(self, silence: Silence) -> None:
        self.silences.pop(silence.id, None)
        self._dirty_silences.discard(silence.id)
        self._deleted_silences.add(silence.id)

    def open_groups(self, rule: str) -> list[Group]:
        return [g for g in self.groups.get(rule, {}).values() if g.open]

    def retain(self, rules: set[str]) -> list[Group]:
        """Keep the state of these rules only (after a reload); the open alerts dropped with the rest."""
        dropped: list[Group] = []
        for name in [r for r in self.groups if r not in rules]:
            for g in list(self.groups[name].values()):
                if g.open:
                    dropped.append(g)
                self.drop(g)
        return dropped

    def changes(self) -> StateChanges:
        """What changed since the last call, ready to store; the record starts afresh."""
        upserts = tuple((r, k, self.groups[r][k].dump()) for r, k in sorted(self._dirty))
        silences = tuple((i, self.silences[i].dump()) for i in sorted(self._dirty_silences) if i in self.silences)
        changes = StateChanges(upserts, tuple(sorted(self._deleted)), silences, tuple(sorted(self._deleted_silences)))
        self._dirty.clear()
        self._deleted.clear()
        self._dirty_silences.clear()
        self._deleted_silences.clear()
        return changes

    def restore(self, groups: list[tuple[str, str, str]]) -> None:
        """Load stored groups; absent clocks restart at `started`."""
        for rule, key, text in groups:
            g = Group.load(text)
            if g.last_seen is not None and g.last_seen < self.started:
                g.last_seen = self.started
            self.groups.setdefault(rule, {})[key] = g

    def replace(self, keys: list[tuple[str, str]], groups: list[tuple[str, str, str]], silence_ids: list[int],
                silences: list[Silence]) -> None:
        """Put these groups and silences back as stored (`groups`, `silences`: the stored ones among
        them; the others do not exist), after a failed commit. Nothing is marked changed."""
        for rule, key in keys:
            by_key = self.groups.get(rule, {})
            by_key.pop(key, None)
            if not by_key:
                self.groups.pop(rule, None)
        self.restore(groups)
        for ident in silence_ids:
            self.silences.pop(ident, None)
        for silence in silences:
            self.silences[silence.id] = silence
