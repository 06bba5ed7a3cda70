"""Events -> decisions -> the outbox, acknowledged only once durable; the one writer of the alert state.

Every change to the alert state (an event's decisions, a Sentry resolve, the timed work of the tick, a
silence, the state a reload lets go) is a *step*: it updates the `State` in place and yields the
notifications it causes, one event at a time. Steps run in batches, one batch at a time: the steps queued
while the previous batch was committing run together, in arrival order, and their notifications and state
changes go to the store in one `enqueue` (one transaction: group commit).

When that commit fails, the state of every group and silence the batch touched is read back from the
store, so the state is again exactly what the last successful commit left (no throttle set by a trigger
that was never stored, no threshold count consumed by it), and every step of the batch fails with
`StorageError` (the client gets 503 and may retry). A batch starts only once the previous one is committed
or rolled back, so a rollback never undoes a decision somebody was already told about.

The steps that decide (`accept`, `resolve`, `tick`) go through the stages in order: `decide` (`tick`,
`resolve_key`) returns decisions, `render_decisions` turns the pages and resolves into notifications, and
the holds are counted by reason (`alert_engine_holds_total`) once their batch is committed.

A long batch yields to the event loop every few milliseconds, so `/healthz` and other requests are
answered while a large request is being decided. Requests are bounded up front: `RequestTooLarge` for a
request whose matches could cause more than `max_notifications` notifications, decided before anything
changes.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from engine.decide import decide, resolve_key, tick
from engine.decisions import HOLD_REASONS, Decision, Hold
from engine.fanout import render_decisions
from engine.metrics import Registry
from engine.render import Notification
from engine.rules.ruleset import Match, RuleSet
from engine.silences import restore_silence
from engine.state import State, StateChanges
from engine.store import StorageError, Store

log = logging.getLogger("alert_engine.intake")

YIELD_EVERY = 0.005  # seconds of deciding (or matching) between two turns given back to the event loop

# A step: given `now`, update the state and yield the notifications of each unit of work (an event).
Step = Callable[[float], Iterator[Sequence[Notification]]]


class RequestTooLarge(ValueError):
    """A request that would cause more notifications than allowed: answer 413; nothing was changed."""


@dataclass(frozen=True)
class Accepted:
    accepted: int  # events
    matched: int  # events that matched at least one rule
    notifications: int  # notifications committed to the outbox


class _Deciding:
    """A step that decides (`decisions(now)`: a list of decisions per event) and yields their notifications.
    `holds`: those of its last run (a step is run again when another step of its batch fails)."""

    def __init__(self, ruleset: RuleSet, decisions: Callable[[float], Iterator[list[Decision]]]) -> None:
        self._ruleset = ruleset
        self._decisions = decisions
        self.holds: list[Hold] = []

    def __call__(self, now: float) -> Iterator[list[Notification]]:
        self.holds = []
        for decided in self._decisions(now):
            self.holds += [d for d in decided if isinstance(d, Hold)]
            yield render_decisions(self._ruleset, decided, now)


# What an inbox row's step answers (as JSON in the row), given the notifications it caused.
Result = Callable[[list[Notification]], dict[str, Any]]


@dataclass
class _Queued:
    step: Step
    future: asyncio.Future[list[Notification]]
    inbox: tuple[int, Result] | None = None  # the inbox row the step decides, and its result
    notifications: list[Notification] = field(default_factory=list)


class Intake:
    """Runs steps against the state, commits what they decide, and wakes delivery.

    `guard()` is called before every commit and raises `StorageError` when the store must not be
    written (the database file was deleted); `clock` gives `now` for each batch.
    """

    def __init__(self, store: Store, state: State, wake: Callable[[], None], metrics: Registry, *,
                 max_notifications: int = 20_000, guard: Callable[[], None] = lambda: None,
                 clock: Callable[[], float] = time.time) -> None:
        self._store = store
        self.state = state
        self._wake = wake
        self._guard = guard
        self._clock = clock
        self.max_notifications = max_notifications
        self._queue: list[_Queued] = []
        self._runner: asyncio.Task[None] | None = None
        self._received = metrics.counter("alert_engine_events_received_total", "Events accepted by the API.")
        self._matched = metrics.counter("alert_engine_events_matched_total",
                                        "Events that matched at least one rule.")
        self._enqueued = metrics.counter("alert_engine_notifications_enqueued_total",
                                         "Notifications committed to the outbox.", ["service"])
        self._rollbacks = metrics.counter("alert_engine_state_rollbacks_total",
                                          "Batches of decisions undone because their commit failed.")
        self._holds = metrics.counter("alert_engine_holds_total", "Triggers held back (counted, not paged), "
                                      "by reason: throttled, muted, silenced, inhibited.", ["reason"])
        metrics.prime("reason", HOLD_REASONS)

    # -- what callers submit --------------------------------------------------------------------------

    async def accept(self, ruleset: RuleSet, events: Sequence[dict[str, Any]], *, origin: str | None = None,
                     inbox: int | None = None) -> Accepted:
        """Match and decide every event on `ruleset`, commit the notifications, then wake delivery.
        `origin`: the endpoint the events came in by (`sentry.ORIGIN`), None for POST /v1/events;
        `inbox`: the inbox row they came in (marked decided in the same commit)."""
        matches = await self.match(ruleset, events)
        matched = sum(1 for m in matches if m)

        def decisions(now: float) -> Iterator[list[Decision]]:
            for event, found in zip(events, matches, strict=True):
                yield decide(ruleset, self.state, event, now, found, origin=origin)

        def result(notifications: list[Notification]) -> dict[str, Any]:
            return {"accepted": len(events), "matched": matched, "notifications": len(notifications)}

        notifications = await self._decide(ruleset, decisions, None if inbox is None else (inbox, result))
        self._received.inc(len(events))
        self._matched.inc(matched)
        return Accepted(len(events), matched, len(notifications))

    async def resolve(self, ruleset: RuleSet, dedup_key: str, *, inbox: int | None = None) -> int:
        """Resolve the open alert(s) with this dedup key on every service paged; how many resolves."""
        def result(notifications: list[Notification]) -> dict[str, Any]:
            return {"resolved": len(notifications)}

        return len(await self._decide(ruleset, lambda now: iter([resolve_key(ruleset, self.state, dedup_key)]),
                                      None if inbox is None else (inbox, result)))

    async def tick(self, ruleset: RuleSet) -> list[Notification]:
        """The timed work due now (`engine.decide.tick`), committed; its notifications."""
        return await self._decide(ruleset, lambda now: iter([tick(ruleset, self.state, now)]))

    async def submit(self, step: Step, inbox: tuple[int, Result] | None = None) -> list[Notification]:
        """Run `step` in the next batch; its notifications once they are committed with its state changes
        (and its inbox row, marked decided with its result). Raises StorageError (nothing of the step
        remains) when the commit fails."""
        loop = asyncio.get_running_loop()
        queued = _Queued(step, loop.create_future(), inbox)
        self._queue.append(queued)
        if self._runner is None or self._runner.done():
            self._runner = loop.create_task(self._run(), name="alert-engine-intake")
        return await asyncio.shield(queued.future)

    async def enqueue(self, notifications: Sequence[Notification], now: float) -> list[int]:
        """Commit notifications that change no alert state (self-alerts, test pages), due at `now`; their
        outbox ids."""
        if not notifications:
            return []
        ids = await self._store.enqueue(notifications, now=now)
        self._committed(notifications)
        return ids

    async def _decide(self, ruleset: RuleSet, decisions: Callable[[float], Iterator[list[Decision]]],
                      inbox: tuple[int, Result] | None = None) -> list[Notification]:
        """Submit the step that renders what `decisions` decides; count its holds once it is committed."""
        step = _Deciding(ruleset, decisions)
        notifications = await self.submit(step, inbox)
        for hold in step.holds:
            self._holds.inc(reason=hold.reason)
        return notifications

    # -- the batches ----------------------------------------------------------------------------------

    async def match(self, ruleset: RuleSet, events: Sequence[dict[str, Any]]) -> list[list[Match]]:
        """Every event's matches, giving the loop a turn now and then; RequestTooLarge past the limit (a
        replica that hands the events to the decider checks this before answering)."""
        matches: list[list[Match]] = []
        pages = 0
        turn = time.perf_counter()
        for event in events:
            found = ruleset.match(event)
            matches.append(found)
            pages += sum(len(m.rule.services) for m in found)
            if time.perf_counter() - turn > YIELD_EVERY:
                await asyncio.sleep(0)
                turn = time.perf_counter()
        if pages > self.max_notifications:
            raise RequestTooLarge(f"the request's events match rules that would page {pages} times, more than "
                                  f"ingest.max_notifications ({self.max_notifications}); send smaller batches")
        return matches

    async def _run(self) -> None:
        while self._queue:
            batch, self._queue = self._queue, []
            await self._run_batch(batch)

    async def _run_batch(self, batch: list[_Queued]) -> None:
        now = self._clock()
        failed: BaseException | None = None
        turn = time.perf_counter()
        for i, queued in enumerate(batch):
            try:
                for notifications in queued.step(now):
                    queued.notifications += notifications
                    if time.perf_counter() - turn > YIELD_EVERY:
                        await asyncio.sleep(0)
                        turn = time.perf_counter()
            except Exception as exc:  # a bug in deciding: undo the batch, fail this step, redo the others
                log.exception("deciding failed; the batch is undone and its other requests decided again")
                await self._rollback(self.state.changes(), exc)
                queued.future.set_exception(exc)
                self._queue[:0] = [_Queued(q.step, q.future, q.inbox) for j, q in enumerate(batch) if j != i]
                return
        changes = self.state.changes()
        notifications = [n for queued in batch for n in queued.notifications]
        decided = [(q.inbox[0], json.dumps(q.inbox[1](q.notifications), separators=(",", ":")))
                   for q in batch if q.inbox is not None]
        try:
            self._guard()
            await self._store.enqueue(notifications, now=now, state=changes, decided=decided)
        except StorageError as exc:
            failed = exc
        except Exception as exc:
            log.exception("committing decisions failed")
            failed = StorageError(f"commit failed: {exc}")
        if failed is not None:
            await self._rollback(changes, failed)
            for queued in batch:
                queued.future.set_exception(failed)
            return
        self._committed(notifications)
        for queued in batch:
            queued.future.set_result(queued.notifications)

    async def _rollback(self, changes: StateChanges, cause: BaseException) -> None:
        """Put the groups and silences `changes` touched back to what the store holds."""
        self._rollbacks.inc()
        groups = sorted({(rule, key) for rule, key, _ in changes.upserts} | set(changes.deletes))
        silence_ids = sorted({i for i, _ in changes.silences} | set(changes.silence_deletes))
        try:
            rows, silence_rows = await self._store.load_state(groups=groups, silences=silence_ids)
        except StorageError as exc:
            # the store can be neither written nor read: the state cannot be proven right any more
            self.state.poisoned = f"after a failed commit ({cause}), the state could not be read back: {exc}"
            log.critical("%s; nothing is decided until it is read again from the database", self.state.poisoned)
            return
        self.state.replace(groups, rows, silence_ids, [restore_silence(text) for _, text in silence_rows])
        log.warning("a commit failed (%s): %d alert group(s) and %d silence(s) put back as stored", cause,
                    len(groups), len(silence_ids))

    def _committed(self, notifications: Sequence[Notification]) -> None:
        for n in notifications:
            self._enqueued.inc(service=n.service)
        if notifications:
            self._wake()
