"""engine/own_pages.py: the pages the engine makes itself."""

from __future__ import annotations

from engine import own_pages  # its `test_page` imported by name would be collected as a test
from engine.own_pages import SELF_RULE, TEST_RULE, dead_letter_alert, self_alert
from engine.rules.ruleset import Service
from tests.conftest import make_notification, service_key

SRE = Service(name="sre", api="v2", key=service_key("sre"))
OPS = Service(name="ops", api="v1", key=service_key("ops"))
NOW = 1_700_000_000.25


def test_a_test_page_claims_nothing_pagerduty_has_not_answered_yet():
    trigger, resolve = own_pages.test_page(OPS, host="h1", now=NOW)
    assert trigger.summary == "alert-engine test page for service ops"
    assert "works" not in trigger.json()
    assert trigger.dedup_key == resolve.dedup_key == "alert-engine/send-test/ops/1700000000250000"
    assert (trigger.rule, trigger.action, resolve.action) == (TEST_RULE, "trigger", "resolve")
    assert own_pages.test_page(OPS, host="h1", now=NOW + 0.001)[0].dedup_key != trigger.dedup_key


def test_a_dead_lettered_test_page_raises_the_dead_letter_self_alert():
    trigger, _ = own_pages.test_page(OPS, host="h1", now=NOW)
    [page] = dead_letter_alert([SRE], trigger, "PagerDuty rejected it: HTTP 400", host="h1", now=NOW)
    assert (page.rule, page.service, page.dedup_key) == (SELF_RULE, "sre", "alert-engine/dead-letter/ops")
    assert page.body["payload"]["severity"] == "critical"
    details = page.body["payload"]["custom_details"]
    assert (details["rule"], details["dedup_key"]) == (TEST_RULE, trigger.dedup_key)


def test_a_dead_lettered_self_alert_raises_nothing():
    [own] = self_alert([SRE], "alert-engine/storage", "cannot store", {}, host="h1", now=NOW)
    assert dead_letter_alert([SRE], own, "PagerDuty rejected it: HTTP 400", host="h1", now=NOW) == []
    rule_page = make_notification(service="ops", rule="disk-full")
    assert [p.dedup_key for p in dead_letter_alert([SRE], rule_page, "x", host="h1", now=NOW)] == [
        "alert-engine/dead-letter/ops"]
