import asyncio
import io
import json
import logging
import random
import time

import pytest
from yarl import URL

from engine.deliver import RETRYING, Deliverer, DeliveryOutcome, backoff
from engine.metrics import Registry
from engine.pagerduty import env_proxy
from engine.store import COLLAPSED, DEAD_LETTERED, DELIVERED, DELIVERED_DRY_RUN
from engine.store.sqlite import SQLiteStore
from tests.conftest import Reply, accept_writes, refuse_writes, service_key

V2_PATH = "/v2/enqueue"
V1_PATH = "/generic/2010-04-15/create_event.json"


@pytest.fixture
async def store(tmp_path):
    opened = await SQLiteStore.open(tmp_path / "state.db")
    yield opened
    await opened.close()


@pytest.fixture
def registry():
    return Registry()


@pytest.fixture
async def deliverer(store, fake_pagerduty, registry):
    """`await deliverer(**options)`: a started Deliverer against the fake, fast backoff, no pacing."""
    started = []

    async def start(**options):
        settings = {
            "service_key": service_key,
            "base_url": fake_pagerduty.url,
            "timeout": 2.0,
            "backoff_base": 0.01,
            "backoff_cap": 0.05,
            "rate_per_key": 0,
            "metrics": registry,
            "rng": random.Random(7),
            **options,
        }
        started.append(Deliverer(store, **settings))
        await started[-1].start()
        return started[-1]

    yield start
    for one in started:
        await one.stop(0)


async def enqueue(store, deliverer, *notifications):
    ids = await store.enqueue(list(notifications), now=time.time())
    deliverer.notify()
    return ids


async def idle(deliverer):
    await asyncio.wait_for(deliverer.wait_idle(), 10)


# -- pure parts --------------------------------------------------------------------------------------


def test_backoff_is_full_jitter_doubling_to_the_cap():
    rng = random.Random(3)
    for attempt, ceiling in ((0, 1.0), (1, 2.0), (3, 8.0), (9, 300.0), (5000, 300.0)):
        delays = [backoff(attempt, 1.0, 300.0, rng) for _ in range(200)]
        assert all(0.0 <= d <= ceiling for d in delays)
        assert max(delays) > ceiling * 0.8


# -- against the fake PagerDuty ----------------------------------------------------------------------


async def test_v2_and_v1_are_delivered_and_logged(store, fake_pagerduty, deliverer, registry, notification):
    v2, v1 = notification(service="db"), notification(service="web", api="v1", dedup_key="k1")
    await store.enqueue([v2, v1], now=time.time())  # before start: resumed on start
    await idle(await deliverer())
    by_path = {r.path: r for r in fake_pagerduty.requests}
    assert by_path[V2_PATH].body == {"routing_key": service_key("db"), **v2.body}  # the key put in at send time
    assert by_path[V1_PATH].body == {"service_key": service_key("web"), **v1.body}
    assert by_path[V2_PATH].headers["Content-Type"] == "application/json"
    history = {h.service: h for h in await store.history()}
    assert (history["db"].status, history["web"].status) == (202, 200)
    assert json.loads(history["db"].response)["message"] == "Event processed"
    assert json.loads(history["web"].response)["incident_key"] == "k1"
    assert history["db"].outcome == DELIVERED
    text = registry.render()
    assert 'alert_engine_notifications_sent_total{service="db"} 1' in text
    assert 'alert_engine_delivery_latency_seconds_count{service="web"} 1' in text


async def test_server_errors_are_retried_then_delivered(
    store, fake_pagerduty, deliverer, registry, notification, caplog
):
    caplog.set_level(logging.INFO, logger="alert_engine.deliver")
    fake_pagerduty.fail_next(2, status=500)
    n = notification()
    running = await deliverer()
    await enqueue(store, running, n)
    await idle(running)
    assert [r.status for r in fake_pagerduty.requests] == [500, 500, 202]
    assert all(r.body == {"routing_key": service_key("db"), **n.body} for r in fake_pagerduty.requests)
    [delivered] = await store.history()
    assert (delivered.attempts, delivered.status) == (3, 202)
    retried = registry.counter("alert_engine_notifications_retried_total", "", ["service"])
    assert retried.get(service="db") == 2
    records = [r for r in caplog.records if r.name == "alert_engine.deliver"]
    assert [r.levelname for r in records] == ["WARNING", "WARNING", "INFO"]
    for record in records:
        assert (record.rule, record.service, record.dedup_key) == ("disk-full", "db", "disk-full/host1")
        assert service_key("db") not in record.getMessage()


async def test_retry_after_is_honoured(store, fake_pagerduty, deliverer, notification):
    fake_pagerduty.fail_next(1, status=429, retry_after="0.3")
    running = await deliverer()
    await enqueue(store, running, notification())
    await idle(running)
    first, second = fake_pagerduty.requests
    assert (first.status, second.status) == (429, 202)
    assert second.at - first.at >= 0.3  # the backoff alone would be at most 0.05 s


async def test_a_timeout_is_retried(store, fake_pagerduty, deliverer, notification):
    fake_pagerduty.fail_next(1, status=202, delay=1.0)  # answers too late
    running = await deliverer(timeout=0.2)
    await enqueue(store, running, notification())
    await idle(running)
    assert len(fake_pagerduty.requests) == 2
    [delivered] = await store.history()
    assert delivered.attempts == 2


async def test_a_connection_error_is_retried_until_give_up(store, deliverer, notification):
    running = await deliverer(base_url="http://127.0.0.1:1", give_up_after=0.2)
    await enqueue(store, running, notification())
    await idle(running)
    [dead] = await store.dead_letters()
    assert dead.status is None
    assert dead.reason.startswith("gave up: not delivered within 0.2s")
    assert "Connect" in dead.response
    assert dead.attempts >= 2


async def test_bad_request_is_dead_lettered_at_once_with_the_response(
    store, fake_pagerduty, deliverer, registry, notification
):
    fake_pagerduty.fail_next(1, status=400)
    n = notification()
    hooked = []

    async def on_dead_letter(notification, reason):
        hooked.append((notification, reason))

    running = await deliverer(on_dead_letter=on_dead_letter)
    await enqueue(store, running, n)
    await idle(running)
    assert hooked == [(n, "PagerDuty rejected it: HTTP 400")]
    assert len(fake_pagerduty.requests) == 1
    [dead] = await store.dead_letters()
    assert (dead.status, dead.attempts, dead.reason) == (400, 1, "PagerDuty rejected it: HTTP 400")
    assert json.loads(dead.response)["message"] == "Event object is invalid"
    assert dead.body == n.body  # as stored: no key
    assert [h.outcome for h in await store.history()] == [DEAD_LETTERED]  # in the log, as a dead letter
    dead_lettered = registry.counter("alert_engine_notifications_dead_lettered_total", "", ["service"])
    assert dead_lettered.get(service="db") == 1


async def test_every_recorded_outcome_is_reported_by_outbox_id(store, fake_pagerduty, deliverer, notification):
    reported: list[tuple[int, DeliveryOutcome]] = []

    async def on_outcome(ident, outcome):
        assert ident not in [i for i, o in reported if o.final]  # a final outcome is the last one
        reported.append((ident, outcome))

    fake_pagerduty.fail_next(1, status=503, dedup_key="retried")
    fake_pagerduty.fail_next(1, status=400, dedup_key="refused")
    running = await deliverer(on_outcome=on_outcome)
    retried, refused, accepted = await enqueue(
        store, running, *(notification(dedup_key=k) for k in ("retried", "refused", "accepted")))
    await idle(running)
    by_id: dict[int, list[DeliveryOutcome]] = {}
    for ident, outcome in reported:
        by_id.setdefault(ident, []).append(outcome)
    assert [(o.outcome, o.status, o.final) for o in by_id[retried]] == [(RETRYING, 503, False),
                                                                        (DELIVERED, 202, True)]
    [dead] = by_id[refused]
    assert (dead.outcome, dead.status, dead.reason, dead.delivered) == (
        DEAD_LETTERED, 400, "PagerDuty rejected it: HTTP 400", False)
    assert json.loads(dead.response)["message"] == "Event object is invalid"
    [ok] = by_id[accepted]
    assert ok.delivered and json.loads(ok.response)["dedup_key"] == "accepted"


async def test_a_failing_outcome_hook_is_logged_and_delivery_goes_on(store, fake_pagerduty, deliverer, notification,
                                                                      caplog):
    async def on_outcome(ident, outcome):
        raise RuntimeError("hook broke")

    running = await deliverer(on_outcome=on_outcome)
    await enqueue(store, running, notification(dedup_key="a"), notification(dedup_key="b"))
    await idle(running)
    assert sorted(h.dedup_key for h in await store.history()) == ["a", "b"]
    assert [r.getMessage() for r in caplog.records if r.exc_info] == ["the outcome hook failed"] * 2


async def test_give_up_after_dead_letters_with_the_last_answer(
    store, fake_pagerduty, deliverer, notification
):
    fake_pagerduty.fail_next(1000, status=503)
    running = await deliverer(give_up_after=0.3, backoff_base=0.1, backoff_cap=10.0, rng=random.Random(1))
    created = time.monotonic()
    await enqueue(store, running, notification())
    await idle(running)
    [dead] = await store.dead_letters()
    assert (dead.status, dead.reason) == (503, "gave up: not delivered within 0.3s (last: HTTP 503)")
    assert dead.attempts == len(fake_pagerduty.requests) >= 3
    last_try = fake_pagerduty.requests[-1].at - created
    assert 0.3 <= last_try < 0.3 + 0.15  # the last try is made at the deadline, not a backoff past it


async def test_a_resolve_never_overtakes_its_failing_trigger_while_other_keys_proceed(
    store, fake_pagerduty, deliverer, notification
):
    fake_pagerduty.fail_next(3, status=500, delay=0.05, dedup_key="a")
    running = await deliverer()
    await enqueue(
        store,
        running,
        notification(dedup_key="a"),
        notification(dedup_key="a", action="resolve"),
        notification(dedup_key="b"),
    )
    await idle(running)
    sequence = [(r.body["dedup_key"], r.body["event_action"], r.status) for r in fake_pagerduty.requests]
    a = [x for x in sequence if x[0] == "a"]
    assert a == [("a", "trigger", 500)] * 3 + [("a", "trigger", 202), ("a", "resolve", 202)]
    assert sequence.index(("b", "trigger", 202)) < sequence.index(("a", "trigger", 202))


async def test_pacing_spaces_sends_per_key_beyond_the_burst(store, fake_pagerduty, deliverer, notification):
    running = await deliverer(rate_per_key=240, burst=2)  # 4 per second: a token every 0.25 s
    await enqueue(store, running, *[notification(dedup_key=f"k{i}") for i in range(3)])
    await fake_pagerduty.wait_for(2)
    await enqueue(store, running, notification(service="web"))  # another key: not held back
    await idle(running)
    db = [r for r in fake_pagerduty.requests if r.body["routing_key"] == service_key("db")]
    web = [r for r in fake_pagerduty.requests if r.body["routing_key"] == service_key("web")]
    assert len(db) == 3 and len(web) == 1
    assert db[1].at - db[0].at < 0.2  # the burst
    assert db[2].at - db[0].at >= 0.2  # the third waited for a token
    assert web[0].at < db[2].at


async def test_a_backlog_of_triggers_collapses_but_never_across_a_resolve(
    store, fake_pagerduty, deliverer, registry, notification
):
    running = await deliverer(rate_per_key=240, burst=1)
    chain = [notification(summary=f"t{i}") for i in range(1, 7)]
    chain += [notification(action="resolve"), notification(summary="t7")]
    await enqueue(store, running, *chain)
    await idle(running)
    sent = [
        (r.body["event_action"], r.body.get("payload", {}).get("summary"),
         r.body.get("payload", {}).get("custom_details", {}).get("collapsed_count"))
        for r in fake_pagerduty.requests
    ]
    assert sent == [
        ("trigger", "t1", None),
        ("trigger", "t6", 4),  # t2..t5 folded into t6 while waiting for a token
        ("resolve", None, None),
        ("trigger", "t7", None),
    ]
    collapsed = [h for h in await store.history() if h.outcome == COLLAPSED]
    assert len(collapsed) == 4
    counter = registry.counter("alert_engine_notifications_collapsed_total", "", ["service"])
    assert counter.get(service="db") == 4


async def test_concurrency_bounds_requests_in_flight(store, fake_pagerduty, deliverer, notification):
    fake_pagerduty.delay = 0.1
    running = await deliverer(concurrency=3)
    await enqueue(store, running, *[notification(dedup_key=f"k{i}") for i in range(10)])
    await idle(running)
    assert len(fake_pagerduty.requests) == 10
    assert fake_pagerduty.max_in_flight == 3


async def test_stop_leaves_the_undelivered_in_the_outbox_and_a_restart_sends_them(
    store, fake_pagerduty, deliverer, notification
):
    fake_pagerduty.delay = 5.0
    running = await deliverer(concurrency=1)
    await enqueue(store, running, *[notification(dedup_key=f"k{i}") for i in range(3)])
    await fake_pagerduty.wait_for(1)
    started = time.monotonic()
    await running.stop(grace=0.2)
    assert time.monotonic() - started < 1.0
    assert (await store.counts()).outbox == 3  # the one in flight too: sent again later (at least once)
    fake_pagerduty.delay = 0.0
    again = await deliverer()
    await idle(again)
    assert (await store.counts()).outbox == 0
    assert len({h.dedup_key for h in await store.history()}) == 3


async def test_stop_keeps_delivering_within_the_grace(store, fake_pagerduty, deliverer, notification):
    fake_pagerduty.delay = 0.05
    running = await deliverer(concurrency=2)
    await enqueue(store, running, *[notification(dedup_key=f"k{i}") for i in range(6)])
    started = time.monotonic()
    await running.stop(grace=5.0)
    assert time.monotonic() - started < 2.0
    assert (await store.counts()).outbox == 0
    assert len(fake_pagerduty.requests) == 6


async def test_dry_run_writes_masked_json_lines_and_sends_nothing(
    store, fake_pagerduty, deliverer, notification
):
    out = io.StringIO()
    v2, v1 = notification(service="db"), notification(service="web", api="v1")
    running = await deliverer(dry_run=out)
    await enqueue(store, running, v2, v1)
    await idle(running)
    assert fake_pagerduty.requests == []
    assert "secret-key" not in out.getvalue()
    lines = {line["service"]: line for line in map(json.loads, out.getvalue().splitlines())}
    assert lines["db"] == {
        "rule": "disk-full",
        "service": "db",
        "api": "v2",
        "url": fake_pagerduty.url + V2_PATH,
        "dedup_key": "disk-full/host1",
        "action": "trigger",
        "body": {**v2.body, "routing_key": "****0000"},
    }
    assert lines["web"]["body"]["service_key"] == "****0000"
    assert lines["web"]["url"] == fake_pagerduty.url + V1_PATH
    assert {h.outcome for h in await store.history()} == {DELIVERED_DRY_RUN}


async def test_the_environment_proxy_is_used_and_no_proxy_respected(
        store, fake_pagerduty, deliverer, notification, monkeypatch):
    """HTTP(S)_PROXY works: the fake stands in for the proxy, PagerDuty's host does not resolve at all."""
    monkeypatch.setenv("HTTP_PROXY", fake_pagerduty.url)
    monkeypatch.delenv("NO_PROXY", raising=False)
    monkeypatch.delenv("no_proxy", raising=False)
    assert env_proxy("http://events.pagerduty.invalid")[0] == URL(fake_pagerduty.url)
    await store.enqueue([notification()], now=time.time())
    await idle(await deliverer(base_url="http://events.pagerduty.invalid"))
    [request] = fake_pagerduty.requests
    assert request.headers["Host"] == "events.pagerduty.invalid" and request.status == 202
    monkeypatch.setenv("NO_PROXY", "events.pagerduty.invalid")
    assert env_proxy("http://events.pagerduty.invalid") == (None, None)


class ScriptedJitter(random.Random):
    """Backoff jitter that draws the given waits in order (the first failure's, then the second's)."""

    def __init__(self, *waits: float) -> None:
        super().__init__(0)
        self.waits = list(waits)

    def uniform(self, a: float, b: float) -> float:
        return self.waits.pop(0)


async def test_a_retry_that_goes_through_wakes_the_service_s_other_waiting_retries(
        store, fake_pagerduty, deliverer, notification):
    """After an outage, one success means PagerDuty answers again: the rest need not sit out their backoff."""
    fake_pagerduty.fail_next(1, 500, dedup_key="a")
    fake_pagerduty.fail_next(1, 500, dedup_key="b")
    running = await deliverer(backoff_base=30, backoff_cap=30, rng=ScriptedJitter(0.1, 30))
    later = notification(service="db", dedup_key="later")  # not failed: its own due time is kept
    await enqueue(store, running, notification(dedup_key="a"), notification(dedup_key="b"))
    await store.enqueue([later], now=time.time() + 60)
    # one of the two drew a 30 s backoff: both arriving within 10 s means the other's success woke it
    received = await fake_pagerduty.wait_until(
        lambda rs: sorted(r.body["dedup_key"] for r in rs if r.status == 202) == ["a", "b"], timeout=10)
    for key in "ab":
        assert [r.status for r in received if r.body["dedup_key"] == key] == [500, 202]
    async with asyncio.timeout(5):  # b's completion is written after PagerDuty's answer: read until it is
        while (counts := await store.counts()).history < 2:
            pass
    assert counts.outbox == 1  # `later` still waits for its own time


async def test_a_retry_that_goes_through_does_not_cut_short_pagerduty_s_retry_after(
        store, fake_pagerduty, deliverer, notification):
    fake_pagerduty.fail_next(1, 500, retry_after="0.1", dedup_key="a")
    fake_pagerduty.fail_next(1, 429, retry_after="1", dedup_key="b")
    running = await deliverer()
    await enqueue(store, running, notification(dedup_key="a"), notification(dedup_key="b"))
    received = await fake_pagerduty.wait_until(
        lambda rs: sorted(r.body["dedup_key"] for r in rs if r.status == 202) == ["a", "b"], timeout=10)
    b_times = [r.at for r in received if r.body["dedup_key"] == "b"]
    assert b_times[1] - b_times[0] >= 0.9  # a's success did not wake b before its Retry-After


# -- keys: put in at send time, from the rule set serving then ---------------------------------------


async def test_the_key_is_looked_up_at_send_time_so_a_rotated_key_reaches_retries_and_dead_letters(
        store, fake_pagerduty, deliverer, notification):
    keys = {"db": "old-key-of-db-0001"}
    fake_pagerduty.fail_next(1, status=500, dedup_key="a")
    fake_pagerduty.fail_next(1, status=400, dedup_key="b")
    running = await deliverer(service_key=keys.get, backoff_base=0.5, backoff_cap=0.5, rng=ScriptedJitter(0.5))
    await enqueue(store, running, notification(dedup_key="a"), notification(dedup_key="b"))
    await fake_pagerduty.wait_for(2)
    keys["db"] = "new-key-of-db-0002"  # a reload rotated the key while a waited for its retry
    await idle(running)
    [dead] = await store.dead_letters()
    await store.retry_dead_letter(dead.id, now=time.time())
    running.notify()
    await idle(running)
    sent = [(r.body["dedup_key"], r.body["routing_key"], r.status) for r in fake_pagerduty.requests]
    assert sent == [("a", "old-key-of-db-0001", 500), ("b", "old-key-of-db-0001", 400),
                    ("a", "new-key-of-db-0002", 202), ("b", "new-key-of-db-0002", 202)]
    assert [h.body for h in await store.history()] == [notification(dedup_key=k).body for k in "ba"]


async def test_a_notification_whose_service_is_gone_is_dead_lettered_and_reported(
        store, fake_pagerduty, deliverer, registry, notification):
    hooked = []

    async def on_dead_letter(n, reason):
        hooked.append((n.service, reason))

    keys = {"db": service_key("db")}
    running = await deliverer(service_key=keys.get, on_dead_letter=on_dead_letter)
    await enqueue(store, running, notification(service="db"), notification(service="gone"))
    await idle(running)
    assert [r.body["routing_key"] for r in fake_pagerduty.requests] == [service_key("db")]
    [dead] = await store.dead_letters()
    assert (dead.service, dead.reason, dead.status) == ("gone", "service 'gone' no longer configured", None)
    assert hooked == [("gone", "service 'gone' no longer configured")]
    dead_lettered = registry.counter("alert_engine_notifications_dead_lettered_total", "", ["service"])
    assert dead_lettered.get(service="gone") == 1


async def test_dry_run_shows_the_current_key_masked(store, fake_pagerduty, deliverer, notification):
    out = io.StringIO()
    running = await deliverer(dry_run=out, service_key={"db": "rotated-key-of-db-9876"}.get)
    await enqueue(store, running, notification())
    await idle(running)
    [line] = map(json.loads, out.getvalue().splitlines())
    assert line["body"]["routing_key"] == "****9876"


async def test_an_answer_that_quotes_the_key_is_kept_without_it(store, fake_pagerduty, deliverer, notification):
    key = service_key("db")
    fake_pagerduty.fail_next(1, status=400, body=f"unknown routing key {key}")
    running = await deliverer()
    await enqueue(store, running, notification())
    await idle(running)
    [dead] = await store.dead_letters()
    assert dead.response == "unknown routing key ****0000"


# -- storage failures: no resend storm ---------------------------------------------------------------


async def test_a_page_sent_while_the_database_refuses_writes_is_not_sent_again_and_is_recorded_later(
        store, fake_pagerduty, deliverer, notification, tmp_path, caplog):
    """Disk full or read-only: what PagerDuty accepted (or refused, or failed) stays claimed here and its
    recording is retried with backoff; nothing is sent twice, and the log says it once."""
    caplog.set_level(logging.INFO, logger="alert_engine.deliver")
    fake_pagerduty.fail_next(1, status=500, dedup_key="failing")
    fake_pagerduty.fail_next(1, status=400, dedup_key="refused")
    keys = ["ok-1", "ok-2", "ok-3", "failing", "refused"]
    await store.enqueue([notification(dedup_key=k) for k in keys], now=time.time())
    refuse_writes(tmp_path / "state.db")
    running = await deliverer(backoff_base=0.05, backoff_cap=0.2)
    await fake_pagerduty.wait_for(5)
    with pytest.raises(TimeoutError):  # a storm would be hundreds of requests within this
        await fake_pagerduty.wait_for(6, timeout=1.5)
    accept_writes(tmp_path / "state.db")
    await idle(running)
    sent = sorted((r.body["dedup_key"], r.status) for r in fake_pagerduty.requests)
    assert sent == sorted([("ok-1", 202), ("ok-2", 202), ("ok-3", 202), ("failing", 500), ("failing", 202),
                           ("refused", 400)])
    assert sorted((h.dedup_key, h.outcome) for h in await store.history()) == [
        ("failing", DELIVERED), ("ok-1", DELIVERED), ("ok-2", DELIVERED), ("ok-3", DELIVERED),
        ("refused", DEAD_LETTERED)]
    assert [d.dedup_key for d in await store.dead_letters()] == ["refused"]
    errors = [r for r in caplog.records if r.name == "alert_engine.deliver" and r.levelno >= logging.ERROR
              and "refuses writes" in r.getMessage()]
    assert len(errors) == 1
    assert any("takes writes again" in r.getMessage() for r in caplog.records)


async def test_a_refused_collapse_sends_the_head_as_it_is(store, fake_pagerduty, deliverer, notification, tmp_path):
    await store.enqueue([notification(summary=f"t{i}") for i in range(3)], now=time.time())
    refuse_writes(tmp_path / "state.db", "ROW.id > 1")  # the head's own completion goes through
    running = await deliverer(rate_per_key=6000, burst=0)  # every head waits for a token: collapse first
    [first] = await fake_pagerduty.wait_for(1)
    assert first.body["payload"]["summary"] == "t0"
    accept_writes(tmp_path / "state.db")
    await idle(running)
    assert [r.body["payload"]["summary"] for r in fake_pagerduty.requests][-1] == "t2"
    assert (await store.counts()).outbox == 0


# -- fair delivery -----------------------------------------------------------------------------------


async def test_a_hanging_service_delays_another_by_at_most_one_request_timeout(
        store, fake_pagerduty, deliverer, notification):
    timeout = 2.0
    fake_pagerduty.reply_next(*[Reply(202, {}, delay=60, dedup_key=f"hang-{i}") for i in range(40)])
    running = await deliverer(timeout=timeout, concurrency=16, backoff_base=30, backoff_cap=30)
    await enqueue(store, running, *[notification(service="hung", dedup_key=f"hang-{i}") for i in range(40)])
    await fake_pagerduty.wait_for(16)  # every slot taken by the hanging service
    started = time.monotonic()
    await enqueue(store, running, *[notification(service="web", dedup_key=f"web-{i}") for i in range(60)])
    received = await fake_pagerduty.wait_until(
        lambda rs: sum(r.body["dedup_key"].startswith("web-") for r in rs) == 60, timeout=4 * timeout)
    web = [r.at - started for r in received if r.body["dedup_key"].startswith("web-")]
    assert max(web) < timeout * 1.5  # the first slot the hanging service frees goes to web, and so on


async def test_a_key_holds_every_slot_only_while_no_other_key_has_work(store, fake_pagerduty, deliverer, notification):
    fake_pagerduty.delay = 0.2
    running = await deliverer(concurrency=4)
    await enqueue(store, running, *[notification(service="a", dedup_key=f"a{i}") for i in range(8)])
    await fake_pagerduty.wait_for(4)
    assert fake_pagerduty.max_in_flight == 4
    await enqueue(store, running, *[notification(service="b", dedup_key=f"b{i}") for i in range(4)])
    await idle(running)
    order = [r.body["dedup_key"][0] for r in fake_pagerduty.requests]
    assert order[:4] == ["a"] * 4
    assert order[4:8].count("b") >= 2  # the freed slots are shared, not handed to a's queue first


async def test_retry_after_holds_back_every_chain_of_the_key_but_no_other_key(
        store, fake_pagerduty, deliverer, notification):
    fake_pagerduty.fail_next(1, status=429, retry_after="1.5", dedup_key="first")
    running = await deliverer()
    await enqueue(store, running, notification(dedup_key="first"))
    [asked] = await fake_pagerduty.wait_for(1)
    await enqueue(store, running, *[notification(dedup_key=f"k{i}") for i in range(10)],
                  notification(service="web", dedup_key="other"))
    await idle(running)
    db = [r for r in fake_pagerduty.requests if r.body["routing_key"] == service_key("db")][1:]
    other = next(r for r in fake_pagerduty.requests if r.body["dedup_key"] == "other")
    assert len(db) == 11 and all(r.status == 202 for r in db)
    assert min(r.at for r in db) - asked.at >= 1.5  # none before PagerDuty's Retry-After ended
    assert other.at - asked.at < 1.0  # another key went on
    history = {h.dedup_key: h for h in await store.history()}
    assert history["k0"].attempts == 1  # waiting was not counted as a failed attempt
