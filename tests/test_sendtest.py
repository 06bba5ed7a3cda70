"""engine/sendtest.py: a test page waits for PagerDuty's answer through the real intake, store and deliverer
(against the fake PagerDuty); its resolve follows only an accepted trigger."""

from __future__ import annotations

import json
import random
import time

import pytest

from engine.deliver import RETRYING, Deliverer
from engine.intake import Intake
from engine.metrics import Registry
from engine.own_pages import TEST_RULE
from engine.rules.ruleset import Service
from engine.sendtest import NO_RESOLVE, SendTest
from engine.state import State
from engine.store import DEAD_LETTERED, DELIVERED
from engine.store.sqlite import SQLiteStore
from tests.conftest import Reply, service_key

SRE = Service(name="sre", api="v2", key=service_key("sre"))
OPS = Service(name="ops", key=service_key("ops"), api="v1")


@pytest.fixture
async def send_test(tmp_path, fake_pagerduty):
    """(a SendTest on a real store and intake, its outcomes reported by a real deliverer; the store)"""
    store = await SQLiteStore.open(tmp_path / "state.db")
    intake: Intake | None = None
    tests = SendTest(lambda pages, at: intake.enqueue(pages, at))
    deliverer = Deliverer(store, service_key={"sre": SRE.key, "ops": OPS.key}.get, base_url=fake_pagerduty.url,
                          timeout=2.0, backoff_base=0.01, backoff_cap=0.05, rate_per_key=0, rng=random.Random(7),
                          on_outcome=tests.outcome)
    intake = Intake(store, State(), deliverer.notify, Registry())
    await deliverer.start()
    yield tests, store
    await deliverer.stop(0)
    await store.close()


async def send(rig: tuple[SendTest, SQLiteStore], service: Service = SRE, *, resolve_after: float = 0.2,
               wait: float = 5.0):
    return await rig[0].send(service, resolve_after=resolve_after, wait=wait, host="h", now=time.time())


async def test_an_accepted_test_page_gets_pagerdutys_answer_then_its_resolve(send_test, fake_pagerduty):
    asked = time.monotonic()
    result = await send(send_test)
    assert (result.outcome.outcome, result.outcome.status) == (DELIVERED, 202)
    assert json.loads(result.outcome.response) == {"status": "success", "message": "Event processed",
                                                   "dedup_key": result.dedup_key}
    assert result.resolve == "queued: due 0.2s after the request"
    trigger, resolve = await fake_pagerduty.wait_for(2)
    assert trigger.body["payload"]["summary"] == "alert-engine test page for service sre"  # no claim made
    assert trigger.body["routing_key"] == SRE.key
    assert (resolve.body["event_action"], resolve.body["dedup_key"]) == ("resolve", result.dedup_key)
    assert resolve.at - asked >= 0.2


async def test_a_refused_test_page_gets_pagerdutys_reason_and_no_resolve(send_test, fake_pagerduty):
    fake_pagerduty.fail_next(1, 400)
    result = await send(send_test, OPS, resolve_after=0.01)
    assert (result.outcome.outcome, result.outcome.status) == (DEAD_LETTERED, 400)
    assert result.refusal() == ("PagerDuty refused the test page: HTTP 400: Event object is invalid: "
                                "'payload.summary' is missing or blank")
    assert result.resolve.startswith("not queued: PagerDuty did not take the trigger")
    [letter] = await send_test[1].dead_letters()
    assert (letter.rule, letter.dedup_key) == (TEST_RULE, result.dedup_key)
    assert (await send_test[1].counts()).outbox == 0  # a resolve would be queued before the answer
    assert len(fake_pagerduty.requests) == 1


async def test_a_page_still_retrying_says_so_and_resolves_once_delivered(send_test, fake_pagerduty):
    fake_pagerduty.fail_next(1, 500)
    fake_pagerduty.reply_next(Reply(202, {"status": "success"}, delay=0.6))  # the retry, answered late
    result = await send(send_test, resolve_after=0.01, wait=0.3)
    assert result.outcome is None
    assert (result.last.outcome, result.last.status) == (RETRYING, 500)
    assert result.still_queued(0.3) == (
        "PagerDuty has not accepted the test page within 0.3s (the last attempt got HTTP 500: HTTP 500): it is "
        "still queued and will be retried until pagerduty.give_up_after")
    assert result.resolve.startswith("queued once PagerDuty accepts the trigger")
    received = await fake_pagerduty.wait_for(3)
    assert [r.body["event_action"] for r in received] == ["trigger", "trigger", "resolve"]


async def test_without_resolve_after_or_wait_nothing_more_is_asked(send_test, fake_pagerduty):
    result = await send(send_test, resolve_after=0)
    assert result.outcome.delivered and result.resolve == NO_RESOLVE
    queued = await send(send_test, wait=0)
    assert (queued.outcome, queued.last) == (None, None)
    assert queued.resolve.startswith("queued once PagerDuty accepts the trigger")
    assert queued.dedup_key != result.dedup_key  # each test page is an incident of its own
    received = await fake_pagerduty.wait_for(3)  # the first trigger; the second, and then its resolve
    assert [(r.body["dedup_key"], r.body["event_action"]) for r in received] == [
        (result.dedup_key, "trigger"), (queued.dedup_key, "trigger"), (queued.dedup_key, "resolve")]
