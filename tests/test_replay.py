"""engine/replay.py: the simulated clock `alert-engine test` and `eval` share, and eval's timelines."""

from __future__ import annotations

import pytest

from engine.decisions import Hold, Page, Resolve
from engine.replay import DEFAULT_START, eval_timeline, notifications, play
from engine.rules import load_ruleset
from engine.rules.ruleset import RuleSet
from engine.sources.events import EventError

KEY = "0123456789abcdef0123456789abcdef"


def load(tmp_path) -> RuleSet:
    path = tmp_path / "rules.yaml"
    path.write_text(f"""\
services:
  pay: {{service_key: "{KEY}"}}
rules:
  - name: deploys
    match: {{field: type, equals: deploy}}
    services: [pay]
    group_by: [app]
    throttle: 10m
    resolve: {{after: 5m}}
""")
    result = load_ruleset([str(path)])
    assert result.ruleset is not None, [str(e) for e in result.errors]
    return result.ruleset


def test_play_decides_in_time_order_and_names_the_event_of_each_decision(tmp_path):
    rs = load(tmp_path)
    shop, cart = {"type": "deploy", "app": "shop"}, {"type": "deploy", "app": "cart"}
    played = play(rs, [(120.0, shop, None), (0.0, shop, None), (0.0, cart, None)])
    assert [(p.at, p.event, type(p.decision)) for p in played] == [
        (0.0, 1, Page), (0.0, 2, Page), (120.0, 0, Hold)]  # listed order when the time is the same
    assert [(at, n.dedup_key) for at, n in notifications(played)] == [(0.0, "deploys/shop"), (0.0, "deploys/cart")]
    assert played[2].decision == Hold("deploys", "deploys/shop", "throttled", DEFAULT_START.timestamp() + 600)
    assert played[2].notifications == ()


def test_play_runs_the_timed_work_every_second_until_until(tmp_path):
    rs = load(tmp_path)
    played = play(rs, [(0.0, {"type": "deploy", "app": "shop"}, None)], until=600)
    assert [(p.at, p.event, p.decision) for p in played[1:]] == [(300.0, None, Resolve("deploys", "pay",
                                                                                       "deploys/shop"))]
    assert len(play(rs, [(0.0, {"type": "deploy", "app": "shop"}, None)])) == 1  # the clock stops at the last event


def test_eval_timeline_without_a_time_field_is_one_second_apart_from_the_fixed_start():
    start, timeline = eval_timeline([{"a": 1}, {"a": 2}], origin="sentry")
    assert start == DEFAULT_START.timestamp()
    assert timeline == [(0.0, {"a": 1}, "sentry"), (1.0, {"a": 2}, "sentry")]


def test_eval_timeline_reads_iso_8601_epoch_seconds_and_milliseconds_at_a_field_path():
    events = [{"meta": {"ts": "2026-03-01T11:00:00+01:00"}}, {"meta": {"ts": 1772359230}},
              {"meta": {"ts": 1772359201500}}]
    start, timeline = eval_timeline(events, time_field="meta.ts")
    assert start == 1772359200.0  # the earliest: 10:00:00Z
    assert [at for at, _, _ in timeline] == [0.0, 30.0, 1.5]  # in the events' order: play sorts


def test_eval_timeline_names_the_event_without_a_time():
    with pytest.raises(EventError) as caught:
        eval_timeline([{"ts": 1772359200}, {"ts": True}], time_field="ts")
    assert (caught.value.index, caught.value.path) == (1, "ts")
    assert caught.value.message == "true is not a time at ts (ISO 8601, or seconds or milliseconds since the epoch)"
