"""The daemon as a real subprocess: started on a config of the test's making, awaited through its own
sd_notify messages (a real NOTIFY_SOCKET), sent real signals, its output kept for inspection."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import sys
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml

from tests.conftest import FakePagerDuty, service_key

ALERT_ENGINE = str(Path(sys.executable).with_name("alert-engine"))
# what the daemon's rules read their keys from: ${PD_PAY} and so on
KEY_ENV = {f"PD_{name.upper()}": service_key(name) for name in ("pay", "sre", "ops", "data")}
# the CLI's own settings, never inherited from whoever runs the tests
CLI_SETTINGS = ("ALERT_ENGINE_API", "ALERT_ENGINE_TOKEN", "ALERT_ENGINE_CONFIG")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass(frozen=True)
class CliRun:
    """One finished `alert-engine` command: its arguments, exit status and output."""

    args: tuple[str, ...]
    returncode: int
    stdout: str
    stderr: str


async def run_cli(*args: str, env: dict[str, str] | None = None, timeout: float = 30) -> CliRun:
    """Run `alert-engine ARGS` to its end. $ALERT_ENGINE_API, _TOKEN and _CONFIG come only from `env`."""
    inherited = {k: v for k, v in os.environ.items() if k not in CLI_SETTINGS}
    proc = await asyncio.create_subprocess_exec(
        ALERT_ENGINE, *args, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        env={**inherited, **(env or {})})
    try:
        out, err = await asyncio.wait_for(proc.communicate(), timeout)
    except TimeoutError:
        proc.kill()
        await proc.wait()
        raise AssertionError(f"alert-engine {' '.join(args)} did not finish within {timeout:g}s") from None
    assert proc.returncode is not None
    return CliRun(args, proc.returncode, out.decode(errors="replace"), err.decode(errors="replace"))


class Daemon:
    """One `alert-engine run` subprocess and its HTTP API."""

    def __init__(self, tmp: Path, config: dict[str, Any], env: dict[str, str], args: tuple[str, ...]) -> None:
        self.tmp = tmp
        self.config_file = tmp / "engine.yaml"
        self.config_file.write_text(yaml.safe_dump(config))
        self.port = int(config["listen"].rsplit(":", 1)[1])
        self.url = f"http://127.0.0.1:{self.port}"
        self.env = env
        self.args = args
        self.proc: asyncio.subprocess.Process | None = None
        self.outputs: list[Path] = []
        self.notify_path = tmp / f"notify-{id(self)}.sock"
        self.notify_sock: socket.socket | None = None
        self.messages: list[str] = []

    async def start(self) -> None:
        """Start the process and return once it said READY=1 (or fail with what it printed)."""
        if self.notify_sock is None:
            self.notify_sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
            self.notify_sock.bind(str(self.notify_path))
            self.notify_sock.setblocking(False)
        n = len(self.outputs)
        out, err = self.tmp / f"stdout-{n}.txt", self.tmp / f"stderr-{n}.txt"
        self.outputs += [out, err]
        env = {**os.environ, **self.env, "NOTIFY_SOCKET": str(self.notify_path)}
        # a dry run's deliveries are read from stdout as they come
        stdout = asyncio.subprocess.PIPE if "--dry-run" in self.args else out.open("wb")
        self.proc = await asyncio.create_subprocess_exec(
            ALERT_ENGINE, "run", "--config", str(self.config_file), *self.args,
            stdout=stdout, stderr=err.open("wb"), env=env)
        await self.wait_message("READY=1", timeout=30)

    async def wait_message(self, text: str, timeout: float = 15) -> str:
        """Await the next sd_notify datagram containing `text` (or the process dying first)."""
        loop = asyncio.get_running_loop()
        assert self.notify_sock is not None and self.proc is not None

        async def receive() -> str:
            while True:
                data = (await loop.sock_recv(self.notify_sock, 4096)).decode()
                self.messages.append(data)
                if text in data:
                    return data

        receiving = asyncio.ensure_future(receive())
        exiting = asyncio.ensure_future(self.proc.wait())
        done, _ = await asyncio.wait({receiving, exiting}, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
        receiving.cancel()
        if receiving in done and not receiving.cancelled():
            exiting.cancel()
            return receiving.result()
        exiting.cancel()
        raise AssertionError(f"no {text!r} from the daemon (exit: {self.proc.returncode}); "
                             f"stderr:\n{self.output()[-3000:]}")

    def drain_messages(self) -> list[str]:
        """Every sd_notify message received so far, including those nobody awaited."""
        assert self.notify_sock is not None
        while True:
            try:
                self.messages.append(self.notify_sock.recv(4096).decode())
            except BlockingIOError:
                return self.messages

    def send_signal(self, sig: int) -> None:
        assert self.proc is not None
        self.proc.send_signal(sig)

    async def stop(self, sig: int = signal.SIGTERM, timeout: float = 30) -> int:
        assert self.proc is not None
        if self.proc.returncode is None:
            self.proc.send_signal(sig)
        return await asyncio.wait_for(self.proc.wait(), timeout)

    async def kill(self) -> None:
        assert self.proc is not None
        self.proc.kill()
        await self.proc.wait()

    def output(self) -> str:
        return "".join(p.read_text(errors="replace") for p in self.outputs if p.exists())

    async def request(self, method: str, path: str, *, token: str | None = None, **kwargs: Any
                      ) -> tuple[int, Any]:
        headers = kwargs.pop("headers", {})
        if token:
            headers["Authorization"] = f"Bearer {token}"
        async with aiohttp.ClientSession() as session, session.request(
                method, self.url + path, headers=headers, **kwargs) as response:
            text = await response.text()
            try:
                return response.status, json.loads(text)
            except ValueError:
                return response.status, text

    async def poll(self, path: str, predicate: Callable[[Any], bool], timeout: float = 10,
                   token: str | None = None) -> Any:
        """GET `path` until `predicate(answer)` holds. For what the daemon records after PagerDuty has
        answered (metrics, history): the fake sees the request first, so there is no earlier event."""
        async with asyncio.timeout(timeout):
            while True:
                _, answer = await self.request("GET", path, token=token)
                if predicate(answer):
                    return answer

    async def post_events(self, events: Any, **kwargs: Any) -> tuple[int, Any]:
        return await self.request("POST", "/v1/events", json=events, **kwargs)

    async def cli(self, command: str, *args: str, env: dict[str, str] | None = None) -> CliRun:
        """`alert-engine COMMAND --api URL ARGS...` against this daemon."""
        return await run_cli(command, "--api", self.url, *args, env=env)


@pytest.fixture
async def start_daemon(tmp_path: Path, fake_pagerduty: FakePagerDuty
                       ) -> AsyncIterator[Callable[..., Any]]:
    """`await start_daemon(rules_yaml, **config_overrides)` -> a running Daemon; stopped at the end. An
    override of None removes the key (state_dir=None, with PostgreSQL storage)."""
    daemons: list[Daemon] = []

    async def start(rules: str, *args: str, env: dict[str, str] | None = None, **overrides: Any) -> Daemon:
        rules_dir = tmp_path / "rules"
        rules_dir.mkdir(exist_ok=True)
        (rules_dir / "rules.yaml").write_text(rules)
        config: dict[str, Any] = {
            "listen": f"127.0.0.1:{free_port()}",
            "rules": [str(rules_dir)],
            "state_dir": str(tmp_path / "state"),
            "shutdown_grace": "5s",
            "log": {"format": "json", "level": "info"},
            "pagerduty": {"url": fake_pagerduty.url, "timeout": "2s", "rate_per_key": 0},
        }
        for key, value in overrides.items():
            if value is None:
                config.pop(key, None)
            elif isinstance(value, dict) and isinstance(config.get(key), dict):
                config[key] = {**config[key], **value}
            else:
                config[key] = value
        daemon = Daemon(tmp_path, config, {**KEY_ENV, **(env or {})}, args)
        daemons.append(daemon)
        await daemon.start()
        return daemon

    yield start
    for daemon in daemons:
        if daemon.proc is not None and daemon.proc.returncode is None:
            daemon.proc.kill()
            await daemon.proc.wait()
        if daemon.notify_sock is not None:
            daemon.notify_sock.close()
