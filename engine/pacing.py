"""Per integration key: how fast (`TokenBucket`) and how many at once (`Slots`).

PagerDuty limits, and sometimes stalls, each integration key on its own; one key's trouble must not
hold back the pages of another. Keys here are the integration keys delivery sends with (two services
sharing a key share its pace and its slots).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque
from collections.abc import AsyncIterator, Callable


class TokenBucket:
    """`rate` tokens per second up to `burst`. `reserve` takes one now and says how long to wait for it.

    Reservations may run the bucket negative: waiters are served in reservation order.
    """

    def __init__(self, rate: float, burst: float, now: float) -> None:
        self.rate = rate
        self.burst = burst
        self.tokens = burst
        self.stamp = now

    def reserve(self, now: float) -> float:
        self.tokens = min(self.burst, self.tokens + (now - self.stamp) * self.rate)
        self.stamp = now
        self.tokens -= 1
        return 0.0 if self.tokens >= 0 else -self.tokens / self.rate


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
