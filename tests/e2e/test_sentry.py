"""Sentry webhooks through the daemon: signatures and freshness, resends and retries that are harmless in
effect, Sentry's behaviour following the endpoint, an incident that follows its Sentry issue from trigger
to resolve, and the hand test that docs/sentry.md gives operators."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import re
import sqlite3
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from tests.conftest import service_key

REPO = Path(__file__).resolve().parent.parent.parent
FIXTURES = REPO / "tests" / "fixtures" / "sentry"
SECRET = "sentry-client-secret-new"
OLD_SECRET = "sentry-client-secret-old"
SENTRY_WEB = "https://sentry.example.com"

RULES = """\
services:
  pay: {service_key: "${PD_PAY}"}
  ops: {service_key: "${PD_OPS}", api: v1}
rules:
  - name: checkout-fatal
    match:
      all:
        - {field: source, equals: sentry}
        - {field: sentry.resource, equals: event_alert}
        - {field: project, equals: checkout}
    services: [pay, ops]
    severity: auto
  - name: regressions
    match:
      all:
        - {field: sentry.resource, equals: issue}
        - {field: substatus, equals: regressed}
    services: [pay]
  - name: metric-alerts
    match: {field: sentry.resource, equals: metric_alert}
    services: [pay]
"""


def signed(body: bytes, secret: str = SECRET, *, age: float = 0, resource: str = "event_alert") -> dict[str, str]:
    return {
        "Content-Type": "application/json",
        "Sentry-Hook-Resource": resource,
        "Sentry-Hook-Timestamp": str(int(time.time() - age)),
        "Sentry-Hook-Signature": hmac.new(secret.encode(), body, hashlib.sha256).hexdigest(),
    }


def fixture(name: str) -> dict[str, Any]:
    return json.loads((FIXTURES / f"{name}.json").read_text())


def fresh_alert(name: str = "event_alert_checkout_fatal", *, age: float = 0) -> bytes:
    """An issue alert whose event Sentry received `age` seconds ago (the body's own time)."""
    payload = fixture(name)
    event = payload["data"]["event"]
    event["received"] = time.time() - age
    event["datetime"] = datetime.fromtimestamp(time.time() - age, UTC).isoformat()
    return json.dumps(payload).encode()


async def start(start_daemon, tmp_path, rules: str = RULES, **sentry):
    secrets = tmp_path / "sentry-secret"
    secrets.write_text(f"# rotating: both accepted\n{OLD_SECRET}\n{SECRET}\n")
    return await start_daemon(rules, sources={"sentry": {"client_secret_file": str(secrets), **sentry}})


async def post(daemon, body: bytes, headers: dict[str, str]) -> tuple[int, Any]:
    return await daemon.request("POST", "/v1/sources/sentry", data=body, headers=headers)


def keys(bodies: list[Any]) -> set[str]:
    return {b.get("dedup_key") or b.get("incident_key") for b in bodies}


def actions(bodies: list[Any]) -> set[str]:
    return {b.get("event_action") or b.get("event_type") for b in bodies}


async def test_a_sentry_issue_pages_and_follows_sentry_through_resolve_regression_and_resolve_again(
        start_daemon, fake_pagerduty, tmp_path):
    daemon = await start(start_daemon, tmp_path, url=SENTRY_WEB, organization="acme")
    alert = fresh_alert()
    assert await post(daemon, alert, signed(alert)) == (202, {"accepted": 1, "matched": 1, "notifications": 2})
    triggers = await fake_pagerduty.wait_for(2)
    v2 = next(r.body for r in triggers if "routing_key" in r.body)
    v1 = next(r.body for r in triggers if "service_key" in r.body)
    assert v2["dedup_key"] == "sentry-issue-4242" and v1["incident_key"] == "sentry-issue-4242"
    assert v2["payload"]["severity"] == "critical"  # severity: auto, level fatal
    assert v2["payload"]["summary"].startswith("ZeroDivisionError")
    assert {"href": v2["client_url"], "text": "View in Sentry"} in v2["links"]
    # the issue is resolved in Sentry: both incidents resolve, each after its trigger
    resolved = (FIXTURES / "issue_resolved.json").read_bytes()
    resolved_headers = signed(resolved, OLD_SECRET, resource="issue")
    assert await post(daemon, resolved, resolved_headers) == (202, {"resolved": 2})
    received = await fake_pagerduty.wait_for(4)
    resolves = [r.body for r in received[2:]]
    assert (actions(resolves), keys(resolves)) == ({"resolve"}, {"sentry-issue-4242"})
    assert {b.get("routing_key") or b.get("service_key") for b in resolves} == {service_key("pay"),
                                                                                 service_key("ops")}
    # the same request again (Sentry's retry, or a copy): nothing is open, nothing happens
    assert await post(daemon, resolved, resolved_headers) == (202, {"resolved": 0})
    # the issue regresses: a new page, linked to the issue through the configured Sentry and organization
    regressed = (FIXTURES / "issue_unresolved.json").read_bytes()
    status, answer = await post(daemon, regressed, signed(regressed, resource="issue"))
    assert (status, answer) == (202, {"accepted": 1, "matched": 1, "notifications": 1})
    page = (await fake_pagerduty.wait_for(5))[4].body
    assert (page["dedup_key"], page["client_url"]) == ("sentry-issue-4242",
                                                       f"{SENTRY_WEB}/organizations/acme/issues/4242/")
    # and is resolved again: Sentry sends the very same bytes as the first time, and they resolve it
    assert await post(daemon, resolved, signed(resolved, resource="issue")) == (202, {"resolved": 1})
    again = (await fake_pagerduty.wait_for(6))[5].body
    assert (again["event_action"], again["dedup_key"]) == ("resolve", "sentry-issue-4242")
    await daemon.stop()
    assert SECRET not in daemon.output() and OLD_SECRET not in daemon.output()


async def test_signatures_the_timestamp_and_the_bodys_own_time(start_daemon, fake_pagerduty, tmp_path):
    daemon = await start(start_daemon, tmp_path, max_age="1m")
    body = fresh_alert("event_alert")
    cases = [
        (signed(body, "wrong-secret"), "invalid Sentry-Hook-Signature"),
        ({k: v for k, v in signed(body).items() if k != "Sentry-Hook-Signature"}, "missing Sentry-Hook-Signature"),
        (signed(body, age=120), "stale Sentry-Hook-Timestamp"),
        ({**signed(body), "Sentry-Hook-Timestamp": "yesterday"}, "unparsable Sentry-Hook-Timestamp"),
    ]
    for headers, words in cases:
        status, answer = await post(daemon, body, headers)
        assert status == 401 and words in answer["error"], answer
    # the same signed request twice is accepted twice: a genuine resend, or a retry
    headers = signed(body)
    assert await post(daemon, body, headers) == (202, {"accepted": 1, "matched": 0, "notifications": 0})
    assert await post(daemon, body, headers) == (202, {"accepted": 1, "matched": 0, "notifications": 0})
    # a captured issue alert sent again later under a fresh timestamp: its own time gives it away
    old = fresh_alert(age=120)
    status, answer = await post(daemon, old, signed(old))
    assert status == 401 and answer["error"].startswith("stale body: its data.event.received was 12"), answer
    assert answer["error"].endswith("s ago, more than max_age 60s")
    # malformed: signed, but not what the resource promises
    bad = b'{"action": "triggered", "data": {}}'
    status, answer = await post(daemon, bad, signed(bad))
    assert status == 400 and "event" in answer["error"]
    # installation and other resources are accepted, not matched
    install = (FIXTURES / "installation_created.json").read_bytes()
    assert await post(daemon, install, signed(install, resource="installation")) == (
        202, {"accepted": 0, "matched": 0, "notifications": 0})
    # the legacy plugin body without a signature is refused unless allowed
    legacy = (FIXTURES / "legacy_webhook.json").read_bytes()
    status, _ = await post(daemon, legacy, {"Content-Type": "application/json"})
    assert status == 401
    await daemon.stop()
    assert fake_pagerduty.requests == []


async def test_a_webhook_answered_503_is_accepted_when_sentry_retries_it(start_daemon, fake_pagerduty, tmp_path):
    daemon = await start(start_daemon, tmp_path)
    alert = fresh_alert()
    headers = signed(alert)
    lock = sqlite3.connect(tmp_path / "state" / "alert-engine.db", isolation_level=None)
    try:
        lock.execute("BEGIN IMMEDIATE")  # another writer holds the database past the daemon's busy timeout
        status, answer = await post(daemon, alert, headers)
        assert status == 503 and "storage unavailable" in answer["error"], answer
    finally:
        lock.execute("ROLLBACK")
        lock.close()
    # Sentry retries the very same request
    assert await post(daemon, alert, headers) == (202, {"accepted": 1, "matched": 1, "notifications": 2})
    assert keys([r.body for r in await fake_pagerduty.wait_for(2)]) == {"sentry-issue-4242"}
    await daemon.stop()


async def test_sentrys_behaviour_follows_the_endpoint_not_a_source_field(start_daemon, fake_pagerduty, tmp_path):
    daemon = await start(start_daemon, tmp_path)
    claimed = {"source": "sentry", "sentry": {"resource": "event_alert", "action": "triggered"},
               "project": "checkout", "level": "fatal", "issue_id": "4242", "title": "boom",
               "issue_url": "https://sentry.io/organizations/acme/issues/4242/"}
    status, answer = await daemon.post_events(claimed)
    assert (status, answer) == (202, {"accepted": 1, "matched": 1, "notifications": 2})
    pages = [r.body for r in await fake_pagerduty.wait_for(2)]
    assert keys(pages) == {"checkout-fatal"}  # the rule's own default, not sentry-issue-4242
    assert all("client_url" not in p for p in pages)
    resolved = (FIXTURES / "issue_resolved.json").read_bytes()
    assert await post(daemon, resolved, signed(resolved, resource="issue")) == (202, {"resolved": 0})
    await daemon.stop()


async def test_a_metric_alert_open_pages_and_its_resolve_is_dated_by_its_close(start_daemon, fake_pagerduty,
                                                                                tmp_path):
    daemon = await start(start_daemon, tmp_path)
    opened = fixture("metric_alert_critical")
    opened["action"] = "open"
    body = json.dumps(opened).encode()
    status, answer = await post(daemon, body, signed(body, resource="metric_alert"))
    assert (status, answer) == (202, {"accepted": 1, "matched": 1, "notifications": 1})
    page = (await fake_pagerduty.wait_for(1))[0].body
    assert (page["dedup_key"], page["payload"]["severity"]) == ("sentry-metric-4", "error")
    resolved = fixture("metric_alert_resolved")
    for age, expected in ((7200, None), (0, (202, {"resolved": 1}))):
        resolved["data"]["metric_alert"]["date_closed"] = datetime.fromtimestamp(time.time() - age, UTC).isoformat()
        body = json.dumps(resolved).encode()
        status, answer = await post(daemon, body, signed(body, resource="metric_alert"))
        if expected is None:  # a captured resolve of two hours ago, under a fresh timestamp
            assert status == 401 and "data.metric_alert.date_closed" in answer["error"], answer
        else:
            assert (status, answer) == expected
    assert (await fake_pagerduty.wait_for(2))[1].body["event_action"] == "resolve"
    await daemon.stop()


async def test_unsigned_legacy_when_allowed_and_404_without_a_secret(start_daemon, fake_pagerduty, tmp_path):
    daemon = await start(start_daemon, tmp_path, allow_unsigned_legacy=True)
    legacy = (FIXTURES / "legacy_webhook.json").read_bytes()
    status, answer = await post(daemon, legacy, {"Content-Type": "application/json"})
    assert status == 202 and answer["accepted"] == 1
    await daemon.stop()
    plain = await start_daemon(RULES)
    status, answer = await post(plain, legacy, {"Content-Type": "application/json"})
    assert status == 404 and "not configured" in answer["error"]
    await plain.stop()


# --- the hand test of docs/sentry.md --------------------------------------------------------------------


def hand_test() -> tuple[str, list[str]]:
    """The sample webhook and the shell blocks of docs/sentry.md's "Test the endpoint by hand"."""
    doc = (REPO / "docs" / "sentry.md").read_text()
    section = doc[doc.index("## Test the endpoint by hand"):]
    section = section[:section.index("\n## ", 1)]
    [sample] = re.findall(r"```json\n(.*?)```", section, re.S)
    return sample, re.findall(r"```sh\n(.*?)```", section, re.S)


async def sh(script: str, cwd: Path) -> str:
    proc = await asyncio.create_subprocess_exec("bash", "-euo", "pipefail", "-c", script, cwd=cwd,
                                                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = await asyncio.wait_for(proc.communicate(), 30)
    assert proc.returncode == 0, err.decode()
    return out.decode()


async def test_the_documented_hand_test_signs_as_the_daemon_verifies_and_pages_then_resolves(
        start_daemon, fake_pagerduty, tmp_path):
    secrets = tmp_path / "sentry-secret"
    secrets.write_text(f"# the newest first\n{SECRET}  \n{OLD_SECRET}\n")
    env = {f"PD_{name.upper()}_KEY": service_key(name) for name in ("payments", "sre", "data", "ops_legacy")}
    (tmp_path / "rules").mkdir()  # the example rules: rules/sentry.yaml and the services it pages
    (tmp_path / "rules" / "services.yaml").write_text((REPO / "rules" / "services.yaml").read_text())
    daemon = await start_daemon((REPO / "rules" / "sentry.yaml").read_text(), env=env,
                                sources={"sentry": {"client_secret_file": str(secrets)}})
    sample, (send, make_resolve) = hand_test()
    work = tmp_path / "operator"
    work.mkdir()
    (work / "sample-webhook.json").write_text(sample)
    assert "ENGINE=http://127.0.0.1:9595\n" in send and "/etc/alert-engine/sentry-client-secret" in send
    send = send.replace("ENGINE=http://127.0.0.1:9595", f"ENGINE={daemon.url}")
    send = send.replace("/etc/alert-engine/sentry-client-secret", str(secrets))
    doc = (REPO / "docs" / "sentry.md").read_text()
    answer = await sh(send, work)
    assert answer == '{"accepted": 1, "matched": 1, "notifications": 1}' and answer in doc
    page = (await fake_pagerduty.wait_for(1))[0].body
    assert (page["routing_key"], page["dedup_key"]) == (service_key("payments"), "sentry-issue-4242")
    assert page["payload"]["summary"] in doc
    await sh(make_resolve, work)
    assert await sh(send, work) == '{"resolved": 1}'
    assert (await fake_pagerduty.wait_for(2))[1].body["event_action"] == "resolve"
    await daemon.stop()
