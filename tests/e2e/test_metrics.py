"""`/metrics` of the running daemon: every series there from the first scrape, the outbox's oldest age,
and retries that waited when the daemon stopped going out at once after a restart."""

from __future__ import annotations

import aiohttp
from prometheus_client import CONTENT_TYPE_LATEST
from prometheus_client.parser import text_string_to_metric_families

RULES = """\
services:
  pay: {service_key: "${PD_PAY}"}
  sre: {service_key: "${PD_SRE}"}
rules:
  - name: disk
    match: {field: type, equals: disk}
    services: [sre]
    group_by: [host]
"""

BY_SERVICE = ("alert_engine_notifications_enqueued_total", "alert_engine_notifications_sent_total",
              "alert_engine_notifications_retried_total", "alert_engine_notifications_dead_lettered_total",
              "alert_engine_notifications_collapsed_total", "alert_engine_delivery_latency_seconds_count")
RETRIED_ONCE = 'alert_engine_notifications_retried_total{service="sre"} 1.0'


def parse(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


async def scrape(daemon) -> tuple[str, dict[tuple[str, tuple[tuple[str, str], ...]], float]]:
    async with aiohttp.ClientSession() as session, session.get(daemon.url + "/metrics") as response:
        assert response.status == 200
        return response.headers["Content-Type"], parse(await response.text())


async def test_the_first_scrape_has_every_counter_at_zero_and_a_reload_adds_its_services(start_daemon, tmp_path):
    daemon = await start_daemon(RULES)
    content_type, first = await scrape(daemon)
    assert content_type == CONTENT_TYPE_LATEST
    for name in BY_SERVICE:
        for service in ("pay", "sre"):
            assert first[(name, (("service", service),))] == 0, (name, service)
    for name in ("alert_engine_events_received_total", "alert_engine_events_matched_total",
                 "alert_engine_state_rollbacks_total", "alert_engine_outbox_depth", "alert_engine_dead_letters",
                 "alert_engine_outbox_oldest_age_seconds"):
        assert first[(name, ())] == 0, name
    for result in ("success", "failure"):
        assert first[("alert_engine_reloads_total", (("result", result),))] == 0
    assert first[("process_cpu_seconds_total", ())] > 0
    assert any(name == "python_info" for name, _ in first)
    with_ops = RULES.replace("services:\n", 'services:\n  ops: {service_key: "${PD_OPS}"}\n')
    (tmp_path / "rules" / "rules.yaml").write_text(with_ops)
    status, _ = await daemon.request("POST", "/-/reload")
    assert status == 200
    _, reloaded = await scrape(daemon)
    assert reloaded[("alert_engine_notifications_dead_lettered_total", (("service", "ops"),))] == 0
    assert reloaded[("alert_engine_reloads_total", (("result", "success"),))] == 1
    await daemon.stop()


async def test_a_page_waiting_for_a_retry_shows_in_oldest_age_and_goes_out_at_once_after_a_restart(
        start_daemon, fake_pagerduty):
    fake_pagerduty.fail_next(1, 503, retry_after="3600")  # an hour's wait, the process's to remember
    daemon = await start_daemon(RULES)
    await daemon.post_events({"type": "disk", "host": "a"})
    await fake_pagerduty.wait_for(1)
    waiting = parse(await daemon.poll("/metrics", lambda t: RETRIED_ONCE in t))
    assert waiting[("alert_engine_outbox_depth", ())] == 1
    assert waiting[("alert_engine_outbox_oldest_age_seconds", ())] > 0
    assert await daemon.stop() == 0
    await daemon.start()
    received = await fake_pagerduty.wait_for(2, timeout=5)
    assert [r.status for r in received] == [503, 202]
    assert received[1].body == received[0].body
    done = parse(await daemon.poll("/metrics", lambda t: 'sent_total{service="sre"} 1.0' in t))
    assert done[("alert_engine_outbox_depth", ())] == 0
    assert done[("alert_engine_outbox_oldest_age_seconds", ())] == 0
    await daemon.stop()
    assert "1 notification(s) waiting for a retry when the daemon stopped: due now" in daemon.output()


async def test_a_throttled_trigger_is_counted_as_a_hold_by_its_reason(start_daemon, fake_pagerduty):
    daemon = await start_daemon(RULES + """\
  - name: deploy
    match: {field: type, equals: deploy}
    services: [pay]
    group_by: [app]
    throttle: 1h
""")
    _, first = await scrape(daemon)
    for reason in ("throttled", "muted", "silenced", "inhibited"):
        assert first[("alert_engine_holds_total", (("reason", reason),))] == 0, reason
    status, answer = await daemon.post_events([{"type": "deploy", "app": "shop"}] * 2)
    assert (status, answer["notifications"]) == (202, 1)  # the second is held by the throttle
    await fake_pagerduty.wait_for(1)
    _, after = await scrape(daemon)  # counted once the batch is committed, before the answer
    assert after[("alert_engine_holds_total", (("reason", "throttled"),))] == 1
    assert after[("alert_engine_holds_total", (("reason", "muted"),))] == 0
    await daemon.stop()
