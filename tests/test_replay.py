"""engine/replay.py: the simulated clock of `alert-engine test`."""

from __future__ import annotations

from engine.decisions import Hold, Page, Resolve
from engine.replay import DEFAULT_START, notifications, play
from engine.rules import load_ruleset
from engine.rules.ruleset import RuleSet

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

