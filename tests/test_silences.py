"""engine/silences.py: silences checked and compiled as posted (fields a silence sees, `until` within a
year), and restored as stored."""

from __future__ import annotations

import json

import pytest

from engine.silences import MAX_DURATION, SilenceError, parse_silence, restore_silence

T0 = 1_767_225_600.0  # 2026-01-01T00:00:00Z


def silence(match) -> None:
    parse_silence({"match": match, "until": "1h"}, ident=1, now=T0)


@pytest.mark.parametrize("match", [
    {"field": "rule", "equals": "disk"},
    {"field": "dedup_key", "prefix": "disk/"},
    {"field": "event.host", "equals": "db-1"},
    {"field": ["event", "k8s.pod"], "exists": True},
    {"all": [{"field": "rule", "equals": "disk"}, {"not": {"field": "event.env", "equals": "dev"}}]},
])
def test_fields_rooted_at_rule_dedup_key_or_event_are_accepted(match):
    silence(match)


@pytest.mark.parametrize(("match", "message"), [
    ({"field": "kind", "equals": "deploy"},
     "match.field: 'kind' can never match: a silence sees only rule, dedup_key and event.* (did you mean "
     "event.kind?)"),
    ({"field": "evnet.host", "equals": "db-1"},
     "match.field: 'evnet.host' can never match: a silence sees only rule, dedup_key and event.* (did you mean "
     "event.host?)"),
    ({"any": [{"field": "rule", "equals": "a"}, {"not": {"field": ["tags", "k8s.pod"], "exists": True}}]},
     'match.any.1.not.field: ["tags", "k8s.pod"] can never match: a silence sees only rule, dedup_key and event.* '
     '(did you mean ["event", "tags", "k8s.pod"]?)'),
    ({"field": "rule.name", "equals": "disk"},
     "match.field: 'rule.name' can never match: rule is a string (the rule's name): use field: rule"),
])
def test_a_field_a_silence_never_sees_is_refused_with_a_hint(match, message):
    with pytest.raises(SilenceError) as caught:
        silence(match)
    assert str(caught.value) == message


def test_a_stored_silence_is_restored_as_it_was_accepted():
    stored = json.dumps({"id": 3, "match": {"field": "kind", "equals": "x"}, "until": T0 + 60, "comment": "",
                         "created_by": "", "created": T0, "covered": 0})
    restored = restore_silence(stored)  # stored before fields had to be rooted: kept, covering nothing
    assert restored.id == 3 and not restored.condition({"rule": "r", "dedup_key": "k", "event": {"kind": "x"}})


def test_unknown_body_fields_are_named_in_the_singular_or_plural():
    with pytest.raises(SilenceError, match=r"^unknown field who: "):
        parse_silence({"match": {"field": "rule", "equals": "a"}, "until": "1h", "who": "x"}, ident=1, now=T0)
    with pytest.raises(SilenceError, match=r"^unknown fields a, b: "):
        parse_silence({"match": {}, "until": "1h", "a": 1, "b": 2}, ident=1, now=T0)


NOW = 1_800_000_000.0
MATCH = {"field": "rule", "equals": "disk"}


def test_until_is_a_duration_or_a_time_ahead():
    assert parse_silence({"match": MATCH, "until": "2h"}, ident=1, now=NOW).until == NOW + 7200
    assert parse_silence({"match": MATCH, "until": "365d"}, ident=1, now=NOW).until == NOW + MAX_DURATION


@pytest.mark.parametrize("until", ["99999999999d", "366d", "9" * 400 + "d", "9999-12-31T23:59:59-01:00"])
def test_until_more_than_a_year_ahead_is_refused(until):
    with pytest.raises(SilenceError, match="more than 365 days ahead"):
        parse_silence({"match": MATCH, "until": until}, ident=1, now=NOW)


def test_until_at_the_first_moment_a_datetime_holds_is_in_the_past_not_a_crash():
    with pytest.raises(SilenceError, match="in the past"):
        parse_silence({"match": MATCH, "until": "0001-01-01T00:00:00+01:00"}, ident=1, now=NOW)
