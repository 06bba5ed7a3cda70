"""The load generator: an aiohttp client on keep-alive connections, POSTing to `/v1/events`.

- `closed_loop`: N workers, each sends its next body as soon as its previous answer is in.
- `timed`: like `closed_loop`, for a fixed time; counts the answers.
- `paced`: an open loop at a fixed rate. A request's time is the moment it was due, not the moment
  it went out, so a server that stalls is charged for the requests it kept waiting.
Every request is recorded as a `Sent`: its due time (`time.monotonic()`), its answer, its duration.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass

import aiohttp

from bench.workload import Post

EVENTS_PATH = "/v1/events"


@dataclass(frozen=True)
class Sent:
    post: Post
    at: float  # time.monotonic() when the request was due (closed loop: when it was sent)
    status: int | None  # None: no answer (connection error)
    seconds: float  # from `at` to the answer


@dataclass(frozen=True)
class Rate:
    """How many requests got a 202 in how many seconds, and how many got anything else."""

    accepted: int
    others: int
    seconds: float

    @property
    def per_second(self) -> float:
        return self.accepted / self.seconds


def session(connections: int) -> aiohttp.ClientSession:
    connector = aiohttp.TCPConnector(limit=connections, force_close=False)
    return aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=600))


async def send(client: aiohttp.ClientSession, url: str, post: Post, at: float | None = None) -> Sent:
    start = time.monotonic() if at is None else at
    try:
        async with client.post(url + EVENTS_PATH, data=post.body,
                               headers={"Content-Type": post.content_type}) as response:
            await response.read()
            status: int | None = response.status
    except (aiohttp.ClientError, TimeoutError):
        status = None
    return Sent(post, start, status, time.monotonic() - start)


async def closed_loop(url: str, posts: Sequence[Post], concurrency: int) -> list[Sent]:
    """Send every post, `concurrency` at a time; every request, in the order they finished."""
    pending: Iterator[Post] = iter(posts)
    done: list[Sent] = []

    async def worker(client: aiohttp.ClientSession) -> None:
        for post in pending:
            done.append(await send(client, url, post))

    async with session(concurrency) as client:
        await asyncio.gather(*(worker(client) for _ in range(concurrency)))
    return done


async def timed(url: str, posts: Iterator[Post], concurrency: int, seconds: float) -> Rate:
    """Closed loop over `posts` for `seconds`; the answers that came in that time."""
    counts = {"accepted": 0, "others": 0}
    end = time.monotonic() + seconds

    async def worker(client: aiohttp.ClientSession) -> None:
        while time.monotonic() < end:
            sent = await send(client, url, next(posts))
            if sent.at + sent.seconds <= end:
                counts["accepted" if sent.status == 202 else "others"] += 1

    async with session(concurrency) as client:
        await asyncio.gather(*(worker(client) for _ in range(concurrency)))
    return Rate(counts["accepted"], counts["others"], seconds)


async def paced(url: str, posts: Iterable[Post], per_second: float, connections: int,
                stop: asyncio.Event | None = None, seconds: float | None = None) -> list[Sent]:
    """POST `per_second` bodies a second, each on time whatever the answers, until `seconds` have passed
    or `stop` is set; every request, once all have been answered."""
    loop = asyncio.get_running_loop()
    tasks: list[asyncio.Task[Sent]] = []
    async with session(connections) as client:
        begin = time.monotonic()
        for i, post in enumerate(posts):
            due = begin + i / per_second
            if (seconds is not None and due >= begin + seconds) or (stop is not None and stop.is_set()):
                break
            delay = due - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            tasks.append(loop.create_task(send(client, url, post, at=due)))
        return list(await asyncio.gather(*tasks))
