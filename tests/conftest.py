"""Shared fixtures: a fake PagerDuty on 127.0.0.1, a maker of Notification objects, a tmpfs to fill, a
database file that refuses writes, and one written by an older version; a throwaway PostgreSQL cluster
with a database per test."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import sqlite3
import subprocess
import time
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from engine.cluster import Member
from engine.render import Notification
from engine.store import Store
from engine.store.postgres_session import migrate_database
from tests.postgres import Cluster, find_bindir

V2_PATH = "/v2/enqueue"
V1_PATH = "/generic/2010-04-15/create_event.json"


@dataclass(frozen=True)
class Reply:
    """One scripted answer: status, JSON (or text) body, headers, a delay before answering, and the
    dedup key (v2 `dedup_key`, v1 `incident_key`) of the requests it is for (None: any request)."""

    status: int
    body: Any = None
    headers: dict[str, str] = field(default_factory=dict)
    delay: float = 0.0
    dedup_key: str | None = None


@dataclass
class Received:
    """One request the fake got. `at` is time.monotonic() on arrival; `status` what it answered."""

    path: str
    headers: dict[str, str]
    body: Any  # parsed JSON, None when it was not JSON
    at: float
    status: int | None = None


INVALID_EVENT = {
    "status": "invalid event",
    "message": "Event object is invalid",
    "errors": ["'payload.summary' is missing or blank"],
}


class FakePagerDuty:
    """PagerDuty's Events API v2 and v1 endpoints, answering success unless told otherwise.

    `fake.url` is its base URL. Script answers with `fail_next` / `reply_next` (consumed in arrival
    order); `delay` holds every default answer that long; `wait_for(n)` awaits the n-th request.
    """

    def __init__(self) -> None:
        self.requests: list[Received] = []
        self.delay = 0.0
        self.in_flight = 0
        self.max_in_flight = 0
        self._script: list[Reply] = []
        self._changed = asyncio.Condition()
        self._closing = asyncio.Event()
        self._runner: web.AppRunner | None = None
        self.url = ""

    async def start(self) -> None:
        app = web.Application()
        app.router.add_post(V2_PATH, self._handle)
        app.router.add_post(V1_PATH, self._handle)
        self._runner = web.AppRunner(app, access_log=None, shutdown_timeout=1.0)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        host, port = self._runner.addresses[0][:2]
        self.url = f"http://{host}:{port}"

    async def close(self) -> None:
        self._closing.set()  # delayed answers stop waiting
        if self._runner is not None:
            await self._runner.cleanup()

    def reply_next(self, *replies: Reply) -> None:
        self._script.extend(replies)

    def fail_next(
        self,
        n: int = 1,
        status: int = 500,
        *,
        retry_after: str | None = None,
        delay: float = 0.0,
        body: Any = None,
        dedup_key: str | None = None,
    ) -> None:
        """The next n requests (for `dedup_key`, if given) get `status` after `delay` seconds."""
        if body is None:
            body = INVALID_EVENT if status == 400 else {"status": "error", "message": f"HTTP {status}"}
        headers = {"Retry-After": retry_after} if retry_after is not None else {}
        self.reply_next(*[Reply(status, body, headers, delay, dedup_key)] * n)

    async def wait_for(self, n: int, timeout: float = 5.0) -> list[Received]:
        """Wait until n requests have arrived; all requests so far."""
        async with self._changed:
            await asyncio.wait_for(self._changed.wait_for(lambda: len(self.requests) >= n), timeout)
        return list(self.requests)

    async def wait_until(self, predicate: Callable[[list[Received]], bool], timeout: float = 5.0) -> list[Received]:
        """Wait until `predicate(requests so far)` holds; all requests so far."""
        async with self._changed:
            await asyncio.wait_for(self._changed.wait_for(lambda: predicate(self.requests)), timeout)
        return list(self.requests)

    def bodies(self) -> list[Any]:
        return [r.body for r in self.requests]

    async def _handle(self, request: web.Request) -> web.Response:
        raw = await request.read()
        try:
            body = json.loads(raw)
        except ValueError:
            body = None
        received = Received(request.path, dict(request.headers), body, time.monotonic())
        reply = self._scripted(_dedup_key(body)) or self._success(request.path, body)
        async with self._changed:
            self.requests.append(received)
            self._changed.notify_all()
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            if reply.delay > 0:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._closing.wait(), reply.delay)
        finally:
            self.in_flight -= 1
        received.status = reply.status
        if isinstance(reply.body, str):
            return web.Response(status=reply.status, text=reply.body, headers=reply.headers)
        return web.json_response(reply.body, status=reply.status, headers=reply.headers)

    def _scripted(self, dedup_key: str | None) -> Reply | None:
        for i, reply in enumerate(self._script):
            if reply.dedup_key is None or reply.dedup_key == dedup_key:
                return self._script.pop(i)
        return None

    def _success(self, path: str, body: Any) -> Reply:
        key = _dedup_key(body)
        if path == V2_PATH:
            answer = {"status": "success", "message": "Event processed", "dedup_key": key}
            return Reply(202, answer, delay=self.delay)
        answer = {"status": "success", "message": "Event processed", "incident_key": key}
        return Reply(200, answer, delay=self.delay)


def _dedup_key(body: Any) -> str | None:
    return (body.get("dedup_key") or body.get("incident_key")) if isinstance(body, dict) else None


@pytest.fixture
async def fake_pagerduty() -> AsyncIterator[FakePagerDuty]:
    fake = FakePagerDuty()
    await fake.start()
    try:
        yield fake
    finally:
        await fake.close()


def service_key(service: str) -> str:
    """The (fake) integration key of a service in tests: long enough to mask, easy to spot if leaked."""
    return f"secret-key-of-{service}-".ljust(32, "0")  # 32 characters, like PagerDuty's keys


def make_notification(
    service: str = "db",
    dedup_key: str = "disk-full/host1",
    action: str = "trigger",
    api: str = "v2",
    rule: str = "disk-full",
    summary: str = "disk full on host1",
    details: dict[str, Any] | None = None,
) -> Notification:
    """A notification with a body shaped like render's (v2 or v1, trigger or resolve; no key)."""
    details = {"host": "host1"} if details is None else details
    trigger = action == "trigger"
    severity = "error" if trigger and api == "v2" else None
    if api == "v2":
        body: dict[str, Any] = {"event_action": action, "dedup_key": dedup_key}
        if trigger:
            body["payload"] = {"summary": summary, "source": "host1", "severity": severity,
                               "custom_details": details}
    else:
        body = {"event_type": action, "incident_key": dedup_key}
        if trigger:
            body.update(description=summary, details=details)
    return Notification(rule, service, api, action, dedup_key, body,
                        summary=summary if trigger else "", severity=severity)


REFUSED_TABLES = ("outbox", "history", "dead_letters")


def refuse_writes(database: Path, when: str = "1", *, tables: tuple[str, ...] = REFUSED_TABLES,
                  message: str = "database or disk is full (test)") -> None:
    """Make the SQLite file at `database` refuse every write to `tables` (the outbox, history and dead
    letters by default; for rows where `when` holds: an SQL condition naming the row `ROW`, e.g.
    `ROW.dedup_key = 'a'`), as a full disk or a read-only file would: through triggers, from a connection
    of its own, also under a running daemon. `accept_writes` ends it."""
    with contextlib.closing(sqlite3.connect(database, isolation_level=None)) as db:
        for table in tables:
            for op, row in (("INSERT", "NEW"), ("UPDATE", "NEW"), ("DELETE", "OLD")):
                condition = when.replace("ROW.", f"{row}.")
                db.execute(f"CREATE TRIGGER refuse_{op.lower()}_{table} BEFORE {op} ON {table} WHEN {condition} "
                           f"BEGIN SELECT RAISE(ABORT, '{message}'); END")


def accept_writes(database: Path, *, tables: tuple[str, ...] = REFUSED_TABLES) -> None:
    with contextlib.closing(sqlite3.connect(database, isolation_level=None)) as db:
        for table in tables:
            for op in ("insert", "update", "delete"):
                db.execute(f"DROP TRIGGER IF EXISTS refuse_{op}_{table}")


def write_old_database(path: Path, version: int, rows: list[tuple[Notification, str]]) -> None:
    """A database file as versions 1 and 2 wrote it: each notification's body with its key (the
    given one) in the outbox, in history and in the dead letters, and in the remains of a delivered
    row (deleted, as delivery did)."""
    db = sqlite3.connect(path, isolation_level=None)
    db.execute("PRAGMA journal_mode = WAL")
    db.execute("PRAGMA secure_delete = OFF")  # as most builds do: deleted rows stay readable in the file
    db.executescript(_VERSION_1_SCHEMA)
    if version == 2:
        db.execute("ALTER TABLE outbox ADD COLUMN head INTEGER NOT NULL DEFAULT 0")
    db.execute(f"PRAGMA user_version = {version}")
    columns = "rule, service, api, action, dedup_key, body"
    for i, (n, key) in enumerate(rows):
        body = json.dumps({"service_key" if n.api == "v1" else "routing_key": key, **n.body},
                          separators=(",", ":"), ensure_ascii=False)
        values = (n.rule, n.service, n.api, n.action, n.dedup_key, body)
        db.execute(f"INSERT INTO history (id, {columns}, outcome, attempts, collapsed, created, sent, status, "
                   "response) VALUES (?, ?, ?, ?, ?, ?, ?, 'delivered', 1, 0, 1, 2, 202, '')", (1000 + i, *values))
        db.execute(f"INSERT INTO dead_letters (id, {columns}, reason, attempts, collapsed, created, failed, "
                   "status, response) VALUES (?, ?, ?, ?, ?, ?, ?, 'x', 1, 0, 1, 2, 400, '')", (2000 + i, *values))
    for n, key in rows:  # queued: ids the history and dead letters do not hold (theirs came from the outbox)
        body = json.dumps({"service_key" if n.api == "v1" else "routing_key": key, **n.body},
                          separators=(",", ":"), ensure_ascii=False)
        values = (n.rule, n.service, n.api, n.action, n.dedup_key, body)
        db.execute(f"INSERT INTO outbox ({columns}, created, due) VALUES (?, ?, ?, ?, ?, ?, 1, 1)", values)
    db.execute(f"INSERT INTO outbox ({columns}, created, due) VALUES ('r', 's', 'v2', 'trigger', 'gone', ?, 1, 1)",
               (json.dumps({"routing_key": rows[0][1], "event_action": "trigger"}),))
    db.execute("DELETE FROM outbox WHERE dedup_key = 'gone'")
    if version == 2:
        db.execute("UPDATE outbox SET head = 1 WHERE id IN (SELECT MIN(id) FROM outbox GROUP BY service, dedup_key)")
    db.close()


_VERSION_1_SCHEMA = """
CREATE TABLE outbox (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    rule TEXT NOT NULL, service TEXT NOT NULL, api TEXT NOT NULL, action TEXT NOT NULL,
    dedup_key TEXT NOT NULL, body TEXT NOT NULL, created REAL NOT NULL, due REAL NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0, collapsed INTEGER NOT NULL DEFAULT 0,
    last_status INTEGER, last_response TEXT NOT NULL DEFAULT '');
CREATE TABLE history (
    id INTEGER PRIMARY KEY,
    rule TEXT NOT NULL, service TEXT NOT NULL, api TEXT NOT NULL, action TEXT NOT NULL,
    dedup_key TEXT NOT NULL, body TEXT NOT NULL, outcome TEXT NOT NULL,
    attempts INTEGER NOT NULL, collapsed INTEGER NOT NULL,
    created REAL NOT NULL, sent REAL NOT NULL, status INTEGER, response TEXT NOT NULL);
CREATE TABLE dead_letters (
    id INTEGER PRIMARY KEY,
    rule TEXT NOT NULL, service TEXT NOT NULL, api TEXT NOT NULL, action TEXT NOT NULL,
    dedup_key TEXT NOT NULL, body TEXT NOT NULL, reason TEXT NOT NULL,
    attempts INTEGER NOT NULL, collapsed INTEGER NOT NULL,
    created REAL NOT NULL, failed REAL NOT NULL, status INTEGER, response TEXT NOT NULL);
"""


@pytest.fixture
def notification() -> Callable[..., Notification]:
    """`notification(service=..., dedup_key=..., action=..., api=...)` -> a Notification."""
    return make_notification


STRICT_ENV = "ALERT_ENGINE_TESTS_STRICT"  # set by .ci/run: a test that would skip for a missing part fails


def skip_or_fail(reason: str) -> None:
    """Skip with a visible reason, or fail where every real part must be there (CI)."""
    if os.environ.get(STRICT_ENV):
        pytest.fail(f"{reason} (and {STRICT_ENV} is set: every test must run)")
    pytest.skip(reason)


class Tmpfs:
    """A small tmpfs of the test's own, to fill up and free again. (Linux refuses to remount a file
    system read-only while a file on it is open for writing, so a database cannot be made read-only
    under a running daemon this way.)"""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.filler = path / "filler"

    def fill(self) -> None:
        """Take every free byte: the next write that needs a new block fails with ENOSPC."""
        with self.filler.open("ab", buffering=0) as f:
            try:
                while True:
                    f.write(b"\0" * 4096)
            except OSError:
                pass

    def free(self) -> None:
        """Give back what `fill` took, and room to grow (resizing is allowed while files are open)."""
        self.filler.unlink(missing_ok=True)
        subprocess.run(["mount", "-o", "remount,size=64m", str(self.path)], check=True, capture_output=True)


@pytest.fixture
def tmpfs(tmp_path: Path) -> Iterator[Tmpfs]:
    """A 1 MiB tmpfs at tmp_path/tmpfs (needs root and mount(8)); unmounted at the end."""
    path = tmp_path / "tmpfs"
    path.mkdir()
    if os.geteuid() != 0 or shutil.which("mount") is None:
        skip_or_fail("mounting a tmpfs needs root and mount(8)")
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m,mode=0700", "tmpfs", str(path)],
                          capture_output=True, text=True)
    if done.returncode:
        skip_or_fail(f"cannot mount a tmpfs: {done.stderr.strip()}")
    try:
        yield Tmpfs(path)
    finally:
        subprocess.run(["umount", "-l", str(path)], capture_output=True)


@contextlib.contextmanager
def _cluster(migrated: str) -> Iterator[Cluster]:
    """A running cluster (tests/postgres.py) with the migrated database `migrated`; removed at the end."""
    bindir = find_bindir()
    if bindir is None:
        skip_or_fail("PostgreSQL's initdb and pg_ctl are not installed (Debian: apt-get install postgresql)")
    assert bindir is not None
    cluster = Cluster(bindir)
    try:
        cluster.start()
        cluster.create_database(migrated)
        asyncio.run(migrate_database(cluster.dsn(migrated)))
        yield cluster
    finally:
        cluster.destroy()


@pytest.fixture(scope="session")
def postgres() -> Iterator[Cluster]:
    """The test session's PostgreSQL cluster, for databases made by `new_database`."""
    with _cluster(MIGRATED) as cluster:
        yield cluster


MIGRATED = "alert_engine_migrated"  # the template of every test's database: the schema already in place


@pytest.fixture
def new_database(postgres: Cluster) -> Iterator[Callable[..., str]]:
    """`new_database(migrated=True)` -> the DSN of a new database (at the schema version, or empty),
    dropped at the end of the test."""
    made: list[str] = []

    def make(migrated: bool = True) -> str:
        name = f"test_{os.getpid()}_{len(made)}_{time.monotonic_ns()}"
        made.append(name)
        return postgres.create_database(name, template=MIGRATED if migrated else None)

    yield make
    for name in made:
        postgres.drop_database(name)


@pytest.fixture
def postgres_dsn(new_database: Callable[..., str]) -> str:
    """A database of the test's own, migrated."""
    return new_database()


@pytest.fixture
def own_postgres() -> Iterator[Cluster]:
    """A cluster of the test's own, to stop and start (a few seconds to make), with a migrated database
    `alert_engine`."""
    with _cluster("alert_engine") as cluster:
        yield cluster


async def lead(store: Store) -> int:
    """Make `store`'s replica the decider (a heartbeat, then `lead`), as the daemon does: writes of alert
    state are fenced by the decider's epoch. Its epoch."""
    view = await store.heartbeat(Member("test", "http://127.0.0.1", "sha"))
    assert view.leading and view.epoch is not None, view
    await store.lead(view.epoch)
    return view.epoch
