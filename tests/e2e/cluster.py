"""Several replicas on one PostgreSQL database, as operators run them: real `alert-engine run` processes
(tests/e2e/conftest.py `Daemon`), a real HAProxy in front health-checking `/readyz` (the settings of
deploy/haproxy.cfg), a TCP proxy between a replica and PostgreSQL that can blackhole like a partition,
a load sender that records what was acknowledged, and the checks over what the fake PagerDuty got.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import shutil
import subprocess
import time
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp

from tests.conftest import Received, skip_or_fail
from tests.e2e.conftest import KEY_ENV, Daemon, free_port, run_cli

# Every event of kind `flap` triggers or (state: ok) resolves the alert of its key; `burst` events page
# their key once, at the third (a threshold), and never again (a throttle): what a replay must agree with.
HA_RULES = """\
services:
  pay: {service_key: "${PD_PAY}"}
rules:
  - name: flaps
    match: {field: kind, equals: flap}
    services: [pay]
    group_by: [key]
    resolve: {match: {field: state, equals: ok}}
  - name: bursts
    match: {field: kind, equals: burst}
    services: [pay]
    group_by: [key]
    threshold: {count: 3, window: 1h}
    throttle: 1h
"""

HAPROXY_CONFIG = Path(__file__).parents[2] / "deploy" / "haproxy.cfg"


class Replicas:
    """`n` replicas r0…r(n-1) sharing `dsn`, each in its own directory; `dsns[i]` overrides replica i's
    (to put a proxy in its way)."""

    def __init__(self, tmp: Path, dsn: str, pagerduty_url: str, n: int, *, rules: str = HA_RULES,
                 dsns: dict[int, str] | None = None, **overrides: Any) -> None:
        rules_dir = tmp / "rules"
        rules_dir.mkdir(exist_ok=True)
        (rules_dir / "rules.yaml").write_text(rules)
        self.daemons: list[Daemon] = []
        for i in range(n):
            home = tmp / f"r{i}"
            home.mkdir(exist_ok=True)
            config: dict[str, Any] = {
                "listen": f"127.0.0.1:{free_port()}",
                "rules": [str(rules_dir)],
                "storage": {"backend": "postgresql", "dsn": (dsns or {}).get(i, dsn)},
                "cluster": {"replica_id": f"r{i}", "heartbeat": "0.5s", "decider_lease": "3s",
                            "delivery_lease": "5s"},
                "shutdown_grace": "5s",
                "log": {"format": "json", "level": "info"},
                "pagerduty": {"url": pagerduty_url, "timeout": "2s", "rate_per_key": 0},
            }
            for key, value in overrides.items():
                config[key] = {**config[key], **value} if isinstance(value, dict) and key in config else value
            self.daemons.append(Daemon(home, config, dict(KEY_ENV), ()))

    def __getitem__(self, i: int) -> Daemon:
        return self.daemons[i]

    def __len__(self) -> int:
        return len(self.daemons)

    @property
    def ports(self) -> list[int]:
        return [d.port for d in self.daemons]

    def alive(self) -> list[Daemon]:
        return [d for d in self.daemons if d.proc is not None and d.proc.returncode is None]

    async def start(self) -> None:
        await asyncio.gather(*(d.start() for d in self.daemons))

    async def close(self) -> None:
        for d in self.daemons:
            if d.proc is not None and d.proc.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    d.proc.kill()
                await d.proc.wait()
            if d.notify_sock is not None:
                d.notify_sock.close()
                d.notify_sock = None

    async def status(self, daemon: Daemon) -> dict[str, Any] | None:
        with contextlib.suppress(aiohttp.ClientError, OSError, asyncio.TimeoutError):
            code, answer = await asyncio.wait_for(daemon.request("GET", "/v1/status"), 2)
            if code == 200:
                return answer
        return None

    async def decider(self, *, not_: str | None = None, timeout: float = 20) -> int:
        """The index of the decider, once a live replica reports one (other than `not_`)."""
        async with asyncio.timeout(timeout):
            while True:
                for d in self.alive():
                    found = await self.status(d)
                    decider = found and found["cluster"]["decider"]
                    if decider and decider != not_:
                        return int(decider[1:])
                await asyncio.sleep(0.05)

    async def drained(self, timeout: float = 60) -> None:
        """Until nothing waits in the inbox or the outbox (status reads the inbox first: a request decided
        meanwhile is then in the outbox)."""
        async with asyncio.timeout(timeout):
            while True:
                found = await self.status(self.alive()[0])
                if found and found["cluster"]["inbox"]["waiting"] == 0 and found["outbox"] == 0:
                    return
                await asyncio.sleep(0.2)

    def output(self) -> str:
        return "".join(d.output() for d in self.daemons)


class HAProxy:
    """`haproxy -db` on a free port of 127.0.0.1 in front of `ports`, with deploy/haproxy.cfg's settings."""

    def __init__(self, tmp: Path, ports: Iterable[int]) -> None:
        binary = shutil.which("haproxy") or (Path("/usr/sbin/haproxy") if Path("/usr/sbin/haproxy").exists() else None)
        if binary is None:
            skip_or_fail("haproxy is not installed (Debian package haproxy)")
        self.binary = str(binary)
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.config = tmp / "haproxy.cfg"
        servers = "".join(f"    server r{i} 127.0.0.1:{port}\n" for i, port in enumerate(ports))
        self.config.write_text(HAPROXY_CONFIG.read_text().replace("127.0.0.1:9595", f"127.0.0.1:{self.port}")
                               .split("    # servers\n")[0] + "    # servers\n" + servers)
        self.proc: subprocess.Popen[bytes] | None = None

    async def start(self) -> None:
        self.proc = subprocess.Popen([self.binary, "-db", "-f", str(self.config)], stdout=subprocess.DEVNULL,
                                     stderr=subprocess.PIPE)
        async with asyncio.timeout(10):
            while True:
                with contextlib.suppress(aiohttp.ClientError, OSError):
                    async with aiohttp.ClientSession() as s, s.get(self.url + "/healthz") as r:
                        if r.status == 200:
                            return
                assert self.proc.poll() is None, self.proc.stderr.read().decode() if self.proc.stderr else ""
                await asyncio.sleep(0.1)

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.terminate()
            self.proc.wait(5)


class TcpProxy:
    """127.0.0.1:`port` forwarded to `target`; `blackhole()` forwards nothing either way and keeps every
    socket open (a partition), `heal()` forwards again, `cut()` closes every connection."""

    def __init__(self, target: int) -> None:
        self.target = target
        self.port = 0
        self._server: asyncio.Server | None = None
        self._open = asyncio.Event()
        self._open.set()
        self._writers: set[asyncio.StreamWriter] = set()

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]

    def blackhole(self) -> None:
        self._open.clear()

    def heal(self) -> None:
        self._open.set()

    def cut(self) -> None:
        for writer in list(self._writers):
            writer.transport.abort()

    async def close(self) -> None:
        self.cut()
        if self._server is not None:
            self._server.close()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if not self._open.is_set():
            await self._open.wait()  # a new connection in a partition hangs, as it would
        try:
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.target)
        except OSError:
            writer.close()
            return
        self._writers.update((writer, up_writer))
        await asyncio.gather(self._pipe(reader, up_writer), self._pipe(up_reader, writer),
                             return_exceptions=True)
        self._writers.difference_update((writer, up_writer))

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while data := await reader.read(65536):
                await self._open.wait()
                writer.write(data)
                await writer.drain()
        finally:
            writer.transport.abort()


@dataclass
class Sender:
    """Sends events through `url`, each flow of events in order (the next once the previous was
    acknowledged, retried until it is), flows side by side at about `rate` requests a second in all.
    Records every acknowledged event in order of acknowledgement, and the requests in flight."""

    url: str
    rate: float
    acked: list[dict[str, Any]] = field(default_factory=list)
    refused: int = 0  # answers other than 202, and connection errors (each then retried)
    in_flight: int = 0
    slow: list[float] = field(default_factory=list)  # seconds of each request that took over a second

    async def run_flows(self, flows: list[list[dict[str, Any]]], duration: float) -> None:
        """Run the flows (each a list of events) until they end, or no new event once `duration` passed
        (an event sent is sent until acknowledged: none is left unknown)."""
        per_flow = max(0.001, len(flows) / self.rate)
        deadline = time.monotonic() + duration
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=15)) as session:
            await asyncio.gather(*(self._flow(session, f, per_flow, i * per_flow / len(flows), deadline)
                                   for i, f in enumerate(flows)))

    async def _flow(self, session: aiohttp.ClientSession, events: list[dict[str, Any]], gap: float,
                    offset: float, deadline: float) -> None:
        await asyncio.sleep(offset)
        for event in events:
            if time.monotonic() > deadline:
                return
            for _ in range(600):  # bounded: two minutes of refusals
                if await self._send(session, event):
                    break
                await asyncio.sleep(0.2)
            await asyncio.sleep(gap)

    async def _send(self, session: aiohttp.ClientSession, event: dict[str, Any]) -> bool:
        self.in_flight += 1
        started = time.monotonic()
        try:
            async with session.post(self.url + "/v1/events", json=event) as response:
                await response.read()
                ok = response.status == 202
        except (TimeoutError, aiohttp.ClientError, OSError):
            ok = False
        finally:
            self.in_flight -= 1
            if (took := time.monotonic() - started) > 1.0:
                self.slow.append(took)
        if ok:
            self.acked.append(event)
        else:
            self.refused += 1
        return ok


def flap_flows(keys: int, rounds: int) -> list[list[dict[str, Any]]]:
    """Per key: trigger, resolve, trigger, … (`rounds` of each), numbered."""
    seq = itertools.count()
    return [[{"kind": "flap", "key": f"k{k}", "state": state, "seq": next(seq)}
             for _ in range(rounds) for state in ("bad", "ok")] for k in range(keys)]


def burst_flows(groups: int) -> list[list[dict[str, Any]]]:
    """Group g gets 1, 3, 4 or 5 events: those with 3 or more page once (threshold, then throttle). Never
    2: an event sent twice (acknowledged by a replica killed before it answered, then retried) would
    make it 3, and one node given the events once would not page."""
    return [[{"kind": "burst", "key": f"b{g}", "n": n} for n in range((1, 3, 4, 5)[g % 4])] for g in range(groups)]


def sequences(requests: Iterable[Received]) -> dict[str, list[str]]:
    """Per dedup key, the actions PagerDuty received, in arrival order."""
    found: dict[str, list[str]] = defaultdict(list)
    for r in requests:
        found[r.body["dedup_key"]].append(r.body["event_action"])
    return dict(found)


def collapsed(actions: list[str]) -> list[str]:
    """The actions without repeats in a row (a duplicate send is the same action again)."""
    return [a for i, a in enumerate(actions) if i == 0 or actions[i - 1] != a]


async def replayed(tmp: Path, events: list[dict[str, Any]], rules: str = HA_RULES) -> dict[str, list[str]]:
    """Per dedup key, what one node would send for `events` in this order: `alert-engine eval`."""
    (tmp / "replay").mkdir(exist_ok=True)
    (tmp / "replay" / "rules.yaml").write_text(rules)
    (tmp / "replay" / "events.ndjson").write_text("".join(json.dumps(e) + "\n" for e in events))
    done = await run_cli("eval", "--events", str(tmp / "replay" / "events.ndjson"), str(tmp / "replay" / "rules.yaml"),
                         env=KEY_ENV, timeout=120)
    assert done.returncode == 0, done.stderr
    found: dict[str, list[str]] = defaultdict(list)
    for line in done.stdout.splitlines():
        body = json.loads(line)["body"]
        found[body["dedup_key"]].append(body["event_action"])
    return dict(found)
