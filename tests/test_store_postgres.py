"""What only the PostgreSQL store does: schema versions and `migrate` (which waits for every replica to
stop: an advisory lock they hold shared), one process per replica id, leases a dead process left, DSNs
that never show their password, and a server that stops and comes back under an open store (a cluster
of the test's own, stopped with pg_ctl)."""

from __future__ import annotations

import asyncio
import sys

import psycopg
import pytest

from engine.cluster import Member
from engine.intake import Intake
from engine.metrics import Registry
from engine.state import State
from engine.store import StorageError
from engine.store.postgres import PostgresStore, ReplicaInUse
from engine.store.postgres_schema import SCHEMA_VERSION
from engine.store.postgres_session import (
    DatabaseInUse,
    Messages,
    SchemaMismatch,
    describe,
    dsn_secrets,
    migrate_database,
)
from tests.conftest import lead
from tests.postgres import USER
from tests.test_intake import Clock, load

NOW = 1_700_000_000.0


async def test_migrate_brings_a_new_database_to_the_schema_version_once_and_a_store_needs_it(
        new_database, postgres):
    dsn = new_database(migrated=False)
    with pytest.raises(SchemaMismatch) as outdated:
        await PostgresStore.open(dsn)
    assert outdated.value.older
    where = f"postgresql://{USER}@127.0.0.1:{postgres.port}/{dsn.rsplit('/', 1)[1]}"
    assert str(outdated.value) == (f"database {where} is at schema version 0; this alert-engine needs version "
                                   f"{SCHEMA_VERSION}")
    assert await migrate_database(dsn) == (where, 0, SCHEMA_VERSION)
    assert await migrate_database(dsn) == (where, SCHEMA_VERSION, SCHEMA_VERSION)  # nothing left to do
    store = await PostgresStore.open(dsn)
    await store.close()


async def test_a_database_newer_than_this_alert_engine_is_refused_by_the_store_and_by_migrate(postgres_dsn):
    with psycopg.connect(postgres_dsn, autocommit=True) as conn:
        conn.execute("INSERT INTO schema_migrations (version) VALUES (99)")
    for attempt in (PostgresStore.open, migrate_database):
        with pytest.raises(SchemaMismatch, match="at schema version 99, newer than this alert-engine knows") as newer:
            await attempt(postgres_dsn)
        assert not newer.value.older


async def test_replicas_share_a_database_migrate_waits_for_all_and_one_replica_id_runs_once(postgres_dsn):
    first = await PostgresStore.open(postgres_dsn, replica="one")
    second = await PostgresStore.open(postgres_dsn, replica="two")
    try:
        with pytest.raises(DatabaseInUse) as refused:
            await migrate_database(postgres_dsn)
        assert str(refused.value) == (f"database {describe(postgres_dsn)} is in use by alert-engine ({first.session}, "
                                      f"{second.session}): stop every replica to migrate it")
        await first.heartbeat(Member("one", "http://one", "sha"))
        with pytest.raises(ReplicaInUse, match="replica id 'one' is in use by a running alert-engine"):
            await PostgresStore.open(postgres_dsn, replica="one")
    finally:
        await first.close()
        await second.close()
    assert await migrate_database(postgres_dsn)  # the locks went with the sessions


CLAIMED_THEN_KILLED = """
import asyncio, os, signal, sys
from engine.render import Notification
from engine.store.postgres import PostgresStore, ReplicaInUse

async def main():
    store = await PostgresStore.open(sys.argv[1])
    await store.enqueue([Notification("r", "s", "v2", "trigger", "k", {"event_action": "trigger"})], now=1.0)
    print(len(await store.claim(now=2.0, limit=10)), flush=True)
    os.kill(os.getpid(), signal.SIGKILL)

asyncio.run(main())
"""


async def test_leases_a_killed_process_left_in_the_database_are_cleared_by_the_next_open(postgres_dsn):
    process = await asyncio.create_subprocess_exec(sys.executable, "-c", CLAIMED_THEN_KILLED, postgres_dsn,
                                                   stdout=asyncio.subprocess.PIPE)
    out, _ = await process.communicate()
    assert out == b"1\n"
    with psycopg.connect(postgres_dsn) as conn:  # the lease is still there, its owner dead
        assert conn.execute("SELECT count(*) FROM chains WHERE lease_token IS NOT NULL").fetchone() == (1,)
    async with asyncio.timeout(10):
        while True:  # until PostgreSQL has noticed the killed session and freed its lock
            try:
                store = await PostgresStore.open(postgres_dsn)
                break
            except DatabaseInUse:
                await asyncio.sleep(0.05)
    try:
        [entry] = await store.claim(now=3.0, limit=10)
        assert entry.notification.dedup_key == "k"
    finally:
        await store.close()


async def test_a_dsn_never_shows_its_password_in_messages(postgres, postgres_dsn):
    assert dsn_secrets(postgres_dsn) == [postgres.password]
    assert postgres.password not in describe(postgres_dsn)
    wrong = postgres_dsn.replace(postgres.password, "not-the-" + postgres.password)
    with pytest.raises(StorageError) as refused:
        await PostgresStore.open(wrong)
    assert "password authentication failed" in str(refused.value)
    assert str(refused.value).startswith(f"cannot connect to {describe(wrong)}: ")
    assert postgres.password not in str(refused.value)
    as_pairs = f"host=127.0.0.1 port={postgres.port} user={USER} password={postgres.password} dbname=x"
    assert describe(as_pairs) == f"postgresql://{USER}@127.0.0.1:{postgres.port}/x"
    assert dsn_secrets(as_pairs) == [postgres.password]
    said = Messages(describe(as_pairs), dsn_secrets(as_pairs)).text(ValueError(f"no: {as_pairs}\nmore"))
    assert said == f"no: host=127.0.0.1 port={postgres.port} user={USER} password=****{postgres.password[-4:]} dbname=x"
    broken = f"postgresql://{USER}:{postgres.password}@127.0.0.1:notaport/x?sslmode=bogus==="
    with pytest.raises(StorageError, match="not a PostgreSQL connection string") as invalid:
        describe(broken)
    assert postgres.password not in str(invalid.value)


async def test_a_database_not_in_utf8_is_refused_by_migrate_and_open(postgres):
    dsn = postgres.create_database("latin_db", encoding="SQL_ASCII")
    try:
        for attempt in (migrate_database, PostgresStore.open):
            with pytest.raises(StorageError, match="has encoding SQL_ASCII: alert-engine needs UTF8"):
                await attempt(dsn)
    finally:
        postgres.drop_database("latin_db")


async def test_a_server_that_stops_fails_writes_keeps_leases_and_state_and_everything_works_when_it_is_back(
        own_postgres, notification):
    dsn = own_postgres.dsn("alert_engine")
    store = await PostgresStore.open(dsn)
    try:
        await lead(store)
        await store.enqueue([notification(dedup_key="a"), notification(dedup_key="b")], now=NOW)
        a, b = sorted(await store.claim(now=NOW, limit=10), key=lambda e: e.notification.dedup_key)
        own_postgres.stop()
        with pytest.raises(StorageError) as failed:
            await store.complete(a, now=NOW, status=202, response="")
        assert failed.value.args[0].startswith("database: ")
        assert store.problem() == failed.value.args[0] and store.lost() is None
        with pytest.raises(StorageError):
            await store.probe()
        with pytest.raises(StorageError):
            await store.counts()
        await store.release([b])  # forgotten here at once; never raises
        pace = store.pacer(60, 2)  # the shared pace cannot be asked: this process paces on its own
        assert [await pace.reserve("k") for _ in range(3)] == [0.0, 0.0, pytest.approx(1.0, abs=0.1)]
        assert (await store.load_state()) == ([], [])  # the state needs no server
        own_postgres.start()
        await store.probe()  # a new connection, the lock taken again
        assert store.problem() is None
        await store.complete(a, now=NOW, status=202, response="")  # the holder's retry goes through
        [again] = await store.claim(now=NOW, limit=10)  # b: released while the server was away
        assert again.notification.dedup_key == "b"
        assert (await store.counts()).history == 1
    finally:
        await store.close()


async def test_a_batch_whose_commit_failed_with_the_server_gone_is_put_back_as_stored(own_postgres, tmp_path):
    rs, clock = load(tmp_path), Clock()
    store = await PostgresStore.open(own_postgres.dsn("alert_engine"))
    try:
        await lead(store)
        intake = Intake(store, State(), lambda: None, Registry(), clock=clock)
        assert (await intake.accept(rs, [{"kind": "deploy", "host": "a"}])).notifications == 2
        own_postgres.stop()
        clock.now += 60
        with pytest.raises(StorageError):
            await intake.accept(rs, [{"kind": "deploy", "host": "b"}, {"kind": "error", "host": "c"}])
        assert intake.state.poisoned is None
        assert sorted((g.rule, g.key) for by in intake.state.groups.values() for g in by.values()) == [
            ("deploys", "deploys/a")]
        own_postgres.start()
        again = await intake.accept(rs, [{"kind": "deploy", "host": "b"}, {"kind": "error", "host": "c"},
                                         {"kind": "deploy", "host": "a"}])
        assert again.notifications == 2  # b pages (pay, ops), c counts 1 of 2, a is still throttled
    finally:
        await store.close()
