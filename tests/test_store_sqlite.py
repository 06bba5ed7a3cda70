"""What only the SQLite store does: its file (WAL, mode 0600), opening errors, and the databases older
versions wrote (chain heads added, stored keys stripped). The contract both backends keep: tests/test_store.py."""

import asyncio
import contextlib
import json
import os
import sqlite3
import stat
import sys

import pytest

from engine.store import DELIVERED, StorageError
from engine.store.sqlite import SCHEMA_VERSION, SQLiteStore
from tests.conftest import write_old_database


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
