"""The high-availability scenario ("ha"): one PostgreSQL database shared by replicas, beside SQLite, in one run.

A throwaway PostgreSQL cluster of the benchmark's own (tests/postgres.py's, made durable: fsync and
synchronous_commit on, as SQLite's figures fsync every commit), on this machine's 2 cores with everything
else. Replicas are real daemons; the load generator spreads its requests over them round-robin (what a
load balancer does; HAProxy itself is not in the path, so its cost is not counted).

- end-to-end: the same workload as the end-to-end scenario, on SQLite (1 daemon), PostgreSQL with 1
  replica and with 3: delivered/s, daemons' CPU per page, PostgreSQL's CPU per page, POST → arrival.
- paced: an open loop of single-event POSTs (100/s) on SQLite and on 3 replicas: POST → arrival p99.
- failover: 3 replicas; kill -9 of the decider, 10 times: from the kill to the first event decided
  after it (sent to another replica with `?wait=decided`, again until one is).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import time
from collections.abc import AsyncIterator, Sequence
from pathlib import Path

import aiohttp

from bench.daemon import EngineProcess
from bench.harness import Harness, figure, latencies, percentile
from bench.load import Sent, closed_loop, paced
from bench.processes import cpu_seconds
from bench.results import Outcome
from bench.throughput import BATCH, DELIVERY_RULES, DELIVERY_TIMEOUT, IN_FLIGHT
from bench.workload import Post, batches, event, json_post
from engine.store.postgres_session import migrate_database
from tests.postgres import Cluster, find_bindir

DURABLE = "\nfsync = on\nsynchronous_commit = on\nfull_page_writes = on\n"  # after the tests' settings: these win
SETUPS = (("SQLite, 1 daemon", 0), ("PostgreSQL, 1 replica", 1), ("PostgreSQL, 3 replicas", 3))


class Postgres:
    """The benchmark's cluster, a new migrated database per setup, and the server's CPU."""

    def __init__(self) -> None:
        bindir = find_bindir()
        if bindir is None:
            raise RuntimeError("PostgreSQL's initdb and pg_ctl are not installed (Debian: apt-get install postgresql)")
        self.cluster = Cluster(bindir)
        with (self.cluster.data / "postgresql.conf").open("a") as conf:
            conf.write(DURABLE)
        self.cluster.start()
        self._made = 0

    async def database(self) -> str:
        self._made += 1
        dsn = self.cluster.create_database(f"bench_{self._made}")
        await migrate_database(dsn)
        return dsn

    def cpu_seconds(self) -> float:
        """CPU of the postmaster and every backend (its children), from /proc."""
        postmaster = int((self.cluster.data / "postmaster.pid").read_text().split()[0])
        total = 0.0
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            with contextlib.suppress(OSError, IndexError, ValueError):
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
                if int(entry.name) == postmaster or int(fields[1]) == postmaster:
                    total += cpu_seconds(int(entry.name))
        return total

    def close(self) -> None:
        self.cluster.destroy()


@contextlib.asynccontextmanager
async def replicas(h: Harness, rules: Path, dsn: str | None, n: int, **pagerduty: object
                   ) -> AsyncIterator[list[EngineProcess]]:
    """`n` replicas on `dsn` (or one SQLite daemon when `dsn` is None), started; stopped afterwards."""
    engines = [h.new_engine(rules) for _ in range(max(n, 1))]
    for i, engine in enumerate(engines):
        engine.config["pagerduty"].update(pagerduty)
        if dsn is not None:
            del engine.config["state_dir"]
            engine.config["storage"] = {"backend": "postgresql", "dsn": dsn}
            engine.config["cluster"] = {"replica_id": f"r{i}"}
    await h.fake.reset()
    try:
        for engine in engines:  # one after the other: the first is the decider
            await engine.start()
        yield engines
    finally:
        for engine in engines:
            await engine.stop()


async def spread(engines: Sequence[EngineProcess], posts: Sequence[Post]) -> list[Sent]:
    """The posts, round-robin over the replicas, IN_FLIGHT requests in flight to each."""
    shares = [closed_loop(e.url, posts[i::len(engines)], IN_FLIGHT) for i, e in enumerate(engines)]
    return [s for sent in await asyncio.gather(*shares) for s in sent]


async def ha(h: Harness) -> Outcome:
    rules = h.rules(DELIVERY_RULES)
    pg = Postgres()
    try:
        e2e = {name: [await _end_to_end(h, rules, pg, n) for _ in range(h.options.runs)] for name, n in SETUPS}
        open_loop = {name: [await _paced(h, rules, pg, n) for _ in range(h.options.runs)]
                     for name, n in (SETUPS[0], SETUPS[2])}
        gaps = await _failover(h, rules, pg, h.options.size(10, 3))
    finally:
        pg.close()
    figures = []
    for name, runs in e2e.items():
        figures += [
            figure(f"{name}: delivered events/s", "/s", [r[0] for r in runs]),
            figure(f"{name}: daemons' CPU per page", "ms", [r[1] for r in runs]),
        ]
        if runs[0][2] is not None:
            figures.append(figure(f"{name}: PostgreSQL's CPU per page", "ms", [r[2] or 0.0 for r in runs]))
        figures += [figure(f"{name}: POST → arrival, p50", "ms", [r[3] for r in runs], headline=False),
                    figure(f"{name}: POST → arrival, p99", "ms", [r[4] for r in runs], headline=False)]
    for name, paced_runs in open_loop.items():
        pg_run = name != SETUPS[0][0]
        figures += [figure(f"paced 100/s, {name}: POST → arrival, p50", "ms", [r[0] for r in paced_runs],
                           headline=False),
                    figure(f"paced 100/s, {name}: POST → arrival, p99", "ms", [r[1] for r in paced_runs],
                           "≤ 30 ms" if pg_run else "", at_most=30 if pg_run else None)]
    figures += [
        figure("failover after kill -9 of the decider, p50", "s", [percentile(gaps, 50)]),
        figure(f"failover after kill -9 of the decider, p99 of {len(gaps)}", "s", [percentile(gaps, 99)], "≤ 3 s",
               at_most=3.0),
    ]
    events = h.options.size(10_000, 2_000)
    return Outcome(
        "ha",
        f"One PostgreSQL cluster of the benchmark's own (fsync and synchronous_commit on) on the same 2 cores. "
        f"End-to-end: {events:,} events as in the end-to-end scenario, spread round-robin over the replicas "
        f"({IN_FLIGHT} requests in flight to each), on SQLite, on 1 replica and on 3; CPU per page sums every "
        "daemon's CPU, PostgreSQL's (postmaster and backends) is shown apart. Paced: 100 single-event POSTs a "
        "second for 10 s, round-robin. Failover: kill -9 of the decider, then events to another replica with "
        "`?wait=decided` until one is decided; the daemon killed is started again before the next kill.",
        tuple(figures),
    )


async def _end_to_end(h: Harness, rules: Path, pg: Postgres, n: int
                      ) -> tuple[float, float, float | None, float, float]:
    events = h.options.size(10_000, 2_000)
    posts = batches([event(seq, seq % DELIVERY_RULES) for seq in range(events)], BATCH)
    dsn = await pg.database() if n else None
    async with replicas(h, rules, dsn, n) as engines:
        cpu, server = sum(e.cpu_seconds() for e in engines), pg.cpu_seconds()
        sent = await spread(engines, posts)
        delivered = await h.fake.wait_delivered(events, DELIVERY_TIMEOUT)
        cpu, server = sum(e.cpu_seconds() for e in engines) - cpu, pg.cpu_seconds() - server
    arrivals = await h.fake.arrivals()
    waits = latencies(sent, arrivals)
    start = min(s.at for s in sent)
    return (delivered / (max(arrivals.times.values()) - start), cpu / delivered * 1000,
            server / delivered * 1000 if n else None, percentile(waits, 50) * 1000, percentile(waits, 99) * 1000)


async def _paced(h: Harness, rules: Path, pg: Postgres, n: int) -> tuple[float, float]:
    rate, seconds = 100, h.options.seconds(10.0, 4.0)
    posts = [json_post([event(seq, seq % DELIVERY_RULES)]) for seq in range(int(rate * seconds))]
    dsn = await pg.database() if n else None
    async with replicas(h, rules, dsn, n) as engines:
        shares = [paced(e.url, posts[i::len(engines)], rate / len(engines), connections=16, seconds=seconds)
                  for i, e in enumerate(engines)]
        sent = [s for part in await asyncio.gather(*shares) for s in part]
        await h.fake.wait_delivered(len(posts), DELIVERY_TIMEOUT)
    waits = latencies(sent, await h.fake.arrivals())
    return percentile(waits, 50) * 1000, percentile(waits, 99) * 1000


async def _failover(h: Harness, rules: Path, pg: Postgres, kills: int) -> list[float]:
    gaps = []
    async with replicas(h, rules, await pg.database(), 3) as engines, aiohttp.ClientSession() as client:
        for kill in range(kills):
            decider = await _decider(client, engines)
            other = engines[(decider + 1) % len(engines)]
            killed = time.monotonic()
            os.kill(engines[decider].pid, signal.SIGKILL)
            for attempt in range(1000):
                body = event(10**7 + kill * 1000 + attempt, 0)
                with contextlib.suppress(aiohttp.ClientError, OSError):
                    async with client.post(other.url + "/v1/events?wait=decided", json=body) as response:
                        if response.status == 202 and "matched" in await response.json():
                            break
            gaps.append(time.monotonic() - killed)
            await engines[decider].stop()  # reaps the killed process
            await engines[decider].start()
    return gaps


async def _decider(client: aiohttp.ClientSession, engines: Sequence[EngineProcess]) -> int:
    async with asyncio.timeout(30):
        while True:
            for engine in engines:
                with contextlib.suppress(aiohttp.ClientError, OSError):
                    async with client.get(engine.url + "/v1/status") as response:
                        decider = (await response.json())["cluster"]["decider"]
                        if decider:
                            return int(decider[1:])
            await asyncio.sleep(0.1)
