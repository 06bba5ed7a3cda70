"""Events -> matches -> notifications -> the outbox, acknowledged only once durable.

The request is all or nothing: every notification of every event in it goes to the outbox in one
`enqueue` (one transaction, shared with concurrent requests by the store's group commit).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from engine.fanout import fan_out
from engine.metrics import Registry
from engine.render import Notification
from engine.rules.ruleset import RuleSet
from engine.store import Store


@dataclass(frozen=True)
class Accepted:
    accepted: int  # events
    matched: int  # events that matched at least one rule
    notifications: int  # notifications committed to the outbox


class Intake:
    """Turns accepted events into committed notifications and wakes delivery."""

    def __init__(self, store: Store, wake: Callable[[], None], metrics: Registry) -> None:
        self._store = store
        self._wake = wake
        self._received = metrics.counter("alert_engine_events_received_total", "Events accepted by the API.")
        self._matched = metrics.counter("alert_engine_events_matched_total",
                                        "Events that matched at least one rule.")
        self._enqueued = metrics.counter("alert_engine_notifications_enqueued_total",
                                         "Notifications committed to the outbox.", ["service"])

    def notifications(self, ruleset: RuleSet, events: Sequence[dict[str, Any]], now: float
                      ) -> tuple[int, list[Notification]]:
        """(events matched, notifications) for a batch, on one rule set. Pure: no I/O."""
        moment = datetime.fromtimestamp(now, UTC)
        matched = 0
        out: list[Notification] = []
        for event in events:
            matches = ruleset.match(event)
            if matches:
                matched += 1
                out.extend(fan_out(ruleset, matches, moment))
        return matched, out

    async def accept(self, ruleset: RuleSet, events: Sequence[dict[str, Any]], now: float) -> Accepted:
        """Match and render every event on `ruleset`, commit every notification, then wake delivery."""
        matched, notifications = self.notifications(ruleset, events, now)
        await self.enqueue(notifications, now)
        self._received.inc(len(events))
        self._matched.inc(matched)
        return Accepted(len(events), matched, len(notifications))

    async def enqueue(self, notifications: Sequence[Notification], now: float) -> None:
        """Commit notifications (any source: events, self-alerts, test pages) and wake delivery."""
        if not notifications:
            return
        await self._store.enqueue(notifications, now=now)
        for n in notifications:
            self._enqueued.inc(service=n.service)
        self._wake()
