"""The stall scenario: how long `/healthz` waits while one very large request is parsed and decided."""

from __future__ import annotations

import asyncio
import json
import time
from dataclasses import dataclass

import aiohttp

from bench.harness import Harness, figure
from bench.results import Outcome
from bench.workload import NDJSON, event

RULES = 1_000
PROBE_EVERY = 0.005  # seconds between two /healthz requests
MAX_BODY = 10 * 1024 * 1024  # the default ingest.max_body


@dataclass(frozen=True)
class Stall:
    status: int  # what the large request got
    request_seconds: float  # POST -> answer
    worst_ms: float  # the slowest /healthz answered while it ran


def bodies() -> dict[str, bytes]:
    """Three NDJSON bodies of about 10 MiB (ingest.max_body): the cases that stalled the loop before."""
    tiny = "\n".join(json.dumps({"n": i}) for i in range(1_000_000))[: MAX_BODY - 64]
    tiny = tiny[: tiny.rfind("\n")]  # ~1.2 million tiny events: refused by ingest.max_events, once parsed
    # (the daemon before it had no such limit: it accepted them)
    padded = "\n".join(json.dumps({**event(i, i % RULES, matching=i % 20 == 0), "pad": "p" * 800})
                       for i in range(10_000))
    matching = "\n".join(json.dumps(event(i, i % RULES)) for i in range(10_000))  # 10,000 pages decided
    return {"1.2 M tiny events": tiny.encode(), "10,000 events of 1 KB, 1 in 20 matching": padded.encode(),
            "10,000 matching events": matching.encode()}


async def one(url: str, body: bytes) -> Stall:
    """POST `body` while /healthz is asked every 5 ms; the slowest of those answers."""
    waits: list[float] = []
    async with aiohttp.ClientSession() as session:

        async def probe() -> None:
            while True:
                asked = time.perf_counter()
                async with session.get(url + "/healthz") as response:
                    await response.read()
                waits.append(time.perf_counter() - asked)
                await asyncio.sleep(PROBE_EVERY)

        prober = asyncio.create_task(probe())
        await asyncio.sleep(0.1)
        sent = time.perf_counter()
        async with session.post(url + "/v1/events", data=body, headers={"Content-Type": NDJSON}) as response:
            await response.read()
            status = response.status
        took = time.perf_counter() - sent
        await asyncio.sleep(0.1)
        prober.cancel()
    return Stall(status, took, max(waits) * 1000)


async def stall(h: Harness) -> Outcome:
    rules = h.rules(RULES)
    cases = bodies()
    runs: dict[str, list[Stall]] = {name: [] for name in cases}
    for _ in range(h.options.runs):
        async with h.engine(rules) as engine:
            for name, body in cases.items():
                runs[name].append(await one(engine.url, body))
    figures = []
    for name, stalls in runs.items():
        figures.append(figure(f"slowest /healthz during {name}", "ms", [s.worst_ms for s in stalls], "≤ 100 ms",
                              at_most=100))
        figures.append(figure(f"the request itself ({name}, HTTP {stalls[-1].status})", "s",
                              [s.request_seconds for s in stalls], headline=False))
    return Outcome(
        "stall",
        f"One NDJSON request of about 10 MiB (the default `max_body`) to a daemon with {RULES:,} rules, while "
        "`/healthz` is asked every 5 ms on another connection: the slowest of those answers. Bodies from 256 KiB "
        "are parsed on a worker thread (the parser calls back into Python for every object, so the thread "
        "gives up the interpreter lock), matching and deciding give the loop a turn every 5 ms.",
        tuple(figures), None,
    )
