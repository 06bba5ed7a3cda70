"""`/metrics` of the running daemon: every series there from the first scrape."""

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
