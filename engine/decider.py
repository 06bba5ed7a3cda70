"""The decider, and how a request reaches it from any replica.

Exactly one replica decides (engine/cluster.py elects it): it holds the alert state in memory, runs the
timed work, and decides every event, Sentry resolve and silence, each committed fenced by its epoch. A
request that arrives at the decider is decided at once (its answer says what it matched and caused); one
that arrives at another replica is committed to the inbox and answered 202 once durable there, and the
decider takes it from the inbox, in order, and marks it decided in the same transaction that writes what
it caused. A caller that wants the decision waits for it (`wait`: `?wait=decided` on the API; silences
always wait), reading the result the decider stored with the row.

With SQLite there is one replica, always the decider: nothing ever goes through the inbox.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

from engine.intake import Accepted, Intake, RequestTooLarge, Result
from engine.render import Notification
from engine.rules.ruleset import RuleSet
from engine.silences import restore_silence
from engine.state import Silence, State
from engine.store import StorageError, Store

log = logging.getLogger("alert_engine.decider")

INBOX_BATCH = 256  # inbox rows decided in one round (they commit together)
INBOX_POLL = 1.0  # seconds between looks at the inbox when no wake-up came (LISTEN lost)
RESULT_POLL = 0.5  # seconds between looks for a result when no wake-up came
SILENCE_WAIT = 5.0  # seconds a silence request made at another replica waits for the decider


@runtime_checkable
class Inbox(Protocol):
    """Where replicas hand requests to the decider (engine/store/postgres_cluster.py)."""

    async def put_inbox(self, kind: str, body: dict[str, Any]) -> int: ...

    async def take_inbox(self, *, limit: int) -> Sequence[Any]: ...

    async def inbox_results(self, ids: Sequence[int]) -> dict[int, dict[str, Any]]: ...

    async def prune_inbox(self) -> int: ...

    async def inbox_backlog(self) -> tuple[int, float | None]: ...


@dataclass(frozen=True)
class Queued:
    """A request committed to the inbox and not decided yet (or not within the wait)."""

    inbox: int
    accepted: int = 0  # events, for an events request


class Decider:
    """The decider's work while this replica leads, and the hand-off to the inbox while it does not.

    `load_state` reads the alert state for a new term; `retained` reports the groups of rules the rule set
    no longer has, let go at election and reload. `inbox`: None with one replica (SQLite), which always
    leads."""

    def __init__(self, store: Store, intake: Intake, ruleset: Callable[[], RuleSet], *,
                 load_state: Callable[[], Awaitable[State]], inbox: Inbox | None) -> None:
        self._store = store
        self._inbox = inbox
        self._intake = intake
        self._ruleset = ruleset
        self._load_state = load_state
        self.epoch: int | None = None
        self._inbox_wake = asyncio.Event()
        self._results_wake = asyncio.Event()
        self._consumer: asyncio.Task[None] | None = None
        self._last_silence = 0

    @property
    def leading(self) -> bool:
        return self.epoch is not None

    # -- terms ------------------------------------------------------------------------------------------

    async def elected(self, epoch: int) -> None:
        """Read the state afresh and start deciding, the inbox first."""
        await self._store.lead(epoch)
        self._intake.state = await self._load_state()
        self.epoch = epoch
        if self._inbox is not None:
            self._consumer = asyncio.create_task(self._consume(), name="alert-engine-inbox")

    async def deposed(self, why: str) -> None:
        """Stop deciding: drop the state (the next decider reads what was committed)."""
        self.epoch = None
        if self._consumer is not None:
            self._consumer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._consumer
            self._consumer = None
        await self._store.lead(None)
        self._intake.state = State(started=time.time())

    def wake_inbox(self) -> None:
        self._inbox_wake.set()

    def wake_results(self) -> None:
        self._results_wake.set()

    # -- requests, from whichever replica -----------------------------------------------------------------

    async def accept(self, events: Sequence[dict[str, Any]], *, origin: str | None = None, wait: float = 0.0
                     ) -> Accepted | Queued:
        """Decide the events here when leading; else check their size, hand them to the decider and, with
        `wait`, wait that long for its decision."""
        ruleset = self._ruleset()
        if self.leading:
            return await self._intake.accept(ruleset, events, origin=origin)
        await self._intake.match(ruleset, events)  # RequestTooLarge before anything is stored
        ident = await self._handing().put_inbox("events", {"events": list(events), "origin": origin})
        result = await self._result(ident, wait)
        if result is None or "error" in result:
            return Queued(ident, len(events))
        return Accepted(result["accepted"], result["matched"], result["notifications"])

    async def resolve(self, dedup_key: str, *, wait: float = 0.0) -> int | Queued:
        """Resolve the open alerts with this dedup key (a Sentry resolve); how many resolves went out."""
        if self.leading:
            return await self._intake.resolve(self._ruleset(), dedup_key)
        ident = await self._handing().put_inbox("resolve", {"dedup_key": dedup_key})
        result = await self._result(ident, wait)
        return Queued(ident) if result is None or "resolved" not in result else int(result["resolved"])

    async def add_silence(self, silence: Silence) -> Silence | Queued:
        """Store a new silence (its id given here); the silence as stored."""
        if self.leading:
            return await self._add_silence(silence)
        ident = await self._handing().put_inbox("silence", {"silence": silence.dump()})
        result = await self._result(ident, SILENCE_WAIT)
        if result is None or "id" not in result:
            return Queued(ident)
        return (await self.silences([int(result["id"])]))[0]

    async def expire_silence(self, ident: int) -> Silence | Queued | None:
        """End a silence now; the silence as it is then, None when there is no such silence."""
        if self.leading:
            return await self._expire_silence(ident)
        if not await self.silences([ident]):
            return None
        inbox = await self._handing().put_inbox("expire", {"id": ident})
        result = await self._result(inbox, SILENCE_WAIT)
        if result is None:
            return Queued(inbox)
        found = await self.silences([ident])
        return found[0] if found else None

    async def silences(self, ids: Sequence[int] | None = None) -> list[Silence]:
        """The silences in effect (all, or those of `ids`): the decider's own, else as stored."""
        if self.leading:
            kept = self._intake.state.silences
            return sorted((kept[i] for i in (kept if ids is None else ids) if i in kept), key=lambda s: s.id)
        _, rows = await self._store.load_state(groups=[], silences=ids)
        return [restore_silence(text) for _, text in rows]

    def _handing(self) -> Inbox:
        if self._inbox is None:
            raise RuntimeError("a replica without an inbox always decides")
        return self._inbox

    async def prune(self) -> None:
        """Forget the results of inbox rows decided a while ago, when leading."""
        if self.leading and self._inbox is not None:
            await self._inbox.prune_inbox()

    async def _result(self, ident: int, wait: float) -> dict[str, Any] | None:
        """The decider's result for inbox row `ident`, waiting up to `wait` seconds; None when not yet."""
        if wait <= 0:
            return None
        loop = asyncio.get_running_loop()
        deadline = loop.time() + wait
        while True:
            self._results_wake.clear()
            if (found := (await self._handing().inbox_results([ident])).get(ident)) is not None:
                return found
            left = deadline - loop.time()
            if left <= 0:
                return None
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._results_wake.wait(), min(left, RESULT_POLL))

    # -- the decider's own work --------------------------------------------------------------------------

    async def tick(self) -> None:
        """The timed work due now, when leading; first, a state that could not be proven right after a
        failed commit (`State.poisoned`) is read again from the database, once it answers."""
        if self.epoch is None:
            return
        if self._intake.state.poisoned:
            await self._store.lead(self.epoch)
            self._intake.state = await self._load_state()
            log.warning("the alert state was read again from the database: deciding again")
        await self._intake.tick(self._ruleset())

    async def retain(self, ruleset: RuleSet, report: Callable[[list[Any]], None]) -> None:
        """Let go of the state of rules `ruleset` no longer has (after a reload), when leading."""
        if not self.leading:
            return

        def step(now: float) -> Iterator[list[Notification]]:
            report(self._intake.state.retain({r.name for r in ruleset.rules}))
            yield []

        await self._intake.submit(step)

    async def _add_silence(self, silence: Silence, inbox: int | None = None) -> Silence:
        state = self._intake.state

        def step(now: float) -> Iterator[list[Notification]]:
            silence.id = self._last_silence = max(max(state.silences, default=0), self._last_silence) + 1
            state.touch_silence(silence)
            yield []

        def result(_: list[Notification]) -> dict[str, Any]:
            return {"id": silence.id}

        await self._intake.submit(step, None if inbox is None else (inbox, result))
        return silence

    async def _expire_silence(self, ident: int, inbox: int | None = None) -> Silence | None:
        state = self._intake.state

        def step(now: float) -> Iterator[list[Notification]]:
            silence = state.silences.get(ident)
            if silence is not None:
                silence.until = min(silence.until, now)
                state.touch_silence(silence)
            yield []

        def result(_: list[Notification]) -> dict[str, Any]:
            return {"found": ident in state.silences}

        if ident not in state.silences and inbox is None:
            return None
        await self._intake.submit(step, None if inbox is None else (inbox, result))
        return state.silences.get(ident)

    async def _consume(self) -> None:
        """Decide the inbox, oldest first, a batch per round; when it is empty, wait for a wake-up (or the
        poll). A round that could not be stored is tried again after a pause."""
        while True:
            self._inbox_wake.clear()  # before looking: a wake-up while reading is kept for the next round
            try:
                rows = await self._handing().take_inbox(limit=INBOX_BATCH)
            except StorageError as exc:
                log.error("the inbox could not be read, tried again in %gs: %s", INBOX_POLL, exc)
                rows = []
            if rows:
                outcomes = await asyncio.gather(*(self._decide(row.id, row.kind, row.body) for row in rows),
                                                return_exceptions=True)
                failed = [o for o in outcomes if isinstance(o, BaseException)]
                if not failed:
                    continue
                log.error("%d inbox request(s) not decided, tried again in %gs: %s", len(failed), INBOX_POLL,
                          failed[0])
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._inbox_wake.wait(), INBOX_POLL)

    async def _decide(self, ident: int, kind: str, body: dict[str, Any]) -> None:
        """One inbox row, marked decided with its result in the commit of what it caused. A row that cannot
        be decided (a bug, or more than the limits allow) is marked decided with its error, so that it
        does not come back; a StorageError leaves it for the next round."""
        ruleset = self._ruleset()
        try:
            if kind == "events":
                await self._intake.accept(ruleset, body["events"], origin=body.get("origin"), inbox=ident)
            elif kind == "resolve":
                await self._intake.resolve(ruleset, body["dedup_key"], inbox=ident)
            elif kind == "silence":
                await self._add_silence(restore_silence(body["silence"]), ident)
            elif kind == "expire":
                await self._expire_silence(int(body["id"]), ident)
            else:
                raise ValueError(f"unknown inbox request kind {kind!r}")
        except StorageError:
            raise
        except Exception as exc:  # RequestTooLarge, a body this version cannot read, a bug: not again
            log.error("inbox request %d (%s) cannot be decided: %s", ident, kind, exc)
            await self._refuse(ident, str(exc) if isinstance(exc, RequestTooLarge) else f"{type(exc).__name__}: {exc}")

    async def _refuse(self, ident: int, message: str) -> None:
        def nothing(now: float) -> Iterator[list[Notification]]:
            yield []

        def result(_: list[Notification]) -> dict[str, Any]:
            return {"error": message}

        marked: tuple[int, Result] = (ident, result)
        await self._intake.submit(nothing, marked)


def accepted_view(accepted: Accepted | Queued) -> dict[str, Any]:
    """The answer to events: what they matched and caused, or that they wait in the inbox."""
    if isinstance(accepted, Queued):
        return {"accepted": accepted.accepted, "decided": False, "inbox": accepted.inbox}
    return {"accepted": accepted.accepted, "matched": accepted.matched, "notifications": accepted.notifications}


def queued_view(queued: Queued) -> dict[str, Any]:
    return {"decided": False, "inbox": queued.inbox}
