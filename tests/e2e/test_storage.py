"""The daemon when its storage fails under it: a state dir on a tiny tmpfs that fills during a burst, a
database that turns read-only under it, and a database file deleted while open. Every 202 was stored,
nothing refused changed the state, PagerDuty gets each page at most a few times, /readyz and the watchdog
say so, and it recovers by itself."""

from __future__ import annotations

import asyncio
from collections import Counter

import aiohttp

from tests.conftest import accept_writes, refuse_writes

RULES = """\
services:
  pay: {service_key: "${PD_PAY}"}
  sre: {service_key: "${PD_SRE}"}
rules:
  - name: deploys
    match: {field: kind, equals: deploy}
    services: [pay]
    group_by: [host]
    throttle: 1h
"""

BLOB = "x" * 20_000  # each event fills about 60 KB of a 1 MiB disk: event, page, state


async def post(url: str, event: dict) -> tuple[int, dict, dict]:
    async with aiohttp.ClientSession() as session, session.post(url + "/v1/events", json=event) as response:
        return response.status, await response.json(), dict(response.headers)


async def test_a_disk_that_fills_during_a_burst_refuses_with_503_changes_nothing_and_recovers(
        start_daemon, fake_pagerduty, tmpfs):
    daemon = await start_daemon(RULES, state_dir=str(tmpfs.path), env={"WATCHDOG_USEC": "400000"})
    await daemon.wait_message("WATCHDOG=1")
    accepted, refused = [], []
    for i in range(300):  # bounded: the disk is full long before
        event = {"kind": "deploy", "host": f"h{i}", "blob": BLOB}
        status, body, headers = await post(daemon.url, event)
        assert status in (202, 503), (status, body)
        if status == 503:
            assert "storage" in body["error"] and headers.get("Retry-After")
            refused.append(event)
            if len(refused) == 5:
                break
        else:
            accepted.append(event)
    assert accepted and len(refused) == 5, "the tmpfs never filled up"
    ready = await daemon.poll("/readyz", lambda r: r.get("status") == "not ready")
    assert any("storage" in p for p in ready["problems"])
    await daemon.wait_message("STATUS=not ready")
    daemon.drain_messages()
    pings = daemon.messages.count("WATCHDOG=1")
    await daemon.poll("/readyz", lambda r: r.get("status") == "not ready")  # a turn of the watchdog at least
    tmpfs.free()
    await daemon.poll("/readyz", lambda r: r.get("status") == "ready")
    await daemon.wait_message("WATCHDOG=1")
    assert pings <= daemon.messages.count("WATCHDOG=1") - 1
    # what was refused never happened: sent again, each pages once; what was accepted stays throttled
    for event in refused:
        status, body = await daemon.post_events(event)
        assert (status, body["notifications"]) == (202, 1)
    status, body = await daemon.post_events(accepted[0])
    assert (status, body["notifications"]) == (202, 0)
    hosts = [e["host"] for e in accepted + refused]
    wanted = {f"deploys/{h}" for h in hosts}
    received = await fake_pagerduty.wait_until(lambda rs: wanted <= {r.body.get("dedup_key") for r in rs},
                                               timeout=30)
    per_key = Counter(r.body.get("dedup_key") for r in received)
    assert max(per_key.values()) <= 3, per_key.most_common(3)
    # every accepted event's page is recorded as delivered once storage is back
    history = await daemon.poll("/v1/notifications?rule=deploys&limit=1000",
                                lambda h: {n["dedup_key"] for n in h["notifications"]} >= wanted, timeout=20)
    assert {n["outcome"] for n in history["notifications"]} == {"delivered"}


EVERY_TABLE = ("outbox", "history", "dead_letters", "alert_state", "silences", "probe")


async def test_a_database_turned_read_only_refuses_with_503_changes_nothing_and_recovers(
        start_daemon, fake_pagerduty, tmp_path):
    daemon = await start_daemon(RULES)
    database = tmp_path / "state" / "alert-engine.db"
    first = {"kind": "deploy", "host": "a"}
    assert (await daemon.post_events(first))[0] == 202
    await fake_pagerduty.wait_for(1)
    # SQLite refuses every write from now on, as it does for a file that became read-only
    refuse_writes(database, tables=EVERY_TABLE, message="attempt to write a readonly database")
    refused = [{"kind": "deploy", "host": h} for h in ("b", "c")]
    for event in [first, *refused]:
        status, body, headers = await post(daemon.url, event)
        assert status == 503 and "readonly" in body["error"] and headers["Retry-After"], (status, body)
    ready = await daemon.poll("/readyz", lambda r: r.get("status") == "not ready")
    assert any("readonly" in p for p in ready["problems"])
    accept_writes(database, tables=EVERY_TABLE)
    await daemon.poll("/readyz", lambda r: r.get("status") == "ready")
    # exactly as if the refused requests had never come: a is throttled, b and c page once each
    answers = [await daemon.post_events(e) for e in [first, *refused]]
    assert [(s, b["notifications"]) for s, b in answers] == [(202, 0), (202, 1), (202, 1)]
    received = await fake_pagerduty.wait_for(3)
    assert sorted(r.body["dedup_key"] for r in received) == ["deploys/a", "deploys/b", "deploys/c"]


async def test_a_deleted_database_stops_acknowledging_pages_the_self_alert_and_stops_the_watchdog(
        start_daemon, fake_pagerduty, tmp_path):
    daemon = await start_daemon(RULES, self_alerts={"services": ["sre"]}, env={"WATCHDOG_USEC": "400000"})
    status, _ = await daemon.post_events({"kind": "deploy", "host": "a"})
    assert status == 202
    (tmp_path / "state" / "alert-engine.db").unlink()
    status, body = await daemon.post_events({"kind": "deploy", "host": "b"})
    assert status == 503 and "is gone" in body["error"]
    ready = await daemon.poll("/readyz", lambda r: r.get("status") == "not ready")
    assert any("is gone" in p for p in ready["problems"])
    # the self-alert still goes out from the open file
    received = await fake_pagerduty.wait_until(
        lambda rs: any(r.body.get("dedup_key") == "alert-engine/storage" for r in rs), timeout=10)
    alert = next(r.body for r in received if r.body.get("dedup_key") == "alert-engine/storage")
    assert "is gone" in alert["payload"]["summary"]
    await daemon.wait_message("STATUS=not ready")
    # no more watchdog pings: systemd restarts the daemon, which makes a new database
    try:
        await daemon.wait_message("WATCHDOG=1", timeout=1.5)
        raise AssertionError("the watchdog still pings with the database gone")
    except AssertionError as exc:
        assert "no 'WATCHDOG=1'" in str(exc)
    assert await daemon.stop() == 0
    await daemon.start()
    status, body = await daemon.post_events({"kind": "deploy", "host": "b"})
    assert (status, body["notifications"]) == (202, 1)
    await fake_pagerduty.wait_until(lambda rs: any(r.body.get("dedup_key") == "deploys/b" for r in rs))


async def test_storage_errors_never_answer_500(start_daemon, tmpfs):
    daemon = await start_daemon(RULES, state_dir=str(tmpfs.path))
    tmpfs.fill()
    answers = await asyncio.gather(
        post(daemon.url, {"kind": "deploy", "host": "z", "blob": BLOB}),
        daemon.request("POST", "/v1/silences", json={"match": {"field": "rule", "equals": "deploys"},
                                                      "until": "1h", "comment": "x" * 100_000}),
    )
    assert [a[0] for a in answers] == [503, 503]
    tmpfs.free()
