"""The `Store` contract (engine/store/__init__.py), proven on every backend: each test runs on SQLite and
on PostgreSQL (a database of its own in the test session's cluster, tests/postgres.py). What only one
backend does is in tests/test_store_sqlite.py and tests/test_store_postgres.py."""

import asyncio
import json
import signal
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from engine.state import StateChanges
from engine.store import (
    COLLAPSED,
    DEAD_LETTERED,
    DELIVERED,
    DELIVERED_DRY_RUN,
    StorageError,
    Store,
    fold_collapsed_count,
)
from engine.store.postgres import PostgresStore
from engine.store.postgres_session import DatabaseInUse
from engine.store.sqlite import SQLiteStore
from tests import conftest, postgres

NOW = 1_700_000_000.0

OPEN = """
async def open_store(backend, where):
    if backend == "sqlite":
        from engine.store.sqlite import SQLiteStore
        return await SQLiteStore.open(where)
    from engine.store.postgres import PostgresStore
    return await PostgresStore.open(where)
"""


@dataclass(frozen=True)
class Backend:
    """One backend's database: `where` is the SQLite file or the PostgreSQL DSN."""

    name: str
    where: str

    async def open(self) -> Store:
        if self.name == "sqlite":
            return await SQLiteStore.open(self.where)
        for _ in range(50):  # a process just killed: PostgreSQL frees its lock once it notices
            try:
                return await PostgresStore.open(self.where)
            except DatabaseInUse:
                await asyncio.sleep(0.1)
        return await PostgresStore.open(self.where)

    def refuse_writes(self, when: str) -> None:
        """Writes to the outbox, history and dead letters where `when` holds fail as on a full disk."""
        if self.name == "sqlite":
            conftest.refuse_writes(Path(self.where), when)
        else:
            postgres.refuse_writes(self.where, when)

    def accept_writes(self) -> None:
        if self.name == "sqlite":
            conftest.accept_writes(Path(self.where))
        else:
            postgres.accept_writes(self.where)


@pytest.fixture(params=["sqlite", "postgresql"])
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Backend:
    if request.param == "sqlite":
        return Backend("sqlite", str(tmp_path / "state.db"))
    return Backend("postgresql", request.getfixturevalue("postgres_dsn"))


@pytest.fixture
async def store(backend: Backend) -> AsyncIterator[Store]:
    opened = await backend.open()
    yield opened
    await opened.close()


async def test_enqueue_claim_complete_moves_the_row_to_history(store, notification):
    n = notification()
    [id] = await store.enqueue([n], now=NOW)
    [entry] = await store.claim(now=NOW, limit=10)
    assert entry.id == id
    assert entry.notification == n
    assert json.loads(entry.payload) == n.body
    assert (entry.created, entry.attempts, entry.collapsed) == (NOW, 0, 0)
    await store.complete(entry, now=NOW + 2, status=202, response='{"status":"success"}')
    [row] = await store.history()
    assert (row.id, row.rule, row.service, row.api, row.action) == (id, "disk-full", "db", "v2", "trigger")
    assert (row.outcome, row.attempts, row.created, row.sent, row.status) == (DELIVERED, 1, NOW, NOW + 2, 202)
    assert row.response == '{"status":"success"}'
    counts = await store.counts()
    assert (counts.outbox, counts.history, counts.dead_letters, counts.oldest_created) == (0, 1, 0, None)


async def test_payload_is_the_body_serialised_once_compactly(store, notification):
    n = notification(summary="ünïcode")
    await store.enqueue([n], now=NOW)
    [entry] = await store.claim(now=NOW, limit=1)
    assert entry.payload == json.dumps(n.body, separators=(",", ":"), ensure_ascii=False).encode()


async def test_concurrent_enqueues_share_transactions(store, notification):
    before = store.commits
    batches = [[notification(dedup_key=f"k{i}")] for i in range(50)]
    ids = await asyncio.gather(*(store.enqueue(b, now=NOW) for b in batches))
    flat = [i for [i] in ids]
    assert len(set(flat)) == 50
    assert store.commits - before < 50
    assert (await store.counts()).outbox == 50
    claimed = await store.claim(now=NOW, limit=100)
    assert sorted(e.id for e in claimed) == sorted(flat)
    assert {e.notification.dedup_key for e in claimed if e.id == ids[7][0]} == {"k7"}


async def test_enqueue_returns_consecutive_ids_in_order(store, notification):
    ids = await store.enqueue([notification(dedup_key=f"k{i}") for i in range(5)], now=NOW)
    assert ids == list(range(ids[0], ids[0] + 5))
    assert await store.enqueue([], now=NOW) == []


async def test_one_failing_write_does_not_sink_the_others_in_its_transaction(store, notification):
    await store.enqueue([notification()], now=NOW)
    [entry] = await store.claim(now=NOW, limit=1)
    await store.complete(entry, now=NOW, status=202, response="")
    again = store.complete(entry, now=NOW, status=202, response="")  # the row is gone: this write fails
    other = store.enqueue([notification(dedup_key="other")], now=NOW)
    results = await asyncio.gather(again, other, return_exceptions=True)
    assert isinstance(results[0], LookupError)
    assert isinstance(results[1], list)
    assert (await store.counts()).outbox == 1


async def test_claims_survive_nothing_a_reopen_gives_everything_back(backend, notification):
    first = await backend.open()
    await first.enqueue([notification(dedup_key="a"), notification(dedup_key="b")], now=NOW)
    claimed = await first.claim(now=NOW, limit=10)
    assert len(claimed) == 2
    assert await first.claim(now=NOW, limit=10) == []  # leased
    await first.close()  # as if killed: nothing completed

    second = await backend.open()
    try:
        again = await second.claim(now=NOW, limit=10)
        assert sorted(e.id for e in again) == sorted(e.id for e in claimed)
    finally:
        await second.close()


async def test_after_a_reopen_expedite_all_makes_waiting_retries_due_now_but_not_later_pages(backend, notification):
    first = await backend.open()
    await first.enqueue([notification(dedup_key="failed"), notification(dedup_key="fresh")], now=NOW)
    await first.enqueue([notification(dedup_key="later", action="resolve")], now=NOW + 600)
    failed = next(e for e in await first.claim(now=NOW, limit=10) if e.notification.dedup_key == "failed")
    await first.retry_later(failed, due=NOW + 3600, status=429, response="slow down")
    await first.release()
    await first.close()

    second = await backend.open()
    try:
        assert [e.notification.dedup_key for e in await second.claim(now=NOW + 1, limit=10)] == ["fresh"]
        await second.release()
        assert await second.expedite_all(now=NOW + 1) == 1  # not the one created for later, never tried
        due = await second.claim(now=NOW + 1, limit=10)
        assert sorted(e.notification.dedup_key for e in due) == ["failed", "fresh"]
        assert next(e.attempts for e in due if e.notification.dedup_key == "failed") == 1
    finally:
        await second.close()


KILLED_AFTER_ENQUEUE = """
import asyncio, os, signal, sys
from engine.render import Notification
""" + OPEN + """
async def main():
    store = await open_store(sys.argv[1], sys.argv[2])
    body = {"event_action": "trigger"}
    batches = [[Notification("r", "s", "v2", "trigger", f"k{i}", body)] for i in range(20)]
    await asyncio.gather(*(store.enqueue(b, now=1.0) for b in batches))
    print("acknowledged", flush=True)
    os.kill(os.getpid(), signal.SIGKILL)

asyncio.run(main())
"""


async def test_an_acknowledged_enqueue_survives_kill_9(backend):
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-c", KILLED_AFTER_ENQUEUE, backend.name, backend.where, stdout=asyncio.subprocess.PIPE
    )
    out, _ = await process.communicate()
    assert (out, process.returncode) == (b"acknowledged\n", -signal.SIGKILL)
    reopened = await backend.open()
    try:
        assert (await reopened.counts()).outbox == 20
        assert len(await reopened.claim(now=2.0, limit=50)) == 20
    finally:
        await reopened.close()


async def test_only_the_head_of_a_chain_is_claimed_and_its_retry_holds_the_chain(store, notification):
    trigger = notification(dedup_key="a")
    resolve = notification(dedup_key="a", action="resolve")
    other = notification(dedup_key="b")
    t_id, r_id, o_id = await store.enqueue([trigger, resolve, other], now=NOW)
    heads = await store.claim(now=NOW, limit=10)
    assert sorted(e.id for e in heads) == [t_id, o_id]
    head = next(e for e in heads if e.id == t_id)
    await store.retry_later(head, due=NOW + 30, status=500, response="oops")
    assert await store.claim(now=NOW + 1, limit=10) == []  # the resolve waits behind its trigger
    assert await store.next_due() == NOW + 30
    [retried] = await store.claim(now=NOW + 30, limit=10)
    assert (retried.id, retried.attempts) == (t_id, 1)
    await store.complete(retried, now=NOW + 31, status=202, response="")
    [after] = await store.claim(now=NOW + 31, limit=10)
    assert after.id == r_id
    [row] = await store.history()
    assert row.attempts == 2


async def test_claim_is_earliest_due_first_and_limited(store, notification):
    ids = await store.enqueue([notification(dedup_key=f"k{i}") for i in range(3)], now=NOW)
    [first] = await store.claim(now=NOW, limit=1)
    await store.retry_later(first, due=NOW + 5, status=None, response="timeout")
    claimed = await store.claim(now=NOW + 10, limit=10)
    assert [e.id for e in claimed] == [ids[1], ids[2], ids[0]]


async def test_concurrent_claims_never_hand_out_a_chain_twice(store, notification):
    await store.enqueue([notification(dedup_key=f"k{i % 5}") for i in range(20)], now=NOW)
    results = await asyncio.gather(*(store.claim(now=NOW, limit=3) for _ in range(4)))
    chains = [e.notification.dedup_key for batch in results for e in batch]
    assert sorted(chains) == [f"k{i}" for i in range(5)]


async def test_release_gives_a_claim_back(store, notification):
    await store.enqueue([notification()], now=NOW)
    [entry] = await store.claim(now=NOW, limit=1)
    assert await store.next_due() is None
    await store.release([entry])
    assert await store.next_due() == NOW
    [again] = await store.claim(now=NOW, limit=1)
    await store.release()
    assert [e.id for e in await store.claim(now=NOW, limit=1)] == [again.id]


async def test_dead_letter_keeps_reason_response_attempts_and_the_body(store, notification):
    n = notification()
    [id] = await store.enqueue([n], now=NOW)
    [entry] = await store.claim(now=NOW, limit=1)
    await store.retry_later(entry, due=NOW, status=500, response="busy")
    [entry] = await store.claim(now=NOW, limit=1)
    await store.dead_letter(entry, now=NOW + 3, reason="PagerDuty rejected it: HTTP 400", status=400,
                            response='{"status":"invalid event"}')
    [dead] = await store.dead_letters()
    assert (dead.id, dead.status, dead.attempts) == (id, 400, 2)
    assert dead.reason == "PagerDuty rejected it: HTTP 400"
    assert (dead.created, dead.failed, dead.response) == (NOW, NOW + 3, '{"status":"invalid event"}')
    assert dead.body == n.body
    assert (await store.counts()).outbox == 0


async def test_retry_dead_letter_puts_it_back_new_and_purge_deletes(store, notification):
    await store.enqueue([notification(dedup_key="a"), notification(dedup_key="b")], now=NOW)
    for entry in await store.claim(now=NOW, limit=2):
        await store.dead_letter(entry, now=NOW, reason="x", status=400, response="")
    first, second = await store.dead_letters()
    new_id = await store.retry_dead_letter(first.id, now=NOW + 100)
    assert new_id is not None and new_id > second.id
    assert await store.retry_dead_letter(first.id, now=NOW + 100) is None
    [entry] = await store.claim(now=NOW + 100, limit=5)
    assert (entry.id, entry.attempts, entry.created) == (new_id, 0, NOW + 100)
    assert entry.notification.dedup_key == "a"
    assert [d.id for d in await store.dead_letters()] == [second.id]
    assert await store.purge_dead_letters([second.id, 12345]) == 1
    await store.dead_letter(entry, now=NOW, reason="x", status=400, response="")
    assert await store.purge_dead_letters() == 1
    assert await store.dead_letters() == []


async def test_history_filters_newest_first(store, notification):
    specs = [("r1", "db"), ("r1", "web"), ("r2", "db")]
    for i, (rule, service) in enumerate(specs):
        await store.enqueue([notification(rule=rule, service=service, dedup_key=f"k{i}")], now=NOW)
        [entry] = await store.claim(now=NOW, limit=1)
        await store.complete(entry, now=NOW + i, status=202, response="ok")
    assert [(h.rule, h.service) for h in await store.history()] == specs[::-1]
    assert [h.service for h in await store.history(rule="r1")] == ["web", "db"]
    assert [h.rule for h in await store.history(service="db")] == ["r2", "r1"]
    assert [h.sent for h in await store.history(since=NOW + 1)] == [NOW + 2, NOW + 1]
    assert len(await store.history(limit=1)) == 1



async def test_history_includes_the_dead_letters_with_their_reason_under_the_same_filters(store, notification):
    outcomes = [("r1", "db", "deliver"), ("r1", "web", "bury"), ("r2", "db", "deliver"), ("r2", "db", "bury")]
    for i, (rule, service, outcome) in enumerate(outcomes):
        await store.enqueue([notification(rule=rule, service=service, dedup_key=f"k{i}")], now=NOW)
        [entry] = await store.claim(now=NOW, limit=1)
        if outcome == "deliver":
            await store.complete(entry, now=NOW + i, status=202, response="ok")
        else:
            await store.dead_letter(entry, now=NOW + i, reason="PagerDuty rejected it: HTTP 400", status=400,
                                    response='{"message": "Event object is invalid"}')
    rows = await store.history()
    assert [(h.dedup_key, h.outcome, h.sent) for h in rows] == [
        ("k3", DEAD_LETTERED, NOW + 3), ("k2", DELIVERED, NOW + 2), ("k1", DEAD_LETTERED, NOW + 1),
        ("k0", DELIVERED, NOW)]
    dead = rows[0]
    assert (dead.reason, dead.status, dead.attempts) == ("PagerDuty rejected it: HTTP 400", 400, 1)
    assert dead.response == '{"message": "Event object is invalid"}' and dead.body == notification(
        rule="r2", dedup_key="k3").body
    assert rows[1].reason == ""
    assert [h.dedup_key for h in await store.history(rule="r1")] == ["k1", "k0"]
    assert [h.dedup_key for h in await store.history(service="db")] == ["k3", "k2", "k0"]
    assert [h.dedup_key for h in await store.history(since=NOW + 1)] == ["k3", "k2", "k1"]
    assert [h.dedup_key for h in await store.history(limit=2)] == ["k3", "k2"]
    # a dead letter retried (or purged) is no longer one
    assert await store.retry_dead_letter(rows[0].id, now=NOW + 4) is not None
    assert [h.dedup_key for h in await store.history()] == ["k2", "k1", "k0"]

async def test_prune_history_drops_rows_older_than_retention(store, notification):
    for i, sent in enumerate((NOW - 8 * 86400, NOW - 86400)):
        await store.enqueue([notification(dedup_key=f"k{i}")], now=sent)
        [entry] = await store.claim(now=NOW, limit=1)
        await store.complete(entry, now=sent, status=202, response="")
    assert await store.prune_history(now=NOW) == 1
    assert [h.sent for h in await store.history()] == [NOW - 86400]
    assert await store.prune_history(now=NOW, retention=3600) == 1


async def test_collapse_folds_consecutive_triggers_into_the_newest_not_across_a_resolve(store, notification):
    chain = [
        notification(summary="one"),
        notification(summary="two"),
        notification(summary="three"),
        notification(action="resolve"),
        notification(summary="four"),
    ]
    ids = await store.enqueue(chain, now=NOW)
    [head] = await store.claim(now=NOW, limit=5)
    await store.retry_later(head, due=NOW, status=429, response="slow down")
    [head] = await store.claim(now=NOW, limit=5)
    newest = await store.collapse(head, now=NOW + 1)
    assert (newest.id, newest.collapsed, newest.attempts) == (ids[2], 2, 1)
    body = json.loads(newest.payload)
    assert body["payload"]["summary"] == "three"
    assert body["payload"]["custom_details"] == {"host": "host1", "collapsed_count": 2}
    assert newest.notification.body == body
    folded = await store.history()
    assert sorted(h.id for h in folded) == ids[:2]
    assert {(h.outcome, h.status, h.response) for h in folded} == {
        (COLLAPSED, None, f"collapsed into notification {ids[2]}")
    }
    assert await store.claim(now=NOW, limit=5) == []  # the chain is still claimed, by `newest`
    await store.complete(newest, now=NOW + 2, status=202, response="")
    [resolve] = await store.claim(now=NOW, limit=5)
    assert resolve.id == ids[3]
    assert await store.collapse(resolve, now=NOW) == resolve
    await store.complete(resolve, now=NOW + 3, status=202, response="")
    [last] = await store.claim(now=NOW, limit=5)
    assert await store.collapse(last, now=NOW) == last  # nothing behind it
    delivered = {h.id: h for h in await store.history()}
    assert (delivered[ids[2]].collapsed, delivered[ids[2]].outcome) == (2, DELIVERED)


async def test_collapse_counts_what_earlier_collapses_folded(store, notification):
    await store.enqueue([notification(api="v1", summary=s) for s in ("a", "b", "c")], now=NOW)
    [head] = await store.claim(now=NOW, limit=1)
    newest = await store.collapse(head, now=NOW)
    assert newest.collapsed == 2
    await store.retry_later(newest, due=NOW, status=403, response="rate limited")
    await store.enqueue([notification(api="v1", summary="d")], now=NOW)
    [head] = await store.claim(now=NOW, limit=1)
    newest = await store.collapse(head, now=NOW)
    assert newest.collapsed == 3  # "c" stood for two, plus "c" itself
    body = json.loads(newest.payload)
    assert (body["description"], body["details"]["collapsed_count"]) == ("d", 3)


def test_fold_collapsed_count_wraps_details_that_are_not_a_mapping():
    folded = fold_collapsed_count("v1", {"details": [1, 2]}, 4)
    assert folded["details"] == {"details": [1, 2], "collapsed_count": 4}
    assert fold_collapsed_count("v2", {}, 1) == {"payload": {"custom_details": {"collapsed_count": 1}}}


async def test_dry_run_outcome_is_kept(store, notification):
    await store.enqueue([notification()], now=NOW)
    [entry] = await store.claim(now=NOW, limit=1)
    await store.complete(entry, now=NOW, status=None, response="", outcome=DELIVERED_DRY_RUN)
    [row] = await store.history()
    assert (row.outcome, row.status) == (DELIVERED_DRY_RUN, None)


async def test_closed_store_refuses_work(backend, notification):
    opened = await backend.open()
    await opened.close()
    with pytest.raises(RuntimeError, match="closed"):
        await opened.enqueue([notification()], now=NOW)


async def test_a_refused_write_keeps_its_lease_and_the_others_in_its_transaction_end_theirs(backend, notification):
    """A lease ends only with its own write: the chain whose write failed is not handed out again (its
    holder retries the write), while writes committed in the same transaction end their leases."""
    store = await backend.open()
    try:
        await store.enqueue([notification(dedup_key=k) for k in ("a", "b", "c", "d")], now=NOW)
        await store.enqueue([notification(dedup_key=k) for k in ("a", "b", "c", "d")], now=NOW)  # next heads
        a, b, c, d = sorted(await store.claim(now=NOW, limit=10), key=lambda e: e.notification.dedup_key)
        backend.refuse_writes("ROW.dedup_key IN ('a', 'c')")
        results = await asyncio.gather(
            store.complete(a, now=NOW, status=202, response=""),
            store.complete(b, now=NOW, status=202, response=""),
            store.retry_later(c, due=NOW, status=500, response=""),
            store.dead_letter(d, now=NOW, reason="x", status=400, response=""),
            return_exceptions=True)
        assert [type(r) for r in results] == [StorageError, type(None), StorageError, type(None)]
        assert "database or disk is full" in str(results[0])
        assert sorted(e.notification.dedup_key for e in await store.claim(now=NOW, limit=10)) == ["b", "d"]
        assert await store.claim(now=NOW, limit=10) == []  # a and c stay with whoever holds them
        with pytest.raises(StorageError):
            await store.collapse(a, now=NOW)  # refused: nothing changed
        backend.accept_writes()
        await store.complete(a, now=NOW, status=202, response="")  # the holder's retry goes through
        await store.retry_later(c, due=NOW, status=500, response="")
        assert sorted(e.notification.dedup_key for e in await store.claim(now=NOW, limit=10)) == ["a", "c"]
        assert (await store.counts()).history == 2
    finally:
        await store.close()


async def test_alert_state_is_stored_with_its_notifications_and_read_back_whole_or_by_key(backend, notification):
    odd = "checkout/web-1,\x00\u00e9\U0001f4a5"  # a group key made of event fields: any character, NUL too
    store = await backend.open()
    try:
        await conftest.lead(store)
        await store.enqueue([notification(dedup_key=odd)], now=NOW, state=StateChanges(
            upserts=(("errors", odd, '{"open":true}'), ("errors", "b", '{"open":false}'), ("deploys", "a", "{}")),
            silences=((1, '{"id":1}'), (2, '{"id":2}'))))
        await store.enqueue([], now=NOW, state=StateChanges(  # state alone, no page
            upserts=(("errors", "b", '{"open":true}'),), deletes=(("deploys", "a"),), silence_deletes=(1,)))
    finally:
        await store.close()
    store = await backend.open()
    try:
        groups, silences = await store.load_state()
        assert groups == [("errors", "b", '{"open":true}'), ("errors", odd, '{"open":true}')]  # by rule, key
        assert silences == [(2, '{"id":2}')]
        assert await store.load_state(groups=[("errors", "b"), ("deploys", "a"), ("errors", odd)],
                                      silences=[1, 2]) == (
            [("errors", "b", '{"open":true}'), ("errors", odd, '{"open":true}')], [(2, '{"id":2}')])
        [entry] = await store.claim(now=NOW, limit=10)
        assert entry.notification.dedup_key == odd
        await store.dead_letter(entry, now=NOW, reason="no\x00pe", status=400, response="bad\x00")
        [dead] = await store.dead_letters()
        assert (dead.dedup_key, dead.reason.replace("\ufffd", "\x00")) == (odd, "no\x00pe")
        assert await store.retry_dead_letter(dead.id, now=NOW) is not None
        [entry] = await store.claim(now=NOW, limit=10)
        await store.complete(entry, now=NOW, status=202, response="")
        assert [h.dedup_key for h in await store.history()] == [odd]
    finally:
        await store.close()


async def test_a_failed_state_write_changes_nothing_and_fails_alone(backend, notification):
    store = await backend.open()
    try:
        await conftest.lead(store)
        await store.enqueue([], now=NOW, state=StateChanges(upserts=(("errors", "a", "{}"),)))
        backend.refuse_writes("ROW.dedup_key = 'refused'")
        results = await asyncio.gather(
            store.enqueue([notification(dedup_key="refused")], now=NOW,
                          state=StateChanges(upserts=(("errors", "a", '{"open":true}'),))),
            store.enqueue([notification(dedup_key="fine")], now=NOW,
                          state=StateChanges(upserts=(("errors", "b", "{}"),))),
            return_exceptions=True)
        assert isinstance(results[0], StorageError) and isinstance(results[1], list)
        assert store.problem() is not None
        assert await store.load_state() == ([("errors", "a", "{}"), ("errors", "b", "{}")], [])
        backend.accept_writes()
        await store.probe()
        assert store.problem() is None
        assert [e.notification.dedup_key for e in await store.claim(now=NOW, limit=10)] == ["fine"]
    finally:
        await store.close()
