"""Hostile and broken clients against the real daemon: values JSON cannot carry, bodies aiohttp refuses,
absurd times, slow and stalled connections, hang-ups. Each gets a JSON 4xx (or is accepted and sent as
valid JSON), never a 500; none holds a connection or a shutdown unbounded."""

from __future__ import annotations

import asyncio
import json
import signal
import sqlite3
import time
from pathlib import Path
from typing import Any

from tests.e2e.test_sentry import SECRET, signed

RULES = """\
services:
  pay: {service_key: "${PD_PAY}"}
rules:
  - name: any
    match: {field: service, exists: true}
    services: [pay]
    summary: "{{ event.service }}"
    group_by: [service]
"""

EVENTS_HEAD = "POST /v1/events HTTP/1.1\r\nHost: engine\r\nContent-Type: application/json\r\n"


async def start(start_daemon, tmp_path: Path, **overrides: Any):
    secrets = tmp_path / "sentry-secret"
    secrets.write_text(SECRET + "\n")
    return await start_daemon(RULES, sources={"sentry": {"client_secret_file": str(secrets)}}, **overrides)


async def exchange(port: int, head: str, body: bytes = b"") -> tuple[int, dict[str, str], Any]:
    """Send `head` (request line and headers, without the blank line) and `body` on a new connection;
    the response's status, headers and JSON body (its text when it is not JSON)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(head.encode() + b"\r\n" + body)
        return await read_response(reader)
    finally:
        writer.close()


async def read_response(reader: asyncio.StreamReader) -> tuple[int, dict[str, str], Any]:
    async with asyncio.timeout(10):
        lines = (await reader.readuntil(b"\r\n\r\n")).decode("latin-1").split("\r\n")
        headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:] if line)}
        content = await reader.readexactly(int(headers.get("content-length", "0")))
    try:
        return int(lines[0].split()[1]), headers, json.loads(content)
    except ValueError:
        return int(lines[0].split()[1]), headers, content.decode(errors="replace")


def chunked(data: bytes) -> bytes:
    return f"{len(data):x}\r\n".encode() + data + b"\r\n0\r\n\r\n"


async def closed_by_server(reader: asyncio.StreamReader, timeout: float) -> bytes:
    """Everything the server sends until it closes the connection (AssertionError if it does not)."""
    try:
        async with asyncio.timeout(timeout):
            return await reader.read()
    except TimeoutError:
        raise AssertionError(f"the connection is still open after {timeout:g}s") from None


async def wait_for_output(daemon, text: str, timeout: float = 5) -> str:
    async with asyncio.timeout(timeout):
        while text not in daemon.output():
            await asyncio.sleep(0.05)
    return daemon.output()


async def test_values_json_cannot_carry_get_400_naming_the_item_and_path(start_daemon, fake_pagerduty, tmp_path):
    daemon = await start(start_daemon, tmp_path)
    digits = "9" * 5000
    cases = [
        ('[{"service": "a"}, {"service": "b", "v": NaN}]', "application/json", 1, "v", "NaN is not a JSON number"),
        ('{"service": "a", "v": {"w": [Infinity]}}', "application/json", None, "v.w.0", "Infinity"),
        ('{"service": "a", "v": 1e400}', "application/json", None, "v", "beyond the range of a double"),
        ('{"service": "a"}\n{"service": "b", "n": ' + digits + "}", "application/x-ndjson", 1, "n",
         "an integer of 5000 digits (at most 4300)"),
    ]
    for body, ctype, index, path, words in cases:
        status, answer = await daemon.request("POST", "/v1/events", data=body.encode(),
                                              headers={"Content-Type": ctype})
        assert (status, answer.get("index"), answer.get("path")) == (400, index, path), answer
        assert words in answer["error"]
    # the Sentry endpoint parses the same way: a signed body with NaN, or nested 1,000 deep
    for body in (b'{"action": "triggered", "data": {"event": {"v": NaN}}}',
                 b'{"action": "triggered", "data": ' + b"[" * 1000 + b"]" * 1000 + b"}"):
        status, answer = await daemon.request("POST", "/v1/sources/sentry", data=body, headers=signed(body))
        assert status == 400 and ("NaN" in answer["error"] or "nested deeper" in answer["error"]), answer
    # silences and test pages too (the test page took NaN for a duration, and 500'd on a huge one)
    for path, body, words in (
            ("/v1/silences", '{"match": {"field": "rule", "equals": "x"}, "until": NaN}', "NaN"),
            ("/v1/test", '{"service": "pay", "resolve_after": NaN}', "NaN"),
            ("/v1/test", '{"service": "pay", "resolve_after": 1' + "0" * 400 + "}", "too large"),
            ("/v1/test", '{"service": "pay", "resolve_after": "' + "9" * 400 + 's"}', "too long"),
            ("/v1/test", "[" * 5000 + "]" * 5000, "nested deeper")):
        status, answer = await daemon.request("POST", path, data=body.encode(),
                                              headers={"Content-Type": "application/json"})
        assert status == 400 and words in answer["error"], answer
    assert fake_pagerduty.requests == []
    await daemon.stop()
    assert "internal error" not in daemon.output()


async def test_lone_surrogates_and_timestamps_at_the_limits_page_as_valid_json(start_daemon, fake_pagerduty,
                                                                               tmp_path):
    daemon = await start(start_daemon, tmp_path)
    bodies = [rb'{"service": "cut \ud83d", "timestamp": "9999-12-31T23:59:59-01:00"}',
              b'{"service": "big", "timestamp": 1' + b"0" * 400 + b"}",
              b'{"service": "first", "timestamp": "0001-01-01T00:00:00+01:00"}']
    for body in bodies:
        status, answer = await daemon.request("POST", "/v1/events", data=body,
                                              headers={"Content-Type": "application/json"})
        assert (status, answer) == (202, {"accepted": 1, "matched": 1, "notifications": 1})
    received = await fake_pagerduty.wait_for(3)
    year = time.gmtime().tm_year
    assert {r.body["payload"]["summary"] for r in received} == {"cut \ufffd", "big", "first"}
    for r in received:  # the time it was made stands in for a timestamp UTC cannot hold
        assert r.body["payload"]["timestamp"][:4] in (str(year), str(year + 1)), r.body
        json.dumps(r.body, allow_nan=False).encode("utf-8")
    await daemon.stop()


async def test_bodies_aiohttp_refuses_get_a_json_413_and_broken_ones_a_json_400(start_daemon, fake_pagerduty,
                                                                                 tmp_path):
    daemon = await start(start_daemon, tmp_path, ingest={"max_body": "1KiB"})
    big = b"[" + b" " * 2000 + b"]"
    sentry_head = "POST /v1/sources/sentry HTTP/1.1\r\nHost: engine\r\n" + "".join(
        f"{k}: {v}\r\n" for k, v in signed(big).items())
    for head, body in [
        (EVENTS_HEAD + "Transfer-Encoding: chunked\r\n", chunked(big)),
        (sentry_head + "Transfer-Encoding: chunked\r\n", chunked(big)),
        (sentry_head + f"Content-Length: {len(big)}\r\n", big),
    ]:
        status, headers, answer = await exchange(daemon.port, head, body)
        assert (status, headers["content-type"]) == (413, "application/json; charset=utf-8"), answer
        assert answer == {"error": "body larger than the limit of 1024 bytes"}
    for extra, body in [("Content-Encoding: gzip\r\nContent-Length: 5\r\n", b"hello"),
                        ("Content-Encoding: deflate\r\nTransfer-Encoding: chunked\r\n", chunked(b"\xff" * 8))]:
        status, headers, answer = await exchange(daemon.port, EVENTS_HEAD + extra, body)
        assert status == 400 and answer["error"].startswith("malformed body: Can not decode content-encoding")
        assert headers["connection"] == "close"
    status, _ = await daemon.request("GET", "/healthz")
    assert status == 200
    await daemon.stop()
    assert "Traceback" not in daemon.output() and "internal error" not in daemon.output()


async def test_silences_end_within_a_year_and_one_stored_before_does_not_break_the_list(start_daemon,
                                                                                         fake_pagerduty, tmp_path):
    daemon = await start(start_daemon, tmp_path)
    match = {"field": "rule", "equals": "any"}
    status, answer = await daemon.request("POST", "/v1/silences", json={"match": match, "until": "99999999999d"})
    assert status == 400 and "more than 365 days ahead" in answer["error"]
    await daemon.stop()
    # what a daemon before the cap stored, for ever after unlistable
    with sqlite3.connect(tmp_path / "state" / "alert-engine.db") as db:
        for ident, until in ((7, 8.64e15 + time.time()), (8, float("inf"))):
            data = {"id": ident, "match": match, "until": until, "comment": "", "created_by": "",
                    "created": time.time(), "covered": 0}
            db.execute("INSERT INTO silences (id, data) VALUES (?, ?)", (ident, json.dumps(data)))
    await daemon.start()
    status, answer = await daemon.request("GET", "/v1/silences")
    assert status == 200
    assert [(s["id"], s["until"], s["active"]) for s in answer["silences"]] == [
        (7, "9999-12-31T23:59:59.999999Z", True), (8, "9999-12-31T23:59:59.999999Z", True)]
    status, answer = await daemon.request("DELETE", "/v1/silences/7")
    assert status == 200 and answer["active"] is False
    await daemon.stop()


async def test_idle_and_slow_connections_are_closed_and_a_stalled_body_gets_408(start_daemon, fake_pagerduty,
                                                                                tmp_path):
    daemon = await start(start_daemon, tmp_path, ingest={"idle_timeout": "1s", "body_timeout": "1s"})
    # idle: connected, nothing sent
    reader, writer = await asyncio.open_connection("127.0.0.1", daemon.port)
    assert await closed_by_server(reader, timeout=5) == b""
    writer.close()
    # slow-loris: a header line now and then, never the end of the headers
    reader, writer = await asyncio.open_connection("127.0.0.1", daemon.port)
    writer.write(EVENTS_HEAD.encode())

    async def trickle() -> None:
        for i in range(100):
            writer.write(f"X-Slow-{i}: 1\r\n".encode())
            await asyncio.sleep(0.2)

    trickling = asyncio.ensure_future(trickle())
    try:
        assert await closed_by_server(reader, timeout=5) == b""
    finally:
        trickling.cancel()
        writer.close()
    # a body that stops coming: 408
    started = time.monotonic()
    status, _, answer = await exchange(daemon.port, EVENTS_HEAD + "Content-Length: 100\r\n", b'{"service": ')
    assert (status, answer) == (408, {"error": "the body did not arrive within 1s of the headers"})
    assert time.monotonic() - started < 5
    # between requests, the idle timeout closes a kept-alive connection too
    reader, writer = await asyncio.open_connection("127.0.0.1", daemon.port)
    writer.write(b"GET /healthz HTTP/1.1\r\nHost: engine\r\n\r\n")
    status, _, answer = await read_response(reader)
    assert (status, answer) == (200, {"status": "alive"})
    assert await closed_by_server(reader, timeout=5) == b""
    writer.close()
    await daemon.stop()


async def test_a_stalled_body_does_not_hold_shutdown_past_the_grace(start_daemon, fake_pagerduty, tmp_path):
    daemon = await start(start_daemon, tmp_path, shutdown_grace="1s", ingest={"body_timeout": "60s"})
    reader, writer = await asyncio.open_connection("127.0.0.1", daemon.port)
    writer.write((EVENTS_HEAD + "Content-Length: 100\r\nExpect: 100-continue\r\n\r\n").encode())
    async with asyncio.timeout(5):  # the handler is running: it is about to read the body
        assert await reader.readuntil(b"\r\n\r\n") == b"HTTP/1.1 100 Continue\r\n\r\n"
    writer.write(b'{"service": ')
    started = time.monotonic()
    assert await daemon.stop(signal.SIGTERM, timeout=15) == 0
    assert time.monotonic() - started < 1 + 4  # the grace, then at most HANDLER_CUTOFF twice, and slack
    writer.close()


async def test_a_stalled_body_and_a_hanging_pagerduty_share_one_grace(start_daemon, fake_pagerduty, tmp_path):
    daemon = await start(start_daemon, tmp_path, shutdown_grace="3s", ingest={"body_timeout": "60s"})
    fake_pagerduty.delay = 60  # the page below stays in flight
    status, _ = await daemon.post_events({"service": "payments", "host": "web-1"})
    assert status == 202
    await fake_pagerduty.wait_for(1)
    reader, writer = await asyncio.open_connection("127.0.0.1", daemon.port)
    writer.write((EVENTS_HEAD + "Content-Length: 100\r\nExpect: 100-continue\r\n\r\n").encode())
    async with asyncio.timeout(5):
        assert await reader.readuntil(b"\r\n\r\n") == b"HTTP/1.1 100 Continue\r\n\r\n"
    writer.write(b'{"service": ')
    started = time.monotonic()
    assert await daemon.stop(signal.SIGTERM, timeout=15) == 0
    assert time.monotonic() - started < 3 + 2.5  # one grace, not one for requests and another for delivery
    writer.close()
    assert "1 notification(s) left in the outbox" in daemon.output()


async def test_a_client_hanging_up_mid_body_is_one_info_line(start_daemon, fake_pagerduty, tmp_path):
    daemon = await start(start_daemon, tmp_path)
    _, writer = await asyncio.open_connection("127.0.0.1", daemon.port)
    writer.write((EVENTS_HEAD + "Content-Length: 100\r\n\r\n").encode() + b'{"service": ')
    await writer.drain()
    writer.close()
    output = await wait_for_output(daemon, "the client closed the connection before its whole body arrived")
    [line] = [json.loads(x) for x in output.splitlines() if "before its whole body" in x]
    assert line["level"] == "info" and "exc" not in line
    await daemon.stop()
    assert "internal error" not in daemon.output() and "Traceback" not in daemon.output()
