"""Per integration key: how fast (`Gcra`, `Pacer`) and how many at once (`Slots`).

PagerDuty limits, and sometimes stalls, each integration key on its own; one key's trouble must not
hold back the pages of another. Keys here are the integration keys delivery sends with (two services
sharing a key share its pace and its slots).

How fast is GCRA, the generic cell rate algorithm: each key has a theoretical arrival time `tat`; one
send every `interval` seconds (60 / rate_per_key), up to `burst` at once. A reservation made at `now` may
send at `max(tat, now) - tolerance` (tolerance = (burst - 1) * interval) and moves `tat` one interval on,
so waiters are served in reservation order, and in any window of t seconds at most burst + t / interval
sends start. PagerDuty's `Retry-After` moves `tat` so that no reservation sends before it ends (and
after it, sends resume at the rate, without a new burst). One
number per key, one update per send: on PostgreSQL the same arithmetic is one statement on a shared row
(engine/store/postgres_pacing.py), so the pace holds across every replica together; with SQLite (one
process) it is `Gcra` in memory.

How many at once (`Slots`) stays per process: it bounds this process's requests in flight.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import deque
from collections.abc import AsyncIterator, Callable
from typing import Protocol


class Pacer(Protocol):
    """The pace of each integration key."""

    async def reserve(self, key: str) -> float:
        """Take the next send of `key`; how many seconds to wait before sending it."""
        ...

    async def pause(self, key: str, seconds: float) -> None:
        """PagerDuty said `Retry-After: seconds` for `key`: no send of it starts before then."""
        ...


class Gcra:
    """GCRA for one process: `rate` sends per second after a `burst`; `clock` in seconds."""

    def __init__(self, rate: float, burst: int, clock: Callable[[], float] = time.monotonic) -> None:
        self.interval = 1.0 / rate
        self.tolerance = (max(burst, 1) - 1) * self.interval
        self._clock = clock
        self._tat: dict[str, float] = {}

    async def reserve(self, key: str) -> float:
        now = self._clock()
        start = max(self._tat.get(key, now), now)
        self._tat[key] = start + self.interval
        return max(0.0, start - self.tolerance - now)

    async def pause(self, key: str, seconds: float) -> None:
        self._tat[key] = max(self._tat.get(key, 0.0), self._clock() + seconds + self.tolerance)


class Slots:
    """The `concurrency` requests in flight, shared among keys. The one place that decides whether a
    key may take another slot:

    - Never while PagerDuty asked the key to wait (`pause`, from a `Retry-After`): its requests wait
      for the pause to end; other keys go on.
    - A free slot goes to the waiting key that holds the fewest slots; among those, to the one that has
      waited longest (then round-robin). So a key alone may use every slot, but once other keys have
      work, each slot a key frees goes to a key holding fewer, until they hold equal shares. A key
      whose requests hang delays another key's request by at most the time until one of its
      requests ends (at the latest, one request timeout).

    `clock` gives the time `pause` is measured in (seconds since the epoch in the daemon).
    """

    def __init__(self, concurrency: int, clock: Callable[[], float]) -> None:
        self._free = concurrency
        self._clock = clock
        self._held: dict[str, int] = {}
        self._waiting: dict[str, deque[asyncio.Future[None]]] = {}  # in the order the keys began to wait
        self._paused: dict[str, float] = {}  # key -> until when
        self._timers: dict[str, asyncio.TimerHandle] = {}

    def held(self, key: str) -> int:
        """Slots `key` holds now."""
        return self._held.get(key, 0)

    def paused_until(self, key: str) -> float | None:
        """When the pause of `key` ends; None when it is not paused."""
        return self._paused.get(key)

    def pause(self, key: str, until: float) -> None:
        """Give `key` no slot before `until` (a later pause extends it; an earlier one changes nothing)."""
        if until <= self._paused.get(key, 0.0) or until <= self._clock():
            return
        self._paused[key] = until
        if (timer := self._timers.pop(key, None)) is not None:
            timer.cancel()
        self._timers[key] = asyncio.get_running_loop().call_later(until - self._clock(), self._resume, key)

    @contextlib.asynccontextmanager
    async def slot(self, key: str) -> AsyncIterator[None]:
        """Hold one slot for `key` for the block."""
        await self._acquire(key)
        try:
            yield
        finally:
            self._release(key)

    async def _acquire(self, key: str) -> None:
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiting.setdefault(key, deque()).append(future)
        self._dispatch()
        if future.done():
            return
        try:
            await future
        except asyncio.CancelledError:
            if future.done() and not future.cancelled():
                self._release(key)  # granted just as the waiter was cancelled: give it back
            else:
                self._forget(key, future)
            raise

    def _release(self, key: str) -> None:
        self._held[key] -= 1
        if not self._held[key]:
            del self._held[key]
        self._free += 1
        self._dispatch()

    def _forget(self, key: str, future: asyncio.Future[None]) -> None:
        queue = self._waiting.get(key)
        if queue is not None and future in queue:
            queue.remove(future)
            if not queue:
                del self._waiting[key]

    def _resume(self, key: str) -> None:
        self._timers.pop(key, None)
        until = self._paused.get(key)
        if until is not None and until > self._clock():  # the loop's timer ran early by the wall clock
            self._timers[key] = asyncio.get_running_loop().call_later(until - self._clock(), self._resume, key)
            return
        self._paused.pop(key, None)
        self._dispatch()

    def _dispatch(self) -> None:
        """Hand out free slots: each to the unpaused waiting key holding the fewest (see the class)."""
        while self._free > 0:
            key = min((k for k in self._waiting if k not in self._paused), key=self.held, default=None)
            if key is None:
                return
            queue = self._waiting.pop(key)
            future = queue.popleft()
            if queue:
                self._waiting[key] = queue  # to the back: equal holders take turns
            if future.done():  # cancelled while waiting
                continue
            self._held[key] = self.held(key) + 1
            self._free -= 1
            future.set_result(None)
