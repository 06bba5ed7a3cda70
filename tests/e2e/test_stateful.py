"""Stateful alerting through the daemon: state survives restarts and reloads, timed work fires on its
own, silences hold pages. Driven through the real subprocess and the fake PagerDuty."""

from __future__ import annotations

import asyncio
import sys
import time
from pathlib import Path

from tests.e2e.conftest import run_cli

RULES = """\
services:
  pay: {service_key: "${PD_PAY}"}
  ops: {service_key: "${PD_OPS}", api: v1}
rules:
  - name: errors
    match: {field: service, equals: checkout}
    services: [pay, ops]
    group_by: [host]
    threshold: {count: 3, window: 1m}
    throttle: 1h
    resolve:
      after: 2s
      match: {field: status, equals: recovered}
  - name: heartbeat
    match: {field: type, equals: heartbeat}
    group_by: [job]
    absent: {for: 2s}
    services: [pay]
"""

ERR = {"service": "checkout", "host": "web-1"}


async def test_a_restart_inside_a_throttle_does_not_page_again(start_daemon, fake_pagerduty):
    daemon = await start_daemon(RULES.replace("after: 2s", "after: 1h"))
    _, answer = await daemon.post_events([ERR, ERR])
    assert answer["notifications"] == 0  # 2 of 3
    _, answer = await daemon.post_events(ERR)
    assert answer["notifications"] == 2  # the third: pay and ops
    await fake_pagerduty.wait_for(2)
    await daemon.stop()
    await daemon.start()
    _, answer = await daemon.post_events([ERR, ERR, ERR])  # crosses the threshold again, inside the throttle
    assert answer["notifications"] == 0
    _, status = await daemon.request("GET", "/v1/status")
    assert status["outbox"] == 0
    await daemon.stop()
    assert len(fake_pagerduty.requests) == 2


async def test_a_restart_with_an_open_alert_still_resolves_it_on_every_service(start_daemon, fake_pagerduty):
    daemon = await start_daemon(RULES.replace("after: 2s", "after: 3s"))
    await daemon.post_events([ERR, ERR, ERR])
    await fake_pagerduty.wait_for(2)
    await daemon.kill()
    await daemon.start()
    # resolve.after fires on its own after the restart (a trigger in flight at the kill may come twice)
    received = await fake_pagerduty.wait_until(lambda rs: len(_resolves(rs)) == 2, timeout=15)
    resolves = {r.path: r.body for r in _resolves(received)}
    assert resolves["/v2/enqueue"]["event_action"] == "resolve"
    assert resolves["/v2/enqueue"]["dedup_key"] == "errors/web-1"
    assert resolves["/generic/2010-04-15/create_event.json"]["event_type"] == "resolve"
    assert resolves["/generic/2010-04-15/create_event.json"]["incident_key"] == "errors/web-1"
    await daemon.stop()


def _resolves(requests: list) -> list:
    return [r for r in requests if "resolve" in (r.body.get("event_action"), r.body.get("event_type"))]


async def test_resolve_match_and_absent_heartbeats_fire_on_their_own(start_daemon, fake_pagerduty):
    daemon = await start_daemon(RULES.replace("after: 2s", "after: 1h"))
    await daemon.post_events([ERR, ERR, ERR])
    await fake_pagerduty.wait_for(2)
    await daemon.post_events({**ERR, "status": "recovered"})
    received = await fake_pagerduty.wait_for(4)
    assert sorted(r.body.get("event_action") or r.body.get("event_type") for r in received[2:]) == [
        "resolve", "resolve"]
    await daemon.post_events({"type": "heartbeat", "job": "billing"})  # seen: now tracked
    absent = (await fake_pagerduty.wait_for(5, timeout=10))[4]  # silent for 2 s: paged
    assert absent.body["event_action"] == "trigger" and absent.body["dedup_key"] == "heartbeat/billing"
    await daemon.post_events({"type": "heartbeat", "job": "billing"})  # back: resolved
    back = (await fake_pagerduty.wait_for(6))[5]
    assert back.body["event_action"] == "resolve" and back.body["dedup_key"] == "heartbeat/billing"
    await daemon.stop()


async def test_an_expected_job_that_never_reports_pages_for_after_the_start_also_after_a_restart(
        start_daemon, fake_pagerduty):
    rules = RULES + """\
  - name: backup
    match: {field: type, equals: backup_done}
    group_by: [job]
    absent: {for: 3s, expect: [{job: nightly}]}
    services: [pay]
"""
    daemon = await start_daemon(rules)
    await daemon.stop()  # before it is due
    await daemon.start()
    restarted = time.monotonic()
    [page] = await fake_pagerduty.wait_for(1, timeout=15)
    assert page.body["event_action"] == "trigger" and page.body["dedup_key"] == "backup/nightly"
    assert page.at - restarted >= 2.5  # watched again from the restart, never seen at all
    await daemon.post_events({"type": "backup_done", "job": "nightly"})  # it reports at last: resolved
    back = (await fake_pagerduty.wait_for(2))[1]
    assert back.body["event_action"] == "resolve" and back.body["dedup_key"] == "backup/nightly"
    await daemon.stop()


async def test_a_reload_keeps_the_state_of_unchanged_rules(start_daemon, fake_pagerduty, tmp_path):
    daemon = await start_daemon(RULES.replace("after: 2s", "after: 1h"))
    await daemon.post_events([ERR, ERR])
    (tmp_path / "rules" / "rules.yaml").write_text(RULES.replace("after: 2s", "after: 1h")
                                                   .replace("for: 2s", "for: 1h"))
    status, _ = await daemon.request("POST", "/-/reload")
    assert status == 200
    _, answer = await daemon.post_events(ERR)  # the count of 2 survived the reload: this is the third
    assert answer["notifications"] == 2
    await daemon.stop()


async def test_a_silence_on_a_field_it_never_sees_is_refused_by_the_api_and_the_cli(start_daemon):
    daemon = await start_daemon(RULES)
    status, bad = await daemon.request("POST", "/v1/silences", json={"match": {"field": "host", "equals": "web-1"},
                                                                     "until": "1h"})
    hint = "'host' can never match: a silence sees only rule, dedup_key and event.* (did you mean event.host?)"
    assert status == 400 and bad == {"error": f"match.field: {hint}"}
    cli = await run_cli("silence", "add", "--api", daemon.url, "--match", "{field: host, equals: web-1}",
                        "--until", "1h")
    assert cli.returncode == 1 and cli.stdout == ""
    assert cli.stderr.strip().endswith(f"HTTP 400: match.field: {hint}")
    _, listed = await daemon.request("GET", "/v1/silences")
    assert listed["silences"] == []  # nothing stored
    await daemon.stop()


async def test_silences_hold_pages_and_are_kept_across_restarts(start_daemon, fake_pagerduty):
    rules = RULES.replace("    threshold: {count: 3, window: 1m}\n    throttle: 1h\n", "")
    daemon = await start_daemon(rules)
    alert_engine = str(Path(sys.executable).with_name("alert-engine"))
    proc = await asyncio.create_subprocess_exec(
        alert_engine, "silence", "add", "--api", daemon.url, "--match", "{field: event.host, equals: web-1}",
        "--until", "1h", "--comment", "deploying web-1", "--created-by", "ana",
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = await proc.communicate()
    assert proc.returncode == 0, err
    assert out.decode().startswith("silence 1 added, until ")
    _, answer = await daemon.post_events([ERR, {**ERR, "host": "web-2"}])
    assert answer["notifications"] == 2  # web-2 only
    status, bad = await daemon.request("POST", "/v1/silences", json={"match": {"field": "x"}, "until": "1h"})
    assert status == 400 and "needs an operator" in bad["error"]
    status, bad = await daemon.request("POST", "/v1/silences", json={"match": {"field": "x", "equals": 1},
                                                                     "until": "2001-01-01T00:00:00Z"})
    assert status == 400 and "past" in bad["error"]
    await daemon.stop()
    await daemon.start()
    _, listed = await daemon.request("GET", "/v1/silences")
    [silence] = listed["silences"]
    assert silence["active"] and silence["covered"] == 1 and silence["comment"] == "deploying web-1"
    _, answer = await daemon.post_events(ERR)
    assert answer["notifications"] == 0
    status, _ = await daemon.request("DELETE", "/v1/silences/1")
    assert status == 200
    _, answer = await daemon.post_events(ERR)
    assert answer["notifications"] == 2
    _, listed = await daemon.request("GET", "/v1/silences")
    assert listed["silences"][0]["active"] is False  # expired, still listed
    assert listed["silences"][0]["covered"] == 2
    await daemon.stop()
