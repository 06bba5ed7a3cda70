"""The PostgreSQL store's sessions: connection strings as messages show them, the database's lock, the
writer that group-commits every write, and `migrate_database` for `alert-engine migrate`.

Any number of replicas share a database: each one's writer session holds the database's advisory lock
shared (`pg_try_advisory_lock_shared`), and a migration takes it exclusively, so a migration never runs
under a replica, nor a replica during a migration (`DatabaseInUse` names who holds it). PostgreSQL frees
the lock when the session ends: at once when the process exits, however it exits; over a network, once
the server notices the connection is gone (TCP keepalives, `KEEPALIVES`).

The writer runs the writes as SQLite's store does: the writes queued while a transaction commits go into
the next one, each in its own savepoint (one failing write fails alone). When its connection breaks
every write fails with `StorageError`, and the next write connects again: it runs only once the new
session holds the lock, so no write ever runs on a session without it.

Messages name the database as postgresql://USER@HOST:PORT/DATABASE (`describe`) and never show the
DSN's password (`dsn_secrets`, masked like the service keys).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

import psycopg
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from engine.rules.ruleset import mask_key
from engine.store import StorageError
from engine.store.group_commit import settle
from engine.store.postgres_schema import DATABASE_LOCK, LOCK_CLASS, SCHEMA_VERSION, migrate, server_encoding

log = logging.getLogger("alert_engine.store")

CONNECT_TIMEOUT = "5"  # seconds, unless the DSN says otherwise
# unless the DSN says otherwise: a server or network gone silent fails the connection within ~10 s
# (tcp_user_timeout: unacknowledged data; keepalives: an idle connection), instead of hanging a write
KEEPALIVES = {"keepalives": "1", "keepalives_idle": "5", "keepalives_interval": "2", "keepalives_count": "3",
              "tcp_user_timeout": "10000"}

T = TypeVar("T")
Connection = psycopg.AsyncConnection[Any]
Op = Callable[[Connection], Awaitable[Any]]


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


class Messages:
    """Driver errors as the store's messages: the first line, the DSN's password masked."""

    def __init__(self, where: str, secret: list[str]) -> None:
        self.where = where
        self._secret = secret

    def text(self, exc: BaseException) -> str:
        text = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        for value in self._secret:
            text = text.replace(value, mask_key(value))
        return text

    def error(self, exc: BaseException) -> StorageError:
        """What a failed read or write raises: `database: ...`."""
        return StorageError(f"database: {self.text(exc)}")

    async def naming(self, work: Awaitable[T]) -> T:
        """`work`, with a driver error turned into StorageError naming the database (for opening)."""
        try:
            return await work
        except psycopg.Error as exc:
            raise StorageError(f"database {self.where}: {self.text(exc)}") from None


def connection_info(dsn: str, application_name: str) -> str:
    """The DSN with our defaults for what it does not set: who we are, and how long to try connecting."""
    given = conninfo_to_dict(dsn)
    defaults = {"application_name": application_name[:63], "connect_timeout": CONNECT_TIMEOUT, **KEEPALIVES}
    return make_conninfo(dsn, **{k: v for k, v in defaults.items() if k not in given})


async def connect(conninfo: str, messages: Messages) -> Connection:
    """A connection in autocommit mode to a database in UTF-8; StorageError when there is none."""
    try:
        conn = await psycopg.AsyncConnection.connect(conninfo, autocommit=True)
    except psycopg.Error as exc:
        raise StorageError(f"cannot connect to {messages.where}: {messages.text(exc)}") from None
    encoding = server_encoding(conn)
    if encoding != "UTF8":
        await conn.close()
        raise StorageError(f"database {messages.where} has encoding {encoding}: alert-engine needs UTF8 "
                           "(CREATE DATABASE ... ENCODING 'UTF8')")
    return conn


async def take_lock(conn: Connection, where: str, *, shared: bool) -> None:
    """The database's lock for this session: shared by the replicas, exclusive for a migration; or
    DatabaseInUse naming who holds it the other way."""
    function = "pg_try_advisory_lock_shared" if shared else "pg_try_advisory_lock"
    cur = await conn.execute(f"SELECT {function}(%s::int, %s::int)", (LOCK_CLASS, DATABASE_LOCK))
    row = await cur.fetchone()
    if row and row[0]:
        return
    cur = await conn.execute(
        "SELECT DISTINCT a.application_name FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid "
        "WHERE l.locktype = 'advisory' AND l.granted AND l.classid = %s::int::oid AND l.objid = %s::int::oid "
        "AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database()) ORDER BY 1",
        (LOCK_CLASS, DATABASE_LOCK))
    holders = [name for name, in await cur.fetchall() if name]
    who = f" ({', '.join(holders)})" if holders else ""
    if shared:
        raise DatabaseInUse(f"database {where} is being migrated{who}")
    raise DatabaseInUse(f"database {where} is in use by alert-engine{who}: stop every replica to migrate it")


async def migrate_database(dsn: str) -> tuple[str, int, int]:
    """Bring the database to this code's schema version: (where, version before, version after). Refuses
    (DatabaseInUse) while an alert-engine runs on it; SchemaMismatch for a newer database."""
    messages = Messages(describe(dsn), dsn_secrets(dsn))
    conn = await connect(connection_info(dsn, "alert-engine migrate"), messages)
    try:
        await messages.naming(take_lock(conn, messages.where, shared=False))
        before, after = await messages.naming(migrate(conn))
    finally:
        await conn.close()  # the lock goes with the session
    if before > SCHEMA_VERSION:
        raise SchemaMismatch(messages.where, before)
    return messages.where, before, after


@dataclass
class _Write:
    op: Op
    future: asyncio.Future[Any]
    then: Callable[[Any], None] | None = field(default=None)  # run with op's value once its transaction committed


class Writer:
    """Runs every write on one connection, in groups (module docstring). `connect()` makes a connection
    that holds the lock (shared); `problem` is the last write's failure until a write succeeds."""

    def __init__(self, conn: Connection, connect: Callable[[], Awaitable[Connection]], messages: Messages) -> None:
        self._conn: Connection | None = conn
        self._connect = connect
        self._messages = messages
        self._writes: list[_Write] = []
        self._flusher: asyncio.Task[None] | None = None
        self.problem: str | None = None
        self.uncertain = False  # the last batch failed at COMMIT with the connection: it may have committed
        self.reconnects = 0  # sessions made again after the connection broke
        self.commits = 0  # transactions committed: group commit makes this lower than the writes

    async def write(self, op: Op, then: Callable[[Any], None] | None = None) -> Any:
        """`op`'s value once its transaction committed (and `then` ran with it); StorageError when the
        database refused it or the commit failed, whatever `op` raised when it failed on its own."""
        loop = asyncio.get_running_loop()
        write = _Write(op, loop.create_future(), then)
        self._writes.append(write)
        if self._flusher is None or self._flusher.done():
            self._flusher = loop.create_task(self._flush())
        return await write.future

    async def close(self, last: Op) -> None:
        """Finish the queued writes, run `last` (best effort), and end the session."""
        if self._flusher is not None:
            await self._flusher
        if self._conn is None:
            return
        if not self._conn.closed:
            try:
                await last(self._conn)
            except psycopg.Error as exc:
                log.warning("%s: %s", self._messages.where, self._messages.text(exc))
        await self._conn.close()
        self._conn = None

    async def _flush(self) -> None:
        while self._writes:
            batch, self._writes = self._writes, []
            await settle(batch, self._commit(batch))

    async def _commit(self, batch: list[_Write]) -> list[tuple[bool, Any]]:
        """The batch in one transaction, each write in its own savepoint."""
        outcomes: list[tuple[bool, Any]] = []
        problem = None
        self.uncertain = committing = False
        try:
            conn = await self._connection()
            async with conn.transaction():
                for write in batch:
                    try:
                        async with conn.transaction():
                            value = await write.op(conn)
                    except psycopg.Error as exc:
                        if conn.closed:
                            raise
                        failed = self._messages.error(exc)
                        problem = str(failed)
                        outcomes.append((False, failed))
                    except Exception as exc:
                        outcomes.append((False, exc))
                    else:
                        outcomes.append((True, value))
                committing = True
            self.commits += 1
        except (psycopg.Error, StorageError) as exc:
            self.uncertain = committing and isinstance(exc, psycopg.OperationalError)
            self.problem = str(exc if isinstance(exc, StorageError) else self._messages.error(exc))
            return [(False, StorageError(self.problem))] * len(batch)
        self.problem = problem
        for write, (ok, value) in zip(batch, outcomes, strict=True):
            if ok and write.then is not None:
                write.then(value)
        return outcomes

    async def _connection(self) -> Connection:
        """The connection; a new one, holding the lock again, when it broke."""
        if self._conn is not None and not self._conn.closed:
            return self._conn
        if self._conn is not None:
            await self._conn.close()
            self._conn = None
            log.warning("%s: the connection broke; connecting again", self._messages.where)
        self._conn = await self._connect()
        self.reconnects += 1
        log.info("%s: connected again, holding its lock", self._messages.where)
        return self._conn
