"""The daemon under test: one `alert-engine run` subprocess, awaited and reloaded through sd_notify.

Like systemd, the benchmark binds a datagram socket, passes it as `NOTIFY_SOCKET`, and reads the
daemon's `READY=1` / `RELOADING=1` messages from it; a reload is timed from SIGHUP to the `READY=1`
that follows `RELOADING=1`.
"""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import sys
import time
from pathlib import Path
from typing import Any

import aiohttp
import yaml

from bench.processes import cpu_seconds, memory_bytes

ALERT_ENGINE = str(Path(sys.executable).with_name("alert-engine"))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def engine_config(workdir: Path, rules: Path, pagerduty_url: str) -> dict[str, Any]:
    """engine.yaml for the benchmark: pacing off, warnings only, state in `workdir`."""
    return {
        "listen": f"127.0.0.1:{free_port()}",
        "rules": [str(rules)],
        "state_dir": str(workdir / "state"),
        "shutdown_grace": "2s",
        "log": {"format": "json", "level": "warning"},
        "pagerduty": {"url": pagerduty_url, "timeout": "10s", "rate_per_key": 0},
    }


class EngineProcess:
    """One `alert-engine run --config WORKDIR/engine.yaml`, its stdout and stderr in WORKDIR."""

    def __init__(self, workdir: Path, rules: Path, pagerduty_url: str) -> None:
        workdir.mkdir(parents=True, exist_ok=True)
        self.workdir = workdir
        self.config = engine_config(workdir, rules, pagerduty_url)
        self.url = "http://" + self.config["listen"]
        self._proc: asyncio.subprocess.Process | None = None
        self._notify: socket.socket | None = None

    @property
    def pid(self) -> int:
        assert self._proc is not None, "start() first"
        return self._proc.pid

    async def start(self, timeout: float = 300.0) -> None:
        """Start the daemon and return once it said READY=1."""
        config_file = self.workdir / "engine.yaml"
        config_file.write_text(yaml.safe_dump(self.config))
        notify_path = self.workdir / "notify.sock"
        notify_path.unlink(missing_ok=True)  # a restart binds it again
        self._notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self._notify.bind(str(notify_path))
        self._notify.setblocking(False)
        env = {**os.environ, "NOTIFY_SOCKET": str(notify_path)}
        self._proc = await asyncio.create_subprocess_exec(
            ALERT_ENGINE, "run", "--config", str(config_file),
            stdout=(self.workdir / "stdout.txt").open("wb"), stderr=(self.workdir / "stderr.txt").open("wb"),
            env=env,
        )
        await self._message("READY=1", timeout)

    async def reload(self, timeout: float = 600.0) -> float:
        """SIGHUP; the seconds from the signal to the READY=1 that ends the reload."""
        assert self._proc is not None, "start() first"
        sent = time.monotonic()
        self._proc.send_signal(signal.SIGHUP)
        await self._message("RELOADING=1", timeout)
        await self._message("READY=1", timeout)
        return time.monotonic() - sent

    async def status(self) -> dict[str, Any]:
        """The daemon's `GET /v1/status`: outbox depth, rules, how the last reload went."""
        async with aiohttp.ClientSession() as client, client.get(self.url + "/v1/status") as response:
            response.raise_for_status()
            status: dict[str, Any] = await response.json()
            return status

    def cpu_seconds(self) -> float:
        return cpu_seconds(self.pid)

    def rss(self) -> int:
        return memory_bytes(self.pid, "VmRSS")

    def peak_rss(self) -> int:
        return memory_bytes(self.pid, "VmHWM")

    def log_tail(self, chars: int = 3000) -> str:
        path = self.workdir / "stderr.txt"
        return path.read_text(errors="replace")[-chars:] if path.exists() else ""

    async def stop(self) -> None:
        if self._proc is not None and self._proc.returncode is None:
            self._proc.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(self._proc.wait(), 30)
            except TimeoutError:
                self._proc.kill()
                await self._proc.wait()
        if self._notify is not None:
            self._notify.close()
            self._notify = None

    async def _message(self, text: str, timeout: float) -> None:
        """Await the next sd_notify datagram containing `text`; fail if the daemon exits first."""
        assert self._proc is not None and self._notify is not None
        loop = asyncio.get_running_loop()
        notify = self._notify

        async def receive() -> None:
            while text not in (await loop.sock_recv(notify, 4096)).decode():
                pass

        receiving = asyncio.ensure_future(receive())
        exiting = asyncio.ensure_future(self._proc.wait())
        done, _ = await asyncio.wait({receiving, exiting}, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
        receiving.cancel()
        exiting.cancel()
        if receiving not in done:
            state = f"exited {self._proc.returncode}" if exiting in done else f"nothing in {timeout:g}s"
            raise RuntimeError(f"no {text} from the daemon ({state}); its log:\n{self.log_tail()}")
