"""The high-availability fault runs ("ha-faults"), long versions of tests/e2e/test_ha.py with figures.

The tests' own harness (tests/e2e/cluster.py) runs them: 3 replicas on a PostgreSQL cluster of their own
(tests/postgres.py), behind a real HAProxy, with the tests' fake PagerDuty in this process; the events
acknowledged are replayed through `alert-engine eval` (what one node would send) and compared with what
arrived, key by key.

- chaos: events at a steady rate for 2 minutes, kill -9 of a random replica every 20 s (restarted).
- postgres-restart: the server stopped for 30 s under load: how long the replicas take to answer 503,
  to take events again once it is back, and to drain the backlog.
"""

from __future__ import annotations

import asyncio
import random
import tempfile
import time
from pathlib import Path

from bench.harness import Harness, figure
from bench.results import Outcome
from engine.store.postgres_session import migrate_database
from tests.conftest import FakePagerDuty
from tests.e2e.cluster import HAProxy, Replicas, Sender, burst_flows, collapsed, flap_flows, replayed, sequences
from tests.postgres import Cluster, find_bindir


def _compare(received: dict[str, list[str]], expected: dict[str, list[str]]) -> tuple[int, int, int]:
    """(keys missing or unexpected, keys out of order, duplicate sends) against one node's replay."""
    wrong = len(set(received) ^ set(expected))
    disorder = sum(1 for k in set(received) & set(expected) if collapsed(received[k]) != collapsed(expected[k]))
    duplicates = sum(len(a) for a in received.values()) - sum(len(a) for a in expected.values())
    return wrong, disorder, duplicates


async def _chaos(workdir: Path, dsn: str, seconds: float) -> tuple[int, int, int, int, int]:
    fake = FakePagerDuty()
    await fake.start()
    replicas = Replicas(workdir, dsn, fake.url, 3)
    await replicas.start()
    proxy = HAProxy(workdir, replicas.ports)
    await proxy.start()
    sender = Sender(proxy.url, rate=40)
    in_flight = 0
    rng = random.Random(11)
    try:
        load = asyncio.create_task(sender.run_flows(flap_flows(30, 400) + burst_flows(60), duration=seconds))
        for _ in range(int(seconds // 20) - 1):
            await asyncio.sleep(20)
            victim = replicas[rng.randrange(len(replicas))]
            in_flight += sender.in_flight + fake.in_flight
            await victim.kill()
            await victim.start()
        await load
        await replicas.drained(timeout=120)
        expected = await replayed(workdir, sender.acked)
        wrong, disorder, duplicates = _compare(sequences(fake.requests), expected)
        return len(sender.acked), wrong, disorder, duplicates, in_flight
    finally:
        proxy.stop()
        await replicas.close()
        await fake.close()


async def _restart(workdir: Path, cluster: Cluster, dsn: str, down: float) -> tuple[float, float, float, int, int]:
    fake = FakePagerDuty()
    await fake.start()
    replicas = Replicas(workdir, dsn, fake.url, 3)
    await replicas.start()
    proxy = HAProxy(workdir, replicas.ports)
    await proxy.start()
    sender = Sender(proxy.url, rate=30)
    try:
        load = asyncio.create_task(sender.run_flows(flap_flows(20, 200), duration=down + 5))  # until it is back
        await asyncio.sleep(5)
        cluster.stop()
        stopped = time.monotonic()
        slowest_503 = 0.0
        for d in replicas.daemons:
            started = time.monotonic()
            await d.post_events({"kind": "flap", "key": "probe", "state": "bad"})
            slowest_503 = max(slowest_503, time.monotonic() - started)
        await asyncio.sleep(max(0.0, down - (time.monotonic() - stopped)))
        cluster.start()
        back = time.monotonic()
        while (await replicas[1].post_events({"kind": "burst", "key": "back"}))[0] != 202:
            await asyncio.sleep(0.05)
        resumed = time.monotonic() - back
        await load
        await replicas.drained(timeout=120)
        drained = time.monotonic() - back
        expected = await replayed(workdir, [*sender.acked, {"kind": "burst", "key": "back"}])
        wrong, disorder, _ = _compare(sequences(fake.requests), expected)
        return slowest_503, resumed, drained, wrong, disorder
    finally:
        proxy.stop()
        await replicas.close()
        await fake.close()


async def ha_faults(h: Harness) -> Outcome:
    bindir = find_bindir()
    if bindir is None:
        raise RuntimeError("PostgreSQL's initdb and pg_ctl are not installed (Debian: apt-get install postgresql)")
    cluster = Cluster(bindir)
    cluster.start()
    try:
        chaos_dsn = cluster.create_database("chaos")
        restart_dsn = cluster.create_database("restart")
        await migrate_database(chaos_dsn)
        await migrate_database(restart_dsn)
        with tempfile.TemporaryDirectory(dir=h.workdir) as one, tempfile.TemporaryDirectory(dir=h.workdir) as two:
            acked, wrong, disorder, duplicates, in_flight = await _chaos(Path(one), chaos_dsn,
                                                                         h.options.seconds(120, 40))
            slowest_503, resumed, drained, lost, misordered = await _restart(Path(two), cluster, restart_dsn,
                                                                           h.options.seconds(30, 10))
    finally:
        cluster.destroy()
    figures = [
        figure("chaos: events acknowledged", "", [acked]),
        figure("chaos: keys lost or unexpected", "", [wrong], "0", at_most=0),
        figure("chaos: keys out of order", "", [disorder], "0", at_most=0),
        figure("chaos: duplicate sends", "", [duplicates], f"≤ {in_flight} (in flight at the kills)",
               at_most=in_flight),
        figure("postgres down: slowest 503", "s", [slowest_503], "≤ 2 s", at_most=2.0),
        figure("postgres back: first 202 after", "s", [resumed], "≤ 5 s", at_most=5.0),
        figure("postgres back: backlog drained", "s", [drained], "≤ 10 s", at_most=10.0),
        figure("postgres restart: keys lost or out of order", "", [lost + misordered], "0", at_most=0),
    ]
    return Outcome(
        "ha-faults",
        "3 replicas behind HAProxy on a PostgreSQL cluster of their own (the tests' settings), the tests' fake "
        "PagerDuty; every acknowledged event replayed through `alert-engine eval` and compared key by key with "
        f"what arrived. Chaos: 40 events/s for {h.options.seconds(120, 40):g} s (flapping alerts and threshold "
        "groups), kill -9 of a random replica every 20 s, restarted at once. PostgreSQL restart: 30 events/s, the "
        f"server stopped for {h.options.seconds(30, 10):g} s; one event to each replica while it is down (their "
        "503s timed), then one replica asked until it takes an event again; the load stops when the server is "
        "back, and the backlog is drained when neither inbox nor outbox holds anything, timed from its return.",
        tuple(figures),
    )
