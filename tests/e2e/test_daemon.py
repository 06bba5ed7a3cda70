"""The daemon end to end: fan-out, the HTTP API's answers, PagerDuty failures, restarts, reloads,
sd_notify, and no key anywhere in what it prints or answers."""

from __future__ import annotations

import asyncio
import json
import signal
import time

from tests.conftest import V1_PATH, V2_PATH, FakePagerDuty, Reply, service_key

RULES = """\
services:
  pay: {service_key: "${PD_PAY}"}
  sre: {service_key: "${PD_SRE}", severity: warning}
  ops: {service_key: "${PD_OPS}", api: v1}
rules:
  - name: pay-5xx
    match: {all: [{field: service, equals: payments}, {field: status, gte: 500}]}
    services: [pay, sre, ops]
    severity: critical
    summary: "payments {{ event.status }} on {{ event.host }}"
    group_by: [host]
  - name: disk
    match: {field: type, equals: disk}
    services: [sre]
    group_by: [host]
"""

ALL_KEYS = [service_key(s) for s in ("pay", "sre", "ops")]


def assert_no_keys(*texts: str) -> None:
    for text in texts:
        for key in ALL_KEYS:
            assert key not in text, f"service key leaked: {key}"


async def test_one_match_fans_out_to_every_service_with_its_own_key_and_api(start_daemon, fake_pagerduty):
    daemon = await start_daemon(RULES)
    status, answer = await daemon.post_events({"service": "payments", "status": 503, "host": "web-1"})
    assert (status, answer) == (202, {"accepted": 1, "matched": 1, "notifications": 3})
    received = await fake_pagerduty.wait_for(3)
    by_key = {r.body.get("routing_key") or r.body.get("service_key"): r for r in received}
    assert set(by_key) == set(ALL_KEYS)
    pay, sre, ops = (by_key[service_key(s)] for s in ("pay", "sre", "ops"))
    assert pay.path == V2_PATH and sre.path == V2_PATH and ops.path == V1_PATH
    assert pay.body["event_action"] == "trigger" and pay.body["dedup_key"] == "pay-5xx/web-1"
    assert pay.body["payload"]["summary"] == "payments 503 on web-1"
    assert pay.body["payload"]["severity"] == "critical" and sre.body["payload"]["severity"] == "critical"
    assert ops.body["event_type"] == "trigger" and ops.body["incident_key"] == "pay-5xx/web-1"
    assert ops.body["description"] == "payments 503 on web-1"
    # a second event, matching nothing, pages nobody
    status, answer = await daemon.post_events([{"service": "payments", "status": 200}])
    assert answer == {"accepted": 1, "matched": 0, "notifications": 0}
    # the notification log says what was paged
    history = await daemon.poll("/v1/notifications?rule=pay-5xx", lambda h: len(h["notifications"]) == 3)
    assert {h["service"] for h in history["notifications"]} == {"pay", "sre", "ops"}
    assert all(h["outcome"] == "delivered" for h in history["notifications"])
    assert await daemon.stop() == 0
    assert_no_keys(daemon.output(), json.dumps(history))


async def test_bad_input_gets_the_right_4xx_and_the_daemon_keeps_serving(start_daemon, fake_pagerduty, tmp_path):
    tokens = tmp_path / "tokens"
    tokens.write_text("# ingest tokens\ns3cret-token\n")
    daemon = await start_daemon(RULES, ingest={"tokens_file": str(tokens), "max_body": "4KiB"})
    auth = {"token": "s3cret-token"}
    cases = [
        ({"data": b'{"a": ', "headers": {"Content-Type": "application/json"}}, 400, "invalid JSON"),
        ({"data": b'[{"a": 1}, 5]', "headers": {"Content-Type": "application/json"}}, 400, "JSON object"),
        ({"data": b'{"a": "\xff"}', "headers": {"Content-Type": "application/json"}}, 400, "UTF-8"),
        ({"data": b"a=1", "headers": {"Content-Type": "application/x-www-form-urlencoded"}}, 415, "content type"),
        ({"data": b"x" * 5000, "headers": {"Content-Type": "application/json"}}, 413, "limit"),
        ({"data": b"[" * 3000 + b"]" * 3000, "headers": {"Content-Type": "application/json"}}, 413, "limit"),
    ]
    for kwargs, want, words in cases:
        status, answer = await daemon.request("POST", "/v1/events", **auth, **kwargs)
        assert status == want, (kwargs, answer)
        assert words in answer["error"]
    status, answer = await daemon.request("POST", "/v1/events", data=b'[{"a": 1}, 7]', **auth,
                                          headers={"Content-Type": "application/json"})
    assert answer["index"] == 1
    deep = b'{"a": ' * 200 + b"1" + b"}" * 200
    status, answer = await daemon.request("POST", "/v1/events", data=deep, **auth,
                                          headers={"Content-Type": "application/json"})
    assert status in (400, 413) and "error" in answer
    # no token, a wrong token, a wrong scheme
    for headers in ({}, {"Authorization": "Bearer nope"}, {"Authorization": "Basic s3cret-token"}):
        status, answer = await daemon.request("POST", "/v1/events", json={"a": 1}, headers=headers)
        assert (status, answer) == (401, {"error": "missing or invalid bearer token: this needs a token with the "
                                                  "'events' scope", "scope": "events"})
    # NDJSON with the right token is accepted; nothing bad before was enqueued
    body = b'{"service": "payments", "status": 500, "host": "h"}\n{"type": "disk", "host": "h"}\n'
    status, answer = await daemon.request("POST", "/v1/events", data=body, **auth,
                                          headers={"Content-Type": "application/x-ndjson"})
    assert (status, answer) == (202, {"accepted": 2, "matched": 2, "notifications": 4})
    await fake_pagerduty.wait_for(4)
    status, _ = await daemon.request("GET", "/healthz")
    assert status == 200
    status, ready = await daemon.request("GET", "/readyz")
    assert (status, ready) == (200, {"status": "ready"})
    assert await daemon.stop() == 0
    assert len(fake_pagerduty.requests) == 4


async def test_api_views_mask_keys_and_metrics_count(start_daemon, fake_pagerduty):
    daemon = await start_daemon(RULES)
    await daemon.post_events([{"type": "disk", "host": "a"}, {"type": "disk", "host": "b"}])
    await fake_pagerduty.wait_for(2)
    status, rules = await daemon.request("GET", "/v1/rules")
    assert status == 200
    assert [r["name"] for r in rules["rules"]] == ["pay-5xx", "disk"]
    assert {s["name"]: s["key"] for s in rules["services"]} == {
        "pay": "****0000", "sre": "****0000", "ops": "****0000"}
    assert len(rules["sha256"]) == 64 and len(rules["files"]) == 1
    status, st = await daemon.request("GET", "/v1/status")
    assert st["last_reload"]["ok"] is True and st["rules"] == 2 and st["dead_letters"] == 0
    text = await daemon.poll("/metrics", lambda t: 'alert_engine_notifications_sent_total{service="sre"} 2' in t)
    assert "alert_engine_events_received_total 2" in text
    assert "alert_engine_events_matched_total 2" in text
    assert 'alert_engine_notifications_enqueued_total{service="sre"} 2' in text
    assert 'alert_engine_notifications_sent_total{service="sre"} 2' in text
    assert "alert_engine_reload_success 1" in text
    assert "alert_engine_rules_loaded 2" in text
    assert "alert_engine_rule_file_info{" in text and "alert_engine_delivery_latency_seconds_bucket" in text
    assert "alert_engine_outbox_depth 0" in text
    await daemon.stop()
    assert_no_keys(daemon.output(), json.dumps(rules), json.dumps(st), text)


async def test_pagerduty_errors_are_retried_in_order_and_400_is_a_dead_letter(start_daemon, fake_pagerduty):
    daemon = await start_daemon(RULES.replace("services: [sre]", "services: [pay]"))
    fake_pagerduty.fail_next(2, 500, dedup_key="disk/a")
    fake_pagerduty.fail_next(1, 429, retry_after="1", dedup_key="disk/b")
    fake_pagerduty.fail_next(1, 400, dedup_key="disk/c")
    await daemon.post_events([{"type": "disk", "host": h} for h in "abc"])
    await fake_pagerduty.wait_for(6, timeout=20)  # a: 3 tries, b: 2 tries, c: 1
    statuses = {}
    for r in fake_pagerduty.requests:
        statuses.setdefault(r.body["dedup_key"], []).append(r.status)
    assert statuses == {"disk/a": [500, 500, 202], "disk/b": [429, 202], "disk/c": [400]}
    b_times = [r.at for r in fake_pagerduty.requests if r.body["dedup_key"] == "disk/b"]
    assert b_times[1] - b_times[0] >= 0.9  # Retry-After: 1 honoured
    dead = await daemon.poll("/v1/dead-letters", lambda d: len(d["dead_letters"]) == 1)
    [letter] = dead["dead_letters"]
    assert letter["dedup_key"] == "disk/c" and letter["status"] == 400
    assert "Event object is invalid" in letter["response"]
    assert "routing_key" not in letter["body"]  # stored without the key
    # retried by the operator, it goes out again (and PagerDuty accepts it this time)
    status, _ = await daemon.request("POST", f"/v1/dead-letters/{letter['id']}/retry")
    assert status == 200
    await fake_pagerduty.wait_for(7)
    assert fake_pagerduty.requests[-1].status == 202
    await daemon.poll("/v1/dead-letters", lambda d: d["dead_letters"] == [])
    await daemon.stop()


async def test_kill_9_during_a_burst_loses_no_acknowledged_notification(start_daemon, fake_pagerduty):
    fake_pagerduty.delay = 0.05  # PagerDuty is slow: the outbox fills up
    daemon = await start_daemon(RULES, pagerduty={"concurrency": 2})
    acknowledged: list[str] = []

    async def post(i: int) -> None:
        status, _ = await daemon.post_events([{"type": "disk", "host": f"h{i}-{j}"} for j in range(5)])
        if status == 202:
            acknowledged.extend(f"disk/h{i}-{j}" for j in range(5))

    await asyncio.gather(*(post(i) for i in range(40)))
    assert len(acknowledged) == 200
    await daemon.kill()  # SIGKILL: nothing is flushed, nothing is drained
    delivered_before = len(fake_pagerduty.requests)
    assert delivered_before < 200
    fake_pagerduty.delay = 0
    await daemon.start()
    # at-least-once: every acknowledged page arrives (the ones in flight at the kill, maybe twice)
    await fake_pagerduty.wait_until(lambda rs: {r.body["dedup_key"] for r in rs} >= set(acknowledged), timeout=30)
    await daemon.stop()


async def test_sigterm_refuses_new_events_delivers_within_grace_and_keeps_the_rest(start_daemon, fake_pagerduty):
    fake_pagerduty.fail_next(1, 500, dedup_key="disk/late")
    daemon = await start_daemon(RULES, shutdown_grace="1s")
    await daemon.post_events({"type": "disk", "host": "late"})
    await fake_pagerduty.wait_for(1)  # the 500: its retry is due in up to 1 s, maybe past the grace
    started = time.monotonic()
    assert await daemon.stop(signal.SIGTERM) == 0
    assert time.monotonic() - started < 10
    assert any("STOPPING=1" in m for m in daemon.drain_messages())
    # whatever did not go out is still in the outbox: a restart delivers it
    await daemon.start()
    await fake_pagerduty.wait_for(2, timeout=15)
    assert fake_pagerduty.requests[-1].status == 202
    await daemon.stop()


async def test_sighup_reloads_valid_rules_and_keeps_the_old_ones_when_broken(start_daemon, fake_pagerduty, tmp_path):
    daemon = await start_daemon(RULES)
    rules_file = tmp_path / "rules" / "rules.yaml"
    rules_file.write_text(RULES.replace("equals: disk", "equals: disk2"))
    daemon.send_signal(signal.SIGHUP)
    reloading = await daemon.wait_message("RELOADING=1")
    assert "MONOTONIC_USEC=" in reloading
    await daemon.wait_message("READY=1")
    _, answer = await daemon.post_events([{"type": "disk", "host": "x"}, {"type": "disk2", "host": "y"}])
    assert answer == {"accepted": 2, "matched": 1, "notifications": 1}
    # a broken push: the old set keeps matching, the failure is visible
    rules_file.write_text(RULES.replace("services: [sre]\n", "services: [sre, nobody]\n"))
    daemon.send_signal(signal.SIGHUP)
    await daemon.wait_message("RELOADING=1")
    await daemon.wait_message("READY=1")
    _, answer = await daemon.post_events([{"type": "disk2", "host": "z"}])
    assert answer["matched"] == 1
    _, st = await daemon.request("GET", "/v1/status")
    assert st["last_reload"]["ok"] is False
    assert any("unknown service 'nobody'" in e for e in st["last_reload"]["errors"])
    _, text = await daemon.request("GET", "/metrics")
    assert "alert_engine_reload_success 0" in text
    status, answer = await daemon.request("POST", "/-/reload")
    assert status == 422 and answer["ok"] is False
    rules_file.write_text(RULES)
    status, answer = await daemon.request("POST", "/-/reload")
    assert status == 200 and answer["ok"] is True
    await daemon.stop()
    assert "unknown service 'nobody'" in daemon.output()


async def test_a_reload_storm_under_load_drops_no_event(start_daemon, fake_pagerduty):
    daemon = await start_daemon(RULES)
    sent = 0

    async def load() -> None:
        nonlocal sent
        for i in range(60):
            status, answer = await daemon.post_events({"type": "disk", "host": f"s{i}"})
            assert status == 202 and answer["notifications"] == 1
            sent += 1

    async def storm() -> None:
        for _ in range(30):
            daemon.send_signal(signal.SIGHUP)
            await asyncio.sleep(0)  # let the load interleave; not used to wait for anything

    await asyncio.gather(load(), storm())
    await fake_pagerduty.wait_for(60, timeout=30)
    assert {r.body["dedup_key"] for r in fake_pagerduty.requests} == {f"disk/s{i}" for i in range(60)}
    assert daemon.proc.returncode is None
    await daemon.stop()


async def test_invalid_rules_at_start_exit_2_printing_every_error(start_daemon, fake_pagerduty):
    broken = RULES.replace("services: [sre]\n", "services: [nobody]\n").replace("severity: critical", "sevrity: x")
    try:
        await start_daemon(broken)
    except AssertionError as exc:
        message = str(exc)
    else:
        raise AssertionError("the daemon started on broken rules")
    assert "exit: 2" in message
    assert "unknown key 'sevrity' (did you mean 'severity'?)" in message


async def test_dry_run_prints_masked_deliveries_and_needs_no_keys(start_daemon, fake_pagerduty):
    daemon = await start_daemon(RULES, "--dry-run", env={"PD_PAY": "", "PD_SRE": "", "PD_OPS": ""})
    await daemon.post_events({"type": "disk", "host": "q"})
    line = json.loads(await asyncio.wait_for(daemon.proc.stdout.readline(), 10))
    assert line["rule"] == "disk" and line["dedup_key"] == "disk/q" and line["service"] == "sre"
    assert line["url"] == fake_pagerduty.url + "/v2/enqueue"
    assert line["body"]["routing_key"] == "****"
    _, history = await daemon.request("GET", "/v1/notifications")
    assert history["notifications"][0]["outcome"] == "delivered-dry-run"
    await daemon.stop()
    assert fake_pagerduty.requests == []


async def test_post_test_answers_with_what_pagerduty_did_with_the_page(start_daemon, fake_pagerduty):
    daemon = await start_daemon(RULES)
    fake_pagerduty.fail_next(1, 400)
    status, refused = await daemon.request("POST", "/v1/test", json={"service": "pay", "resolve_after": "1s"})
    assert status == 502
    assert refused["error"].startswith("PagerDuty refused the test page: HTTP 400: Event object is invalid")
    assert (refused["outcome"], refused["status"], refused["reason"]) == (
        "dead-lettered", 400, "PagerDuty rejected it: HTTP 400")
    assert refused["response"]["errors"] == ["'payload.summary' is missing or blank"]  # as PagerDuty sent it
    assert refused["resolve"].startswith("not queued")

    fake_pagerduty.fail_next(1, 503)
    fake_pagerduty.reply_next(Reply(202, {"status": "success"}, delay=1.5))
    status, late = await daemon.request("POST", "/v1/test", json={"service": "pay", "wait": 0.5})
    assert status == 504 and "within 0.5s" in late["error"] and "still queued" in late["error"]
    assert (late["outcome"], late["status"], late["response"]) == ("retrying", 503,
                                                                  {"status": "error", "message": "HTTP 503"})

    status, queued = await daemon.request("POST", "/v1/test", json={"service": "pay", "wait": "0s"})
    assert (status, queued["outcome"]) == (202, "queued")
    for body, problem in (({"service": "pay", "wait": "3m"}, "'wait' must be from 0 to 120s"),
                          ({"service": "pay", "wait": -1}, "'wait' must be from 0 to 120s"),
                          ({"service": "pay", "wait": "soon"}, "invalid duration 'soon'")):
        status, answer = await daemon.request("POST", "/v1/test", json=body)
        assert status == 400 and problem in answer["error"]
    # the log has them all: the refused one, the late one once delivered, the queued one
    await daemon.poll("/v1/notifications?rule=alert-engine:send-test", lambda a: sorted(
        (n["outcome"], n["status"]) for n in a["notifications"]) == [
        ("dead-lettered", 400), ("delivered", 202), ("delivered", 202)])
    assert sorted(r.status or 0 for r in fake_pagerduty.requests) == [202, 202, 400, 503]
    assert_no_keys(daemon.output(), json.dumps([refused, late, queued]))
    await daemon.stop()


async def test_send_test_pages_and_resolves_and_self_alerts_page_on_failed_reload(
        start_daemon, fake_pagerduty: FakePagerDuty, tmp_path):
    daemon = await start_daemon(RULES, self_alerts={"services": ["sre"]})
    # start-up with good rules resolves any reload-failed alert left from before
    [resolve] = await fake_pagerduty.wait_for(1)
    assert resolve.body["event_action"] == "resolve" and resolve.body["dedup_key"] == "alert-engine/reload-failed"
    asked = time.monotonic()
    status, answer = await daemon.request("POST", "/v1/test", json={"service": "ops", "resolve_after": "1s"})
    assert (status, answer["outcome"], answer["status"]) == (200, "delivered", 200)  # PagerDuty's answer, seen
    assert answer["response"]["incident_key"] == answer["dedup_key"]
    assert answer["resolve"] == "queued: due 1s after the request"
    received = await fake_pagerduty.wait_for(3)
    assert [r.body["event_type"] for r in received[1:]] == ["trigger", "resolve"]
    assert received[2].at - asked >= 1.0  # the resolve is due 1 s after the request
    status, _ = await daemon.request("POST", "/v1/test", json={"service": "nope"})
    assert status == 404
    (tmp_path / "rules" / "rules.yaml").write_text("rules: [\n")
    status, _ = await daemon.request("POST", "/-/reload")
    assert status == 422
    received = await fake_pagerduty.wait_for(4)
    page = received[3].body
    assert page["dedup_key"] == "alert-engine/reload-failed" and page["payload"]["severity"] == "critical"
    assert "invalid YAML" in json.dumps(page["payload"]["custom_details"])
    (tmp_path / "rules" / "rules.yaml").write_text(RULES)
    status, _ = await daemon.request("POST", "/-/reload")
    assert status == 200
    received = await fake_pagerduty.wait_for(5)
    assert received[4].body["event_action"] == "resolve"
    await daemon.stop()
