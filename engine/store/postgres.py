"""The `Store` on PostgreSQL (psycopg 3, async), for one alert-engine per database.

Connections: one *writer*, a dedicated connection that holds the database's advisory lock and runs every
write, and a small pool (psycopg_pool) for reads. As on SQLite, writes are group-committed: the writes
queued while a transaction commits go into the next one, each in its own savepoint, so one failing write
fails alone. When the writer's connection breaks (the server restarted, say) every write fails with
`StorageError` until the next write reconnects, and it writes only once the new connection holds the lock
again: no write ever runs on a connection without it. The schema lives in `postgres_schema`; this module
only checks that the database is at its version (`alert-engine migrate` changes it).

Leases are in the database (`chains.lease_owner`, `lease_token`, see `postgres_schema`): a claim leases
chain heads with `FOR UPDATE SKIP LOCKED`, and `complete`, `retry_later`, `dead_letter` and `collapse`
check this store's token for the chain in their transaction, the first three ending the lease in it: a
lease ends only with a committed write. `release` forgets the leases here at once and clears them in the
database when it can; until then the next claim counts them as free. On taking the lock, leases that
other processes left are cleared: holding the lock, this process is the only alert-engine alive.

Alert state: read once at open. This store is then its only writer, so it keeps a copy of what it
committed and `load_state` answers from it, also while the database cannot be reached: the intake puts a
batch whose commit failed back as stored even when the failure was losing the server. (A commit whose
answer was lost with the connection may have been stored after all: the client got a 503 and retries;
at least once.)

`lost()` is always None: the database is a server, not a file this process holds open that could be
deleted or replaced under it; a database dropped or unreachable shows as failing writes (`problem()`).
"""

from __future__ import annotations

import asyncio
import logging
import os
import secrets
import socket
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

import psycopg
from psycopg.conninfo import conninfo_to_dict, make_conninfo
from psycopg_pool import AsyncConnectionPool

from engine.render import Notification, encode
from engine.rules.ruleset import mask_key
from engine.state import StateChanges
from engine.store import (
    COLLAPSED,
    DEFAULT_HISTORY_RETENTION,
    DELIVERED,
    DeadLetter,
    HistoryEntry,
    OutboxEntry,
    StorageError,
    StoreCounts,
    fold_collapsed_count,
)
from engine.store.postgres_schema import (
    DATABASE_LOCK,
    LOCK_CLASS,
    SCHEMA_VERSION,
    migrate,
    schema_version,
    server_encoding,
)
from engine.store.rows import display_fields, outbox_entry, stored_body

log = logging.getLogger("alert_engine.store")

PROBE_BYTES = 128 * 1024  # what `probe` writes, as on SQLite: a recovery is a database that takes a batch
RESPONSE_LIMIT = 8192  # characters of a response body kept
CONNECT_TIMEOUT = "5"  # seconds, unless the DSN says otherwise
POOL_SIZE = 4  # read connections
POOL_TIMEOUT = 5.0  # seconds a read waits for a connection

_ENTRY = "id, rule, service, api, action, dedup_key, body, created, due, attempts, collapsed"
_FREE = "(lease_token IS NULL OR lease_token = ANY(%(stale)s::bigint[]))"  # not leased, or released here
_CLAIM = f"""
WITH free AS (SELECT service, dedup_key FROM chains WHERE due <= %(now)s AND {_FREE}
              ORDER BY due, head LIMIT %(limit)s FOR UPDATE SKIP LOCKED),
     leased AS (UPDATE chains c SET lease_owner = %(owner)s, lease_token = nextval('lease_tokens')
                FROM free WHERE c.service = free.service AND c.dedup_key = free.dedup_key
                RETURNING c.head, c.lease_token)
SELECT {', '.join('o.' + c for c in _ENTRY.split(', '))}, leased.lease_token
FROM leased JOIN outbox o ON o.id = leased.head ORDER BY o.due, o.id
"""
_NEW_CHAINS = """
INSERT INTO chains (service, dedup_key, head, due)
SELECT DISTINCT ON (service, dedup_key) service, dedup_key, id, %s
FROM unnest(%s::text[], %s::bytea[], %s::bigint[]) AS t(service, dedup_key, id)
ORDER BY service, dedup_key, id ON CONFLICT (service, dedup_key) DO NOTHING
"""
_NEXT_HEAD = """
UPDATE chains c SET head = n.id, due = n.due, lease_owner = NULL, lease_token = NULL
FROM (SELECT id, due FROM outbox WHERE service = %(service)s AND dedup_key = %(key)s ORDER BY id LIMIT 1) n
WHERE c.service = %(service)s AND c.dedup_key = %(key)s
"""
_WAKE = """
WITH woken AS (UPDATE outbox SET due = %(now)s WHERE attempts > 0 AND due > %(now)s
               AND (%(service)s::text IS NULL OR service = %(service)s) RETURNING id),
     heads AS (UPDATE chains SET due = %(now)s WHERE head IN (SELECT id FROM woken))
SELECT count(*) FROM woken
"""
_TO_HISTORY = ("INSERT INTO history (id, rule, service, api, action, dedup_key, body, outcome, attempts, collapsed, "
               "created, sent, status, response) SELECT id, rule, service, api, action, dedup_key, body, ")
_TO_DEAD_LETTERS = ("INSERT INTO dead_letters (id, rule, service, api, action, dedup_key, body, reason, attempts, "
                    "collapsed, created, failed, status, response) SELECT id, rule, service, api, action, dedup_key, "
                    "body, ")

T = TypeVar("T")
Chain = tuple[str, str]  # (service, dedup key)
Op = Callable[[psycopg.AsyncConnection[Any]], Awaitable[Any]]


class DatabaseInUse(StorageError):
    """Another alert-engine holds the database's lock."""


class SchemaMismatch(StorageError):
    """The database is at another schema version than this code's; `older`: `alert-engine migrate` fixes it."""

    def __init__(self, where: str, found: int) -> None:
        self.older = found < SCHEMA_VERSION
        if self.older:
            message = f"database {where} is at schema version {found}; this alert-engine needs version {SCHEMA_VERSION}"
        else:
            message = (f"database {where} is at schema version {found}, newer than this alert-engine knows "
                       f"({SCHEMA_VERSION}): run the version that migrated it, or a newer one")
        super().__init__(message)


def describe(dsn: str) -> str:
    """The DSN as messages show it: postgresql://USER@HOST:PORT/DATABASE, never its password or options."""
    try:
        params = conninfo_to_dict(dsn)
    except psycopg.Error:  # its message may quote the DSN: not shown
        raise StorageError("storage.dsn is not a PostgreSQL connection string "
                           "(postgresql://USER@HOST:PORT/DATABASE, or key=value pairs)") from None
    user, host, port = params.get("user"), params.get("host") or params.get("hostaddr") or "", params.get("port")
    return f"postgresql://{f'{user}@' if user else ''}{host}{f':{port}' if port else ''}/{params.get('dbname') or ''}"


def dsn_secrets(dsn: str) -> list[str]:
    """What of the DSN must never be shown: its password, if it holds one."""
    try:
        password = conninfo_to_dict(dsn).get("password")
    except psycopg.Error:
        return []
    return [str(password)] if password else []


@dataclass
class _Write:
    op: Op
    future: asyncio.Future[Any]
    then: Callable[[Any], None] | None = field(default=None)  # run with op's value once its transaction committed


class PostgresStore:
    """The outbox, history, dead letters and alert state in one PostgreSQL database. Build it with
    `await PostgresStore.open(dsn)`; `where` names the database in messages (no password)."""

    def __init__(self, connect: Callable[[], Awaitable[psycopg.AsyncConnection[Any]]], writer: psycopg.AsyncConnection[Any],
                 pool: AsyncConnectionPool[Any], *, where: str, owner: str, secret: list[str]) -> None:
        self.where = where
        self._connect = connect
        self._conn: psycopg.AsyncConnection[Any] | None = writer
        self._pool = pool
        self._owner = owner
        self._secret = secret
        self._write_problem: str | None = None  # the last write's failure, until a write succeeds
        self._leases: dict[Chain, int] = {}  # the chains this store holds, and their lease tokens
        self._stale: set[int] = set()  # tokens released here, perhaps not yet in the database
        self._groups: dict[tuple[str, str], str] = {}  # the alert state as committed
        self._silences: dict[int, str] = {}
        self._writes: list[_Write] = []
        self._flusher: asyncio.Task[None] | None = None
        self._closed = False
        self.commits = 0  # transactions committed: group commit makes this lower than the writes

    @classmethod
    async def open(cls, dsn: str) -> PostgresStore:
        """Connect, take the database's lock, check its encoding and schema version, clear the leases dead
        processes left, read the alert state. StorageError (DatabaseInUse, SchemaMismatch) when it cannot."""
        where, secret = describe(dsn), dsn_secrets(dsn)
        host, pid = socket.gethostname(), os.getpid()
        owner = f"{host}:{pid}:{secrets.token_hex(4)}"
        conninfo = _conninfo(dsn, f"alert-engine {host} pid {pid}"[:63])

        async def connect() -> psycopg.AsyncConnection[Any]:
            return await _lock(await _connection(conninfo, where, secret), where, owner)

        writer = await _storage(connect(), where, secret)
        pool: AsyncConnectionPool[Any] = AsyncConnectionPool(
            conninfo, min_size=1, max_size=POOL_SIZE, open=False, kwargs={"autocommit": True},
            check=AsyncConnectionPool.check_connection, timeout=POOL_TIMEOUT, name="alert-engine")
        try:
            store = cls(connect, writer, pool, where=where, owner=owner, secret=secret)
            await _storage(store._load(writer), where, secret)
            await _storage(pool.open(wait=True, timeout=float(CONNECT_TIMEOUT)), where, secret)
        except BaseException:
            await writer.close()
            await pool.close()
            raise
        return store

    async def _load(self, conn: psycopg.AsyncConnection[Any]) -> None:
        cur = await conn.execute("SELECT rule, key, data FROM alert_state")
        self._groups = {(rule, _text_key(key)): data for rule, key, data in await cur.fetchall()}
        cur = await conn.execute("SELECT id, data FROM silences")
        self._silences = dict(await cur.fetchall())

    # -- the machinery: reads from the pool, queued writes committed in groups on the writer --------------

    async def _read(self, fn: Callable[[psycopg.AsyncConnection[Any]], Awaitable[T]]) -> T:
        if self._closed:
            raise RuntimeError("store is closed")
        try:
            async with self._pool.connection() as conn:
                return await fn(conn)
        except psycopg.Error as exc:
            raise StorageError(self._message(exc)) from exc

    async def _write(self, op: Op, then: Callable[[Any], None] | None = None) -> Any:
        if self._closed:
            raise RuntimeError("store is closed")
        loop = asyncio.get_running_loop()
        write = _Write(op, loop.create_future(), then)
        self._writes.append(write)
        if self._flusher is None or self._flusher.done():
            self._flusher = loop.create_task(self._flush())
        return await write.future

    async def _flush(self) -> None:
        while self._writes:
            batch, self._writes = self._writes, []
            try:
                outcomes = await self._commit(batch)
            except BaseException as exc:  # cancelled, or a bug: fail the callers
                for write in batch:
                    if not write.future.done():
                        write.future.set_exception(exc if isinstance(exc, Exception) else RuntimeError(exc))
                raise
            for write, (ok, value) in zip(batch, outcomes, strict=True):
                if write.future.done():  # the caller was cancelled; the write stands
                    continue
                if ok:
                    write.future.set_result(value)
                else:
                    write.future.set_exception(value)

    async def _commit(self, batch: list[_Write]) -> list[tuple[bool, Any]]:
        """The batch in one transaction on the writer, each write in its own savepoint."""
        outcomes: list[tuple[bool, Any]] = []
        problem = None
        try:
            conn = await self._writer()
            async with conn.transaction():
                for write in batch:
                    try:
                        async with conn.transaction():
                            value = await write.op(conn)
                    except psycopg.Error as exc:
                        if conn.closed:
                            raise
                        problem = self._message(exc)
                        outcomes.append((False, StorageError(problem)))
                    except Exception as exc:
                        outcomes.append((False, exc))
                    else:
                        outcomes.append((True, value))
            self.commits += 1
        except (psycopg.Error, StorageError) as exc:
            self._write_problem = str(exc) if isinstance(exc, StorageError) else self._message(exc)
            return [(False, StorageError(self._write_problem))] * len(batch)  # every lease stays held
        self._write_problem = problem
        for write, (ok, value) in zip(batch, outcomes, strict=True):
            if ok and write.then is not None:
                write.then(value)
        return outcomes

    async def _writer(self) -> psycopg.AsyncConnection[Any]:
        """The writer's connection; a new one, holding the lock again, when it broke."""
        if self._conn is not None and not self._conn.closed:
            return self._conn
        if self._conn is not None:
            await self._conn.close()
            self._conn = None
            log.warning("%s: the connection broke; connecting again", self.where)
        self._conn = await self._connect()
        log.info("%s: connected again, holding its lock", self.where)
        return self._conn

    def _message(self, exc: BaseException) -> str:
        """`database: ` and the first line of a driver error, with the DSN's password masked."""
        text = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        return f"database: {_masked(text, self._secret)}"

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self._flusher is not None:
            await self._flusher
        if self._conn is not None:
            if not self._conn.closed:
                try:  # given back for the next start; a start clears them anyway
                    await self._conn.execute("UPDATE chains SET lease_owner = NULL, lease_token = NULL "
                                             "WHERE lease_owner = %s", (self._owner,))
                except psycopg.Error as exc:
                    log.warning("%s: leases not given back on close (%s)", self.where, self._message(exc))
            await self._conn.close()  # the lock goes with the session
        await self._pool.close()

    # -- the outbox ----------------------------------------------------------------------------------

    async def enqueue(
        self, notifications: Sequence[Notification], *, now: float, state: StateChanges | None = None
    ) -> list[int]:
        if not notifications and not state:
            return []
        columns = list(zip(*((n.rule, n.service, n.api, n.action, _key(n.dedup_key), n.json())
                             for n in notifications), strict=True)) if notifications else []

        async def insert(conn: psycopg.AsyncConnection[Any]) -> list[int]:
            if state:
                await _write_state(conn, state)
            if not notifications:
                return []
            cur = await conn.execute("SELECT nextval('outbox_ids') FROM generate_series(1, %s)", (len(notifications),))
            ids = sorted(row[0] for row in await cur.fetchall())
            await conn.execute(
                "INSERT INTO outbox (id, rule, service, api, action, dedup_key, body, created, due) SELECT *, %s, %s "
                "FROM unnest(%s::bigint[], %s::text[], %s::text[], %s::text[], %s::text[], %s::bytea[], %s::text[])",
                (now, now, ids, *map(list, columns)))
            await conn.execute(_NEW_CHAINS, (now, list(columns[1]), list(columns[4]), ids))
            return ids

        return await self._write(insert, then=lambda _: self._remember(state))

    async def claim(self, *, now: float, limit: int) -> list[OutboxEntry]:
        async def lease(conn: psycopg.AsyncConnection[Any]) -> list[tuple[OutboxEntry, int]]:
            cur = await conn.execute(_CLAIM, {"now": now, "limit": limit, "owner": self._owner,
                                              "stale": list(self._stale)})
            return [(outbox_entry(_text_row(row[:11])), row[11]) for row in await cur.fetchall()]

        def hold(claimed: list[tuple[OutboxEntry, int]]) -> None:
            for entry, token in claimed:
                self._leases[_chain(entry)] = token
                self._stale.discard(token)

        return [entry for entry, _ in await self._write(lease, then=hold)]

    async def next_due(self) -> float | None:
        async def earliest(conn: psycopg.AsyncConnection[Any]) -> float | None:
            cur = await conn.execute(f"SELECT due FROM chains WHERE {_FREE} ORDER BY due, head LIMIT 1",
                                     {"stale": list(self._stale)})
            row = await cur.fetchone()
            return row[0] if row else None

        return await self._read(earliest)

    async def collapse(self, entry: OutboxEntry, *, now: float) -> OutboxEntry:
        n = entry.notification
        if n.action != "trigger":
            return entry
        token = self._leases.get(_chain(entry))

        async def fold(conn: psycopg.AsyncConnection[Any]) -> OutboxEntry:
            await _check_lease(conn, entry, token)
            cur = await conn.execute(f"SELECT {_ENTRY} FROM outbox WHERE service = %s AND dedup_key = %s AND id >= %s "
                                     "ORDER BY id", (n.service, _key(n.dedup_key), entry.id))
            rows = [_text_row(row) for row in await cur.fetchall()]
            if not rows or rows[0][0] != entry.id:
                raise LookupError(f"notification {entry.id} is not at the head of its chain")
            run = [rows[0]]
            for row in rows[1:]:
                if row[4] != "trigger":
                    break
                run.append(row)
            if len(run) == 1:
                return entry
            newest, folded = run[-1], run[:-1]
            total = newest[10] + sum(1 + row[10] for row in folded)
            await conn.execute(f"WITH gone AS (DELETE FROM outbox WHERE id = ANY(%s) RETURNING *) {_TO_HISTORY}"
                               "%s, attempts, collapsed, created, %s, NULL, %s FROM gone",
                               ([row[0] for row in folded], COLLAPSED, now, f"collapsed into notification {newest[0]}"))
            body = encode(fold_collapsed_count(n.api, stored_body(newest), total))
            await conn.execute("UPDATE outbox SET body = %s, collapsed = %s, attempts = %s WHERE id = %s",
                               (body, total, entry.attempts, newest[0]))
            await conn.execute("UPDATE chains SET head = %s, due = %s WHERE service = %s AND dedup_key = %s",
                               (newest[0], newest[8], n.service, _key(n.dedup_key)))
            return outbox_entry((*newest[:6], body, *newest[7:9], entry.attempts, total))

        return await self._write(fold)

    async def complete(
        self, entry: OutboxEntry, *, now: float, status: int | None, response: str, outcome: str = DELIVERED
    ) -> None:
        token = self._leases.get(_chain(entry))

        async def to_history(conn: psycopg.AsyncConnection[Any]) -> None:
            await _check_lease(conn, entry, token)
            await _leave_outbox(conn, entry, _TO_HISTORY + "%s, attempts + 1, collapsed, created, %s, %s, %s FROM gone",
                                (outcome, now, status, _text(response)))

        await self._write(to_history, then=lambda _: self._end_lease(entry))

    async def expedite(self, service: str, *, now: float) -> int:
        return await self._write(lambda conn: _wake(conn, now, service))

    async def expedite_all(self, *, now: float) -> int:
        return await self._write(lambda conn: _wake(conn, now, None))

    async def retry_later(self, entry: OutboxEntry, *, due: float, status: int | None, response: str) -> None:
        token = self._leases.get(_chain(entry))
        n = entry.notification

        async def postpone(conn: psycopg.AsyncConnection[Any]) -> None:
            await _check_lease(conn, entry, token)
            cur = await conn.execute("UPDATE outbox SET attempts = attempts + 1, due = %s, last_status = %s, "
                                     "last_response = %s WHERE id = %s", (due, status, _text(response), entry.id))
            if cur.rowcount != 1:
                raise LookupError(f"notification {entry.id} is not in the outbox")
            await conn.execute("UPDATE chains SET due = %s, lease_owner = NULL, lease_token = NULL "
                               "WHERE service = %s AND dedup_key = %s", (due, n.service, _key(n.dedup_key)))

        await self._write(postpone, then=lambda _: self._end_lease(entry))

    async def dead_letter(
        self, entry: OutboxEntry, *, now: float, reason: str, status: int | None, response: str
    ) -> None:
        token = self._leases.get(_chain(entry))

        async def bury(conn: psycopg.AsyncConnection[Any]) -> None:
            await _check_lease(conn, entry, token)
            await _leave_outbox(conn, entry, _TO_DEAD_LETTERS + "%s, attempts + 1, collapsed, created, %s, %s, %s "
                                "FROM gone", (_text(reason), now, status, _text(response)))

        await self._write(bury, then=lambda _: self._end_lease(entry))

    async def release(self, entries: Sequence[OutboxEntry] | None = None) -> None:
        """Forget the leases here at once; clear them in the database when it can (else at the next claim)."""
        if self._closed:
            raise RuntimeError("store is closed")
        chains = list(self._leases) if entries is None else [_chain(e) for e in entries]
        tokens = [self._leases.pop(c) for c in chains if c in self._leases]
        if not tokens:
            return
        self._stale.update(tokens)

        async def clear(conn: psycopg.AsyncConnection[Any]) -> None:
            await conn.execute("UPDATE chains SET lease_owner = NULL, lease_token = NULL "
                               "WHERE lease_token = ANY(%s::bigint[])", (tokens,))

        try:
            await self._write(clear, then=lambda _: self._stale.difference_update(tokens))
        except StorageError:
            pass  # the next claim takes them as free

    def _end_lease(self, entry: OutboxEntry) -> None:
        self._leases.pop(_chain(entry), None)

    # -- history and dead letters --------------------------------------------------------------------

    async def history(
        self,
        *,
        rule: str | None = None,
        service: str | None = None,
        since: float | None = None,
        limit: int = 100,
    ) -> list[HistoryEntry]:
        where, params = ["true"], []
        for column, value in (("rule = %s", rule), ("service = %s", service), ("sent >= %s", since)):
            if value is not None:
                where.append(column)
                params.append(value)

        async def select(conn: psycopg.AsyncConnection[Any]) -> list[HistoryEntry]:
            cur = await conn.execute(
                "SELECT id, rule, service, api, action, dedup_key, body, outcome, attempts, collapsed, created, sent, "
                f"status, response FROM history WHERE {' AND '.join(where)} ORDER BY sent DESC, id DESC LIMIT %s",
                (*params, limit))
            rows = [_text_row(row) for row in await cur.fetchall()]
            return [HistoryEntry(**display_fields(HistoryEntry, row), body=stored_body(row)) for row in rows]

        return await self._read(select)

    async def prune_history(self, *, now: float, retention: float = DEFAULT_HISTORY_RETENTION) -> int:
        async def prune(conn: psycopg.AsyncConnection[Any]) -> int:
            return (await conn.execute("DELETE FROM history WHERE sent < %s", (now - retention,))).rowcount

        return await self._write(prune)

    async def dead_letters(self, *, limit: int | None = None) -> list[DeadLetter]:
        async def select(conn: psycopg.AsyncConnection[Any]) -> list[DeadLetter]:
            cur = await conn.execute(
                "SELECT id, rule, service, api, action, dedup_key, body, reason, attempts, collapsed, created, failed, "
                "status, response FROM dead_letters ORDER BY id LIMIT %s", (limit,))
            rows = [_text_row(row) for row in await cur.fetchall()]
            return [DeadLetter(**display_fields(DeadLetter, row), body=stored_body(row)) for row in rows]

        return await self._read(select)

    async def retry_dead_letter(self, id: int, *, now: float) -> int | None:
        async def revive(conn: psycopg.AsyncConnection[Any]) -> int | None:
            cur = await conn.execute(
                "WITH dead AS (DELETE FROM dead_letters WHERE id = %s RETURNING *) "
                "INSERT INTO outbox (rule, service, api, action, dedup_key, body, created, due, collapsed) "
                "SELECT rule, service, api, action, dedup_key, body, %s, %s, collapsed FROM dead "
                "RETURNING id, service, dedup_key", (id, now, now))
            row = await cur.fetchone()
            if row is None:
                return None
            await conn.execute(_NEW_CHAINS, (now, [row[1]], [row[2]], [row[0]]))
            return int(row[0])

        return await self._write(revive)

    async def purge_dead_letters(self, ids: Sequence[int] | None = None) -> int:
        async def purge(conn: psycopg.AsyncConnection[Any]) -> int:
            if ids is None:
                return (await conn.execute("DELETE FROM dead_letters")).rowcount
            return (await conn.execute("DELETE FROM dead_letters WHERE id = ANY(%s::bigint[])", (list(ids),))).rowcount

        return await self._write(purge)

    # -- alert state, health, counts -------------------------------------------------------------------

    async def load_state(
        self, *, groups: Sequence[tuple[str, str]] | None = None, silences: Sequence[int] | None = None
    ) -> tuple[list[tuple[str, str, str]], list[tuple[int, str]]]:
        if self._closed:
            raise RuntimeError("store is closed")
        wanted = sorted(self._groups) if groups is None else [g for g in groups if g in self._groups]
        ids = sorted(self._silences) if silences is None else [i for i in silences if i in self._silences]
        return [(rule, key, self._groups[rule, key]) for rule, key in wanted], [(i, self._silences[i]) for i in ids]

    def _remember(self, changes: StateChanges | None) -> None:
        """What a committed transaction wrote of the alert state."""
        if not changes:
            return
        self._groups.update(((rule, key), data) for rule, key, data in changes.upserts)
        for group in changes.deletes:
            self._groups.pop(group, None)
        self._silences.update(changes.silences)
        for ident in changes.silence_deletes:
            self._silences.pop(ident, None)

    def lost(self) -> str | None:
        return None  # a server, not an open file (module docstring)

    def problem(self) -> str | None:
        return self._write_problem

    async def probe(self) -> None:
        async def write(conn: psycopg.AsyncConnection[Any]) -> None:
            await conn.execute("INSERT INTO probe (id, at, room) VALUES (1, extract(epoch FROM now()), %s) "
                               "ON CONFLICT (id) DO UPDATE SET at = excluded.at, room = excluded.room",
                               (bytes(PROBE_BYTES),))

        await self._write(write)

    async def counts(self) -> StoreCounts:
        async def count(conn: psycopg.AsyncConnection[Any]) -> StoreCounts:
            cur = await conn.execute("SELECT (SELECT count(*) FROM outbox), (SELECT min(created) FROM outbox), "
                                     "(SELECT count(*) FROM dead_letters), (SELECT count(*) FROM history)")
            row = await cur.fetchone()
            assert row is not None
            return StoreCounts(outbox=row[0], oldest_created=row[1], dead_letters=row[2], history=row[3])

        return await self._read(count)


async def migrate_database(dsn: str) -> tuple[str, int, int]:
    """Bring the database to this code's schema version: (where, version before, version after). Refuses
    (DatabaseInUse) while an alert-engine runs on it; SchemaMismatch for a newer database."""
    where, secret = describe(dsn), dsn_secrets(dsn)
    conn = await _storage(_connection(_conninfo(dsn, "alert-engine migrate"), where, secret), where, secret)
    try:
        await _storage(_take_lock(conn, where), where, secret)
        before, after = await _storage(migrate(conn), where, secret)
    finally:
        await conn.close()
    if before > SCHEMA_VERSION:
        raise SchemaMismatch(where, before)
    return where, before, after


# -- connecting ---------------------------------------------------------------------------------------


def _conninfo(dsn: str, application_name: str) -> str:
    """The DSN with our defaults for what it does not set."""
    given = conninfo_to_dict(dsn)
    defaults = {"application_name": application_name, "connect_timeout": CONNECT_TIMEOUT}
    return make_conninfo(dsn, **{k: v for k, v in defaults.items() if k not in given})


async def _connection(conninfo: str, where: str, secret: list[str]) -> psycopg.AsyncConnection[Any]:
    """A connection in autocommit mode to a database in UTF-8."""
    try:
        conn = await psycopg.AsyncConnection.connect(conninfo, autocommit=True)
    except psycopg.Error as exc:
        raise StorageError(f"cannot connect to {where}: {_masked(_first_line(exc), secret)}") from None
    try:
        encoding = server_encoding(conn)
        if encoding != "UTF8":
            raise StorageError(f"database {where} has encoding {encoding}: alert-engine needs UTF8 "
                               "(CREATE DATABASE ... ENCODING 'UTF8')")
    except BaseException:
        await conn.close()
        raise
    return conn


async def _take_lock(conn: psycopg.AsyncConnection[Any], where: str) -> None:
    """The database's advisory lock for this session, or DatabaseInUse naming who holds it."""
    cur = await conn.execute("SELECT pg_try_advisory_lock(%s::int, %s::int)", (LOCK_CLASS, DATABASE_LOCK))
    row = await cur.fetchone()
    if row and row[0]:
        return
    cur = await conn.execute(
        "SELECT a.application_name FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid "
        "WHERE l.locktype = 'advisory' AND l.granted AND l.classid = %s::int::oid AND l.objid = %s::int::oid "
        "AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database())",
        (LOCK_CLASS, DATABASE_LOCK))
    holder = await cur.fetchone()
    who = f" ({holder[0]})" if holder and holder[0] else ""
    raise DatabaseInUse(f"database {where} is in use by another alert-engine{who}")


async def _lock(conn: psycopg.AsyncConnection[Any], where: str, owner: str) -> psycopg.AsyncConnection[Any]:
    """The writer's connection: the lock taken, the schema checked, leases of dead processes cleared."""
    try:
        await _take_lock(conn, where)
        found = await schema_version(conn)
        if found != SCHEMA_VERSION:
            raise SchemaMismatch(where, found)
        await conn.execute("UPDATE chains SET lease_owner = NULL, lease_token = NULL WHERE lease_owner <> %s", (owner,))
    except BaseException:
        await conn.close()
        raise
    return conn


async def _storage(work: Awaitable[T], where: str, secret: list[str]) -> T:
    """`work`, with a driver error turned into StorageError naming the database."""
    try:
        return await work
    except psycopg.Error as exc:
        raise StorageError(f"database {where}: {_masked(_first_line(exc), secret)}") from None


# -- what the writes share ----------------------------------------------------------------------------


async def _check_lease(conn: psycopg.AsyncConnection[Any], entry: OutboxEntry, token: int | None) -> None:
    """The chain of `entry` is leased with `token`, and stays locked until the transaction ends."""
    n = entry.notification
    if token is not None:
        cur = await conn.execute("SELECT 1 FROM chains WHERE service = %s AND dedup_key = %s AND lease_token = %s "
                                 "FOR UPDATE", (n.service, _key(n.dedup_key), token))
        if await cur.fetchone():
            return
    raise LookupError(f"notification {entry.id} is not claimed by this process")


async def _leave_outbox(conn: psycopg.AsyncConnection[Any], entry: OutboxEntry, insert: str,
                        params: tuple[Any, ...]) -> None:
    """Move the entry's row to history or the dead letters (`insert` selects from `gone`), then make the
    next notification of its chain the head, unleased, or drop the chain when none is left."""
    cur = await conn.execute(f"WITH gone AS (DELETE FROM outbox WHERE id = %s RETURNING *) {insert}",
                             (entry.id, *params))
    if cur.rowcount != 1:
        raise LookupError(f"notification {entry.id} is not in the outbox")
    chain = {"service": entry.notification.service, "key": _key(entry.notification.dedup_key)}
    if (await conn.execute(_NEXT_HEAD, chain)).rowcount == 0:
        await conn.execute("DELETE FROM chains WHERE service = %(service)s AND dedup_key = %(key)s", chain)


async def _wake(conn: psycopg.AsyncConnection[Any], now: float, service: str | None) -> int:
    cur = await conn.execute(_WAKE, {"now": now, "service": service})
    row = await cur.fetchone()
    return int(row[0]) if row else 0


async def _write_state(conn: psycopg.AsyncConnection[Any], changes: StateChanges) -> None:
    if changes.upserts:
        rules, keys, data = zip(*changes.upserts, strict=True)
        await conn.execute("INSERT INTO alert_state (rule, key, data) SELECT * FROM unnest(%s::text[], %s::bytea[], "
                           "%s::text[]) ON CONFLICT (rule, key) DO UPDATE SET data = excluded.data",
                           (list(rules), [_key(k) for k in keys], list(data)))
    if changes.deletes:
        await conn.execute("DELETE FROM alert_state WHERE (rule, key) IN (SELECT * FROM unnest(%s::text[], "
                           "%s::bytea[]))", ([r for r, _ in changes.deletes], [_key(k) for _, k in changes.deletes]))
    if changes.silences:
        await conn.execute("INSERT INTO silences (id, data) SELECT * FROM unnest(%s::bigint[], %s::text[]) "
                           "ON CONFLICT (id) DO UPDATE SET data = excluded.data",
                           ([i for i, _ in changes.silences], [d for _, d in changes.silences]))
    if changes.silence_deletes:
        await conn.execute("DELETE FROM silences WHERE id = ANY(%s::bigint[])", (list(changes.silence_deletes),))


def _chain(entry: OutboxEntry) -> Chain:
    return (entry.notification.service, entry.notification.dedup_key)


def _key(text: str) -> bytes:
    """A dedup key as stored: bytea, for any character (`text` refuses NUL)."""
    return text.encode("utf-8", "surrogatepass")


def _text_key(stored: bytes) -> str:
    return bytes(stored).decode("utf-8", "surrogatepass")


def _text_row(row: tuple[Any, ...]) -> tuple[Any, ...]:
    """A row of (id, rule, service, api, action, dedup_key, ...) with its dedup key as text."""
    return (*row[:5], _text_key(row[5]), *row[6:])


def _text(value: str) -> str:
    """An answer or a reason as `text` holds it: NUL as U+FFFD, at most RESPONSE_LIMIT characters."""
    return value[:RESPONSE_LIMIT].replace("\x00", "\ufffd")


def _first_line(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0]


def _masked(text: str, secret: list[str]) -> str:
    for value in secret:
        text = text.replace(value, mask_key(value))
    return text
