"""Start-up failures of the daemon as a subprocess: one daemon per state dir (a second one, even a dry run,
exits 2 naming the first one's pid and touches nothing), a port in use, a database that cannot be opened:
each one line on stderr and exit 2, never a traceback."""

from __future__ import annotations

import socket
from pathlib import Path

import yaml

from tests.e2e.conftest import KEY_ENV, Daemon, free_port, run_cli

RULES = """\
services:
  sre: {service_key: "${PD_SRE}"}
rules:
  - name: disk
    match: {field: type, equals: disk}
    services: [sre]
    group_by: [host]
    resolve: {after: 1s}
"""


def config_file(tmp_path: Path, name: str, **settings: object) -> Path:
    rules = tmp_path / "rules"
    rules.mkdir(exist_ok=True)
    (rules / "rules.yaml").write_text(RULES)
    config = {"listen": f"127.0.0.1:{free_port()}", "rules": [str(rules)], "state_dir": str(tmp_path / "state"),
              "log": {"format": "json"}, **settings}
    path = tmp_path / name
    path.write_text(yaml.safe_dump(config))
    return path


async def test_a_second_daemon_on_a_state_dir_in_use_exits_2_naming_the_pid_and_changes_nothing(
        start_daemon, fake_pagerduty, tmp_path):
    daemon: Daemon = await start_daemon(RULES)
    _, answer = await daemon.post_events({"type": "disk", "host": "a"})
    assert answer["notifications"] == 1
    await fake_pagerduty.wait_for(2)  # the trigger, and its resolve a second later
    await daemon.poll("/v1/notifications", lambda a: len(a["notifications"]) == 2)
    # the same config on another port, as a daemon and as a dry run
    second = yaml.safe_load(daemon.config_file.read_text())
    second["listen"] = f"127.0.0.1:{free_port()}"
    second_file = tmp_path / "second.yaml"
    second_file.write_text(yaml.safe_dump(second))
    for args in ((), ("--dry-run",)):
        refused = await run_cli("run", "--config", str(second_file), *args, env=KEY_ENV, timeout=20)
        assert refused.returncode == 2, refused
        assert refused.stderr.splitlines() == [
            f"alert-engine: not started: state dir {tmp_path / 'state'} is in use by pid {daemon.proc.pid}"]
    # the first one serves on, its history has nothing more than it wrote itself
    _, history = await daemon.request("GET", "/v1/notifications")
    assert sorted(h["action"] for h in history["notifications"]) == ["resolve", "trigger"]
    assert len(fake_pagerduty.requests) == 2
    # the lock goes with its process, even on kill -9
    await daemon.kill()
    await daemon.start()
    assert (tmp_path / "state" / "lock").read_text() == f"{daemon.proc.pid}\n"
    assert await daemon.stop() == 0


async def test_a_port_in_use_is_one_line_and_exit_2_before_the_database_is_touched(tmp_path):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        config = config_file(tmp_path, "engine.yaml", listen=f"127.0.0.1:{port}")
        refused = await run_cli("run", "--config", str(config), env=KEY_ENV, timeout=20)
    assert refused.returncode == 2
    assert refused.stderr.splitlines() == [
        f"alert-engine: not started: cannot listen on 127.0.0.1:{port}: Address already in use"]
    assert not (tmp_path / "state" / "alert-engine.db").exists()


async def test_a_database_that_cannot_be_opened_is_one_line_and_exit_2(tmp_path):
    config = config_file(tmp_path, "engine.yaml")
    (tmp_path / "state").mkdir()
    database = tmp_path / "state" / "alert-engine.db"
    database.write_bytes(b"this is not a database, whatever its name says\n" * 100)
    refused = await run_cli("run", "--config", str(config), env=KEY_ENV, timeout=20)
    assert refused.returncode == 2
    assert refused.stderr.splitlines() == [
        f"alert-engine: not started: cannot open the database {database}: file is not a database"]
