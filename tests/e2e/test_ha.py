"""Issue 11's acceptance, with real parts: replicas are `alert-engine run` processes sharing a PostgreSQL
database, traffic goes through a real HAProxy, the fake PagerDuty records what arrives in which order.
Each test causes one failure (kill -9, a partition, a frozen process, the server restarting, a rolling
restart) and checks the contract of docs/ha.md: nothing acknowledged lost, decided exactly once (as one
node would: `alert-engine eval` replays the acknowledged events), in order per dedup key, duplicates only
for requests in flight at the failure, pacing across replicas."""

from __future__ import annotations

import asyncio
import random
import signal
import subprocess
import time

import psycopg

from tests.e2e.cluster import (
    HA_RULES,
    HAPROXY_CONFIG,
    HAProxy,
    Replicas,
    Sender,
    TcpProxy,
    burst_flows,
    collapsed,
    flap_flows,
    replayed,
    sequences,
)


def written_by(db: psycopg.Connection, epoch: int) -> int:
    """Notifications (waiting, sent or dead) and inbox rows a decider wrote with `epoch`."""
    return db.execute("SELECT (SELECT count(*) FROM outbox WHERE epoch = %(e)s) + (SELECT count(*) FROM history "
                      "WHERE epoch = %(e)s) + (SELECT count(*) FROM dead_letters WHERE epoch = %(e)s) + "
                      "(SELECT count(*) FROM inbox WHERE epoch = %(e)s)", {"e": epoch}).fetchone()[0]


def check_against_replay(received: dict[str, list[str]], expected: dict[str, list[str]]) -> int:
    """Every key got what one node would send, in order (a duplicate send aside); the duplicates."""
    assert sorted(received) == sorted(expected)
    for key, actions in expected.items():
        assert collapsed(received[key]) == collapsed(actions), key
    return sum(len(a) for a in received.values()) - sum(len(a) for a in expected.values())


async def test_the_example_haproxy_config_is_valid(tmp_path):
    proxy = HAProxy(tmp_path, [])
    done = subprocess.run([proxy.binary, "-c", "-f", str(HAPROXY_CONFIG)], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr


async def test_chaos_kill_9_of_a_random_replica_every_20s_loses_nothing_and_pages_as_one_node(
        tmp_path, new_database, fake_pagerduty):
    replicas = Replicas(tmp_path, new_database(), fake_pagerduty.url, 3)
    await replicas.start()
    proxy = HAProxy(tmp_path, replicas.ports)
    await proxy.start()
    sender = Sender(proxy.url, rate=40)
    in_flight_at_kills = 0
    rng = random.Random(11)
    try:
        load = asyncio.create_task(sender.run_flows(flap_flows(30, 200) + burst_flows(60), duration=120))
        for _ in range(5):  # at 20, 40, …, 100 s
            await asyncio.sleep(20)
            victim = replicas[rng.randrange(len(replicas))]
            in_flight_at_kills += sender.in_flight + fake_pagerduty.in_flight
            await victim.kill()
            await victim.start()
        await load
        await replicas.drained()
        expected = await replayed(tmp_path, sender.acked)
        duplicates = check_against_replay(sequences(fake_pagerduty.requests), expected)
        assert 0 <= duplicates <= in_flight_at_kills
        assert len(sender.acked) > 1500  # a steady stream went through, kills and all
    finally:
        proxy.stop()
        await replicas.close()


async def test_kill_9_of_the_decider_decisions_resume_within_3s_p99_over_10_kills(
        tmp_path, new_database, fake_pagerduty):
    replicas = Replicas(tmp_path, new_database(), fake_pagerduty.url, 3)
    await replicas.start()
    gaps = []
    try:
        for kill in range(10):
            decider = await replicas.decider()
            other = replicas[(decider + 1) % len(replicas)]
            killed = time.monotonic()
            await replicas[decider].kill()
            while True:  # a replica that does not decide hands the event on and waits for the decision
                status, answer = await other.post_events({"kind": "flap", "key": f"x{kill}", "state": "bad"},
                                                         params={"wait": "decided"})
                if status == 202 and "matched" in answer:
                    break
            gaps.append(time.monotonic() - killed)
            await replicas[decider].start()
        gaps.sort()
        assert gaps[-1] <= 3.0, gaps  # p99 of 10 is the worst
    finally:
        await replicas.close()


async def test_a_decider_cut_off_from_postgresql_is_replaced_within_its_lease_and_commits_nothing_after(
        tmp_path, new_database, fake_pagerduty):
    dsn = new_database()
    host_port = dsn.split("@", 1)[1].split("/", 1)[0]
    proxy = TcpProxy(int(host_port.rsplit(":", 1)[1]))
    await proxy.start()
    replicas = Replicas(tmp_path, dsn, fake_pagerduty.url, 3,
                        dsns={0: dsn.replace(host_port, f"127.0.0.1:{proxy.port}")})
    await replicas[0].start()  # first: the decider
    await replicas.decider()
    await asyncio.gather(replicas[1].start(), replicas[2].start())
    try:
        for n in range(5):
            assert (await replicas[0].post_events({"kind": "flap", "key": f"a{n}", "state": "bad"}))[0] == 202
        with psycopg.connect(dsn, autocommit=True) as db:
            old = db.execute("SELECT epoch FROM decider").fetchone()[0]
            proxy.blackhole()
            cut = time.monotonic()
            new = await replicas.decider(not_="r0", timeout=20)
            took = time.monotonic() - cut
            assert took <= 15.0  # within the lease (3 s here; 10 s by default), not "eventually"
            before = written_by(db, old)
            status, answer = await replicas[new].post_events({"kind": "flap", "key": "after", "state": "bad"})
            assert status == 202 and answer["notifications"] == 1
            proxy.heal()  # the old decider talks to the database again: its late writes must fail
            for _ in range(100):
                if "this replica stops deciding" in replicas[0].output():
                    break
                await asyncio.sleep(0.1)
            assert "this replica stops deciding" in replicas[0].output()
            for _ in range(50):  # to the old decider, as a client would: refused until it knows it is deposed
                late = await replicas[0].post_events({"kind": "flap", "key": "late", "state": "bad"})
                if late[0] == 202:
                    break
                await asyncio.sleep(0.1)
            after = written_by(db, old)
            assert after == before, late  # no row with the stale epoch since the takeover
            stale = db.execute("SELECT count(*) FROM inbox WHERE epoch = %s AND decided > "
                               "(SELECT since FROM decider)", (old,)).fetchone()[0]
            assert stale == 0
        await replicas.drained()
        assert sorted(sequences(fake_pagerduty.requests)) == sorted([f"flaps/a{n}" for n in range(5)]
                                                                    + ["flaps/after", "flaps/late"])
    finally:
        await replicas.close()
        await proxy.close()


async def test_postgresql_down_30s_under_load_503_fast_back_fast_nothing_lost(tmp_path, own_postgres, fake_pagerduty):
    replicas = Replicas(tmp_path, own_postgres.dsn("alert_engine"), fake_pagerduty.url, 3)
    await replicas.start()
    proxy = HAProxy(tmp_path, replicas.ports)
    await proxy.start()
    sender = Sender(proxy.url, rate=30)
    try:
        load = asyncio.create_task(sender.run_flows(flap_flows(20, 100), duration=60))
        await asyncio.sleep(5)
        own_postgres.stop()
        stopped = time.monotonic()
        # every replica refuses at once, without hanging: 503 within 2 s
        for d in replicas.daemons:
            for _ in range(3):
                started = time.monotonic()
                status, _ = await d.post_events({"kind": "flap", "key": "probe", "state": "bad"})
                assert (status, time.monotonic() - started < 2.0) == (503, True)
        await asyncio.sleep(max(0.0, 30 - (time.monotonic() - stopped)))
        own_postgres.start()
        back = time.monotonic()
        while (await replicas[1].post_events({"kind": "burst", "key": "back"}))[0] != 202:
            await asyncio.sleep(0.1)
        assert time.monotonic() - back <= 5.0
        await load
        await replicas.drained(timeout=10 + 30)
        expected = await replayed(tmp_path, [*sender.acked, {"kind": "burst", "key": "back"}])
        assert check_against_replay(sequences(fake_pagerduty.requests), expected) >= 0
    finally:
        proxy.stop()
        await replicas.close()


async def test_a_frozen_replica_loses_its_chains_to_the_others_and_cannot_complete_them(
        tmp_path, new_database, fake_pagerduty):
    dsn = new_database()
    replicas = Replicas(tmp_path, dsn, fake_pagerduty.url, 3, pagerduty={"timeout": "1s"})
    await replicas.start()
    leased = "SELECT count(*) FROM chains WHERE lease_owner LIKE %s"
    try:
        fake_pagerduty.delay = 0.5
        events = [{"kind": "flap", "key": f"f{n}", "state": "bad"} for n in range(60)]
        assert (await replicas[0].post_events(events))[0] == 202
        with psycopg.connect(dsn, autocommit=True) as db:
            for _ in range(100):  # whichever replica claimed chains first
                owners = db.execute("SELECT split_part(lease_owner, '/', 2), count(*) FROM chains WHERE "
                                    "lease_owner IS NOT NULL GROUP BY 1 ORDER BY 2 DESC").fetchall()
                if owners:
                    break
                await asyncio.sleep(0.02)
            frozen = replicas[int(owners[0][0][1:])]
            owner = f"alert-engine/{owners[0][0]}/%"
            frozen.send_signal(signal.SIGSTOP)  # while it holds leases, requests in flight
            frozen_with = db.execute(leased, (owner,)).fetchone()[0]
            assert frozen_with > 0
            for _ in range(300):  # its leases run out (5 s here) and the others claim its chains
                if not db.execute(leased, (owner,)).fetchone()[0]:
                    break
                await asyncio.sleep(0.1)
        await fake_pagerduty.wait_until(lambda rs: len({r.body["dedup_key"] for r in rs}) == 60, timeout=30)
        frozen.send_signal(signal.SIGCONT)
        await replicas.drained()
        got = sequences(fake_pagerduty.requests)
        assert sorted(got) == sorted(f"flaps/f{n}" for n in range(60))
        duplicates = sum(len(a) - 1 for a in got.values())
        assert duplicates <= frozen_with
        with psycopg.connect(dsn) as db:  # one history row each: no stale completion
            assert db.execute("SELECT count(*), count(DISTINCT dedup_key) FROM history").fetchone() == (60, 60)
    finally:
        await replicas.close()


async def test_pacing_holds_across_three_replicas(tmp_path, new_database, fake_pagerduty):
    replicas = Replicas(tmp_path, new_database(), fake_pagerduty.url, 3, pagerduty={"rate_per_key": 60, "burst": 10})
    await replicas.start()
    proxy = HAProxy(tmp_path, replicas.ports)
    await proxy.start()
    try:
        sender = Sender(proxy.url, rate=200)
        await sender.run_flows([[{"kind": "flap", "key": f"p{n}", "state": "bad"}] for n in range(30)], duration=30)
        assert len(sender.acked) == 30
        received = await fake_pagerduty.wait_for(30, timeout=40)
        arrivals = sorted(r.at for r in received)
        for window in (1.0, 5.0, 10.0):
            most = max(sum(1 for t in arrivals[i:] if t < s + window) for i, s in enumerate(arrivals))
            assert most <= 10 + window + 0.5, (window, most)  # 0.5: the requests' own jitter in arrival
        assert arrivals[-1] - arrivals[0] >= 18.0  # 30 sends at 1/s after a burst of 10
    finally:
        proxy.stop()
        await replicas.close()


async def test_a_rolling_restart_loses_nothing_and_sends_nothing_twice(tmp_path, new_database, fake_pagerduty):
    replicas = Replicas(tmp_path, new_database(), fake_pagerduty.url, 3)
    await replicas.start()
    proxy = HAProxy(tmp_path, replicas.ports)
    await proxy.start()
    sender = Sender(proxy.url, rate=30)
    try:
        load = asyncio.create_task(sender.run_flows(flap_flows(15, 100) + burst_flows(30), duration=40))
        for d in replicas.daemons:
            await asyncio.sleep(5)
            assert await d.stop() == 0
            await d.start()
        await load
        await replicas.drained()
        expected = await replayed(tmp_path, sender.acked)
        assert check_against_replay(sequences(fake_pagerduty.requests), expected) == 0
    finally:
        proxy.stop()
        await replicas.close()


async def test_replicas_serving_different_rule_sets_are_reported_in_status_and_metrics(
        tmp_path, new_database, fake_pagerduty):
    replicas = Replicas(tmp_path, new_database(), fake_pagerduty.url, 2)
    await replicas.start()
    try:
        (tmp_path / "rules" / "rules.yaml").write_text(
            HA_RULES + "  - name: extra\n    match: {field: kind, equals: extra}\n    services: [pay]\n")
        assert (await replicas[1].request("POST", "/-/reload"))[0] == 200  # r1 only: a reload half done
        status = await replicas[0].poll("/v1/status", lambda s: s["cluster"]["ruleset_mismatch"])
        rulesets = {r["id"]: r["ruleset"] for r in status["cluster"]["replicas"]}
        assert rulesets["r0"] != rulesets["r1"] and all(r["alive"] for r in status["cluster"]["replicas"])
        await replicas[0].poll("/metrics", lambda m: "alert_engine_cluster_ruleset_mismatch 1" in m)
        assert (await replicas[0].request("POST", "/-/reload"))[0] == 200  # the reload completed: agreed again
        await replicas[1].poll("/v1/status", lambda s: not s["cluster"]["ruleset_mismatch"])
    finally:
        await replicas.close()
