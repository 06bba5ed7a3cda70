"""Child processes of the benchmark and what /proc says about them: CPU seconds, resident memory.

`ServerProcess` runs `python -m MODULE`, a server that prints its base URL on its first line of stdout
once it listens (`serve` does that), and stops it with SIGTERM.
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from pathlib import Path

from aiohttp import web

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
ROOT = Path(__file__).resolve().parent.parent  # the checkout: `python -m bench.…` runs from here


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds the process has used so far (every thread)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    utime, stime = int(fields[11]), int(fields[12])  # fields 14 and 15 of proc(5), counted from 1
    return (utime + stime) / CLOCK_TICKS


def memory_bytes(pid: int, field: str = "VmRSS") -> int:
    """A memory figure from /proc/PID/status: VmRSS (resident now) or VmHWM (peak resident)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    raise LookupError(f"no {field} in /proc/{pid}/status")


class ServerProcess:
    """`python -m MODULE ARGS…`, its URL read from its first line of output."""

    def __init__(self, module: str, *args: str, log: Path) -> None:
        self.module = module
        self.args = args
        self.log = log
        self.url = ""
        self._proc: asyncio.subprocess.Process | None = None

    @property
    def pid(self) -> int:
        assert self._proc is not None, "start() first"
        return self._proc.pid

    async def start(self, timeout: float = 30.0) -> None:
        self._proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", self.module, *self.args,
            stdout=asyncio.subprocess.PIPE, stderr=self.log.open("wb"), cwd=ROOT,
        )
        assert self._proc.stdout is not None
        line = await asyncio.wait_for(self._proc.stdout.readline(), timeout)
        if not line.startswith(b"http://"):
            await self._proc.wait()
            raise RuntimeError(f"{self.module} did not start: {self.log.read_text(errors='replace')[-2000:]}")
        self.url = line.decode().strip()

    async def stop(self) -> None:
        if self._proc is None or self._proc.returncode is not None:
            return
        self._proc.send_signal(signal.SIGTERM)
        try:
            await asyncio.wait_for(self._proc.wait(), 10)
        except TimeoutError:
            self._proc.kill()
            await self._proc.wait()


def serve(app: web.Application) -> None:
    """The child's side: serve `app` on a free port of 127.0.0.1, print the URL, run until SIGTERM."""

    async def main() -> None:
        runner = web.AppRunner(app, access_log=None, handle_signals=False)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        host, port = runner.addresses[0][:2]
        print(f"http://{host}:{port}", flush=True)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        await stop.wait()
        await runner.cleanup()

    asyncio.run(main())
