"""engine/silences.py: silences as operators post them, checked; `until` within a year."""

from __future__ import annotations

import pytest

from engine.silences import MAX_DURATION, SilenceError, parse_silence

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
