"""No service key anywhere the daemon keeps or shows things: not in its database files (with the WAL),
not in its logs, not in any GET answer of its API. Keys are put into bodies at send time only, from the
rules serving then, and a database written by an older version loses the keys it kept."""

from __future__ import annotations

import json
from pathlib import Path

from tests.conftest import FakePagerDuty, make_notification, service_key, write_old_database
from tests.e2e.conftest import Daemon

RULES = """\
services:
  pay: {service_key: "${PD_PAY}"}
  sre: {service_key: "${PD_SRE}"}
  ops: {service_key: "${PD_OPS}", api: v1}
rules:
  - name: pay-5xx
    match: {field: status, gte: 500}
    services: [pay, ops]
    group_by: [host]
"""

CONFIGURED = [service_key(s) for s in ("pay", "sre", "ops")]
OLD_PAY_KEY = "rotated-away-pay-key-0001"  # what an older version stored, since replaced
RETIRED_KEY = "key-of-a-retired-service-0002"
GETS = ["/healthz", "/readyz", "/metrics", "/v1/rules", "/v1/status", "/v1/notifications",
        "/v1/dead-letters", "/v1/silences"]


def leaks(texts: dict[str, bytes], keys: list[str]) -> list[tuple[str, str]]:
    return [(where, key) for where, text in texts.items() for key in keys if key.encode() in text]


def database_files(state: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(state.glob("alert-engine.db*"))}


async def api_answers(daemon: Daemon) -> dict[str, bytes]:
    answers = {}
    for path in GETS:
        _, answer = await daemon.request("GET", path)
        answers[path] = (answer if isinstance(answer, str) else json.dumps(answer)).encode()
    return answers


async def test_no_key_in_the_database_files_logs_or_api_answers(start_daemon, fake_pagerduty: FakePagerDuty,
                                                                tmp_path: Path):
    state = tmp_path / "state"
    state.mkdir()
    queued = make_notification(service="pay", dedup_key="queued-before-upgrade")
    retired = make_notification(service="retired", dedup_key="for-a-retired-service")
    write_old_database(state / "alert-engine.db", 2, [(queued, OLD_PAY_KEY), (retired, RETIRED_KEY)])
    everything = [*CONFIGURED, OLD_PAY_KEY, RETIRED_KEY]
    fake_pagerduty.fail_next(1, status=400, dedup_key="pay-5xx/refused")

    daemon = await start_daemon(RULES, self_alerts={"services": ["sre"]})
    status, _ = await daemon.post_events([{"status": 503, "host": "web-1"}, {"status": 500, "host": "refused"}])
    assert status == 202
    wanted = {"queued-before-upgrade", "pay-5xx/web-1", "pay-5xx/refused", "alert-engine/dead-letter/retired"}
    received = await fake_pagerduty.wait_until(
        lambda rs: wanted <= {r.body.get("dedup_key") or r.body.get("incident_key") for r in rs})
    key_of = {r.body.get("dedup_key") or r.body.get("incident_key"): r.body.get("routing_key")
              or r.body.get("service_key") for r in received}
    assert key_of["queued-before-upgrade"] == service_key("pay")  # the key serving now, not the stored one
    assert key_of["alert-engine/dead-letter/retired"] == service_key("sre")  # the dead letter's self-alert
    dead = await daemon.poll("/v1/dead-letters", lambda d: len(d["dead_letters"]) == 4)  # 2 old, 2 new
    reasons = {d["dedup_key"]: d["reason"] for d in dead["dead_letters"] if d["reason"] != "x"}
    assert reasons == {"for-a-retired-service": "service 'retired' no longer configured",
                       "pay-5xx/refused": "PagerDuty rejected it: HTTP 400"}
    await daemon.poll("/v1/status", lambda s: s["outbox"] == 0)

    assert leaks(database_files(state), everything) == []
    assert leaks(await api_answers(daemon), everything) == []
    assert await daemon.stop() == 0
    assert leaks({"log": daemon.output().encode()}, everything) == []
    assert leaks(database_files(state), everything) == []
