"""engine/sources/events.py: bodies -> events, all or nothing, with the index of the bad item."""

from __future__ import annotations

import pytest

from engine.sources.events import MAX_DEPTH, EventError, parse_events


def test_one_object_an_array_and_ndjson():
    assert parse_events(b'{"a": 1}', ndjson=False) == [{"a": 1}]
    assert parse_events(b'[{"a": 1}, {"b": 2}]', ndjson=False) == [{"a": 1}, {"b": 2}]
    assert parse_events(b'{"a": 1}\n\n{"b": 2}\n', ndjson=True) == [{"a": 1}, {"b": 2}]
    assert parse_events(b"[]", ndjson=False) == []


@pytest.mark.parametrize(
    ("body", "ndjson", "message", "index"),
    [
        (b'{"a": ', False, "invalid JSON: Expecting value at line 1 column 7", None),
        (b'[{"a": 1}, 3]', False, "an event must be a JSON object, not int", 1),
        (b'[{"a": 1}, null]', False, "an event must be a JSON object, not null", 1),
        (b'"text"', False, "an event must be a JSON object, not str", None),
        (b'{"a": 1}\n[1]\n', True, "an event must be a JSON object, not an array", 1),
        (b'{"a": 1}\n{"a": \n', True, "invalid JSON: Expecting value at line 1 column 7", 1),
        (b'{"a": "\xff"}', False, "body is not valid UTF-8 (byte 7)", None),
    ],
)
def test_bad_bodies_name_the_problem_and_the_item(body, ndjson, message, index):
    with pytest.raises(EventError) as err:
        parse_events(body, ndjson=ndjson)
    assert (err.value.message, err.value.index) == (message, index)


def test_deep_nesting_is_refused_not_a_crash():
    ok = b'{"a": ' * (MAX_DEPTH - 1) + b"1" + b"}" * (MAX_DEPTH - 1)
    assert parse_events(ok, ndjson=False)
    deep = b'{"a": ' * (MAX_DEPTH + 1) + b"1" + b"}" * (MAX_DEPTH + 1)
    with pytest.raises(EventError, match=f"nested deeper than {MAX_DEPTH} levels"):
        parse_events(deep, ndjson=False)
    very_deep = b"[" * 100_000 + b"]" * 100_000  # deeper than Python's recursion limit
    with pytest.raises(EventError, match="nested deeper"):
        parse_events(very_deep, ndjson=False)


@pytest.mark.parametrize(
    ("body", "ndjson", "message", "index", "path"),
    [
        (b'{"a": {"b": NaN}}', False, "a.b: NaN is not a JSON number", None, "a.b"),
        (b'[{"a": 1}, {"v": [1, 1e400]}]', False, "v.1: 1e400 is beyond the range of a double", 1, "v.1"),
        (b'{"a": 1}\n{"n": ' + b"9" * 5000 + b"}\n", True, "n: an integer of 5000 digits (at most 4300)", 1, "n"),
        (b"[1, NaN]", False, "NaN is not a JSON number", 1, None),
    ],
)
def test_values_json_cannot_carry_name_the_item_and_the_path_in_it(body, ndjson, message, index, path):
    with pytest.raises(EventError) as err:
        parse_events(body, ndjson=ndjson)
    assert (err.value.message, err.value.index, err.value.path) == (message, index, path)


def test_lone_surrogates_are_replaced_and_the_event_kept():
    assert parse_events(rb'{"msg": "cut \ud83d", "\udc00": 1}', ndjson=False) == [{"msg": "cut \ufffd", "\ufffd": 1}]


def test_ndjson_lines_end_at_newlines_only():
    # U+2028 and U+0085 may stand raw in a JSON string; str.splitlines() would cut the line there
    body = '{"msg": "a\u2028b\u0085c"}\r\n{"n": 2}\n'.encode()
    assert parse_events(body, ndjson=True) == [{"msg": "a\u2028b\u0085c"}, {"n": 2}]
