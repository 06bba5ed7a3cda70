import asyncio
import contextlib
import time

from engine.pacing import Gcra, Slots


class Now:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


async def test_gcra_gives_the_burst_then_spaces_by_the_rate_in_reservation_order():
    clock = Now()
    pace = Gcra(rate=2.0, burst=2, clock=clock)
    assert [await pace.reserve("k") for _ in range(4)] == [0.0, 0.0, 0.5, 1.0]
    assert await pace.reserve("other") == 0.0  # each key its own pace
    clock.now += 10
    assert [await pace.reserve("k") for _ in range(3)] == [0.0, 0.0, 0.5]  # back to the burst, no more


async def test_gcra_pause_holds_every_send_of_the_key_until_retry_after_ends():
    clock = Now()
    pace = Gcra(rate=2.0, burst=3, clock=clock)
    await pace.pause("k", 5.0)
    assert [await pace.reserve("k") for _ in range(3)] == [5.0, 5.5, 6.0]  # then at the rate, no burst
    assert await pace.reserve("other") == 0.0


class Holder:
    """Tasks that take a slot for a key and keep it until told to let go."""

    def __init__(self, slots: Slots) -> None:
        self.slots = slots
        self.granted: list[str] = []  # keys, in the order their slots were granted
        self._done: dict[str, list[asyncio.Event]] = {}
        self.tasks: list[asyncio.Task[None]] = []

    def want(self, key: str, n: int = 1) -> None:
        for _ in range(n):
            done = asyncio.Event()
            self._done.setdefault(key, []).append(done)
            self.tasks.append(asyncio.create_task(self._hold(key, done)))

    async def _hold(self, key: str, done: asyncio.Event) -> None:
        async with self.slots.slot(key):
            self.granted.append(key)
            await done.wait()

    def finish(self, key: str) -> None:
        self._done[key].pop(0).set()

    async def settle(self) -> None:
        for _ in range(5):
            await asyncio.sleep(0)


async def test_a_key_alone_takes_every_slot_and_a_freed_slot_goes_to_the_key_holding_fewest():
    slots = Slots(4, time.time)
    h = Holder(slots)
    h.want("hung", 10)
    await h.settle()
    assert h.granted == ["hung"] * 4 and slots.held("hung") == 4
    h.want("web", 3)
    h.want("api", 3)
    await h.settle()
    assert len(h.granted) == 4  # nothing free
    for _ in range(3):
        h.finish("hung")
        await h.settle()
    # never to hung while another holds fewer; at a tie, to the one that has waited longest (hung)
    assert h.granted[4:] == ["web", "api", "hung"]
    assert (slots.held("hung"), slots.held("web"), slots.held("api")) == (2, 1, 1)
    h.finish("web")
    await h.settle()
    assert h.granted[7] == "web"  # the fewest again
    for task in h.tasks:
        task.cancel()
    await asyncio.gather(*h.tasks, return_exceptions=True)
    assert slots.held("hung") == slots.held("web") == slots.held("api") == 0


async def test_a_paused_key_gets_no_slot_until_its_pause_ends_while_others_go_on():
    slots = Slots(4, time.time)
    h = Holder(slots)
    slots.pause("k", time.time() + 0.3)
    slots.pause("k", time.time() + 0.1)  # an earlier end changes nothing
    h.want("k", 2)
    h.want("other")
    await h.settle()
    assert h.granted == ["other"]
    assert slots.paused_until("k") is not None
    started = time.monotonic()
    async with asyncio.timeout(2):
        while len(h.granted) < 3:
            await asyncio.sleep(0.01)
    assert time.monotonic() - started >= 0.25
    assert slots.paused_until("k") is None
    for task in h.tasks:
        task.cancel()
    await asyncio.gather(*h.tasks, return_exceptions=True)


async def test_a_cancelled_waiter_takes_no_slot_with_it():
    slots = Slots(1, time.time)
    h = Holder(slots)
    h.want("a")
    h.want("b")
    await h.settle()
    waiting = h.tasks[1]
    waiting.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await waiting
    h.want("c")
    h.finish("a")
    await h.settle()
    assert h.granted == ["a", "c"]
    h.finish("c")
    await h.settle()
    assert slots.held("c") == 0
    async with slots.slot("d"):  # the one slot is free again
        assert slots.held("d") == 1
