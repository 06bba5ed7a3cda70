"""Sentry webhooks through the daemon: signatures, replays, and an incident that follows its Sentry issue
from trigger to resolve."""

from __future__ import annotations

import hashlib
import hmac
import json
import time
from pathlib import Path

from tests.conftest import service_key

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures" / "sentry"
SECRET = "sentry-client-secret-new"
OLD_SECRET = "sentry-client-secret-old"

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
"""


def signed(body: bytes, secret: str = SECRET, *, age: float = 0, resource: str = "event_alert") -> dict[str, str]:
    return {
        "Content-Type": "application/json",
        "Sentry-Hook-Resource": resource,
        "Sentry-Hook-Timestamp": str(int(time.time() - age)),
        "Sentry-Hook-Signature": hmac.new(secret.encode(), body, hashlib.sha256).hexdigest(),
    }


async def start(start_daemon, tmp_path, **sentry):
    secrets = tmp_path / "sentry-secret"
    secrets.write_text(f"# rotating: both accepted\n{OLD_SECRET}\n{SECRET}\n")
    return await start_daemon(RULES, sources={"sentry": {"client_secret_file": str(secrets), **sentry}})


async def test_a_sentry_issue_pages_and_its_resolve_in_sentry_resolves_every_service(
        start_daemon, fake_pagerduty, tmp_path):
    daemon = await start(start_daemon, tmp_path)
    alert = (FIXTURES / "event_alert_checkout_fatal.json").read_bytes()
    status, answer = await daemon.request("POST", "/v1/sources/sentry", data=alert, headers=signed(alert))
    assert (status, answer) == (202, {"accepted": 1, "matched": 1, "notifications": 2})
    triggers = await fake_pagerduty.wait_for(2)
    v2 = next(r.body for r in triggers if "routing_key" in r.body)
    v1 = next(r.body for r in triggers if "service_key" in r.body)
    assert v2["dedup_key"] == "sentry-issue-4242" and v1["incident_key"] == "sentry-issue-4242"
    assert v2["payload"]["severity"] == "critical"  # severity: auto, level fatal
    assert v2["payload"]["summary"].startswith("ZeroDivisionError")
    assert {"href": v2["client_url"], "text": "View in Sentry"} in v2["links"]
    # the issue is resolved in Sentry: both incidents resolve, each after its trigger
    resolved = (FIXTURES / "issue_resolved.json").read_bytes()
    status, answer = await daemon.request("POST", "/v1/sources/sentry", data=resolved,
                                          headers=signed(resolved, OLD_SECRET, resource="issue"))
    assert (status, answer) == (202, {"resolved": 2})
    received = await fake_pagerduty.wait_for(4)
    resolves = [r.body for r in received[2:]]
    assert {b.get("event_action") or b.get("event_type") for b in resolves} == {"resolve"}
    assert {b.get("dedup_key") or b.get("incident_key") for b in resolves} == {"sentry-issue-4242"}
    assert {b.get("routing_key") or b.get("service_key") for b in resolves} == {service_key("pay"),
                                                                                 service_key("ops")}
    # a second resolve finds nothing open
    resolved_again = json.dumps({**json.loads(resolved), "note": "again"}).encode()
    status, answer = await daemon.request("POST", "/v1/sources/sentry", data=resolved_again,
                                          headers=signed(resolved_again, resource="issue"))
    assert (status, answer) == (200, {"resolved": 0})
    await daemon.stop()
    assert SECRET not in daemon.output() and OLD_SECRET not in daemon.output()


async def test_signatures_timestamps_and_replays(start_daemon, fake_pagerduty, tmp_path):
    daemon = await start(start_daemon, tmp_path, max_age="1m")
    body = (FIXTURES / "event_alert.json").read_bytes()
    cases = [
        (signed(body, "wrong-secret"), "invalid Sentry-Hook-Signature"),
        ({k: v for k, v in signed(body).items() if k != "Sentry-Hook-Signature"}, "missing Sentry-Hook-Signature"),
        (signed(body, age=120), "stale Sentry-Hook-Timestamp"),
        ({**signed(body), "Sentry-Hook-Timestamp": "yesterday"}, "unparsable Sentry-Hook-Timestamp"),
    ]
    for headers, words in cases:
        status, answer = await daemon.request("POST", "/v1/sources/sentry", data=body, headers=headers)
        assert status == 401 and words in answer["error"], answer
    headers = signed(body)
    status, _ = await daemon.request("POST", "/v1/sources/sentry", data=body, headers=headers)
    assert status in (200, 202)
    status, answer = await daemon.request("POST", "/v1/sources/sentry", data=body, headers=headers)
    assert (status, answer["error"]) == (401, "replayed request: this signature was already accepted")
    # malformed: signed, but not what the resource promises
    bad = b'{"action": "triggered", "data": {}}'
    status, answer = await daemon.request("POST", "/v1/sources/sentry", data=bad, headers=signed(bad))
    assert status == 400 and "event" in answer["error"]
    # installation and other resources are accepted, not matched
    install = (FIXTURES / "installation_created.json").read_bytes()
    status, answer = await daemon.request("POST", "/v1/sources/sentry", data=install,
                                          headers=signed(install, resource="installation"))
    assert (status, answer) == (200, {"accepted": 0, "matched": 0, "notifications": 0})
    # the legacy plugin body without a signature is refused unless allowed
    legacy = (FIXTURES / "legacy_webhook.json").read_bytes()
    status, _ = await daemon.request("POST", "/v1/sources/sentry", data=legacy,
                                     headers={"Content-Type": "application/json"})
    assert status == 401
    await daemon.stop()


async def test_unsigned_legacy_when_allowed_and_404_without_a_secret(start_daemon, fake_pagerduty, tmp_path):
    daemon = await start(start_daemon, tmp_path, allow_unsigned_legacy=True)
    legacy = (FIXTURES / "legacy_webhook.json").read_bytes()
    status, answer = await daemon.request("POST", "/v1/sources/sentry", data=legacy,
                                          headers={"Content-Type": "application/json"})
    assert status in (200, 202) and answer["accepted"] == 1
    await daemon.stop()
    plain = await start_daemon(RULES)
    status, answer = await plain.request("POST", "/v1/sources/sentry", data=legacy,
                                         headers={"Content-Type": "application/json"})
    assert status == 404 and "not configured" in answer["error"]
    await plain.stop()
