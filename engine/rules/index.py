"""The candidate index: which rules can possibly match an event, without asking every rule.

Each rule is filed under one of its anchors (`Condition.anchors`: an `equals`/`in` leaf that every match
of the rule requires) — the one whose keys are shared with the fewest other rules. Rules without an
anchor are always candidates. A lookup resolves each anchored field of the event once and does one dict
lookup per value found, so with 10,000 rules that each pin `service`, an event yields a handful.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Sequence
from typing import Any

from engine.rules.conditions import (
    MISSING,
    WILDCARD,
    Anchor,
    Condition,
    Event,
    FieldPath,
    equality_key,
    field_values,
    folded_key,
    value_getter,
)

Buckets = dict[Any, list[int]]  # equality key -> rule positions, ascending


class CandidateIndex:
    """Built once per rule set from the rules' conditions in rule-file order (None: a disabled rule)."""

    __slots__ = ("_always", "_by_value", "_by_values")

    def __init__(self, conditions: Sequence[Condition | None]) -> None:
        sharing = Counter(
            (a.path, a.ignore_case, key)
            for condition in conditions if condition is not None
            for a in condition.anchors for key in a.keys
        )

        def cost(a: Anchor) -> tuple[int, int]:
            return sum(sharing[(a.path, a.ignore_case, key)] for key in a.keys), len(a.keys)

        always: list[int] = []
        tables: dict[tuple[FieldPath, bool], Buckets] = {}
        for position, condition in enumerate(conditions):
            if condition is None:
                continue
            if not condition.anchors:
                always.append(position)
                continue
            best = min(condition.anchors, key=cost)
            buckets = tables.setdefault((best.path, best.ignore_case), {})
            for key in best.keys:
                buckets.setdefault(key, []).append(position)
        self._always = always
        # (getter, casefold?, buckets) per field without a wildcard; (path, casefold?, buckets) with one.
        self._by_value: tuple[tuple[Callable[[Event], Any], bool, Buckets], ...] = tuple(
            (value_getter(path), ignore_case, buckets)
            for (path, ignore_case), buckets in tables.items() if WILDCARD not in path
        )
        self._by_values: tuple[tuple[FieldPath, bool, Buckets], ...] = tuple(
            (path, ignore_case, buckets)
            for (path, ignore_case), buckets in tables.items() if WILDCARD in path
        )

    def candidates(self, event: Event) -> list[int]:
        """Rule positions, ascending: every rule whose condition holds for `event` is among them."""
        hits: list[Sequence[int]] = []
        for get, ignore_case, buckets in self._by_value:
            value = get(event)
            if value is MISSING:
                continue
            hit: Sequence[int] | None
            if type(value) is str:
                hit = buckets.get(value.casefold() if ignore_case else value)
            else:
                hit = buckets.get(equality_key(value))
            if hit:
                hits.append(hit)
        for path, ignore_case, buckets in self._by_values:
            key = folded_key if ignore_case else equality_key
            found: set[int] = set()
            for value in field_values(event, path):
                found.update(buckets.get(key(value), ()))
            if found:
                hits.append(tuple(found))
        merged = list(self._always)  # a rule is filed under one key of one field: no duplicates
        for hit in hits:
            merged.extend(hit)
        if hits:
            merged.sort()
        return merged

    @property
    def always(self) -> tuple[int, ...]:
        """The rules with no anchor: candidates for every event."""
        return tuple(self._always)
