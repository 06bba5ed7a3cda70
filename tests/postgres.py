"""A throwaway PostgreSQL cluster for the tests: `initdb` and `pg_ctl` into a temp dir, listening on a
free port of 127.0.0.1 only, password authentication (so the tests see a DSN with a password, as operators
write them), fsync off (nothing here must survive the machine). initdb refuses to run as root: as root the
cluster belongs to an unprivileged user (`postgres`, else `nobody`), who owns its directory."""

from __future__ import annotations

import contextlib
import glob
import os
import pwd
import secrets
import shutil
import socket
import subprocess
import tempfile
from pathlib import Path

import psycopg

USER = "alert_engine"
SETTINGS = """
listen_addresses = '127.0.0.1'
port = {port}
unix_socket_directories = '{root}'
fsync = off
synchronous_commit = off
full_page_writes = off
shared_buffers = 16MB
max_connections = 60
"""
# Triggers that refuse writes as a full disk would, for rows where a condition holds (`refuse_writes`).
REFUSE_FUNCTION = """
CREATE OR REPLACE FUNCTION refuse_write() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN RAISE EXCEPTION '%', TG_ARGV[0] USING ERRCODE = 'disk_full'; END $$
"""


def find_bindir() -> str | None:
    """Where initdb and pg_ctl are: on PATH, `pg_config --bindir`, or Debian's /usr/lib/postgresql/N/bin."""
    candidates = []
    if found := shutil.which("pg_ctl"):
        candidates.append(os.path.dirname(os.path.realpath(found)))
    if pg_config := shutil.which("pg_config"):
        with contextlib.suppress(OSError, subprocess.CalledProcessError):
            candidates.append(subprocess.run([pg_config, "--bindir"], capture_output=True, text=True,
                                             check=True).stdout.strip())
    candidates += sorted(glob.glob("/usr/lib/postgresql/*/bin"), key=lambda d: int(d.split("/")[-2]), reverse=True)
    return next((d for d in candidates if all(os.access(os.path.join(d, b), os.X_OK) for b in ("initdb", "pg_ctl"))),
                None)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Cluster:
    """One cluster: `start`, `stop` (and start again), `create_database`, `dsn`; `destroy` at the end."""

    def __init__(self, bindir: str) -> None:
        self.bindir = bindir
        self.password = "pw-" + secrets.token_hex(12)  # what no log line, answer or message may show
        self.port = free_port()
        self.root = Path(tempfile.mkdtemp(prefix="alert-engine-pg-"))
        self.data = self.root / "data"
        self.log = self.root / "server.log"
        self.owner = None
        if os.geteuid() == 0:
            self.owner = "postgres" if _user_exists("postgres") else "nobody"
            shutil.chown(self.root, self.owner)
        pwfile = self.root / "pwfile"
        pwfile.write_text(self.password + "\n")
        if self.owner:
            shutil.chown(pwfile, self.owner)
        self._run("initdb", "-D", str(self.data), "-U", USER, f"--pwfile={pwfile}", "--auth=scram-sha-256",
                  "-E", "UTF8", "--locale=C")
        with (self.data / "postgresql.conf").open("a") as conf:
            conf.write(SETTINGS.format(port=self.port, root=self.root))

    def _run(self, program: str, *args: str) -> None:
        command = [os.path.join(self.bindir, program), *args]
        if self.owner:
            command = ["runuser", "-u", self.owner, "--", *command]
        done = subprocess.run(command, capture_output=True, text=True, timeout=120)
        if done.returncode:
            log = self.log.read_text(errors="replace")[-2000:] if self.log.exists() else ""
            raise RuntimeError(f"{program} failed ({done.returncode}): {done.stderr.strip()}\n{log}")

    def start(self) -> None:
        self._run("pg_ctl", "-D", str(self.data), "-l", str(self.log), "-w", "-t", "60", "start")

    def stop(self, mode: str = "fast") -> None:
        self._run("pg_ctl", "-D", str(self.data), "-m", mode, "-w", "-t", "60", "stop")

    def destroy(self) -> None:
        with contextlib.suppress(RuntimeError, subprocess.TimeoutExpired):
            self.stop("immediate")
        shutil.rmtree(self.root, ignore_errors=True)

    def dsn(self, dbname: str, *, password: str | None = None) -> str:
        return f"postgresql://{USER}:{password or self.password}@127.0.0.1:{self.port}/{dbname}"

    def execute(self, sql: str, dbname: str = "postgres") -> None:
        with psycopg.connect(self.dsn(dbname), autocommit=True) as conn:
            conn.execute(sql)

    def create_database(self, name: str, *, template: str | None = None, encoding: str = "UTF8") -> str:
        """A new database (a copy of `template`, if given); its DSN."""
        source = f"TEMPLATE {template}" if template else f"TEMPLATE template0 ENCODING '{encoding}' LOCALE 'C'"
        self.execute(f"CREATE DATABASE {name} {source}")
        return self.dsn(name)

    def drop_database(self, name: str) -> None:
        self.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


def _user_exists(name: str) -> bool:
    try:
        pwd.getpwnam(name)
    except KeyError:
        return False
    return True


def refuse_writes(dsn: str, when: str = "true", *, tables: tuple[str, ...] = ("outbox", "history", "dead_letters"),
                  message: str = "database or disk is full (test)") -> None:
    """The PostgreSQL twin of tests.conftest.refuse_writes: every write to `tables` where `when` holds (an
    SQL condition naming the row `ROW`) fails as on a full disk, from a connection of its own."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(REFUSE_FUNCTION)
        for table in tables:
            for op, row in (("INSERT", "NEW"), ("UPDATE", "NEW"), ("DELETE", "OLD")):
                condition = when.replace("ROW.", f"{row}.")
                conn.execute(f"CREATE TRIGGER refuse_{op.lower()}_{table} BEFORE {op} ON {table} FOR EACH ROW "
                             f"WHEN ({condition}) EXECUTE FUNCTION refuse_write('{message}')")


def accept_writes(dsn: str, *, tables: tuple[str, ...] = ("outbox", "history", "dead_letters")) -> None:
    with psycopg.connect(dsn, autocommit=True) as conn:
        for table in tables:
            for op in ("insert", "update", "delete"):
                conn.execute(f"DROP TRIGGER IF EXISTS refuse_{op}_{table} ON {table}")
