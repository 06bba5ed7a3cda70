"""The `Store` on PostgreSQL (psycopg 3, async), shared by any number of replicas (docs/ha.md).

Every write of a replica runs on one session that holds the database's lock shared, group-committed
(`postgres_session.Writer`: reconnecting, and taking the lock again, after the connection broke); reads
go through a small pool (psycopg_pool); the heartbeat has a connection of its own, whose backend the
decider's lease names (`postgres_cluster`). The schema and its migrations are in `postgres_schema`: this
store only checks that the database is at its version (`alert-engine migrate` changes it).

Leases are in the database (`chains.lease_owner`, `lease_token`, `lease_until`): a claim leases chain
heads with `FOR UPDATE SKIP LOCKED` for `delivery_lease` seconds, which the heartbeat extends; a lease that
ran out, or whose owner's session has no connection left (a process killed), is free again. `complete`, `retry_later`,
`dead_letter` and `collapse` check this store's token for the chain in their transaction (a replica whose
chain was claimed by another after its lease ran out cannot complete it), the first three ending the
lease in it: a lease ends only with a committed write. `release` forgets the leases here at once and
clears them in the database when it can; until then the next claim counts them as free.

Alert state: only the decider writes it, each write fenced by its epoch (`postgres_cluster.fence`). While
this replica decides (`lead`), the store keeps a copy of what it committed and `load_state` answers from
it, also while the database cannot be reached: the intake puts a batch whose commit failed back as
stored even when the failure was losing the server. When the connection broke at COMMIT itself, the
transaction may have been stored after all, and the copy is no longer known to be right: `load_state`
refuses (the intake marks its state poisoned) until the decider reads the state again (`lead`), which the
decider does as soon as the database answers (engine/decider.py). The client got a 503 and retries: at
least once. Otherwise `load_state` reads the database.

`lost()` is always None: the database is a server, not a file this process holds open that could be
deleted or replaced under it; a database dropped or unreachable shows as failing writes (`problem()`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import secrets
import socket
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any, TypeVar

import psycopg
from psycopg_pool import AsyncConnectionPool, PoolTimeout

from engine.cluster import ClusterView, Member
from engine.pacing import Pacer
from engine.render import Notification, encode
from engine.state import StateChanges
from engine.store import (
    COLLAPSED,
    DEAD_LETTERED,
    DEFAULT_HISTORY_RETENTION,
    DELIVERED,
    DeadLetter,
    HistoryEntry,
    LeaseLost,
    OutboxEntry,
    StorageError,
    StoreCounts,
    fold_collapsed_count,
)
from engine.store import postgres_cluster as cluster
from engine.store.postgres_cluster import NOW, InboxItem, Listener
from engine.store.postgres_pacing import SharedPacer
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

log = logging.getLogger("alert_engine.store")

PROBE_BYTES = 128 * 1024  # what `probe` writes, as on SQLite: a recovery is a database that takes a batch
RESPONSE_LIMIT = 8192  # characters of a response body kept
POOL_SIZE = 4  # read connections
POOL_TIMEOUT = 1.5  # seconds a read waits for a connection (within the health check's 2 s)
RESIGN_TIMEOUT = 2.0  # seconds a decider stepping down waits to give its lease up
REPLICA_CHECKS = 12  # looks, 0.25 s apart, for another live process with this replica's id before refusing

_ENTRY = "id, rule, service, api, action, dedup_key, body, created, due, attempts, collapsed"
# not leased, released here, the lease ran out, or its owner's process is gone (no connection left)
_FREE = (f"(lease_token IS NULL OR lease_token = ANY(%(stale)s::bigint[]) OR lease_until < {NOW} OR lease_owner <> "
         "ALL(ARRAY(SELECT application_name FROM pg_stat_activity WHERE datname = current_database())))")
_CLAIM = f"""
WITH free AS (SELECT service, dedup_key, lease_token AS was FROM chains WHERE due <= %(now)s AND {_FREE}
              ORDER BY due, head LIMIT %(limit)s FOR UPDATE SKIP LOCKED),
     leased AS (UPDATE chains c SET lease_owner = %(owner)s, lease_token = nextval('lease_tokens'),
                lease_until = {NOW} + %(lease)s
                FROM free WHERE c.service = free.service AND c.dedup_key = free.dedup_key
                RETURNING c.head, c.lease_token, free.was)
SELECT {', '.join('o.' + c for c in _ENTRY.split(', '))}, leased.lease_token, leased.was
FROM leased JOIN outbox o ON o.id = leased.head ORDER BY o.due, o.id
"""
# a new chain for each notification whose chain there is not; an existing chain row is locked (the no-op
# update), so a delivery ending that chain's last notification waits for this transaction, and then sees
# the new one as its next head, instead of deleting the chain under it
_NEW_CHAINS = """
INSERT INTO chains (service, dedup_key, head, due)
SELECT DISTINCT ON (service, dedup_key) service, dedup_key, id, %s
FROM unnest(%s::text[], %s::bytea[], %s::bigint[]) AS t(service, dedup_key, id)
ORDER BY service, dedup_key, id ON CONFLICT (service, dedup_key) DO UPDATE SET head = chains.head
"""
_NEXT_HEAD = """
UPDATE chains c SET head = n.id, due = n.due, lease_owner = NULL, lease_token = NULL, lease_until = NULL
FROM (SELECT id, due FROM outbox WHERE service = %(service)s AND dedup_key = %(key)s ORDER BY id LIMIT 1) n
WHERE c.service = %(service)s AND c.dedup_key = %(key)s
"""
_WAKE = """
WITH woken AS (UPDATE outbox SET due = %(now)s WHERE attempts > 0 AND due > %(now)s
               AND (%(service)s::text IS NULL OR service = %(service)s) RETURNING id),
     heads AS (UPDATE chains SET due = %(now)s WHERE head IN (SELECT id FROM woken))
SELECT count(*) FROM woken
"""
_TO_HISTORY = ("INSERT INTO history (epoch, id, rule, service, api, action, dedup_key, body, outcome, attempts, "
               "collapsed, created, sent, status, response) SELECT epoch, id, rule, service, api, action, dedup_key, "
               "body, ")
_TO_DEAD_LETTERS = ("INSERT INTO dead_letters (epoch, id, rule, service, api, action, dedup_key, body, reason, "
                    "attempts, collapsed, created, failed, status, response) SELECT epoch, id, rule, service, api, "
                    "action, dedup_key, body, ")

T = TypeVar("T")
Chain = tuple[str, str]  # (service, dedup key)


class ReplicaInUse(StorageError):
    """Another running process beats with this replica's id."""


class PostgresStore:
    """The outbox, history, dead letters, alert state, inbox and heartbeats in one PostgreSQL database,
    for one replica. Build it with `await PostgresStore.open(dsn, replica=...)`; `where` names the
    database in messages (no password)."""

    def __init__(self, writer: Writer, pool: AsyncConnectionPool[Any], messages: Messages, session: str,
                 conninfo: str, *, delivery_lease: float, decider_lease: float) -> None:
        self.where = messages.where
        self.session = session  # this process: its connections' application_name, its leases' owner
        self._writer = writer
        self._pool = pool
        self._messages = messages
        self._conninfo = conninfo
        self._owner = session
        self._delivery_lease = delivery_lease
        self._decider_lease = decider_lease
        self._started = time.time()
        self._beating: Connection | None = None  # the heartbeat's connection (the decider's lease names it)
        self._listener: Listener | None = None
        self._leases: dict[Chain, int] = {}  # the chains this store holds, and their lease tokens
        self._stale: set[int] = set()  # tokens released here, perhaps not yet in the database
        self._epoch: int | None = None  # the decider's epoch while this replica decides
        self._groups: dict[tuple[str, str], str] = {}  # the alert state as committed, while deciding
        self._silences: dict[int, str] = {}
        self._copy_known = True  # False after a commit of alert state whose outcome is unknown: `lead` again
        self._pool_since = 0  # the writer's reconnects when the read pool was made
        self._closed = False

    @classmethod
    async def open(cls, dsn: str, *, replica: str | None = None, delivery_lease: float = 60.0,
                   decider_lease: float = 10.0) -> PostgresStore:
        """Connect (holding the database's lock shared), check its encoding and schema version, free the
        leases an earlier process of this replica left. StorageError (DatabaseInUse, SchemaMismatch) when
        it cannot."""
        messages = Messages(describe(dsn), dsn_secrets(dsn))
        replica = replica or f"{socket.gethostname()}:{os.getpid()}"
        session = f"alert-engine/{replica[:40]}/{secrets.token_hex(4)}"  # within application_name's 63 bytes
        conninfo = connection_info(dsn, session)

        async def writer_session() -> Connection:
            return await _locked(await connect(conninfo, messages), messages.where, session)

        conn = await messages.naming(writer_session())
        pool = _read_pool(conninfo)
        store = cls(Writer(conn, writer_session, messages), pool, messages, session, conninfo,
                    delivery_lease=delivery_lease, decider_lease=decider_lease)
        try:
            await messages.naming(_replica_free(conn, replica, session, messages.where))
            await messages.naming(conn.execute("UPDATE chains SET lease_owner = NULL, lease_token = NULL, "
                                               "lease_until = NULL WHERE lease_owner LIKE %s AND lease_owner <> %s",
                                               (f"alert-engine/{replica[:40]}/%", session)))
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

    # -- the cluster ----------------------------------------------------------------------------------

    async def heartbeat(self, me: Member) -> ClusterView:
        """This replica alive, its leases renewed, the decider's lease renewed or taken (`postgres_cluster`)."""
        if self._closed:
            raise RuntimeError("store is closed")
        try:
            if self._beating is None or self._beating.closed:
                self._beating = await connect(self._conninfo, self._messages)
            return await cluster.beat(self._beating, me, self.session, started=self._started,
                                      decider_lease=self._decider_lease, delivery_lease=self._delivery_lease)
        except psycopg.Error as exc:
            raise self._messages.error(exc) from exc
        except asyncio.CancelledError:  # timed out mid-way: the connection is in an unknown state
            beating, self._beating = self._beating, None
            if beating is not None:
                await beating.close()
            raise

    async def lead(self, epoch: int | None) -> None:
        """Decide with `epoch` from now on (the alert state read afresh), or not at all (None: the decider's
        lease given up, if this replica still holds it, so that another takes over at its next heartbeat)."""
        self._epoch = None
        self._groups, self._silences = {}, {}
        self._copy_known = True
        if epoch is None:
            async def resign(conn: Connection) -> None:
                await conn.execute("UPDATE decider SET until = 0 WHERE holder = %s", (self.session,))

            with contextlib.suppress(StorageError, TimeoutError):  # else the lease runs out by itself
                await asyncio.wait_for(self._read(resign), RESIGN_TIMEOUT)
            return

        async def read(conn: Connection) -> None:
            cur = await conn.execute("SELECT rule, key, data FROM alert_state")
            self._groups = {(rule, _text_key(key)): data for rule, key, data in await cur.fetchall()}
            cur = await conn.execute("SELECT id, data FROM silences")
            self._silences = dict(await cur.fetchall())

        await self._read(read)
        self._epoch = epoch

    def listen(self, wake: Mapping[str, Callable[[], None]]) -> None:
        """Call `wake[channel]()` when another replica committed work for it (`postgres_cluster.CHANNELS`)."""
        async def connect_listener() -> Connection:
            return await connect(self._conninfo, self._messages)

        self._listener = Listener(connect_listener, self._messages, wake)
        self._listener.start()

    async def put_inbox(self, kind: str, body: dict[str, Any]) -> int:
        """Hand a request to the decider: its inbox id once committed."""
        return await self._write(lambda conn: cluster.put(conn, kind, body, self.session))

    async def take_inbox(self, *, limit: int) -> list[InboxItem]:
        """Inbox rows not decided yet, oldest first."""
        return await self._read(lambda conn: cluster.waiting(conn, limit=limit))

    async def inbox_results(self, ids: Sequence[int]) -> dict[int, dict[str, Any]]:
        """The results of those inbox rows that are decided."""
        return await self._read(lambda conn: cluster.results(conn, ids))

    async def inbox_backlog(self) -> tuple[int, float | None]:
        """Inbox rows waiting for the decider, and when the oldest came."""
        return await self._read(cluster.backlog)

    def pacer(self, rate_per_minute: float, burst: int) -> Pacer:
        """The pace of each key across every replica (`postgres_pacing`)."""
        async def run(sql: str, params: dict[str, Any]) -> Any:
            async def one(conn: Connection) -> Any:
                return await (await conn.execute(sql, params)).fetchone()

            return await self._read(one)

        return SharedPacer(run, rate_per_minute / 60.0, burst)

    async def prune_inbox(self) -> int:
        return await self._write(cluster.prune)

    async def _read(self, fn: Callable[[Connection], Awaitable[T]]) -> T:
        if self._closed:
            raise RuntimeError("store is closed")
        if self._writer.reconnects != self._pool_since:  # the server came back: the pool's sessions are gone too
            self._pool_since = self._writer.reconnects
            await self._renew_pool()
        try:
            async with self._pool.connection() as conn:
                return await fn(conn)
        except PoolTimeout as exc:
            if self._writer.problem is None and not self._pool.get_stats().get("pool_size"):
                await self._renew_pool()  # no connection at all, yet the server takes writes
            raise self._messages.error(exc) from exc
        except psycopg.Error as exc:
            raise self._messages.error(exc) from exc

    async def _renew_pool(self) -> None:
        """A new read pool, when the writer had to connect again (the server restarted) or the old pool
        gives no connection while the server takes writes: after an outage psycopg_pool tries to connect
        again with a backoff that doubles (1, 2, 4, … s), so reads would lag a long outage's end by as
        long again."""
        old, self._pool = self._pool, _read_pool(self._conninfo)
        await self._pool.open(wait=False)
        await old.close(timeout=0)
        log.info("%s: a new read pool, the old one still waiting to reconnect", self.where)

    async def _write(self, op: Op, then: Callable[[Any], None] | None = None) -> Any:
        if self._closed:
            raise RuntimeError("store is closed")
        return await self._writer.write(op, then)

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True

        async def give_back(conn: Connection) -> None:  # for the other replicas, at once
            await conn.execute("UPDATE chains SET lease_owner = NULL, lease_token = NULL, lease_until = NULL "
                               "WHERE lease_owner = %s", (self._owner,))

        if self._listener is not None:
            await self._listener.stop()
        await self._writer.close(give_back)  # the lock goes with the session
        await self._pool.close()
        if self._beating is not None:
            await self._beating.close()

    # -- the outbox ----------------------------------------------------------------------------------

    async def enqueue(
        self, notifications: Sequence[Notification], *, now: float, state: StateChanges | None = None,
        decided: Sequence[tuple[int, str]] = (),
    ) -> list[int]:
        if not notifications and not state and not decided:
            return []
        columns = list(zip(*((n.rule, n.service, n.api, n.action, _key(n.dedup_key), n.json())
                             for n in notifications), strict=True)) if notifications else []
        epoch = self._epoch
        fenced = bool(state or decided)

        async def insert(conn: Connection) -> list[int]:
            if fenced:
                await cluster.fence(conn, epoch)
            if state:
                await _write_state(conn, state)
            if decided:
                assert epoch is not None
                await cluster.decide(conn, decided, epoch)
            if not notifications:
                return []
            cur = await conn.execute("SELECT nextval('outbox_ids') FROM generate_series(1, %s)", (len(notifications),))
            ids = sorted(row[0] for row in await cur.fetchall())
            await conn.execute(
                "INSERT INTO outbox (id, rule, service, api, action, dedup_key, body, created, due, epoch) "
                "SELECT *, %s, %s, %s FROM unnest(%s::bigint[], %s::text[], %s::text[], %s::text[], %s::text[], "
                "%s::bytea[], %s::text[])", (now, now, epoch if fenced else 0, ids, *map(list, columns)))
            await conn.execute(_NEW_CHAINS, (now, list(columns[1]), list(columns[4]), ids))
            await conn.execute("SELECT pg_notify(%s, '')", (cluster.OUTBOX,))
            return ids

        try:
            return await self._write(insert, then=lambda _: self._remember(state))
        except StorageError:
            if fenced and self._writer.uncertain:
                self._copy_known = False  # the connection broke at COMMIT: it may have happened after all
            raise

    async def claim(self, *, now: float, limit: int) -> list[OutboxEntry]:
        """On a read connection, committed without waiting for the disk: a claim lost in a server crash is
        a lease nobody holds, which is what the crash made of it anyway (its chains are claimed again),
        and a send no longer waits for a flush of its claim (the PostgreSQL figures in bench/RESULTS.md)."""
        async def lease(conn: Connection) -> list[tuple[OutboxEntry, int, int | None]]:
            async with conn.transaction():
                await conn.execute("SET LOCAL synchronous_commit = off")
                cur = await conn.execute(_CLAIM, {"now": now, "limit": limit, "owner": self._owner,
                                                  "stale": list(self._stale), "lease": self._delivery_lease})
                return [(outbox_entry(_text_row(row[:11])), row[11], row[12]) for row in await cur.fetchall()]

        claimed = await self._read(lease)
        for entry, token, was in claimed:
            self._leases[_chain(entry)] = token
            self._stale.discard(was)  # a lease released here, taken again
        return [entry for entry, _, _ in claimed]

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
        if self._epoch is None:
            return await self._read(lambda conn: _stored_state(conn, groups, silences))
        if not self._copy_known:
            raise StorageError("the last commit's outcome is unknown (the connection broke while it ran): the "
                               "state is read again from the database once it answers")
        wanted = sorted(self._groups) if groups is None else [g for g in groups if g in self._groups]
        ids = sorted(self._silences) if silences is None else [i for i in silences if i in self._silences]
        return [(rule, key, self._groups[rule, key]) for rule, key in wanted], [(i, self._silences[i]) for i in ids]

    def _remember(self, changes: StateChanges | None) -> None:
        """What a committed transaction wrote of the alert state."""
        if not changes or self._epoch is None:
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


def _read_pool(conninfo: str) -> AsyncConnectionPool[Any]:
    return AsyncConnectionPool(conninfo, min_size=1, max_size=POOL_SIZE, open=False, kwargs={"autocommit": True},
                               check=AsyncConnectionPool.check_connection, timeout=POOL_TIMEOUT, name="alert-engine")


async def _locked(conn: Connection, where: str, session: str) -> Connection:
    """The writer's session: the lock taken (shared), the schema checked."""
    try:
        await take_lock(conn, where, shared=True)
        found = await schema_version(conn)
        if found != SCHEMA_VERSION:
            raise SchemaMismatch(where, found)
    except BaseException:
        await conn.close()
        raise
    return conn


async def _replica_free(conn: Connection, replica: str, session: str, where: str) -> None:
    """ReplicaInUse when another process that is still connected beats as `replica` (given a few seconds:
    the server ends the sessions of a process just killed a moment after it died)."""
    for _ in range(REPLICA_CHECKS):
        cur = await conn.execute("SELECT r.session FROM replicas r JOIN pg_stat_activity a ON a.application_name = "
                                 "r.session WHERE r.id = %s AND r.session <> %s LIMIT 1", (replica, session))
        if not await cur.fetchone():
            return
        await asyncio.sleep(0.25)
    raise ReplicaInUse(f"database {where}: replica id {replica!r} is in use by a running alert-engine; "
                           "give each replica its own cluster.replica_id")


async def _stored_state(conn: Connection, groups: Sequence[tuple[str, str]] | None, silences: Sequence[int] | None
                        ) -> tuple[list[tuple[str, str, str]], list[tuple[int, str]]]:
    if groups is None:
        cur = await conn.execute("SELECT rule, key, data FROM alert_state ORDER BY rule, key")
    else:
        cur = await conn.execute("SELECT s.rule, s.key, s.data FROM alert_state s JOIN unnest(%s::text[], %s::bytea[]) "
                                 "AS g(rule, key) ON s.rule = g.rule AND s.key = g.key ORDER BY 1, 2",
                                 ([r for r, _ in groups], [_key(k) for _, k in groups]))
    rows = [(rule, _text_key(key), data) for rule, key, data in await cur.fetchall()]
    if silences is None:
        cur = await conn.execute("SELECT id, data FROM silences ORDER BY id")
    else:
        cur = await conn.execute("SELECT id, data FROM silences WHERE id = ANY(%s::bigint[]) ORDER BY id",
                                 (list(silences),))
    return rows, list(await cur.fetchall())


# -- what the writes share ----------------------------------------------------------------------------


async def _check_lease(conn: Connection, entry: OutboxEntry, token: int | None) -> None:
    """The chain of `entry` is leased with `token`, and stays locked until the transaction ends."""
    n = entry.notification
    if token is not None:
        cur = await conn.execute("SELECT 1 FROM chains WHERE service = %s AND dedup_key = %s AND lease_token = %s "
                                 "FOR UPDATE", (n.service, _key(n.dedup_key), token))
        if await cur.fetchone():
            return
    raise LeaseLost(f"notification {entry.id} is not claimed by this process (any more)")


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
