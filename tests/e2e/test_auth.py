"""Scoped API tokens through the real daemon: 401 without a known token, 403 without the scope, Sentry by
its signature alone, /metrics open unless configured, admin actions logged by the token's name (never the
token), which is also a silence's default created_by."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

from tests.e2e.conftest import Daemon, run_cli
from tests.e2e.test_sentry import SECRET, fresh_alert, signed

RULES = """\
services:
  sre: {service_key: "${PD_SRE}"}
rules:
  - name: disk
    match: {field: type, equals: disk}
    services: [sre]
    group_by: [host]
  - name: sentry
    match: {field: source, equals: sentry}
    services: [sre]
"""

RELAY, GRAFANA, ONCALL, LEGACY = "tok-relay-0123456789", "tok-grafana-0123456789", "tok-oncall-0123456789", \
    "tok-legacy-0123456789"
TOKENS = f"""\
# token        scopes   name
{RELAY}   events   sentry relay
{GRAFANA} read
{ONCALL}  admin    on-call
{LEGACY}
"""
SECRETS = (RELAY, GRAFANA, ONCALL, LEGACY, SECRET)


async def start(start_daemon: Any, tmp_path: Path, **ingest: Any) -> Daemon:
    (tmp_path / "tokens").write_text(TOKENS)
    (tmp_path / "sentry-secret").write_text(f"{SECRET}\n")
    return await start_daemon(RULES, ingest={"tokens_file": str(tmp_path / "tokens"), **ingest},
                              sources={"sentry": {"client_secret_file": str(tmp_path / "sentry-secret")}})


async def test_each_route_answers_by_the_scope_of_the_token(start_daemon, fake_pagerduty, tmp_path):
    daemon = await start(start_daemon, tmp_path)
    event = {"json": {"type": "disk", "host": "a"}}
    # (method, path, body) -> the status for: no token, an unknown token, relay (events), grafana (read),
    # on-call (admin), legacy (a bare token: events)
    cases: list[tuple[str, str, dict[str, Any], tuple[int, ...]]] = [
        ("POST", "/v1/events", event, (401, 401, 202, 403, 403, 202)),
        ("GET", "/v1/status", {}, (401, 401, 403, 200, 200, 403)),
        ("GET", "/v1/rules", {}, (401, 401, 403, 200, 200, 403)),
        ("GET", "/v1/notifications", {}, (401, 401, 403, 200, 200, 403)),
        ("GET", "/v1/dead-letters", {}, (401, 401, 403, 200, 200, 403)),
        ("GET", "/v1/silences", {}, (401, 401, 403, 200, 200, 403)),
        ("DELETE", "/v1/dead-letters", {}, (401, 401, 403, 403, 200, 403)),
        ("POST", "/-/reload", {}, (401, 401, 403, 403, 200, 403)),
        ("GET", "/healthz", {}, (200,) * 6),
        ("GET", "/readyz", {}, (200,) * 6),
        ("GET", "/metrics", {}, (200,) * 6),
    ]
    tokens = (None, "tok-unknown-0123456789", RELAY, GRAFANA, ONCALL, LEGACY)
    for method, path, body, wanted in cases:
        got = []
        for token in tokens:
            status, answer = await daemon.request(method, path, token=token, **body)
            got.append(status)
            if status in (401, 403):
                assert answer["scope"] == ("events" if path == "/v1/events" else
                                           "read" if method == "GET" else "admin"), answer
        assert tuple(got) == wanted, (method, path, got)
    # a wrong scheme is no token; the refusals said which scope, and nothing refused was queued
    status, answer = await daemon.request("GET", "/v1/status", headers={"Authorization": f"Basic {GRAFANA}"})
    assert (status, answer["error"]) == (401, "missing or invalid bearer token: this needs a token with the "
                                              "'read' scope")
    status, answer = await daemon.request("POST", "/-/reload", token=GRAFANA)
    assert answer["error"] == "token 'line 3' lacks the 'admin' scope this needs"
    await fake_pagerduty.wait_for(2)
    _, history = await daemon.request("GET", "/v1/notifications", token=ONCALL)
    assert sorted(h["dedup_key"] for h in history["notifications"]) == ["disk/a", "disk/a"]  # relay, legacy

    await daemon.stop()
    log = daemon.output()
    assert "/tokens:5:1: warning: a token without scopes may only send events" in log  # at start, located
    assert not any(secret in log for secret in SECRETS)


async def test_sentry_is_authenticated_by_its_signature_alone_even_with_a_tokens_file(
        start_daemon, fake_pagerduty, tmp_path):
    daemon = await start(start_daemon, tmp_path)
    alert = fresh_alert("event_alert")
    status, answer = await daemon.request("POST", "/v1/sources/sentry", data=alert, headers=signed(alert))
    assert (status, answer) == (202, {"accepted": 1, "matched": 1, "notifications": 1})
    await fake_pagerduty.wait_for(1)
    # a bearer token, even admin's, does not stand in for the signature
    again = json.dumps({**json.loads(alert), "note": "again"}).encode()
    headers = {**signed(again, "not-the-secret"), "Authorization": f"Bearer {ONCALL}"}
    status, answer = await daemon.request("POST", "/v1/sources/sentry", data=again, headers=headers)
    assert status == 401 and answer["error"].startswith("invalid Sentry-Hook-Signature")
    await daemon.stop()


async def test_metrics_need_read_when_configured(start_daemon, fake_pagerduty, tmp_path):
    daemon = await start(start_daemon, tmp_path, metrics_need_read=True)
    results = await asyncio.gather(*(daemon.request("GET", "/metrics", token=t) for t in (None, RELAY, GRAFANA)))
    assert [status for status, _ in results] == [401, 403, 200]
    assert "alert_engine_rules_loaded 2" in results[2][1]
    status, _ = await daemon.request("GET", "/healthz")
    assert status == 200
    await daemon.stop()


async def test_admin_actions_are_logged_by_token_name_which_is_a_silences_default_creator(
        start_daemon, fake_pagerduty, tmp_path):
    daemon = await start(start_daemon, tmp_path)
    match = {"field": "event.host", "equals": "a"}
    status, by_token = await daemon.request("POST", "/v1/silences", token=ONCALL, json={"match": match, "until": "1h"})
    assert (status, by_token["created_by"]) == (201, "on-call")
    status, named = await daemon.request("POST", "/v1/silences", token=ONCALL,
                                         json={"match": match, "until": "1h", "created_by": "ana"})
    assert (status, named["created_by"]) == (201, "ana")
    cli = await run_cli("silence", "add", "--api", daemon.url, "--match", "{field: rule, equals: disk}",
                        "--until", "2h", "--created-by", "", env={"ALERT_ENGINE_TOKEN": ONCALL})
    assert cli.returncode == 0, cli.stderr
    _, listed = await daemon.request("GET", "/v1/silences", token=GRAFANA)
    assert [s["created_by"] for s in listed["silences"]] == ["on-call", "ana", "on-call"]
    status, _ = await daemon.request("DELETE", f"/v1/silences/{named['id']}", token=ONCALL)
    assert status == 200
    refused = await daemon.cli("send-test", "sre", "--token", RELAY)
    assert refused.returncode == 1
    assert "HTTP 403: token 'sentry relay' lacks the 'admin' scope this needs" in refused.stderr
    await daemon.stop()

    lines = [json.loads(line) for line in daemon.output().splitlines() if line.startswith("{")]
    admin = [(x["msg"], x.get("token_name")) for x in lines if x["logger"] == "alert_engine.server"]
    assert admin == [
        ("POST /v1/silences by token 'on-call': HTTP 201", "on-call"),
        ("POST /v1/silences by token 'on-call': HTTP 201", "on-call"),
        ("POST /v1/silences by token 'on-call': HTTP 201", "on-call"),
        (f"DELETE /v1/silences/{named['id']} by token 'on-call': HTTP 200", "on-call"),
        ("refused POST /v1/test: token 'sentry relay' lacks the 'admin' scope", "sentry relay"),
    ]
    assert not any(secret in daemon.output() for secret in SECRETS)
