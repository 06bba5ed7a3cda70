"""`send-test`: a test page to one service, and what PagerDuty answered to it.

The trigger is queued like any page (durable, paced, retried). `SendTest.send` then waits, at most `wait`
seconds, for delivery to settle it: the deliverer reports every recorded outcome by outbox id
(`SendTest.outcome`, its `on_outcome` hook), so nothing polls the database.

- Accepted (delivered): its resolve is queued, due `resolve_after` after the request.
- Refused (a dead letter, with PagerDuty's answer): no resolve is queued, since there is no incident to
  resolve; the dead letter raises the dead-letter self-alert like any other.
- Still retrying when the wait ends: the answer says so (with the last attempt's answer), and the resolve
  is queued once the trigger is delivered. That resolve is held in memory until then: a restart before
  it leaves the test incident open (the trigger itself is in the outbox and still goes out).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field

from engine.deliver import DeliveryOutcome
from engine.own_pages import test_page
from engine.pagerduty import Verdict, classify, explain
from engine.render import Notification
from engine.rules.ruleset import Service
from engine.store import StorageError

log = logging.getLogger("alert_engine.sendtest")

DEFAULT_WAIT = 30.0  # seconds `send` waits for PagerDuty's answer by default
MAX_WAIT = 120.0  # the longest wait a request may ask for
NO_RESOLVE = "none asked for (resolve_after 0): the test incident stays open until resolved in PagerDuty"

# commits notifications (no alert state) due at a time, and returns their outbox ids: Intake.enqueue
Enqueue = Callable[[Sequence[Notification], float], Awaitable[list[int]]]


@dataclass(frozen=True)
class SendTestResult:
    """What became of one test page by the end of the wait."""

    service: str
    api: str
    dedup_key: str
    outcome: DeliveryOutcome | None  # the final outcome; None while PagerDuty has not accepted or refused it
    last: DeliveryOutcome | None  # while retrying: the last attempt's answer, if there was one
    resolve: str  # what became of the resolve, for people: "queued: due in 30s", "not queued: ..."

    def refusal(self) -> str:
        """Why the test page is a dead letter, with PagerDuty's answer (only for a dead-lettered one)."""
        assert self.outcome is not None and not self.outcome.delivered
        o = self.outcome
        if o.status is not None and classify(self.api, o.status) is Verdict.REJECTED:
            return f"PagerDuty refused the test page: HTTP {o.status}: {explain(o.response)}"
        answered = f" (PagerDuty's last answer: {explain(o.response)})" if o.status is not None else ""
        return f"the test page was not delivered: {o.reason}{answered}"

    def still_queued(self, waited: float) -> str:
        """What a test page that PagerDuty has neither accepted nor refused yet is waiting for."""
        last = self.last
        if last is None:
            seen = "no answer yet"
        elif last.status is None:
            seen = f"the last attempt got no answer: {explain(last.response)}"
        else:
            seen = f"the last attempt got HTTP {last.status}: {explain(last.response)}"
        return (f"PagerDuty has not accepted the test page within {waited:g}s ({seen}): it is still queued "
                "and will be retried until pagerduty.give_up_after")


@dataclass
class _Waiting:
    settled: asyncio.Future[tuple[DeliveryOutcome, str]]  # the final outcome, and what became of the resolve
    resolve: Notification | None
    after: float  # resolve_after: the resolve is due this long after the request
    due: float
    last: DeliveryOutcome | None = field(default=None)


class SendTest:
    """Test pages waiting for their outcome. `enqueue` commits pages (Intake.enqueue)."""

    def __init__(self, enqueue: Enqueue) -> None:
        self._enqueue = enqueue
        self._waiting: dict[int, _Waiting] = {}

    async def send(self, service: Service, *, resolve_after: float, wait: float, host: str, now: float
                   ) -> SendTestResult:
        """Queue a test trigger to `service`, and wait up to `wait` seconds for PagerDuty's answer.
        Raises StorageError when the trigger cannot be stored (nothing was queued)."""
        trigger, resolve = test_page(service, host=host, now=now)
        [ident] = await self._enqueue([trigger], now)
        # Registered as soon as the commit returns, in the same turn of the loop: the deliverer can report
        # an outcome for this id only after it has read the committed row and sent it, turns later.
        waiting = self._waiting[ident] = _Waiting(asyncio.get_running_loop().create_future(),
                                                  resolve if resolve_after > 0 else None, resolve_after,
                                                  now + resolve_after)
        log.info("test page queued (notification %d)", ident, extra={"rule": trigger.rule, "service": service.name,
                                                                    "dedup_key": trigger.dedup_key})
        outcome, resolved = None, _pending(waiting)
        if wait > 0:
            try:
                async with asyncio.timeout(wait):
                    outcome, resolved = await asyncio.shield(waiting.settled)
            except TimeoutError:
                pass
        return SendTestResult(service.name, service.api, trigger.dedup_key, outcome, waiting.last, resolved)

    async def outcome(self, ident: int, outcome: DeliveryOutcome) -> None:
        """The deliverer's report on notification `ident`: settles a waiting test page, and queues its
        resolve once it is delivered."""
        waiting = self._waiting.get(ident)
        if waiting is None:
            return
        if not outcome.final:
            waiting.last = outcome
            return
        del self._waiting[ident]
        if waiting.resolve is None:
            resolved = NO_RESOLVE
        elif not outcome.delivered:
            resolved = "not queued: PagerDuty did not take the trigger, so there is no incident to resolve"
        else:
            try:
                await self._enqueue([waiting.resolve], waiting.due)
            except StorageError as exc:
                log.error("the test page's resolve could not be stored (%s): resolve it in PagerDuty", exc,
                          extra={"rule": waiting.resolve.rule, "service": waiting.resolve.service,
                                 "dedup_key": waiting.resolve.dedup_key})
                resolved = f"not queued: the database refused it ({exc}): resolve the test incident in PagerDuty"
            else:
                resolved = f"queued: due {waiting.after:g}s after the request"
        if not waiting.settled.done():
            waiting.settled.set_result((outcome, resolved))


def _pending(waiting: _Waiting) -> str:
    """What becomes of the resolve of a trigger PagerDuty has not accepted yet."""
    if waiting.resolve is None:
        return NO_RESOLVE
    return (f"queued once PagerDuty accepts the trigger, due {waiting.after:g}s after the request (if the "
            "daemon restarts before that, resolve the test incident in PagerDuty)")
