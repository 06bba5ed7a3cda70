"""The PostgreSQL schema: every version's migration, in order, and the one function that applies them.

`MIGRATIONS[n]` takes a database from schema version n to n + 1; `schema_migrations` records each one
applied, in the same transaction as the migration itself, so a migration is all there or not at all.
Migrations run only through `alert-engine migrate --config FILE` (`migrate`): a daemon finding a database
at another version does not start, and says which command to run. Schema changes are an operator's act,
and the daemon's database role needs no right to make them.

Times are seconds since the epoch (`double precision`, as the code passes them). Dedup keys are `bytea`
(UTF-8): a key is made from event fields and may hold any character, NUL too, which `text` cannot.

A chain is every notification of one (service, dedup key), oldest first; `chains` holds one row per
chain: its head (the oldest notification, the only one delivery may send) and the head's due time, and
the lease on it (`lease_owner`, `lease_token`) while a process delivers it. Claims lock chain rows with
`FOR UPDATE SKIP LOCKED`; every write that ends a delivery checks the lease token in its transaction.
A lease runs out at `lease_until` (the database's clock) unless its replica's heartbeat extends it.

Shared by the replicas (engine/store/postgres_cluster.py): `decider`, the one row of the decider's lease
and epoch; `replicas`, their heartbeats; `inbox`, what replicas that do not decide hand to the decider;
`pacing`, the pace of each integration key (by digest, never the key). `epoch` of outbox, history and
dead_letters is the decider's epoch that wrote a notification (0: written without deciding, like a test
page), so that no write of a deposed decider can pass unseen.
"""

from __future__ import annotations

import psycopg

SCHEMA_VERSION_TABLE = "schema_migrations"

# Advisory lock keys (classid, objid): replicas hold it shared, a migration exclusively, so a migration
# never runs under a daemon.
LOCK_CLASS = 0x616C6572  # "aler"
DATABASE_LOCK = 1

MIGRATIONS: tuple[str, ...] = (
    # 0 -> 1: the outbox and its chains, history, dead letters, alert state, silences
    """
    CREATE TABLE schema_migrations (version integer PRIMARY KEY, applied timestamptz NOT NULL DEFAULT now());
    CREATE SEQUENCE outbox_ids;
    CREATE TABLE outbox (
        id bigint PRIMARY KEY DEFAULT nextval('outbox_ids'),
        rule text NOT NULL, service text NOT NULL, api text NOT NULL, action text NOT NULL,
        dedup_key bytea NOT NULL, body text NOT NULL,
        created double precision NOT NULL, due double precision NOT NULL,
        attempts integer NOT NULL DEFAULT 0, collapsed integer NOT NULL DEFAULT 0,
        last_status integer, last_response text NOT NULL DEFAULT ''
    );
    ALTER SEQUENCE outbox_ids OWNED BY outbox.id;
    CREATE INDEX outbox_chain ON outbox (service, dedup_key, id);
    CREATE SEQUENCE lease_tokens;
    CREATE TABLE chains (
        service text NOT NULL, dedup_key bytea NOT NULL,
        head bigint NOT NULL, due double precision NOT NULL,
        lease_owner text, lease_token bigint,
        PRIMARY KEY (service, dedup_key)
    );
    CREATE INDEX chains_due ON chains (due, head);
    CREATE TABLE history (
        id bigint PRIMARY KEY,
        rule text NOT NULL, service text NOT NULL, api text NOT NULL, action text NOT NULL,
        dedup_key bytea NOT NULL, body text NOT NULL, outcome text NOT NULL,
        attempts integer NOT NULL, collapsed integer NOT NULL,
        created double precision NOT NULL, sent double precision NOT NULL, status integer, response text NOT NULL
    );
    CREATE INDEX history_sent ON history (sent);
    CREATE TABLE dead_letters (
        id bigint PRIMARY KEY,
        rule text NOT NULL, service text NOT NULL, api text NOT NULL, action text NOT NULL,
        dedup_key bytea NOT NULL, body text NOT NULL, reason text NOT NULL,
        attempts integer NOT NULL, collapsed integer NOT NULL,
        created double precision NOT NULL, failed double precision NOT NULL, status integer, response text NOT NULL
    );
    CREATE TABLE alert_state (rule text NOT NULL, key bytea NOT NULL, data text NOT NULL, PRIMARY KEY (rule, key));
    CREATE TABLE silences (id bigint PRIMARY KEY, data text NOT NULL);
    CREATE TABLE probe (id integer PRIMARY KEY CHECK (id = 1), at double precision NOT NULL, room bytea);
    ALTER TABLE probe ALTER COLUMN room SET STORAGE EXTERNAL;  -- not compressed: it takes the room it says
    """,
    # 1 -> 2: several replicas on one database (docs/ha.md): delivery leases that expire, the decider's
    # lease and epoch, the replicas' heartbeats, the inbox, and pacing per integration key
    """
    ALTER TABLE chains ADD COLUMN lease_until double precision;
    ALTER TABLE outbox ADD COLUMN epoch bigint NOT NULL DEFAULT 0;
    ALTER TABLE history ADD COLUMN epoch bigint NOT NULL DEFAULT 0;
    ALTER TABLE dead_letters ADD COLUMN epoch bigint NOT NULL DEFAULT 0;
    CREATE TABLE decider (
        id integer PRIMARY KEY CHECK (id = 1),
        epoch bigint NOT NULL, holder text NOT NULL, backend integer NOT NULL,
        since double precision NOT NULL, until double precision NOT NULL
    );
    CREATE TABLE replicas (
        id text PRIMARY KEY, address text NOT NULL, session text NOT NULL,
        started double precision NOT NULL, heartbeat double precision NOT NULL, ruleset text NOT NULL
    );
    CREATE TABLE inbox (
        id bigserial PRIMARY KEY, kind text NOT NULL, body text NOT NULL, replica text NOT NULL,
        received double precision NOT NULL,
        decided double precision, epoch bigint, result text
    );
    CREATE INDEX inbox_waiting ON inbox (id) WHERE decided IS NULL;
    CREATE INDEX inbox_decided ON inbox (decided) WHERE decided IS NOT NULL;
    CREATE TABLE pacing (key text PRIMARY KEY, tat double precision NOT NULL);
    """,
)
SCHEMA_VERSION = len(MIGRATIONS)


async def schema_version(conn: psycopg.AsyncConnection) -> int:
    """The version the database is at: 0 for one alert-engine never migrated."""
    cur = await conn.execute("SELECT to_regclass(%s) IS NOT NULL", (SCHEMA_VERSION_TABLE,))
    row = await cur.fetchone()
    if not row or not row[0]:
        return 0
    cur = await conn.execute(f"SELECT coalesce(max(version), 0) FROM {SCHEMA_VERSION_TABLE}")
    row = await cur.fetchone()
    return int(row[0]) if row else 0


def server_encoding(conn: psycopg.AsyncConnection) -> str:
    return conn.info.parameter_status("server_encoding") or ""


async def migrate(conn: psycopg.AsyncConnection) -> tuple[int, int]:
    """Apply every migration the database lacks, each in its own transaction; (version before, after).

    `conn` is in autocommit mode and holds the database lock. A database at a newer version than this
    code knows is left alone (before == after > SCHEMA_VERSION)."""
    before = await schema_version(conn)
    version = before
    while version < SCHEMA_VERSION:
        async with conn.transaction():
            await conn.execute(MIGRATIONS[version])
            await conn.execute(f"INSERT INTO {SCHEMA_VERSION_TABLE} (version) VALUES (%s)", (version + 1,))
        version += 1
    return before, version
