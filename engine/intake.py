"""Events -> matches -> decisions -> the outbox, acknowledged only once durable.

The request is all or nothing: every notification of every event in it goes to the outbox in one
`enqueue`, together with the state changes that decided them (one transaction, shared with concurrent
requests by the store's group commit). Deciding and taking the state changes happen with no await in
between, so one request's changes never travel with another's notifications.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from engine.decide import decide, resolve_key
from engine.metrics import Registry
from engine.render import Notification
from engine.rules.ruleset import RuleSet
from engine.state import State, StateChanges
from engine.store import Store


@dataclass(frozen=True)
class Accepted:
    accepted: int  # events
    matched: int  # events that matched at least one rule
    notifications: int  # notifications committed to the outbox


class Intake:
    """Turns accepted events into committed notifications and wakes delivery."""

    def __init__(self, store: Store, state: State, wake: Callable[[], None], metrics: Registry) -> None:
        self._store = store
        self.state = state
        self._wake = wake
        self._received = metrics.counter("alert_engine_events_received_total", "Events accepted by the API.")
        self._matched = metrics.counter("alert_engine_events_matched_total",
                                        "Events that matched at least one rule.")
        self._enqueued = metrics.counter("alert_engine_notifications_enqueued_total",
                                         "Notifications committed to the outbox.", ["service"])

    async def accept(self, ruleset: RuleSet, events: Sequence[dict[str, Any]], now: float, *,
                     origin: str | None = None) -> Accepted:
        """Match and decide every event on `ruleset`, commit the notifications, then wake delivery.
        `origin`: the endpoint the events came in by (`sentry.ORIGIN`), None for POST /v1/events."""
        matched = 0
        notifications: list[Notification] = []
        for event in events:
            matches = ruleset.match(event)
            matched += bool(matches)
            notifications += decide(ruleset, self.state, event, now, matches, origin=origin)
        await self.enqueue(notifications, now, self.state.changes())
        self._received.inc(len(events))
        self._matched.inc(matched)
        return Accepted(len(events), matched, len(notifications))

    async def resolve(self, ruleset: RuleSet, dedup_key: str, now: float) -> int:
        """Resolve the open alert(s) with this dedup key on every service paged; how many resolves."""
        notifications = resolve_key(ruleset, self.state, dedup_key)
        await self.enqueue(notifications, now, self.state.changes())
        return len(notifications)

    async def enqueue(self, notifications: Sequence[Notification], now: float,
                      changes: StateChanges | None = None) -> None:
        """Commit notifications (from events, timed work, self-alerts, test pages) with the state
        changes behind them, and wake delivery."""
        if not notifications and not changes:
            return
        await self._store.enqueue(notifications, now=now, state=changes)
        for n in notifications:
            self._enqueued.inc(service=n.service)
        if notifications:
            self._wake()
