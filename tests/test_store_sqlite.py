import asyncio
import contextlib
import json
import os
import signal
import sqlite3
import stat
import sys

import pytest

from engine.store import COLLAPSED, DEAD_LETTERED, DELIVERED, DELIVERED_DRY_RUN, StorageError, fold_collapsed_count
from engine.store.sqlite import SCHEMA_VERSION, SQLiteStore
from tests.conftest import accept_writes, refuse_writes, write_old_database

NOW = 1_700_000_000.0


@pytest.fixture
async def store(tmp_path):
    opened = await SQLiteStore.open(tmp_path / "state.db")
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


async def test_a_database_that_cannot_be_opened_is_a_storage_error_naming_it(tmp_path):
    garbage = tmp_path / "garbage.db"
    garbage.write_bytes(b"not a database\n" * 500)
    newer = tmp_path / "newer.db"
    with sqlite3.connect(newer) as db:
        db.execute("PRAGMA user_version = 99")
    (tmp_path / "a-directory.db").mkdir()
    for path, reason in ((garbage, "file is not a database"), (newer, "schema version 99, expected"),
                         (tmp_path / "a-directory.db", "Is a directory")):
        with pytest.raises(StorageError) as failed:
            await SQLiteStore.open(path)
        assert str(failed.value).startswith(f"cannot open the database {path}: ")
        assert reason in str(failed.value)


async def test_claims_survive_nothing_a_reopen_gives_everything_back(tmp_path, notification):
    path = tmp_path / "state.db"
    first = await SQLiteStore.open(path)
    await first.enqueue([notification(dedup_key="a"), notification(dedup_key="b")], now=NOW)
    claimed = await first.claim(now=NOW, limit=10)
    assert len(claimed) == 2
    assert await first.claim(now=NOW, limit=10) == []  # leased
    await first.close()  # as if killed: nothing completed

    second = await SQLiteStore.open(path)
    try:
        again = await second.claim(now=NOW, limit=10)
        assert sorted(e.id for e in again) == sorted(e.id for e in claimed)
    finally:
        await second.close()


async def test_after_a_reopen_expedite_all_makes_waiting_retries_due_now_but_not_later_pages(tmp_path, notification):
    path = tmp_path / "state.db"
    first = await SQLiteStore.open(path)
    await first.enqueue([notification(dedup_key="failed"), notification(dedup_key="fresh")], now=NOW)
    await first.enqueue([notification(dedup_key="later", action="resolve")], now=NOW + 600)
    failed = next(e for e in await first.claim(now=NOW, limit=10) if e.notification.dedup_key == "failed")
    await first.retry_later(failed, due=NOW + 3600, status=429, response="slow down")
    await first.release()
    await first.close()

    second = await SQLiteStore.open(path)
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
from engine.store.sqlite import SQLiteStore

async def main():
    store = await SQLiteStore.open(sys.argv[1])
    body = {"event_action": "trigger"}
    batches = [[Notification("r", "s", "v2", "trigger", f"k{i}", body)] for i in range(20)]
    await asyncio.gather(*(store.enqueue(b, now=1.0) for b in batches))
    print("acknowledged", flush=True)
    os.kill(os.getpid(), signal.SIGKILL)

asyncio.run(main())
"""


async def test_an_acknowledged_enqueue_survives_kill_9(tmp_path):
    path = tmp_path / "state.db"
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-c", KILLED_AFTER_ENQUEUE, str(path), stdout=asyncio.subprocess.PIPE
    )
    out, _ = await process.communicate()
    assert (out, process.returncode) == (b"acknowledged\n", -signal.SIGKILL)
    reopened = await SQLiteStore.open(path)
    try:
        assert (await reopened.counts()).outbox == 20
        assert len(await reopened.claim(now=2.0, limit=50)) == 20
    finally:
        await reopened.close()


async def test_database_is_in_wal_mode(tmp_path):
    path = tmp_path / "state.db"
    opened = await SQLiteStore.open(path)
    await opened.close()
    with contextlib.closing(sqlite3.connect(path)) as db:
        assert db.execute("PRAGMA journal_mode").fetchone() == ("wal",)


async def test_database_file_is_private(tmp_path):
    path = tmp_path / "state.db"
    opened = await SQLiteStore.open(path)
    await opened.close()
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600


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


async def test_closed_store_refuses_work(tmp_path, notification):
    opened = await SQLiteStore.open(tmp_path / "state.db")
    await opened.close()
    with pytest.raises(RuntimeError, match="closed"):
        await opened.enqueue([notification()], now=NOW)


async def test_a_version_1_database_gets_chain_heads_and_keeps_its_order(tmp_path, notification):
    """Version 1 found chain heads with a GROUP BY; version 2 marks them. Rows queued under 1 still go
    out head first, chain by chain."""
    path = tmp_path / "v1.db"
    db = sqlite3.connect(path)
    db.executescript("""
        CREATE TABLE outbox (
            id INTEGER PRIMARY KEY AUTOINCREMENT,
            rule TEXT NOT NULL, service TEXT NOT NULL, api TEXT NOT NULL, action TEXT NOT NULL,
            dedup_key TEXT NOT NULL, body TEXT NOT NULL, created REAL NOT NULL, due REAL NOT NULL,
            attempts INTEGER NOT NULL DEFAULT 0, collapsed INTEGER NOT NULL DEFAULT 0,
            last_status INTEGER, last_response TEXT NOT NULL DEFAULT '');
        PRAGMA user_version = 1;
    """)
    rows = [notification(dedup_key="a"), notification(dedup_key="b"), notification(dedup_key="a", action="resolve")]
    db.executemany("INSERT INTO outbox (rule, service, api, action, dedup_key, body, created, due) "
                   "VALUES (?, ?, ?, ?, ?, ?, 1, 1)",
                   [(n.rule, n.service, n.api, n.action, n.dedup_key, json.dumps(n.body)) for n in rows])
    db.commit()
    db.close()
    store = await SQLiteStore.open(path)
    try:
        first = await store.claim(now=2, limit=10)
        assert [(e.id, e.notification.dedup_key) for e in first] == [(1, "a"), (2, "b")]
        await store.complete(first[0], now=2, status=202, response="")
        [resolve] = await store.claim(now=2, limit=10)  # b is still leased; a's resolve is its head now
        assert (resolve.id, resolve.notification.action) == (3, "resolve")
    finally:
        await store.close()


async def test_a_refused_write_keeps_its_lease_and_the_others_in_its_transaction_end_theirs(tmp_path, notification):
    """A lease ends only with its own write: the chain whose write failed is not handed out again (its
    holder retries the write), while writes committed in the same transaction end their leases."""
    path = tmp_path / "state.db"
    store = await SQLiteStore.open(path)
    try:
        await store.enqueue([notification(dedup_key=k) for k in ("a", "b", "c", "d")], now=NOW)
        await store.enqueue([notification(dedup_key=k) for k in ("a", "b", "c", "d")], now=NOW)  # next heads
        a, b, c, d = sorted(await store.claim(now=NOW, limit=10), key=lambda e: e.notification.dedup_key)
        refuse_writes(path, "ROW.dedup_key IN ('a', 'c')")
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
        accept_writes(path)
        await store.complete(a, now=NOW, status=202, response="")  # the holder's retry goes through
        await store.retry_later(c, due=NOW, status=500, response="")
        assert sorted(e.notification.dedup_key for e in await store.claim(now=NOW, limit=10)) == ["a", "c"]
        assert (await store.counts()).history == 2
    finally:
        await store.close()


def _files_holding(tmp_path, keys):
    """(file, key) for every key found in the database files (with -wal and -shm)."""
    return [(p.name, key) for p in sorted(tmp_path.glob("state.db*")) for key in keys
            if key.encode() in p.read_bytes()]


@pytest.mark.parametrize("version", [1, 2])
async def test_opening_an_older_database_strips_every_stored_key_from_rows_and_file(
        tmp_path, notification, version):
    keys = {"pay": "pay-KEY-0123456789abcdef", "ops": "ops-KEY-0123456789abcdef"}
    path = tmp_path / "state.db"
    queued = [notification(service=service, dedup_key=f"k{i}", api="v1" if i % 2 else "v2",
                           summary="ünïcode " + "x" * 3000)  # an overflow page too
              for i, service in enumerate(keys)]
    write_old_database(path, version, [(n, keys[n.service]) for n in queued])
    assert _files_holding(tmp_path, keys.values())  # the test's premise: the old file holds them
    store = await SQLiteStore.open(path)
    try:
        assert _files_holding(tmp_path, keys.values()) == []  # rows, freed pages, WAL: nowhere
        claimed = sorted(await store.claim(now=2, limit=10), key=lambda e: e.id)
        assert [e.notification for e in claimed] == queued  # the rest of every body as it was
        assert [json.loads(e.payload) for e in claimed] == [n.body for n in queued]
        assert [h.body for h in await store.history() if h.outcome == DELIVERED][::-1] == [n.body for n in queued]
        assert [d.body for d in await store.dead_letters()] == [n.body for n in queued]
    finally:
        await store.close()
    with contextlib.closing(sqlite3.connect(path)) as db:
        assert db.execute("PRAGMA user_version").fetchone() == (SCHEMA_VERSION,)
    assert _files_holding(tmp_path, keys.values()) == []


OPEN_WITH_A_FULL_DISK = """
import asyncio, json, resource, signal, sys
from engine.store.sqlite import SQLiteStore

signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit fails (EFBIG), as on a full disk
resource.setrlimit(resource.RLIMIT_FSIZE, (int(sys.argv[2]), int(sys.argv[2])))

async def main():
    store = await SQLiteStore.open(sys.argv[1])
    print(json.dumps([entry.payload.decode() for entry in await store.claim(now=2, limit=10)]), flush=True)
    await store.close()

asyncio.run(main())
"""


async def test_no_room_to_rewrite_the_file_still_opens_with_keyless_rows_and_rewrites_it_next_time(
        tmp_path, notification):
    keys = {"pay": "pay-KEY-0123456789abcdef"}
    path = tmp_path / "state.db"
    queued = notification(service="pay", dedup_key="k")
    write_old_database(path, 2, [(queued, keys["pay"])])
    with contextlib.closing(sqlite3.connect(path, isolation_level=None)) as db:  # a long history, no keys
        db.executemany("INSERT INTO history (rule, service, api, action, dedup_key, body, outcome, attempts, "
                       "collapsed, created, sent, status, response) VALUES ('r', 's', 'v2', 'trigger', ?, ?, "
                       "'delivered', 1, 0, 1, 2, 202, '')", [(f"h{i}", "{}" + " " * 2000) for i in range(1000)])
    room = os.path.getsize(path) // 2  # enough for the WAL, not for a copy of the file
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-c", OPEN_WITH_A_FULL_DISK, str(path), str(room),
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = await process.communicate()
    assert process.returncode == 0, err.decode()
    assert json.loads(out) == [queued.json()]  # it opened, and the queued body has no key
    assert "cannot rewrite the file without the keys older versions stored" in err.decode()
    with contextlib.closing(sqlite3.connect(path)) as db:
        assert db.execute("PRAGMA user_version").fetchone() == (2,)  # not done yet
        assert not any(keys["pay"] in body for (body,) in db.execute("SELECT body FROM outbox"))
    store = await SQLiteStore.open(path)  # room again: done now
    await store.close()
    with contextlib.closing(sqlite3.connect(path)) as db:
        assert db.execute("PRAGMA user_version").fetchone() == (SCHEMA_VERSION,)
    assert _files_holding(tmp_path, keys.values()) == []
