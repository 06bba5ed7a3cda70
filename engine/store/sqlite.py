"""The `Store` on one SQLite file (WAL, synchronous=FULL), with group commit.

Every SQLite call runs on one dedicated thread that owns the connection, so the event loop never
waits on the disk. Writes are queued; whatever queued while a transaction was being committed goes
into the next single transaction (each write in its own savepoint, so one failing write fails alone).
`commits` counts the transactions. Claims are leases on (service, dedup key) chains kept in memory on
that thread (`_leases`): nothing about them is persisted, so on open everything in the outbox is pending
again. A write that ends a lease ends it once that write is committed, never when it failed.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import sqlite3
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from engine.cluster import ClusterView, Member, Replica
from engine.pacing import Gcra, Pacer
from engine.render import Notification, encode
from engine.state import StateChanges
from engine.store import (
    COLLAPSED,
    DEAD_LETTERED,
    DEFAULT_HISTORY_RETENTION,
    DELIVERED,
    DeadLetter,
    HistoryEntry,
    OutboxEntry,
    StorageError,
    StoreCounts,
    fold_collapsed_count,
)
from engine.store.group_commit import settle
from engine.store.rows import collapse_run, display_fields, history_filters, outbox_entry, stored_body

log = logging.getLogger("alert_engine.store")

SCHEMA_VERSION = 3
PROBE_BYTES = 128 * 1024  # what `probe` writes: a recovery is a database that takes a batch of this size
RESPONSE_LIMIT = 8192  # characters of a response body kept

# `head` marks the first row of each (service, dedup key) chain, kept by triggers inside SQLite, so that
# claiming the due heads is an index range scan instead of a GROUP BY over the whole outbox (which took
# 55 ms at 10,000 queued rows, twice per delivered page).
_HEAD_TRACKING = """
CREATE INDEX IF NOT EXISTS outbox_heads ON outbox (due, id) WHERE head = 1;
CREATE TRIGGER IF NOT EXISTS outbox_head_on_insert AFTER INSERT ON outbox
WHEN NOT EXISTS (SELECT 1 FROM outbox WHERE service = NEW.service AND dedup_key = NEW.dedup_key AND id < NEW.id)
BEGIN UPDATE outbox SET head = 1 WHERE id = NEW.id; END;
CREATE TRIGGER IF NOT EXISTS outbox_head_on_delete AFTER DELETE ON outbox WHEN OLD.head = 1
BEGIN
    UPDATE outbox SET head = 1
    WHERE id = (SELECT MIN(id) FROM outbox WHERE service = OLD.service AND dedup_key = OLD.dedup_key);
END;
"""

_HAS_KEY = "json_type(body, '$.routing_key') IS NOT NULL OR json_type(body, '$.service_key') IS NOT NULL"

# version 1 had no `head`: add it, mark the heads, and the triggers keep it from then on
_MIGRATE_FROM_1 = """
ALTER TABLE outbox ADD COLUMN head INTEGER NOT NULL DEFAULT 0;
UPDATE outbox SET head = 1 WHERE id IN (SELECT MIN(id) FROM outbox GROUP BY service, dedup_key);
"""

# version 3 stores bodies without the service key (delivery adds the current one at send time): strip
# the keys earlier versions kept in every body, queued, delivered or dead-lettered
_STRIP_KEYS = """
UPDATE outbox SET body = json_remove(body, '$.routing_key', '$.service_key') WHERE """ + _HAS_KEY + """;
UPDATE history SET body = json_remove(body, '$.routing_key', '$.service_key') WHERE """ + _HAS_KEY + """;
UPDATE dead_letters SET body = json_remove(body, '$.routing_key', '$.service_key') WHERE """ + _HAS_KEY + """;
"""

SCHEMA = """
CREATE TABLE IF NOT EXISTS outbox (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    rule TEXT NOT NULL, service TEXT NOT NULL, api TEXT NOT NULL, action TEXT NOT NULL,
    dedup_key TEXT NOT NULL, body TEXT NOT NULL,
    created REAL NOT NULL, due REAL NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0, collapsed INTEGER NOT NULL DEFAULT 0,
    last_status INTEGER, last_response TEXT NOT NULL DEFAULT '',
    head INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS outbox_chain ON outbox (service, dedup_key, id);
""" + _HEAD_TRACKING + """
CREATE TABLE IF NOT EXISTS history (
    id INTEGER PRIMARY KEY,
    rule TEXT NOT NULL, service TEXT NOT NULL, api TEXT NOT NULL, action TEXT NOT NULL,
    dedup_key TEXT NOT NULL, body TEXT NOT NULL, outcome TEXT NOT NULL,
    attempts INTEGER NOT NULL, collapsed INTEGER NOT NULL,
    created REAL NOT NULL, sent REAL NOT NULL, status INTEGER, response TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS history_sent ON history (sent);
CREATE TABLE IF NOT EXISTS alert_state (
    rule TEXT NOT NULL, key TEXT NOT NULL, data TEXT NOT NULL, PRIMARY KEY (rule, key)
);
CREATE TABLE IF NOT EXISTS silences (id INTEGER PRIMARY KEY, data TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS probe (id INTEGER PRIMARY KEY CHECK (id = 1), at REAL NOT NULL, room BLOB);
CREATE TABLE IF NOT EXISTS dead_letters (
    id INTEGER PRIMARY KEY,
    rule TEXT NOT NULL, service TEXT NOT NULL, api TEXT NOT NULL, action TEXT NOT NULL,
    dedup_key TEXT NOT NULL, body TEXT NOT NULL, reason TEXT NOT NULL,
    attempts INTEGER NOT NULL, collapsed INTEGER NOT NULL,
    created REAL NOT NULL, failed REAL NOT NULL, status INTEGER, response TEXT NOT NULL
);
"""

_NOTIFICATION = "rule, service, api, action, dedup_key, body"
_HEADS = f"SELECT id, {_NOTIFICATION}, created, due, attempts, collapsed FROM outbox WHERE head = 1"

T = TypeVar("T")
Chain = tuple[str, str]  # (service, dedup key)


@dataclass
class _Write:
    op: Callable[[sqlite3.Connection], Any]
    future: asyncio.Future[Any]
    release: tuple[Chain, ...] = field(default=())  # chains whose lease ends with this write


class SQLiteStore:
    """The outbox, history and dead letters in one SQLite database. Build it with `await open(path)`."""

    def __init__(self, connection: sqlite3.Connection, executor: ThreadPoolExecutor, path: Path) -> None:
        self._db = connection
        self._executor = executor
        self._path = path
        opened = os.stat(path)
        self._identity = (opened.st_dev, opened.st_ino)  # the file we hold open: deleted or replaced is a problem
        self._write_problem: str | None = None  # the last write's failure, until a write succeeds
        self._leases: set[Chain] = set()  # touched on the database thread only
        self._writes: list[_Write] = []
        self._flusher: asyncio.Task[None] | None = None
        self._closed = False
        self._opened = time.time()
        self.commits = 0  # transactions committed: group commit makes this lower than the writes

    @classmethod
    async def open(cls, path: str | os.PathLike[str]) -> SQLiteStore:
        """Open (creating, mode 0600) the database file at `path`; StorageError when it cannot be opened,
        read or written."""
        executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="alert-engine-sqlite")
        try:
            connection = await asyncio.get_running_loop().run_in_executor(executor, _connect, Path(path))
        except (OSError, sqlite3.Error) as exc:
            executor.shutdown(wait=False)
            reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else exc
            raise StorageError(f"cannot open the database {path}: {reason}") from exc
        except BaseException:
            executor.shutdown(wait=False)
            raise
        return cls(connection, executor, Path(path))

    # -- the machinery: one thread, queued writes committed in groups --------------------------------

    async def _read(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        if self._closed:
            raise RuntimeError("store is closed")
        try:
            return await asyncio.get_running_loop().run_in_executor(self._executor, fn, self._db)
        except sqlite3.Error as exc:
            raise StorageError(f"database: {exc}") from exc

    async def _write(self, op: Callable[[sqlite3.Connection], T], release: Sequence[Chain] = ()) -> T:
        if self._closed:
            raise RuntimeError("store is closed")
        loop = asyncio.get_running_loop()
        write = _Write(op, loop.create_future(), tuple(release))
        self._writes.append(write)
        if self._flusher is None or self._flusher.done():
            self._flusher = loop.create_task(self._flush())
        return await write.future

    async def _flush(self) -> None:
        loop = asyncio.get_running_loop()
        while self._writes:
            batch, self._writes = self._writes, []
            await settle(batch, loop.run_in_executor(self._executor, self._commit, batch))

    def _commit(self, batch: list[_Write]) -> list[tuple[bool, Any]]:
        """On the database thread: the batch in one transaction, each write in its own savepoint."""
        db = self._db
        outcomes: list[tuple[bool, Any]] = []
        problem = None
        try:
            db.execute("BEGIN IMMEDIATE")
            for write in batch:
                db.execute("SAVEPOINT write")
                try:
                    outcomes.append((True, write.op(db)))
                except sqlite3.Error as exc:
                    db.execute("ROLLBACK TO write")
                    problem = f"database: {exc}"
                    outcomes.append((False, StorageError(problem)))
                except Exception as exc:
                    db.execute("ROLLBACK TO write")
                    outcomes.append((False, exc))
                db.execute("RELEASE write")
            db.execute("COMMIT")
            self.commits += 1
        except sqlite3.Error as exc:
            if db.in_transaction:
                with contextlib.suppress(sqlite3.Error):
                    db.execute("ROLLBACK")
            self._write_problem = f"database: {exc}"
            return [(False, StorageError(self._write_problem))] * len(batch)  # every lease stays held
        self._write_problem = problem
        for write, (ok, _) in zip(batch, outcomes, strict=True):
            if ok:  # a lease ends only with its own committed write; a failed one is tried again by its holder
                self._leases.difference_update(write.release)
        return outcomes

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self._flusher is not None:
            await self._flusher
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(self._executor, self._db.close)
        self._executor.shutdown(wait=True)

    # -- the outbox ----------------------------------------------------------------------------------

    async def enqueue(
        self, notifications: Sequence[Notification], *, now: float, state: StateChanges | None = None,
        decided: Sequence[tuple[int, str]] = (),
    ) -> list[int]:
        if decided:
            raise ValueError("SQLite has no inbox: its one replica decides every request itself")
        rows = [
            (n.rule, n.service, n.api, n.action, n.dedup_key, n.json(), now, now)
            for n in notifications
        ]
        if not rows and not state:
            return []

        def insert(db: sqlite3.Connection) -> list[int]:
            if state:
                _write_state(db, state)
            if not rows:
                return []
            before = _sequence(db)
            db.executemany(
                f"INSERT INTO outbox ({_NOTIFICATION}, created, due) VALUES (?, ?, ?, ?, ?, ?, ?, ?)", rows
            )
            after = _sequence(db)
            if after - before != len(rows):
                raise RuntimeError(f"outbox ids not consecutive: {before} -> {after} for {len(rows)} rows")
            return list(range(before + 1, after + 1))

        return await self._write(insert)

    async def claim(self, *, now: float, limit: int) -> list[OutboxEntry]:
        def claim_heads(db: sqlite3.Connection) -> list[OutboxEntry]:
            rows = db.execute(
                f"{_HEADS} AND due <= ? ORDER BY due, id LIMIT ?", (now, limit + len(self._leases))
            ).fetchall()
            claimed: list[OutboxEntry] = []
            for row in rows:
                chain = (row[2], row[5])
                if chain not in self._leases and len(claimed) < limit:
                    self._leases.add(chain)
                    claimed.append(outbox_entry(row))
            return claimed

        return await self._read(claim_heads)

    async def next_due(self) -> float | None:
        def earliest(db: sqlite3.Connection) -> float | None:
            rows = db.execute(f"{_HEADS} ORDER BY due LIMIT ?", (len(self._leases) + 1,)).fetchall()
            return next((row[8] for row in rows if (row[2], row[5]) not in self._leases), None)

        return await self._read(earliest)

    async def collapse(self, entry: OutboxEntry, *, now: float) -> OutboxEntry:
        n = entry.notification
        if n.action != "trigger":
            return entry

        def fold(db: sqlite3.Connection) -> OutboxEntry:
            rows = db.execute(
                f"SELECT id, {_NOTIFICATION}, created, due, attempts, collapsed FROM outbox "
                "WHERE service = ? AND dedup_key = ? AND id >= ? ORDER BY id",
                (n.service, n.dedup_key, entry.id),
            ).fetchall()
            found = collapse_run(rows, entry.id)
            if found is None:
                return entry
            newest, folded, total = found
            db.executemany(
                f"INSERT INTO history (id, {_NOTIFICATION}, outcome, attempts, collapsed, created, sent, "
                "status, response) SELECT id, rule, service, api, action, dedup_key, body, ?, attempts, "
                "collapsed, created, ?, NULL, ? FROM outbox WHERE id = ?",
                [(COLLAPSED, now, f"collapsed into notification {newest[0]}", row[0]) for row in folded],
            )
            db.executemany("DELETE FROM outbox WHERE id = ?", [(row[0],) for row in folded])
            body = encode(fold_collapsed_count(n.api, stored_body(newest), total))
            db.execute(
                "UPDATE outbox SET body = ?, collapsed = ?, attempts = ? WHERE id = ?",
                (body, total, entry.attempts, newest[0]),
            )
            return outbox_entry((*newest[:6], body, *newest[7:9], entry.attempts, total))

        return await self._write(fold)

    async def complete(
        self, entry: OutboxEntry, *, now: float, status: int | None, response: str, outcome: str = DELIVERED
    ) -> None:
        def to_history(db: sqlite3.Connection) -> None:
            moved = db.execute(
                f"INSERT INTO history (id, {_NOTIFICATION}, outcome, attempts, collapsed, created, sent, "
                "status, response) SELECT id, rule, service, api, action, dedup_key, body, ?, attempts + 1, "
                "collapsed, created, ?, ?, ? FROM outbox WHERE id = ?",
                (outcome, now, status, response[:RESPONSE_LIMIT], entry.id),
            ).rowcount
            _leave_outbox(db, entry, moved)

        await self._write(to_history, release=[_chain(entry)])

    async def expedite(self, service: str, *, now: float) -> int:
        def wake(db: sqlite3.Connection) -> int:
            return db.execute(
                "UPDATE outbox SET due = ? WHERE service = ? AND attempts > 0 AND due > ?", (now, service, now)
            ).rowcount

        return await self._write(wake)

    async def expedite_all(self, *, now: float) -> int:
        def wake(db: sqlite3.Connection) -> int:
            return db.execute("UPDATE outbox SET due = ? WHERE attempts > 0 AND due > ?", (now, now)).rowcount

        return await self._write(wake)

    async def retry_later(self, entry: OutboxEntry, *, due: float, status: int | None, response: str) -> None:
        def postpone(db: sqlite3.Connection) -> None:
            updated = db.execute(
                "UPDATE outbox SET attempts = attempts + 1, due = ?, last_status = ?, last_response = ? "
                "WHERE id = ?",
                (due, status, response[:RESPONSE_LIMIT], entry.id),
            ).rowcount
            if updated != 1:
                raise LookupError(f"notification {entry.id} is not in the outbox")

        await self._write(postpone, release=[_chain(entry)])

    async def dead_letter(
        self, entry: OutboxEntry, *, now: float, reason: str, status: int | None, response: str
    ) -> None:
        def bury(db: sqlite3.Connection) -> None:
            moved = db.execute(
                f"INSERT INTO dead_letters (id, {_NOTIFICATION}, reason, attempts, collapsed, created, "
                "failed, status, response) SELECT id, rule, service, api, action, dedup_key, body, ?, "
                "attempts + 1, collapsed, created, ?, ?, ? FROM outbox WHERE id = ?",
                (reason, now, status, response[:RESPONSE_LIMIT], entry.id),
            ).rowcount
            _leave_outbox(db, entry, moved)

        await self._write(bury, release=[_chain(entry)])

    async def release(self, entries: Sequence[OutboxEntry] | None = None) -> None:
        def forget(db: sqlite3.Connection) -> None:
            if entries is None:
                self._leases.clear()
            else:
                self._leases.difference_update(_chain(e) for e in entries)

        await self._read(forget)

    # -- history and dead letters --------------------------------------------------------------------

    async def history(
        self,
        *,
        rule: str | None = None,
        service: str | None = None,
        since: float | None = None,
        limit: int = 100,
    ) -> list[HistoryEntry]:
        delivered, delivered_params = history_filters(rule, service, since, time="sent", placeholder="?")
        dead, dead_params = history_filters(rule, service, since, time="failed", placeholder="?")

        def select(db: sqlite3.Connection) -> list[HistoryEntry]:
            rows = db.execute(
                f"SELECT id, {_NOTIFICATION}, outcome, attempts, collapsed, created, sent, status, response, "
                f"'' FROM history WHERE {delivered} "
                f"UNION ALL SELECT id, {_NOTIFICATION}, ?, attempts, collapsed, created, failed, status, response, "
                f"reason FROM dead_letters WHERE {dead} "
                "ORDER BY sent DESC, id DESC LIMIT ?",
                (*delivered_params, DEAD_LETTERED, *dead_params, limit),
            ).fetchall()
            return [HistoryEntry(**display_fields(HistoryEntry, row), body=stored_body(row)) for row in rows]

        return await self._read(select)

    async def prune_history(self, *, now: float, retention: float = DEFAULT_HISTORY_RETENTION) -> int:
        return await self._write(
            lambda db: db.execute("DELETE FROM history WHERE sent < ?", (now - retention,)).rowcount
        )

    async def dead_letters(self, *, limit: int | None = None) -> list[DeadLetter]:
        def select(db: sqlite3.Connection) -> list[DeadLetter]:
            rows = db.execute(
                f"SELECT id, {_NOTIFICATION}, reason, attempts, collapsed, created, failed, status, response "
                "FROM dead_letters ORDER BY id LIMIT ?",
                (-1 if limit is None else limit,),
            ).fetchall()
            return [DeadLetter(**display_fields(DeadLetter, row), body=stored_body(row)) for row in rows]

        return await self._read(select)

    async def retry_dead_letter(self, id: int, *, now: float) -> int | None:
        def revive(db: sqlite3.Connection) -> int | None:
            cursor = db.execute(
                f"INSERT INTO outbox ({_NOTIFICATION}, created, due, collapsed) "
                f"SELECT {_NOTIFICATION}, ?, ?, collapsed FROM dead_letters WHERE id = ?",
                (now, now, id),
            )
            if cursor.rowcount == 0:
                return None
            db.execute("DELETE FROM dead_letters WHERE id = ?", (id,))
            return cursor.lastrowid

        return await self._write(revive)

    async def purge_dead_letters(self, ids: Sequence[int] | None = None) -> int:
        def purge(db: sqlite3.Connection) -> int:
            if ids is None:
                return db.execute("DELETE FROM dead_letters").rowcount
            return db.executemany("DELETE FROM dead_letters WHERE id = ?", [(i,) for i in ids]).rowcount

        return await self._write(purge)

    async def load_state(
        self, *, groups: Sequence[tuple[str, str]] | None = None, silences: Sequence[int] | None = None
    ) -> tuple[list[tuple[str, str, str]], list[tuple[int, str]]]:
        def select(db: sqlite3.Connection) -> tuple[list[tuple[str, str, str]], list[tuple[int, str]]]:
            if groups is None:
                found = db.execute("SELECT rule, key, data FROM alert_state ORDER BY rule, key").fetchall()
            else:
                query = "SELECT rule, key, data FROM alert_state WHERE rule = ? AND key = ?"
                found = [row for g in groups for row in db.execute(query, g)]
            if silences is None:
                kept = db.execute("SELECT id, data FROM silences ORDER BY id").fetchall()
            else:
                kept = [row for i in silences for row in db.execute("SELECT id, data FROM silences WHERE id = ?", (i,))]
            return found, kept

        return await self._read(select)

    # -- the cluster: this process alone, always the decider --------------------------------------------

    async def heartbeat(self, me: Member) -> ClusterView:
        now = time.time()
        return ClusterView(now=now, epoch=1, decider=me.id, leading=True, replicas=(
            Replica(me.id, me.address, self._opened, now, me.ruleset, alive=True, decider=True),))

    async def lead(self, epoch: int | None) -> None:
        """Nothing to fence: the state dir's lock makes this process the only one."""

    def listen(self, wake: Mapping[str, Callable[[], None]]) -> None:
        """No other replica to hear from."""

    def pacer(self, rate_per_minute: float, burst: int) -> Pacer:
        """This process alone sends: the pace in memory."""
        return Gcra(rate_per_minute / 60.0, burst)

    def problem(self) -> str | None:
        return self.lost() or self._write_problem

    def lost(self) -> str | None:
        try:
            now_there = os.stat(self._path)
        except OSError as exc:
            return f"database file {self._path} is gone ({exc.strerror}): restart alert-engine to recreate it"
        if (now_there.st_dev, now_there.st_ino) != self._identity:
            return f"database file {self._path} was replaced while open: restart alert-engine to use it"
        return None

    async def probe(self) -> None:
        # room for a real batch, not one page: on a nearly full disk the write-ahead log can still take a
        # page while the next request's commit cannot, and readiness would flap
        await self._write(lambda db: db.execute(
            "INSERT OR REPLACE INTO probe (id, at, room) VALUES (1, ?, zeroblob(?))", (time.time(), PROBE_BYTES)))

    async def counts(self) -> StoreCounts:
        def count(db: sqlite3.Connection) -> StoreCounts:
            outbox, oldest = db.execute("SELECT COUNT(*), MIN(created) FROM outbox").fetchone()
            (dead,) = db.execute("SELECT COUNT(*) FROM dead_letters").fetchone()
            (history,) = db.execute("SELECT COUNT(*) FROM history").fetchone()
            return StoreCounts(outbox=outbox, dead_letters=dead, history=history, oldest_created=oldest)

        return await self._read(count)


def _connect(path: Path) -> sqlite3.Connection:
    """On the database thread: open, tune for durability, create or check the schema."""
    os.close(os.open(path, os.O_WRONLY | os.O_CREAT, 0o600))  # SQLite gives -wal/-shm the same mode
    db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    try:
        (mode,) = db.execute("PRAGMA journal_mode = WAL").fetchone()
        if mode.lower() != "wal":
            raise sqlite3.OperationalError(f"{path}: cannot use WAL journal mode (got {mode!r})")
        db.execute("PRAGMA synchronous = FULL")
        db.execute("PRAGMA busy_timeout = 5000")
        (version,) = db.execute("PRAGMA user_version").fetchone()
        if version not in (0, 1, 2, SCHEMA_VERSION):
            raise sqlite3.DatabaseError(f"{path}: schema version {version}, expected {SCHEMA_VERSION}")
        migrate = _MIGRATE_FROM_1 if version == 1 else ""
        strip = _STRIP_KEYS if version in (1, 2) else ""
        done = 2 if strip else SCHEMA_VERSION  # 3 only once no page of the file holds an old key (below)
        db.executescript(f"BEGIN IMMEDIATE; {migrate} {SCHEMA} {strip} PRAGMA user_version = {done}; COMMIT;")
        if strip:
            # the rows hold no key now, but freed pages (delivered rows deleted before version 3, the old
            # versions of the rows just stripped) still may: rewrite the file, then empty the WAL
            try:
                db.execute("VACUUM")
                db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            except sqlite3.Error as exc:  # no room for the copy, say: start anyway, and try at the next start
                log.warning("%s: cannot rewrite the file without the keys older versions stored (%s); "
                            "trying again at the next start", path, exc)
            else:
                db.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
    except BaseException:
        db.close()
        raise
    return db


def _write_state(db: sqlite3.Connection, changes: StateChanges) -> None:
    db.executemany("INSERT OR REPLACE INTO alert_state (rule, key, data) VALUES (?, ?, ?)", changes.upserts)
    db.executemany("DELETE FROM alert_state WHERE rule = ? AND key = ?", changes.deletes)
    db.executemany("INSERT OR REPLACE INTO silences (id, data) VALUES (?, ?)", changes.silences)
    db.executemany("DELETE FROM silences WHERE id = ?", [(i,) for i in changes.silence_deletes])


def _sequence(db: sqlite3.Connection) -> int:
    row = db.execute("SELECT seq FROM sqlite_sequence WHERE name = 'outbox'").fetchone()
    return row[0] if row else 0


def _chain(entry: OutboxEntry) -> Chain:
    return (entry.notification.service, entry.notification.dedup_key)


def _leave_outbox(db: sqlite3.Connection, entry: OutboxEntry, copied: int) -> None:
    """Delete a row that was just copied to history or the dead letters (same transaction)."""
    if copied != 1:
        raise LookupError(f"notification {entry.id} is not in the outbox")
    db.execute("DELETE FROM outbox WHERE id = ?", (entry.id,))
