"""A light PagerDuty for the benchmark, in its own process: `python -m bench.fake_pagerduty`.

It answers the Events API v2 (`/v2/enqueue`, 202) and the legacy v1 API (`.../create_event.json`, 200),
400 for a body PagerDuty would refuse, and records the first accepted arrival of each (integration key,
dedup key) with `time.monotonic()` on arrival: CLOCK_MONOTONIC is one clock for every process of the
machine, so the benchmark subtracts its own POST times from these. Control routes, under `/-/`:

- `POST /-/fail {"status": 500, "retry_after": null, "ratio": 1.0}`: answer that status to that share
  of the requests from now on (`retry_after`, when given, is sent as a `Retry-After` header);
  `POST /-/recover`: answer success again.
- `POST /-/reset`: forget every arrival and count.
- `GET /-/wait?delivered=N&timeout=S`: answer once N distinct pages have been accepted (or after S s).
- `GET /-/arrivals`: `{"arrivals": [[integration key, dedup key, monotonic time], ...], "requests": n,
  "failed": n, "invalid": n, "duplicates": n}`.

`FakePagerDuty` is the benchmark's handle on that process.
"""

from __future__ import annotations

import asyncio
import json
import random
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web

from bench.processes import ServerProcess, serve

V2_PATH = "/v2/enqueue"
V1_PATH = "/generic/2010-04-15/create_event.json"
ACTIONS = ("trigger", "acknowledge", "resolve")


def problem(path: str, body: Any) -> str | None:
    """Why PagerDuty would refuse this body (the checks its API makes on what we send), or None."""
    if not isinstance(body, dict):
        return "body is not a JSON object"
    if path == V2_PATH:
        if not body.get("routing_key") or body.get("event_action") not in ACTIONS:
            return "routing_key and event_action are required"
        if body["event_action"] == "trigger":
            payload = body.get("payload")
            if not isinstance(payload, dict) or not all(payload.get(k) for k in ("summary", "source", "severity")):
                return "payload.summary, payload.source and payload.severity are required"
        return None
    if not body.get("service_key") or body.get("event_type") not in ACTIONS:
        return "service_key and event_type are required"
    if body["event_type"] == "trigger" and not body.get("description"):
        return "description is required"
    return None


class Recorder:
    """The server's state: arrivals, counts, the failure mode, and who waits for how many pages."""

    def __init__(self) -> None:
        self.arrivals: dict[tuple[str, str], float] = {}
        self.requests = self.failed = self.invalid = self.duplicates = 0
        self.fail_status: int | None = None
        self.fail_ratio = 1.0
        self.retry_after: str | None = None
        self._waiters: list[tuple[int, asyncio.Future[None]]] = []

    async def pagerduty(self, request: web.Request) -> web.Response:
        at = time.monotonic()
        self.requests += 1
        try:
            body = json.loads(await request.read())
        except ValueError:
            body = None
        if self.fail_status is not None and (self.fail_ratio >= 1.0 or random.random() < self.fail_ratio):
            self.failed += 1
            headers = {"Retry-After": self.retry_after} if self.retry_after is not None else None
            return web.json_response({"status": "error", "message": f"HTTP {self.fail_status}"},
                                     status=self.fail_status, headers=headers)
        reason = problem(request.path, body)
        if reason is not None:
            self.invalid += 1
            return web.json_response({"status": "invalid event", "message": "Event object is invalid",
                                      "errors": [reason]}, status=400)
        v2 = request.path == V2_PATH
        chain = (body["routing_key" if v2 else "service_key"], body["dedup_key" if v2 else "incident_key"])
        if chain in self.arrivals:
            self.duplicates += 1
        else:
            self.arrivals[chain] = at
            self._wake()
        if v2:
            return web.json_response({"status": "success", "message": "Event processed", "dedup_key": chain[1]},
                                     status=202)
        return web.json_response({"status": "success", "message": "Event processed", "incident_key": chain[1]})

    def _wake(self) -> None:
        count = len(self.arrivals)
        if self._waiters and self._waiters[0][0] <= count:
            ready = [w for w in self._waiters if w[0] <= count]
            self._waiters = [w for w in self._waiters if w[0] > count]
            for _, future in ready:
                if not future.done():
                    future.set_result(None)

    async def fail(self, request: web.Request) -> web.Response:
        order = await request.json()
        self.fail_status = int(order.get("status", 500))
        self.fail_ratio = float(order.get("ratio", 1.0))
        retry_after = order.get("retry_after")
        self.retry_after = None if retry_after is None else str(retry_after)
        return web.json_response({"failing": self.fail_status})

    async def recover(self, request: web.Request) -> web.Response:
        self.fail_status = None
        return web.json_response({"failing": None})

    async def reset(self, request: web.Request) -> web.Response:
        self.arrivals.clear()
        self.requests = self.failed = self.invalid = self.duplicates = 0
        return web.json_response({"reset": True})

    async def wait(self, request: web.Request) -> web.Response:
        wanted = int(request.query["delivered"])
        timeout = float(request.query.get("timeout", "60"))
        if len(self.arrivals) < wanted:
            future = asyncio.get_running_loop().create_future()
            self._waiters.append((wanted, future))
            self._waiters.sort(key=lambda w: w[0])
            try:
                await asyncio.wait_for(future, timeout)
            except TimeoutError:
                self._waiters = [w for w in self._waiters if w[1] is not future]
        return web.json_response({"delivered": len(self.arrivals)})

    async def report(self, request: web.Request) -> web.Response:
        return web.json_response({
            "arrivals": [[key, dedup, at] for (key, dedup), at in self.arrivals.items()],
            "requests": self.requests, "failed": self.failed, "invalid": self.invalid,
            "duplicates": self.duplicates,
        })


def make_app() -> web.Application:
    recorder = Recorder()
    app = web.Application()
    app.add_routes([
        web.post(V2_PATH, recorder.pagerduty),
        web.post(V1_PATH, recorder.pagerduty),
        web.post("/-/fail", recorder.fail),
        web.post("/-/recover", recorder.recover),
        web.post("/-/reset", recorder.reset),
        web.get("/-/wait", recorder.wait),
        web.get("/-/arrivals", recorder.report),
    ])
    return app


@dataclass(frozen=True)
class Arrivals:
    """What the fake recorded: the first accepted arrival of each (integration key, dedup key)."""

    times: dict[tuple[str, str], float]
    requests: int
    failed: int
    invalid: int
    duplicates: int


class FakePagerDuty:
    """The benchmark's handle on the fake's process: start it, steer it, read what arrived."""

    def __init__(self, log: Path) -> None:
        self._process = ServerProcess("bench.fake_pagerduty", log=log)
        self._session: aiohttp.ClientSession | None = None

    @property
    def url(self) -> str:
        return self._process.url

    @property
    def pid(self) -> int:
        return self._process.pid

    async def start(self) -> None:
        await self._process.start()
        self._session = aiohttp.ClientSession(self.url, timeout=aiohttp.ClientTimeout(total=None))

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
        await self._process.stop()

    async def fail(self, status: int = 500, *, retry_after: float | None = None, ratio: float = 1.0) -> None:
        await self._call("POST", "/-/fail", json={"status": status, "retry_after": retry_after, "ratio": ratio})

    async def recover(self) -> None:
        await self._call("POST", "/-/recover")

    async def reset(self) -> None:
        await self._call("POST", "/-/reset")

    async def wait_delivered(self, count: int, timeout: float) -> int:
        """Wait until `count` distinct pages were accepted, or `timeout` seconds; how many were."""
        answer = await self._call("GET", "/-/wait", params={"delivered": str(count), "timeout": str(timeout)})
        return int(answer["delivered"])

    async def delivered(self) -> int:
        """How many distinct pages were accepted so far."""
        return await self.wait_delivered(0, 0)

    async def arrivals(self) -> Arrivals:
        answer = await self._call("GET", "/-/arrivals")
        times = {(key, dedup): at for key, dedup, at in answer["arrivals"]}
        return Arrivals(times, answer["requests"], answer["failed"], answer["invalid"], answer["duplicates"])

    async def _call(self, method: str, path: str, **kwargs: Any) -> Any:
        assert self._session is not None, "start() first"
        async with self._session.request(method, path, **kwargs) as response:
            response.raise_for_status()
            return await response.json()


if __name__ == "__main__":
    serve(make_app())
