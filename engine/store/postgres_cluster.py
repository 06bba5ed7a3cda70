"""What several replicas share in PostgreSQL, besides the outbox: heartbeats, the decider's lease and its
epoch (the fencing number), the inbox, and the wake-ups (LISTEN/NOTIFY).

Every replica's connections carry its *session* as `application_name` (alert-engine/REPLICA/RANDOM, new
for every process), which is also the owner of its delivery leases and, for the decider, the lease's
holder: a session with no connection left in `pg_stat_activity` is a process that is gone.

The decider's lease is the one row of `decider` (module `engine.cluster`). A heartbeat renews it when this
session holds it, and takes it over (epoch + 1) when it has run out or its holder's heartbeat connection
is gone; before taking over a lease that ran out it terminates what is left of the holder's sessions, so
a decider cut off in the middle of a transaction (its row lock held) cannot block the takeover, nor
commit later. Every write of the decider starts with `fence`: `SELECT … FOR SHARE` of the row at its
epoch, which either fails (deposed) or holds the row until the commit, so a takeover waits for it.

The inbox: replicas that are not the decider commit requests there (`put`); the decider takes them in
order (`waiting`) and marks them decided, with their result, in the transaction that writes what they
caused (`decide`); replicas waiting for an answer read the results (`results`). Decided rows are kept
for `INBOX_KEPT` seconds.

Wake-ups: a commit that adds to the outbox or the inbox, or decides inbox rows, notifies its channel
(PostgreSQL delivers notifications at commit, one per channel and transaction). `Listener` holds one
connection that listens on all three and calls back; when it cannot, the replicas' polls still find
the work, only later.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import psycopg

from engine.cluster import ClusterView, Member, Replica
from engine.store import StorageError
from engine.store.postgres_session import Connection, Messages

log = logging.getLogger("alert_engine.store")

NOW = "extract(epoch FROM clock_timestamp())"  # the database's clock, in seconds: no replica's clock times a lease
OUTBOX, INBOX, DECIDED = "alert_engine_outbox", "alert_engine_inbox", "alert_engine_decided"
CHANNELS = (OUTBOX, INBOX, DECIDED)
INBOX_KEPT = 600.0  # seconds a decided inbox row (its result) is kept
REPLICAS_KEPT = 86400.0  # seconds a replica that stopped beating stays listed
TAKEOVER_LOCK_TIMEOUT = "2s"  # a takeover waits this long for the row; then the next heartbeat tries again


class Deposed(StorageError):
    """A write of the decider found another epoch in the database: this replica decides no more."""


@dataclass(frozen=True)
class InboxItem:
    id: int
    kind: str  # "events", "resolve", "silence", "expire"
    body: dict[str, Any]
    replica: str
    received: float


# -- heartbeats and the decider's lease ------------------------------------------------------------


async def beat(conn: Connection, me: Member, session: str, *, started: float, decider_lease: float,
               delivery_lease: float) -> ClusterView:
    """Record `me` alive, renew or take the decider's lease, extend this session's delivery leases; the
    cluster as it is now."""
    async with conn.transaction():
        now = await _now(conn)
        await conn.execute(
            "INSERT INTO replicas (id, address, session, started, heartbeat, ruleset) VALUES (%s, %s, %s, %s, %s, %s) "
            "ON CONFLICT (id) DO UPDATE SET address = excluded.address, session = excluded.session, "
            "started = excluded.started, heartbeat = excluded.heartbeat, ruleset = excluded.ruleset",
            (me.id, me.address, session, started, now, me.ruleset))
    epoch, holder = await _lease(conn, session, decider_lease)
    try:
        async with conn.transaction():
            await conn.execute(f"SET LOCAL lock_timeout = '{TAKEOVER_LOCK_TIMEOUT}'")
            await conn.execute(f"UPDATE chains SET lease_until = {NOW} + %s WHERE lease_owner = %s",
                               (delivery_lease, session))
    except psycopg.errors.LockNotAvailable:
        pass  # chains locked by deliveries committing: the next heartbeat extends them
    now = await _now(conn)
    await conn.execute("DELETE FROM replicas WHERE heartbeat < %s", (now - REPLICAS_KEPT,))
    cur = await conn.execute("SELECT id, address, session, started, heartbeat, ruleset FROM replicas ORDER BY id")
    rows = await cur.fetchall()
    decider = next((row[0] for row in rows if row[2] == holder), None)
    replicas = tuple(Replica(id=row[0], address=row[1], started=row[3], heartbeat=row[4], ruleset=row[5],
                             alive=row[4] >= now - decider_lease, decider=row[2] == holder) for row in rows)
    return ClusterView(now=now, epoch=epoch, decider=decider, leading=holder == session, replicas=replicas)


async def _lease(conn: Connection, session: str, lease: float) -> tuple[int | None, str | None]:
    """Renew the decider's lease if this session holds it, take it if it is free; (epoch, holder) after."""
    cur = await conn.execute(
        f"SELECT epoch, holder, until < {NOW}, NOT EXISTS (SELECT 1 FROM pg_stat_activity a WHERE a.pid = d.backend), "
        "until = 0 FROM decider d WHERE id = 1")
    row = await cur.fetchone()
    if row is None:
        cur = await conn.execute(f"INSERT INTO decider (id, epoch, holder, backend, since, until) VALUES "
                                 f"(1, 1, %s, pg_backend_pid(), {NOW}, {NOW} + %s) ON CONFLICT (id) DO NOTHING "
                                 "RETURNING epoch", (session, lease))
        won = await cur.fetchone()
        return (1, session) if won else await _holder(conn)
    epoch, holder, expired, gone, resigned = row
    async with conn.transaction():
        await conn.execute(f"SET LOCAL lock_timeout = '{TAKEOVER_LOCK_TIMEOUT}'")
        if holder == session:
            cur = await conn.execute(f"UPDATE decider SET until = {NOW} + %s, backend = pg_backend_pid() "
                                     "WHERE id = 1 AND epoch = %s AND holder = %s RETURNING epoch",
                                     (lease, epoch, session))
            return (epoch, session) if await cur.fetchone() else await _holder(conn)
        if not (expired or gone):
            return epoch, holder
        await conn.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = %s "
                           "AND datname = current_database()", (holder,))
        cur = await conn.execute(f"UPDATE decider SET epoch = epoch + 1, holder = %s, backend = pg_backend_pid(), "
                                 f"since = {NOW}, until = {NOW} + %s WHERE id = 1 AND epoch = %s RETURNING epoch",
                                 (session, lease, epoch))
        taken = await cur.fetchone()
    if taken is None:
        return await _holder(conn)
    why = "it stepped down" if resigned else "its lease ran out" if expired else "it is gone"
    log.info("took over the decider's lease from %s (%s)", holder, why)
    return int(taken[0]), session


async def _holder(conn: Connection) -> tuple[int | None, str | None]:
    cur = await conn.execute("SELECT epoch, holder FROM decider WHERE id = 1")
    row = await cur.fetchone()
    return (int(row[0]), row[1]) if row else (None, None)


async def _now(conn: Connection) -> float:
    cur = await conn.execute(f"SELECT {NOW}")
    row = await cur.fetchone()
    assert row is not None
    return float(row[0])


async def fence(conn: Connection, epoch: int | None) -> None:
    """First statement of every write of the alert state: Deposed unless `epoch` is the decider's; the
    row stays share-locked until the transaction ends, so no takeover commits in between."""
    if epoch is not None:
        cur = await conn.execute("SELECT 1 FROM decider WHERE id = 1 AND epoch = %s FOR SHARE", (epoch,))
        if await cur.fetchone():
            return
    raise Deposed("this replica is not the decider (any more): nothing was written; ask again")


# -- the inbox -------------------------------------------------------------------------------------


async def put(conn: Connection, kind: str, body: dict[str, Any], replica: str) -> int:
    cur = await conn.execute(f"INSERT INTO inbox (kind, body, replica, received) VALUES (%s, %s, %s, {NOW}) "
                             "RETURNING id", (kind, json.dumps(body, separators=(",", ":")), replica))
    row = await cur.fetchone()
    assert row is not None
    await conn.execute("SELECT pg_notify(%s, '')", (INBOX,))
    return int(row[0])


async def waiting(conn: Connection, *, limit: int) -> list[InboxItem]:
    cur = await conn.execute("SELECT id, kind, body, replica, received FROM inbox WHERE decided IS NULL "
                             "ORDER BY id LIMIT %s", (limit,))
    return [InboxItem(row[0], row[1], json.loads(row[2]), row[3], row[4]) for row in await cur.fetchall()]


async def decide(conn: Connection, decided: Sequence[tuple[int, str]], epoch: int) -> None:
    """Mark inbox rows decided with their results (JSON), in the decider's transaction."""
    ids, results = [i for i, _ in decided], [r for _, r in decided]
    cur = await conn.execute(f"UPDATE inbox SET decided = {NOW}, epoch = %s, result = r.result "
                             "FROM unnest(%s::bigint[], %s::text[]) AS r(id, result) "
                             "WHERE inbox.id = r.id AND inbox.decided IS NULL", (epoch, ids, results))
    if cur.rowcount != len(ids):
        raise LookupError(f"{len(ids) - cur.rowcount} inbox row(s) were decided already")
    await conn.execute("SELECT pg_notify(%s, '')", (DECIDED,))


async def results(conn: Connection, ids: Sequence[int]) -> dict[int, dict[str, Any]]:
    cur = await conn.execute("SELECT id, result FROM inbox WHERE id = ANY(%s::bigint[]) AND decided IS NOT NULL",
                             (list(ids),))
    return {row[0]: json.loads(row[1]) for row in await cur.fetchall()}


async def prune(conn: Connection) -> int:
    cur = await conn.execute(f"DELETE FROM inbox WHERE decided < {NOW} - %s", (INBOX_KEPT,))
    return cur.rowcount


async def backlog(conn: Connection) -> tuple[int, float | None]:
    """Inbox rows not decided yet, and when the oldest was received."""
    cur = await conn.execute("SELECT count(*), min(received) FROM inbox WHERE decided IS NULL")
    row = await cur.fetchone()
    assert row is not None
    return int(row[0]), row[1]


# -- wake-ups --------------------------------------------------------------------------------------


class Listener:
    """One connection LISTENing on `CHANNELS`; `wake[channel]()` for each notification. Connects again
    after a failure (every `retry` seconds), and wakes everything then: what was notified meanwhile is lost."""

    def __init__(self, connect: Callable[[], Any], messages: Messages, wake: Mapping[str, Callable[[], None]],
                 retry: float = 1.0) -> None:
        self._connect = connect
        self._messages = messages
        self._wake = wake
        self._retry = retry
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="alert-engine-listen")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _run(self) -> None:
        failing = False
        while True:
            try:
                conn: Connection = await self._connect()
                try:
                    for channel in self._wake:
                        await conn.execute(f"LISTEN {channel}")
                    if failing:
                        log.info("%s: listening for wake-ups again", self._messages.where)
                        failing = False
                    for wake in self._wake.values():
                        wake()
                    async for note in conn.notifies():
                        if (woken := self._wake.get(note.channel)) is not None:
                            woken()
                finally:
                    await conn.close()
            except (psycopg.Error, StorageError, OSError) as exc:
                if not failing:
                    log.warning("%s: not listening for wake-ups (polling meanwhile): %s", self._messages.where,
                                self._messages.text(exc))
                    failing = True
            await asyncio.sleep(self._retry)
