"""The daemon on PostgreSQL (storage.backend: postgresql), as a subprocess on a cluster of the test's own:
`alert-engine migrate` first (the daemon refuses a database at another schema version, and says what to
run; migrate refuses while a replica runs), state kept across a restart, 503 while the server is stopped and back to
work when it returns, the watchdog pinging all along. The DSN's password shows nowhere."""

from __future__ import annotations

import socket

import yaml

from engine.store.postgres_schema import SCHEMA_VERSION
from tests.e2e.conftest import KEY_ENV, free_port, run_cli

RULES = """\
services:
  pay: {service_key: "${PD_PAY}"}
rules:
  - name: deploys
    match: {field: kind, equals: deploy}
    services: [pay]
    group_by: [host]
    throttle: 1h
"""


async def test_a_daemon_on_postgresql_pages_keeps_its_state_and_rides_out_the_server_stopping(
        start_daemon, fake_pagerduty, own_postgres, tmp_path):
    database = own_postgres.create_database("fresh")
    where = f"postgresql://alert_engine@127.0.0.1:{own_postgres.port}/fresh"
    dsn_file = tmp_path / "dsn"
    dsn_file.write_text(f"# alert-engine's database\n{database}\n")
    storage = {"backend": "postgresql", "dsn_file": str(dsn_file)}
    config = tmp_path / "migrate.yaml"
    config.write_text(yaml.safe_dump({"listen": f"127.0.0.1:{free_port()}", "rules": [str(tmp_path / "rules")],
                                      "storage": storage}))
    (tmp_path / "rules").mkdir()
    (tmp_path / "rules" / "rules.yaml").write_text(RULES)
    outputs = []

    # a new database: the daemon says what to run, migrate does it once
    refused = await run_cli("run", "--config", str(config), env=KEY_ENV)
    assert refused.returncode == 2
    assert refused.stderr.splitlines() == [
        f"alert-engine: not started: database {where} is at schema version 0; this alert-engine needs version "
        f"{SCHEMA_VERSION}: "
        f"run `alert-engine migrate --config {config}`"]
    migrated = await run_cli("migrate", "--config", str(config))
    assert (migrated.returncode, migrated.stdout) == (0, f"{where}: at schema version {SCHEMA_VERSION} (was 0)\n")
    again = await run_cli("migrate", "--config", str(config))
    assert (again.returncode, again.stdout) == (0, f"{where}: at schema version {SCHEMA_VERSION}, nothing to do\n")
    outputs += [refused, migrated, again]

    daemon = await start_daemon(RULES, storage=storage, state_dir=None, env={"WATCHDOG_USEC": "400000"})
    status, answer = await daemon.post_events({"kind": "deploy", "host": "a"})
    assert (status, answer["notifications"]) == (202, 1)
    await fake_pagerduty.wait_for(1)

    # migrate waits for every replica to stop, and names them
    busy = await run_cli("migrate", "--config", str(config))
    assert busy.returncode == 1, busy
    assert f"is in use by alert-engine (alert-engine/{socket.gethostname()}:{daemon.port}/" in busy.stderr, busy.stderr
    assert "stop every replica to migrate it" in busy.stderr
    outputs += [busy]

    # a restart keeps the state: the throttle holds
    assert await daemon.stop() == 0
    await daemon.start()
    status, answer = await daemon.post_events({"kind": "deploy", "host": "a"})
    assert (status, answer["notifications"]) == (202, 0)

    # the server stops: 503 and not ready, and nothing of the refused request is kept; the watchdog still
    # pings (a restart could not start without the server, this daemon takes it back by itself)
    own_postgres.stop()
    status, answer = await daemon.post_events({"kind": "deploy", "host": "b"})
    assert status == 503 and "database" in answer["error"], answer
    ready = await daemon.poll("/readyz", lambda r: r.get("status") == "not ready")
    assert any(p.startswith("storage: ") for p in ready["problems"]), ready
    daemon.drain_messages()
    await daemon.wait_message("WATCHDOG=1", timeout=3)
    own_postgres.start()
    await daemon.poll("/readyz", lambda r: r.get("status") == "ready", timeout=20)
    status, answer = await daemon.post_events([{"kind": "deploy", "host": "b"}, {"kind": "deploy", "host": "a"}])
    assert (status, answer["notifications"]) == (202, 1)  # b as if never refused; a still throttled
    received = await fake_pagerduty.wait_for(2)
    assert [r.body["dedup_key"] for r in received] == ["deploys/a", "deploys/b"]
    await daemon.poll("/v1/notifications", lambda h: len(h["notifications"]) == 2)
    assert await daemon.stop() == 0

    shown = daemon.output() + "".join(run.stdout + run.stderr for run in outputs)
    assert "the connection broke" in daemon.output()
    assert own_postgres.password not in shown
