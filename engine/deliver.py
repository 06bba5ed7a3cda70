"""Delivery: claim notifications from the store, pace them per integration key, POST them to PagerDuty
(`engine.pagerduty`), and complete, retry later or dead-letter each one by what the answer means.

- Keys: stored bodies have no service key. At send time the key the current rule set gives the
  notification's service (`service_key(name)`) is put in front of the body (`render.with_key`), so a
  rotated key reaches everything queued and every retried dead letter. A notification whose service no
  longer exists is dead-lettered (`service 'x' no longer configured`). Pacing, slots and `Retry-After`
  go by that key: PagerDuty limits each integration key.
- Order: the store hands out only the head of each (service, dedup key) chain, so a resolve never
  overtakes its trigger, even while the trigger waits for a retry; different chains run in parallel,
  at most `concurrency` requests in flight in total, shared fairly among keys (`pacing.Slots`): a key
  whose requests hang delays another key's request by one request timeout at most.
- Answers: 2xx is delivered (PagerDuty answers 202 on v2 and 200 on v1). 429, v1's 403 (its rate-limit
  answer), 408, 5xx, timeouts and connection errors are retried with exponential backoff and full
  jitter (`uniform(0, min(cap, base * 2**attempt))`), waiting at least `Retry-After` when given; a
  `Retry-After` also holds back the key's other chains until it ends (without counting an attempt
  against them), while other keys go on. Any other answer is dead-lettered at once with PagerDuty's
  response. A notification still undelivered `give_up_after` seconds after its creation is
  dead-lettered with the last answer: the last attempt is made at that deadline at the latest, and a
  `Retry-After` reaching past it gives up at once.
- Pacing: GCRA per integration key (`rate_per_key` per minute, `burst`; 0 turns it off), across every
  replica on PostgreSQL (engine/pacing.py).
  A chain head that had to wait, for a token or a retry, is backlogged: before it is sent (and before it
  takes a request slot), the triggers queued right behind it are collapsed into the newest (see
  `engine.store`). Waiting for a slot does not count: under load nearly every head waits for one, and a
  collapse per page (a write) halved end-to-end throughput.
- Storage failures: when the database refuses the write that records an outcome (`complete`,
  `retry_later`, `dead_letter`), the chain stays claimed and the same write is tried again with backoff
  (at most `RECORD_RETRY_CAP` apart) until it goes through: a page PagerDuty accepted is not sent
  again while this process lives (after a restart it may be: at least once). A refused `collapse`
  sends the head as it is. One log line when writes start failing, one when they work again.
- Dry run: instead of POSTing, each notification is written as one JSON line (key masked) to a stream
  and completed into history as `delivered-dry-run`.
- Outcomes: once the outcome of an attempt is recorded, `on_outcome(id, outcome)` is awaited with the
  notification's outbox id: delivered (or written, in a dry run), dead-lettered, or retrying (the one
  outcome that is not final). This is how a waiter (`send-test`) learns what became of a notification.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, TextIO

from engine.metrics import Registry
from engine.pacing import Gcra, Pacer, Slots
from engine.pagerduty import DEFAULT_BASE_URL, Answer, Client, Verdict, classify
from engine.render import Notification
from engine.store import DEAD_LETTERED, DELIVERED, DELIVERED_DRY_RUN, LeaseLost, OutboxEntry, StorageError, Store

log = logging.getLogger("alert_engine.deliver")

CLAIM_LIMIT = 1024  # chain heads claimed at once (waiting for a token, a slot, or in flight)
POLL_INTERVAL = 1.0  # seconds: the fallback look at the outbox when nothing woke us
RECORD_RETRY_CAP = 10.0  # seconds: the longest wait between tries of a write the database refused
RETRYING = "retrying"  # the outcome of a failed attempt that will be tried again


@dataclass(frozen=True)
class DeliveryOutcome:
    """What an attempt at a notification came to, as recorded: `outcome` is DELIVERED, DELIVERED_DRY_RUN,
    DEAD_LETTERED (with its `reason`) or RETRYING; `status` and `response` are PagerDuty's answer (status
    None: no answer, or a dry run)."""

    outcome: str
    status: int | None
    response: str
    reason: str = ""

    @property
    def final(self) -> bool:
        return self.outcome != RETRYING

    @property
    def delivered(self) -> bool:
        return self.outcome in (DELIVERED, DELIVERED_DRY_RUN)


def backoff(attempt: int, base: float, cap: float, rng: random.Random) -> float:
    """Full-jitter exponential backoff before retry number `attempt + 1` (`attempt` failures before)."""
    return rng.uniform(0.0, min(cap, base * 2.0 ** min(attempt, 64)))


def _extra(entry: OutboxEntry, **more: Any) -> dict[str, Any]:
    """The structured fields of every log line about a notification (never its key)."""
    n = entry.notification
    ids = {"rule": n.rule, "service": n.service, "dedup_key": n.dedup_key, "notification_id": entry.id}
    return {**ids, **more}


class Deliverer:
    """Sends what the store holds until stopped. Call `notify()` after enqueueing to skip the poll.

    `service_key(name)` is the integration key of a service in the rule set serving now, None when it
    has none. `on_dead_letter(notification, reason)` is awaited after each dead letter is recorded, and
    `on_outcome(id, outcome)` after every recorded outcome (module docstring); their errors are logged,
    never raised.
    """

    def __init__(
        self,
        store: Store,
        *,
        service_key: Callable[[str], str | None],
        base_url: str = DEFAULT_BASE_URL,
        timeout: float = 10.0,
        concurrency: int = 16,
        give_up_after: float = 24 * 3600.0,
        rate_per_key: float = 120.0,
        burst: int = 20,
        pacer: Pacer | None = None,
        backoff_base: float = 1.0,
        backoff_cap: float = 300.0,
        metrics: Registry | None = None,
        dry_run: TextIO | None = None,
        clock: Callable[[], float] = time.time,
        rng: random.Random | None = None,
        on_dead_letter: Callable[[Notification, str], Awaitable[None]] | None = None,
        on_outcome: Callable[[int, DeliveryOutcome], Awaitable[None]] | None = None,
    ) -> None:
        self._store = store
        self._service_key = service_key
        self._base_url = base_url
        self._timeout = timeout
        self._give_up_after = give_up_after
        # the pace of each key: `pacer` (shared by the replicas), else this process's own; None: off
        self._pacer = pacer if pacer is not None or rate_per_key <= 0 else Gcra(rate_per_key / 60.0, burst)
        self._backoff_base = backoff_base
        self._backoff_cap = backoff_cap
        self._dry_run = dry_run
        self._clock = clock
        self._rng = rng or random.Random()
        self._on_dead_letter = on_dead_letter
        self._on_outcome = on_outcome
        self._slots = Slots(concurrency, clock)  # by integration key, with the Retry-After pauses
        self._reads_failing = False  # the last look at the outbox failed (logged once)
        self._writes_failing = False  # the last write of an outcome failed (logged once)
        self._tasks: set[asyncio.Task[None]] = set()
        self._wake = asyncio.Event()
        self._idle = asyncio.Event()
        self._runner: asyncio.Task[None] | None = None
        self._client: Client | None = None
        self._stop_at: float | None = None
        registry = metrics or Registry()
        self._sent = registry.counter(
            "alert_engine_notifications_sent_total", "Notifications PagerDuty accepted.", ["service"]
        )
        self._retried = registry.counter(
            "alert_engine_notifications_retried_total", "Failed attempts scheduled for a retry.", ["service"]
        )
        self._dead = registry.counter(
            "alert_engine_notifications_dead_lettered_total", "Notifications given up on.", ["service"]
        )
        self._collapsed = registry.counter(
            "alert_engine_notifications_collapsed_total",
            "Queued triggers folded into a newer one while their key was backlogged.",
            ["service"],
        )
        self._latency = registry.histogram(
            "alert_engine_delivery_latency_seconds",
            "From creation to PagerDuty's acknowledgement.",
            ["service"],
        )

    async def start(self) -> None:
        if self._dry_run is None:
            self._client = Client(self._base_url, self._timeout, self._clock)
        self._runner = asyncio.create_task(self._run(), name="alert-engine-deliver")

    def notify(self) -> None:
        """New notifications are in the outbox: look now."""
        self._idle.clear()
        self._wake.set()

    async def wait_idle(self) -> None:
        """Return once nothing is in flight, waiting for a token, or pending in the outbox."""
        await self._idle.wait()

    async def stop(self, grace: float) -> None:
        """Keep delivering for up to `grace` seconds, then stop; the rest stays in the outbox."""
        if self._runner is None:
            return
        self._stop_at = self._clock() + grace
        self.notify()
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(grace):
                await self._idle.wait()
        self._runner.cancel()
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(self._runner, *self._tasks, return_exceptions=True)
        self._runner = None
        await self._store.release()
        if self._client is not None:
            await self._client.close()
            self._client = None

    async def _run(self) -> None:
        while True:
            self._wake.clear()
            try:
                wait = await self._claim()
            except StorageError as exc:
                if not self._reads_failing:
                    log.error("cannot read the outbox (%s); trying again every %gs", exc, POLL_INTERVAL)
                self._reads_failing = True
                wait = POLL_INTERVAL
            except Exception:
                log.exception("cannot read the outbox; trying again in %gs", POLL_INTERVAL)
                wait = POLL_INTERVAL
            else:
                if self._reads_failing:
                    log.warning("the outbox can be read again")
                self._reads_failing = False
            # asyncio.timeout, not wait_for: on Python 3.11 wait_for can swallow the cancellation that
            # stop() sends when the event is set at the same moment, and this loop would never end
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(wait):
                    await self._wake.wait()

    async def _claim(self) -> float:
        """Start a delivery for every chain head that is due; how long to sleep unless woken."""
        free = CLAIM_LIMIT - len(self._tasks)
        if free > 0:
            for entry in await self._store.claim(now=self._clock(), limit=free):
                task = asyncio.create_task(self._deliver(entry))
                self._tasks.add(task)
                task.add_done_callback(self._finished)
        due = await self._store.next_due()
        beyond_stop = self._stop_at is not None and due is not None and due > self._stop_at
        if not self._tasks and (due is None or beyond_stop):
            self._idle.set()
        if due is None or len(self._tasks) >= CLAIM_LIMIT:
            return POLL_INTERVAL
        return min(max(due - self._clock(), 0.0), POLL_INTERVAL)

    def _finished(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        self._wake.set()  # its chain may have a next head; the loop may be idle now

    async def _deliver(self, entry: OutboxEntry) -> None:
        try:
            service = entry.notification.service
            key = self._service_key(service)
            if key is None:
                reason = f"service '{service}' no longer configured"
                await self._bury(entry, Answer(None, ""), reason, self._clock(), _extra(entry))
                return
            if self._dry_run is not None:
                await self._write_dry_run(entry, key)
                return
            waited = entry.attempts > 0
            if self._pacer is not None:
                waited = await self._paced(self._pacer, entry, key) or waited
            if waited:
                entry = await self._collapse(entry)
            async with self._slots.slot(key):
                assert self._client is not None, "start() first"
                answer = await self._client.send(entry.notification, entry.payload, key)
            await self._settle(entry, answer, key)
        except LeaseLost:
            log.warning("another replica claimed this notification while this one was frozen or cut off for "
                        "longer than cluster.delivery_lease: it is theirs now (sent twice if both sent it)",
                        extra=_extra(entry))
            with contextlib.suppress(Exception):
                await self._store.release([entry])  # this store's own record of the lease
        except Exception:
            pause = min(self._backoff_cap, RECORD_RETRY_CAP)
            log.exception("delivery failed; it stays in the outbox, tried again in %gs", pause, extra=_extra(entry))
            await asyncio.sleep(pause)  # not at once: whatever failed would fail again in a loop
            with contextlib.suppress(Exception):
                await self._store.release([entry])

    async def _paced(self, pacer: Pacer, entry: OutboxEntry, key: str) -> bool:
        """Wait for the key's next send; whether that took any time."""
        delay = await pacer.reserve(key)
        if delay <= 0:
            return False
        log.debug("paced: waiting %.3fs for the key's next send", delay, extra=_extra(entry))
        await asyncio.sleep(delay)
        return True

    async def _collapse(self, entry: OutboxEntry) -> OutboxEntry:
        try:
            newest = await self._store.collapse(entry, now=self._clock())
        except StorageError as exc:  # nothing changed: the head goes as it is
            self._write_failed(exc, _extra(entry))
            return entry
        folded = newest.collapsed - entry.collapsed
        if newest.id != entry.id:
            self._collapsed.inc(folded, service=entry.notification.service)
            log.info(
                "collapsed %d queued trigger(s) into notification %d", folded, newest.id, extra=_extra(newest)
            )
        return newest

    async def _settle(self, entry: OutboxEntry, answer: Answer, key: str) -> None:
        service = entry.notification.service
        verdict = classify(entry.notification.api, answer.status)
        now = self._clock()
        attempt = entry.attempts + 1
        extra = _extra(entry, attempt=attempt, status=answer.status)
        if verdict is Verdict.DELIVERED:
            self._sent.inc(service=service)
            self._latency.observe(max(0.0, now - entry.created), service=service)
            log.info("delivered (%s)", answer.describe(), extra=extra)
            await self._record(entry, lambda: self._store.complete(
                entry, now=now, status=answer.status, response=answer.response))
            await self._report(entry, DeliveryOutcome(DELIVERED, answer.status, answer.response))
            if entry.attempts:
                await self._recovered(service, key, now)
            return
        if verdict is Verdict.REJECTED:
            reason = f"PagerDuty rejected it: HTTP {answer.status}"
            await self._bury(entry, answer, reason, now, extra)
            return
        deadline = entry.created + self._give_up_after
        wait = backoff(entry.attempts, self._backoff_base, self._backoff_cap, self._rng)
        if answer.retry_after is not None:
            wait = max(wait, answer.retry_after)
            self._slots.pause(key, now + answer.retry_after)
            if self._pacer is not None:  # for every replica: the shared pace
                await self._pacer.pause(key, answer.retry_after)
            if now + answer.retry_after > deadline:
                reason = f"gave up: Retry-After {answer.retry_after:g}s reaches past give_up_after"
                await self._bury(entry, answer, reason, now, extra)
                return
        if now >= deadline:
            reason = f"gave up: not delivered within {self._give_up_after:g}s (last: {answer.describe()})"
            await self._bury(entry, answer, reason, now, extra)
            return
        due = min(now + wait, deadline)
        self._retried.inc(service=service)
        log.warning("attempt failed (%s); retrying in %.3fs", answer.describe(), due - now, extra=extra)
        await self._record(entry, lambda: self._store.retry_later(
            entry, due=due, status=answer.status, response=answer.response))
        await self._report(entry, DeliveryOutcome(RETRYING, answer.status, answer.response))

    async def _record(self, entry: OutboxEntry, write: Callable[[], Awaitable[None]]) -> None:
        """Run the write that records `entry`'s outcome and ends its lease. While the database refuses
        it, the chain stays claimed (so nothing sends it again) and the write is tried again with
        backoff, until it goes through or delivery stops (module docstring)."""
        failures = 0
        while True:
            try:
                await write()
            except StorageError as exc:
                self._write_failed(exc, _extra(entry))
                cap = min(self._backoff_cap, RECORD_RETRY_CAP)
                await asyncio.sleep(backoff(failures, self._backoff_base, cap, self._rng))
                failures += 1
                continue
            if failures:
                if self._writes_failing:
                    log.warning("the database takes writes again", extra=_extra(entry))
                self._writes_failing = False
                log.info("recorded after %d refused write(s)", failures, extra=_extra(entry))
            return

    def _write_failed(self, exc: StorageError, extra: dict[str, Any]) -> None:
        """Log the first refused write of a streak (not every try)."""
        if not self._writes_failing:
            log.error("the database refuses writes (%s): outcomes stay here and are recorded once it takes "
                      "them again", exc, extra=extra)
        self._writes_failing = True

    async def _recovered(self, service: str, key: str, now: float) -> None:
        """A retry went through: PagerDuty answers this service again. Its other notifications waiting
        out a backoff go now (paced by the token bucket), instead of one by one over as many minutes as
        the outage lasted. Not while PagerDuty's own Retry-After for the key still runs: it is honoured."""
        if self._slots.paused_until(key) is not None:
            return
        try:
            woken = await self._store.expedite(service, now=now)
        except StorageError as exc:  # they keep their own due times
            self._write_failed(exc, {"service": service})
            return
        if woken:
            log.info("PagerDuty answers again: %d waiting retr%s due now", woken, "y is" if woken == 1 else "ies are",
                     extra={"service": service})
            self.notify()

    async def _bury(
        self, entry: OutboxEntry, answer: Answer, reason: str, now: float, extra: dict[str, Any]
    ) -> None:
        await self._record(entry, lambda: self._store.dead_letter(
            entry, now=now, reason=reason, status=answer.status, response=answer.response))
        self._dead.inc(service=entry.notification.service)
        log.error("dead-lettered: %s", reason, extra=extra)
        if self._on_dead_letter is not None:
            try:
                await self._on_dead_letter(entry.notification, reason)
            except Exception:
                log.exception("the dead letter hook failed", extra=extra)
        await self._report(entry, DeliveryOutcome(DEAD_LETTERED, answer.status, answer.response, reason))

    async def _report(self, entry: OutboxEntry, outcome: DeliveryOutcome) -> None:
        """Tell `on_outcome` what became of `entry` (recorded already)."""
        if self._on_outcome is None:
            return
        try:
            await self._on_outcome(entry.id, outcome)
        except Exception:
            log.exception("the outcome hook failed", extra=_extra(entry))

    async def _write_dry_run(self, entry: OutboxEntry, key: str) -> None:
        assert self._dry_run is not None
        n = entry.notification
        line = {
            "rule": n.rule,
            "service": n.service,
            "api": n.api,
            "url": n.url(self._base_url),
            "dedup_key": n.dedup_key,
            "action": n.action,
            "body": n.masked_body(key),
        }
        self._dry_run.write(json.dumps(line, ensure_ascii=False) + "\n")
        self._dry_run.flush()
        log.info("dry run: written, not sent", extra=_extra(entry))
        now = self._clock()
        await self._record(entry, lambda: self._store.complete(
            entry, now=now, status=None, response="", outcome=DELIVERED_DRY_RUN))
        await self._report(entry, DeliveryOutcome(DELIVERED_DRY_RUN, None, ""))
