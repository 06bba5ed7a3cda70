"""The `Store` on PostgreSQL (psycopg 3, async), for one alert-engine per database.

Every write runs on one session that holds the database's lock, group-committed (`postgres_session.Writer`:
reconnecting, and taking the lock again, after the connection broke); reads go through a small pool
(psycopg_pool). The schema and its migrations are in `postgres_schema`: this store only checks that the
database is at its version (`alert-engine migrate` changes it).

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

import contextlib
import os
import secrets
import socket
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, TypeVar

import psycopg
from psycopg_pool import AsyncConnectionPool

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
from engine.store.postgres_schema import SCHEMA_VERSION, schema_version
from engine.store.postgres_session import (
    CONNECT_TIMEOUT,
    Connection,
    Messages,
    Op,
    SchemaMismatch,
    Writer,
    connect,
    connection_info,
    describe,
    dsn_secrets,
    take_lock,
)
from engine.store.rows import collapse_run, display_fields, history_filters, outbox_entry, stored_body

PROBE_BYTES = 128 * 1024  # what `probe` writes, as on SQLite: a recovery is a database that takes a batch
RESPONSE_LIMIT = 8192  # characters of a response body kept
POOL_SIZE = 4  # read connections
POOL_TIMEOUT = 5.0  # seconds a read waits for a connection

_ENTRY = "id, rule, service, api, action, dedup_key, body, created, due, attempts, collapsed"
_FREE = "(lease_token IS NULL OR lease_token = ANY(%(stale)s::bigint[]))"  # not leased, or released here
_CLAIM = f"""
WITH free AS (SELECT service, dedup_key, lease_token AS was FROM chains WHERE due <= %(now)s AND {_FREE}
              ORDER BY due, head LIMIT %(limit)s FOR UPDATE SKIP LOCKED),
     leased AS (UPDATE chains c SET lease_owner = %(owner)s, lease_token = nextval('lease_tokens')
                FROM free WHERE c.service = free.service AND c.dedup_key = free.dedup_key
                RETURNING c.head, c.lease_token, free.was)
SELECT {', '.join('o.' + c for c in _ENTRY.split(', '))}, leased.lease_token, leased.was
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


class PostgresStore:
    """The outbox, history, dead letters and alert state in one PostgreSQL database. Build it with
    `await PostgresStore.open(dsn)`; `where` names the database in messages (no password)."""

    def __init__(self, writer: Writer, pool: AsyncConnectionPool[Any], messages: Messages, owner: str) -> None:
        self.where = messages.where
        self._writer = writer
        self._pool = pool
        self._messages = messages
        self._owner = owner  # whose leases: this process
        self._leases: dict[Chain, int] = {}  # the chains this store holds, and their lease tokens
        self._stale: set[int] = set()  # tokens released here, perhaps not yet in the database
        self._groups: dict[tuple[str, str], str] = {}  # the alert state as committed
        self._silences: dict[int, str] = {}
        self._closed = False

    @classmethod
    async def open(cls, dsn: str) -> PostgresStore:
        """Connect, take the database's lock, check its encoding and schema version, clear the leases dead
        processes left, read the alert state. StorageError (DatabaseInUse, SchemaMismatch) when it cannot."""
        messages = Messages(describe(dsn), dsn_secrets(dsn))
        host, pid = socket.gethostname(), os.getpid()
        owner = f"{host}:{pid}:{secrets.token_hex(4)}"
        conninfo = connection_info(dsn, f"alert-engine {host} pid {pid}")

        async def writer_session() -> Connection:
            return await _locked(await connect(conninfo, messages), messages.where, owner)

        conn = await messages.naming(writer_session())
        pool: AsyncConnectionPool[Any] = AsyncConnectionPool(
            conninfo, min_size=1, max_size=POOL_SIZE, open=False, kwargs={"autocommit": True},
            check=AsyncConnectionPool.check_connection, timeout=POOL_TIMEOUT, name="alert-engine")
        store = cls(Writer(conn, writer_session, messages), pool, messages, owner)
        try:
            await messages.naming(store._load(conn))
            await messages.naming(pool.open(wait=True, timeout=float(CONNECT_TIMEOUT)))
        except BaseException:
            await conn.close()
            await pool.close()
            raise
        return store

    @property
    def commits(self) -> int:
        """Transactions committed: group commit makes this lower than the writes."""
        return self._writer.commits

    async def _load(self, conn: Connection) -> None:
        cur = await conn.execute("SELECT rule, key, data FROM alert_state")
        self._groups = {(rule, _text_key(key)): data for rule, key, data in await cur.fetchall()}
        cur = await conn.execute("SELECT id, data FROM silences")
        self._silences = dict(await cur.fetchall())

    async def _read(self, fn: Callable[[Connection], Awaitable[T]]) -> T:
        if self._closed:
            raise RuntimeError("store is closed")
        try:
            async with self._pool.connection() as conn:
                return await fn(conn)
        except psycopg.Error as exc:
            raise self._messages.error(exc) from exc

    async def _write(self, op: Op, then: Callable[[Any], None] | None = None) -> Any:
        if self._closed:
            raise RuntimeError("store is closed")
        return await self._writer.write(op, then)

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True

        async def give_back(conn: Connection) -> None:  # for the next start, which clears them anyway
            await conn.execute("UPDATE chains SET lease_owner = NULL, lease_token = NULL WHERE lease_owner = %s",
                               (self._owner,))

        await self._writer.close(give_back)  # the lock goes with the session
        await self._pool.close()

    # -- the outbox ----------------------------------------------------------------------------------

    async def enqueue(
        self, notifications: Sequence[Notification], *, now: float, state: StateChanges | None = None
    ) -> list[int]:
        if not notifications and not state:
            return []
        columns = list(zip(*((n.rule, n.service, n.api, n.action, _key(n.dedup_key), n.json())
                             for n in notifications), strict=True)) if notifications else []

        async def insert(conn: Connection) -> list[int]:
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
        async def lease(conn: Connection) -> list[tuple[OutboxEntry, int, int | None]]:
            cur = await conn.execute(_CLAIM, {"now": now, "limit": limit, "owner": self._owner,
                                              "stale": list(self._stale)})
            return [(outbox_entry(_text_row(row[:11])), row[11], row[12]) for row in await cur.fetchall()]

        def hold(claimed: list[tuple[OutboxEntry, int, int | None]]) -> None:
            for entry, token, was in claimed:
                self._leases[_chain(entry)] = token
                self._stale.discard(was)  # a lease released here, taken again

        return [entry for entry, _, _ in await self._write(lease, then=hold)]

    async def next_due(self) -> float | None:
        async def earliest(conn: Connection) -> float | None:
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

        async def fold(conn: Connection) -> OutboxEntry:
            await _check_lease(conn, entry, token)
            cur = await conn.execute(f"SELECT {_ENTRY} FROM outbox WHERE service = %s AND dedup_key = %s AND id >= %s "
                                     "ORDER BY id", (n.service, _key(n.dedup_key), entry.id))
            rows = [_text_row(row) for row in await cur.fetchall()]
            found = collapse_run(rows, entry.id)
            if found is None:
                return entry
            newest, folded, total = found
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

        async def to_history(conn: Connection) -> None:
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

        async def postpone(conn: Connection) -> None:
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

        async def bury(conn: Connection) -> None:
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

        async def clear(conn: Connection) -> None:
            await conn.execute("UPDATE chains SET lease_owner = NULL, lease_token = NULL "
                               "WHERE lease_token = ANY(%s::bigint[])", (tokens,))

        with contextlib.suppress(StorageError):  # else the next claim takes them as free
            await self._write(clear, then=lambda _: self._stale.difference_update(tokens))

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
        delivered, delivered_params = history_filters(rule, service, since, time="sent", placeholder="%s")
        dead, dead_params = history_filters(rule, service, since, time="failed", placeholder="%s")

        async def select(conn: Connection) -> list[HistoryEntry]:
            cur = await conn.execute(
                "SELECT id, rule, service, api, action, dedup_key, body, outcome, attempts, collapsed, created, sent, "
                f"status, response, '' AS reason FROM history WHERE {delivered} "
                "UNION ALL SELECT id, rule, service, api, action, dedup_key, body, %s::text, attempts, collapsed, "
                f"created, failed, status, response, reason FROM dead_letters WHERE {dead} "
                "ORDER BY sent DESC, id DESC LIMIT %s",
                (*delivered_params, DEAD_LETTERED, *dead_params, limit))
            rows = [_text_row(row) for row in await cur.fetchall()]
            return [HistoryEntry(**display_fields(HistoryEntry, row), body=stored_body(row)) for row in rows]

        return await self._read(select)

    async def prune_history(self, *, now: float, retention: float = DEFAULT_HISTORY_RETENTION) -> int:
        async def prune(conn: Connection) -> int:
            return (await conn.execute("DELETE FROM history WHERE sent < %s", (now - retention,))).rowcount

        return await self._write(prune)

    async def dead_letters(self, *, limit: int | None = None) -> list[DeadLetter]:
        async def select(conn: Connection) -> list[DeadLetter]:
            cur = await conn.execute(
                "SELECT id, rule, service, api, action, dedup_key, body, reason, attempts, collapsed, created, failed, "
                "status, response FROM dead_letters ORDER BY id LIMIT %s", (limit,))
            rows = [_text_row(row) for row in await cur.fetchall()]
            return [DeadLetter(**display_fields(DeadLetter, row), body=stored_body(row)) for row in rows]

        return await self._read(select)

    async def retry_dead_letter(self, id: int, *, now: float) -> int | None:
        async def revive(conn: Connection) -> int | None:
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
        async def purge(conn: Connection) -> int:
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
        return self._writer.problem

    async def probe(self) -> None:
        async def write(conn: Connection) -> None:
            await conn.execute("INSERT INTO probe (id, at, room) VALUES (1, extract(epoch FROM now()), %s) "
                               "ON CONFLICT (id) DO UPDATE SET at = excluded.at, room = excluded.room",
                               (bytes(PROBE_BYTES),))

        await self._write(write)

    async def counts(self) -> StoreCounts:
        async def count(conn: Connection) -> StoreCounts:
            cur = await conn.execute("SELECT (SELECT count(*) FROM outbox), (SELECT min(created) FROM outbox), "
                                     "(SELECT count(*) FROM dead_letters), (SELECT count(*) FROM history)")
            row = await cur.fetchone()
            assert row is not None
            return StoreCounts(outbox=row[0], oldest_created=row[1], dead_letters=row[2], history=row[3])

        return await self._read(count)


# -- connecting ---------------------------------------------------------------------------------------


async def _locked(conn: Connection, where: str, owner: str) -> Connection:
    """The writer's session: the lock taken, the schema checked, the leases dead processes left cleared."""
    try:
        await take_lock(conn, where)
        found = await schema_version(conn)
        if found != SCHEMA_VERSION:
            raise SchemaMismatch(where, found)
        await conn.execute("UPDATE chains SET lease_owner = NULL, lease_token = NULL WHERE lease_owner <> %s", (owner,))
    except BaseException:
        await conn.close()
        raise
    return conn


# -- what the writes share ----------------------------------------------------------------------------


async def _check_lease(conn: Connection, entry: OutboxEntry, token: int | None) -> None:
    """The chain of `entry` is leased with `token`, and stays locked until the transaction ends."""
    n = entry.notification
    if token is not None:
        cur = await conn.execute("SELECT 1 FROM chains WHERE service = %s AND dedup_key = %s AND lease_token = %s "
                                 "FOR UPDATE", (n.service, _key(n.dedup_key), token))
        if await cur.fetchone():
            return
    raise LookupError(f"notification {entry.id} is not claimed by this process")


async def _leave_outbox(conn: Connection, entry: OutboxEntry, insert: str,
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


async def _wake(conn: Connection, now: float, service: str | None) -> int:
    cur = await conn.execute(_WAKE, {"now": now, "service": service})
    row = await cur.fetchone()
    return int(row[0]) if row else 0


async def _write_state(conn: Connection, changes: StateChanges) -> None:
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
