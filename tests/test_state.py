"""engine/state.py: groups and silences, what changed since the last write, restore and retain."""

from __future__ import annotations

import json

from engine.silences import parse_silence
from engine.state import Group, State, StateChanges

T0 = 1_767_225_600.0  # 2026-01-01T00:00:00Z


def full_group() -> Group:
    return Group(
        rule="r", key="r/a", labels={"cluster": "eu-1", "n": 3}, hits=[T0, T0 + 1.5], buckets={88361280: 4, 7: 1},
        value={"status": [1, None]}, has_value=True, last_seen=T0 + 2, event={"host": "a", "x": {"y": True}},
        open=True, held=True, services=["pay", "ops"], last_trigger=T0, suppressed=3, suppressed_first=T0 + 1,
        suppressed_last=T0 + 2, origin="sentry",
    )


def test_a_group_survives_its_stored_form_unchanged():
    g = full_group()
    assert Group.load(g.dump()) == g
    assert Group.load(Group("r", "k").dump()) == Group("r", "k")


def test_a_group_stored_before_origins_were_recorded_keeps_sentrys_alerts_resolvable_by_sentry():
    def stored(event: dict | None) -> str:
        data = json.loads(Group("r", "k", event=event, open=True).dump())
        del data["origin"]
        return json.dumps(data)

    assert Group.load(stored({"source": "sentry", "issue_id": "1"})).origin == "sentry"
    assert Group.load(stored({"host": "a"})).origin is None
    assert Group.load(stored(None)).origin is None


def test_changes_lists_the_groups_touched_since_the_last_call_then_starts_afresh():
    state = State()
    a, b = state.group("r", "r/a"), state.group("r", "r/b")
    a.open = True
    state.touch(a)
    changes = state.changes()
    assert [(rule, key) for rule, key, _ in changes.upserts] == [("r", "r/a")]
    assert Group.load(changes.upserts[0][2]) == a
    assert state.changes() == StateChanges() and not state.changes()
    state.drop(b)
    state.touch(a)
    state.drop(a)
    assert state.changes() == StateChanges(deletes=(("r", "r/a"), ("r", "r/b")))
    assert state.groups == {}


def test_a_group_made_again_after_its_drop_is_written_not_deleted():
    state = State()
    state.drop(state.group("r", "k"))
    state.touch(state.group("r", "k"))
    changes = state.changes()
    assert [(r, k) for r, k, _ in changes.upserts] == [("r", "k")] and changes.deletes == ()


def test_silence_changes_are_recorded_too():
    state = State()
    silence = parse_silence({"match": {"field": "rule", "equals": "r"}, "until": "1h", "comment": "db move"},
                            ident=4, now=T0)
    state.touch_silence(silence)
    [(ident, text)] = state.changes().silences
    assert ident == 4 and json.loads(text) == {"id": 4, "match": {"field": "rule", "equals": "r"},
                                               "until": T0 + 3600, "comment": "db move", "created_by": "",
                                               "created": T0, "covered": 0}
    assert silence.active(T0 + 3599.9) and not silence.active(T0 + 3600)
    state.drop_silence(silence)
    assert state.changes() == StateChanges(silence_deletes=(4,)) and state.silences == {}


def test_retain_drops_the_rules_not_kept_and_returns_their_open_alerts():
    state = State()
    kept, gone_open = state.group("keep", "k"), state.group("gone", "g1")
    state.group("gone", "g2")  # closed
    gone_open.open = True
    state.changes()
    assert state.retain({"keep"}) == [gone_open]
    assert state.groups == {"keep": {"k": kept}}
    assert state.changes() == StateChanges(deletes=(("gone", "g1"), ("gone", "g2")))
    assert state.open_groups("keep") == [] and state.open_groups("gone") == []


def test_restore_loads_stored_groups_and_moves_old_last_seen_to_the_start():
    g_old, g_new, g_never = Group("r", "old", last_seen=T0 - 60), Group("r", "new", last_seen=T0 + 5), Group("r", "x")
    state = State(started=T0)
    state.restore([("r", g.key, g.dump()) for g in (g_old, g_new, g_never)])
    assert {k: g.last_seen for k, g in state.groups["r"].items()} == {"old": T0, "new": T0 + 5, "x": None}
    assert not state.changes()  # restoring is no change to write
