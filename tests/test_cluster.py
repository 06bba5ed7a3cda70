"""engine/cluster.py, engine/decider.py and engine/store/postgres_cluster.py, on the test's own PostgreSQL:
replicas as stores in this process (a process killed is its connections closed), the decider's election
and takeover, fencing by epoch, delivery leases that run out, and the inbox from hand-off to result."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

import psycopg
import pytest

from engine.cluster import Member, Membership
from engine.decider import Decider, Queued
from engine.intake import Accepted, Intake
from engine.metrics import Registry
from engine.silences import parse_silence
from engine.state import State, StateChanges
from engine.store import LeaseLost, StorageError
from engine.store.postgres import PostgresStore
from engine.store.postgres_cluster import Deposed
from tests.test_intake import load

NOW = 1_800_000_000.0


def member(name: str, ruleset: str = "sha-1") -> Member:
    return Member(name, f"http://{name}", ruleset)


@asynccontextmanager
async def replica(dsn: str, name: str, **leases: float) -> AsyncIterator[PostgresStore]:
    store = await PostgresStore.open(dsn, replica=name, **leases)
    try:
        yield store
    finally:
        await store.close()


async def until(check: Callable[[], object], timeout: float = 10.0) -> None:
    async with asyncio.timeout(timeout):
        while not check():
            await asyncio.sleep(0.05)


async def test_the_first_replica_to_beat_decides_and_every_replica_sees_the_cluster(postgres_dsn):
    async with replica(postgres_dsn, "a") as a, replica(postgres_dsn, "b") as b:
        first = await a.heartbeat(member("a"))
        second = await b.heartbeat(member("b", ruleset="sha-2"))
        assert (first.leading, first.decider, first.epoch) == (True, "a", 1)
        assert (second.leading, second.decider, second.epoch) == (False, "a", 1)
        assert [(r.id, r.address, r.decider, r.alive) for r in second.replicas] == [
            ("a", "http://a", True, True), ("b", "http://b", False, True)]
        assert second.rulesets == {"sha-1": ["a"], "sha-2": ["b"]}  # reported: a mismatch
        view = second.view("b")
        assert view["ruleset_mismatch"] is True and view["decider"] == "a"
        assert (await a.heartbeat(member("a"))).leading  # renewed, same epoch
        assert (await a.heartbeat(member("a"))).epoch == 1


async def test_a_killed_decider_is_replaced_at_the_next_heartbeat_and_its_writes_are_fenced(postgres_dsn):
    async with replica(postgres_dsn, "a") as a, replica(postgres_dsn, "b") as b:
        await a.heartbeat(member("a"))
        await a.lead(1)
        await a.enqueue([], now=NOW, state=StateChanges(upserts=(("r", "k", '{"n":1}'),)))
        assert not (await b.heartbeat(member("b"))).leading  # a is alive: its lease holds
        await a._beating.close()  # as a process killed: its heartbeat connection is gone
        taken = await b.heartbeat(member("b"))
        assert (taken.leading, taken.decider, taken.epoch) == (True, "b", 2)
        await b.lead(2)
        assert (await b.load_state())[0] == [("r", "k", '{"n":1}')]  # the new decider reads what a committed
        with pytest.raises(StorageError):  # the takeover ended a's sessions: its writer reconnects...
            await a.enqueue([], now=NOW, state=StateChanges(upserts=(("r", "k", '{"n":2}'),)))
        with pytest.raises(Deposed):  # ...and a deposed decider's commit fails, nothing written
            await a.enqueue([], now=NOW, state=StateChanges(upserts=(("r", "k", '{"n":2}'),)))
        assert not (await a.heartbeat(member("a"))).leading
        await b.enqueue([], now=NOW, state=StateChanges(upserts=(("r", "k", '{"n":3}'),)))
        assert (await b.load_state())[0] == [("r", "k", '{"n":3}')]


async def test_a_lease_that_ran_out_is_taken_and_the_old_holders_sessions_are_ended(postgres_dsn):
    async with replica(postgres_dsn, "a", decider_lease=0.5) as a, replica(postgres_dsn, "b", decider_lease=0.5) as b:
        await a.heartbeat(member("a"))
        await a.lead(1)
        with psycopg.connect(postgres_dsn, autocommit=True) as watcher:
            # a holds a transaction open on the decider's row (as one cut off mid-commit would)
            stuck = await psycopg.AsyncConnection.connect(postgres_dsn, application_name=a.session)
            await stuck.execute("SELECT 1 FROM decider WHERE epoch = 1 FOR SHARE")
            await asyncio.sleep(0.6)  # a's lease runs out on the database's clock
            taken = await b.heartbeat(member("b"))
            assert (taken.leading, taken.epoch) == (True, 2)
            alive = watcher.execute("SELECT count(*) FROM pg_stat_activity WHERE application_name = %s",
                                    (a.session,)).fetchone()
            assert alive == (0,)  # every session of the old decider was terminated
            with pytest.raises(psycopg.OperationalError):
                await stuck.execute("SELECT 1")
            await stuck.close()
        with pytest.raises(StorageError):  # its writer was cut too; reconnected, the fence refuses it
            await a.enqueue([], now=NOW, state=StateChanges(upserts=(("r", "k", "{}"),)))
        with pytest.raises(Deposed):
            await a.enqueue([], now=NOW, state=StateChanges(upserts=(("r", "k", "{}"),)))


async def test_a_stepping_down_decider_hands_over_at_the_next_heartbeat(postgres_dsn):
    async with replica(postgres_dsn, "a") as a, replica(postgres_dsn, "b") as b:
        await a.heartbeat(member("a"))
        await a.lead(1)
        await a.lead(None)  # stepping down gives the lease up
        assert (await b.heartbeat(member("b"))).leading


async def test_a_delivery_lease_runs_out_unless_renewed_and_the_late_holder_cannot_complete(postgres_dsn, notification):
    async with (replica(postgres_dsn, "a", delivery_lease=0.6) as a,
                replica(postgres_dsn, "b", delivery_lease=0.6) as b):
        await a.enqueue([notification(dedup_key="k")], now=NOW)
        [held] = await a.claim(now=NOW, limit=10)
        for _ in range(3):  # renewed by a's heartbeats: b finds nothing free
            await asyncio.sleep(0.3)
            await a.heartbeat(member("a"))
            assert await b.claim(now=NOW, limit=10) == []
        await asyncio.sleep(0.7)  # a stops beating (frozen): the lease runs out
        [taken] = await b.claim(now=NOW, limit=10)
        assert taken.id == held.id
        with pytest.raises(LeaseLost):  # a's completion, late, is refused: b holds the chain now
            await a.complete(held, now=NOW, status=202, response="")
        await b.complete(taken, now=NOW, status=202, response="")
        assert [h.id for h in await b.history()] == [held.id]


async def test_the_inbox_hands_events_and_silences_to_the_decider_who_answers_with_the_result(postgres_dsn, tmp_path):
    ruleset = load(tmp_path)
    async with replica(postgres_dsn, "a") as a, replica(postgres_dsn, "b") as b:
        deciders = {}
        for name, store in (("a", a), ("b", b)):
            intake = Intake(store, State(), lambda: None, Registry())

            async def state(store: PostgresStore = store) -> State:
                return State()

            deciders[name] = Decider(store, intake, lambda: ruleset, load_state=state, inbox=store)
            store.listen({"alert_engine_inbox": deciders[name].wake_inbox,
                          "alert_engine_decided": deciders[name].wake_results})
        memberships = [Membership(s, lambda n=n: member(n), interval=0.2, lease=2.0, elected=deciders[n].elected,
                                  deposed=deciders[n].deposed, metrics=Registry()) for n, s in (("a", a), ("b", b))]
        for m in memberships:
            await m.beat()
        assert deciders["a"].leading and not deciders["b"].leading
        try:
            queued = await deciders["b"].accept([{"kind": "deploy", "host": "x"}])
            assert isinstance(queued, Queued) and queued.accepted == 1
            decided = await deciders["b"].accept([{"kind": "deploy", "host": "y"}, {"kind": "deploy", "host": "x"}],
                                                 wait=5)
            assert decided == Accepted(2, 2, 2)  # y pages pay and ops; x was decided first, so it is throttled
            assert (await b.inbox_results([queued.inbox]))[queued.inbox] == {"accepted": 1, "matched": 1,
                                                                             "notifications": 2}
            silence = await deciders["b"].add_silence(parse_silence(
                {"match": {"field": "rule", "equals": "errors"}, "until": "1h", "comment": "c", "created_by": "me"},
                ident=0, now=NOW))
            assert not isinstance(silence, Queued) and silence.id == 1
            assert [s.id for s in await deciders["a"].silences()] == [1]  # in effect at the decider
            assert [s.id for s in await deciders["b"].silences()] == [1]  # and read from the database elsewhere
            assert await a.inbox_backlog() == (0, None)
        finally:
            for d in deciders.values():
                await d.deposed("test over")


def most_in_any_window(starts: list[float], window: float) -> int:
    starts = sorted(starts)
    return max(sum(1 for t in starts[i:] if t < s + window) for i, s in enumerate(starts))


async def test_pacing_is_one_budget_per_key_across_replicas_and_retry_after_pauses_them_all(postgres_dsn):
    async with replica(postgres_dsn, "a") as a, replica(postgres_dsn, "b") as b:
        paces = [a.pacer(60, 10), b.pacer(60, 10)]  # rate_per_key: 60/min, burst: 10
        starts = []
        for i in range(30):
            asked = time.monotonic()
            starts.append(asked + await paces[i % 2].reserve("the-key"))
        for window in (1.0, 5.0, 10.0):
            assert most_in_any_window(starts, window) <= 10 + window
        assert max(starts) - min(starts) >= 19.0  # 30 sends: 10 at once, then one a second
        assert await paces[0].reserve("another-key") == 0.0
        await paces[0].pause("paused-key", 30.0)  # PagerDuty's Retry-After, seen by a
        assert 29.0 < await paces[1].reserve("paused-key") <= 30.0  # holds b too
        with psycopg.connect(postgres_dsn) as conn:  # the row names a digest, never the key
            keys = [k for k, in conn.execute("SELECT key FROM pacing ORDER BY key")]
        assert len(keys) == 3 and not any("key" in k for k in keys)


async def test_a_replica_that_cannot_start_deciding_gives_up_and_tries_again_at_the_next_beat(postgres_dsn):
    async with replica(postgres_dsn, "a") as a:
        calls: list[object] = []

        async def elected(epoch: int) -> None:
            calls.append(epoch)
            if len(calls) == 1:
                raise StorageError("database: couldn't get a connection")  # the state cannot be read yet

        async def deposed(why: str) -> None:
            calls.append(why)

        membership = Membership(a, lambda: member("a"), interval=0.2, lease=2.0, elected=elected, deposed=deposed,
                                metrics=Registry())
        await membership.beat()
        assert not membership.leading and calls == [1, "deciding could not start"]
        await membership.beat()
        assert membership.leading and calls[-1] == 1
