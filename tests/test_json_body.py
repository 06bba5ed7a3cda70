"""engine/sources/json_body.py: client JSON parsed strictly; what cannot go on as JSON is refused where it is."""

from __future__ import annotations

import json

import pytest

from engine.sources.json_body import MAX_DEPTH, JsonError, loads, where


def test_plain_json_is_parsed_as_json_loads_would():
    text = '{"a": [1, 2.5, -3e10, "x", true, null, {"b": {}}], "big": 1' + "0" * 300 + "}"
    assert loads(text) == json.loads(text)
    assert loads(text.encode()) == json.loads(text)


@pytest.mark.parametrize(
    ("body", "message", "path"),
    [
        ('{"v": NaN}', "v: NaN is not a JSON number", ("v",)),
        ('{"v": [1, Infinity]}', "v.1: Infinity is not a JSON number", ("v", 1)),
        ('{"v": -Infinity}', "v: -Infinity is not a JSON number", ("v",)),
        ('{"v": {"w": 1e400}}', "v.w: 1e400 is beyond the range of a double", ("v", "w")),
        ('{"v": -1E+999}', "v: -1E+999 is beyond the range of a double", ("v",)),
        ('{"v": ' + "9" * 5000 + "}", "v: an integer of 5000 digits (at most 4300)", ("v",)),
        ('{"v": -' + "9" * 4301 + "}", "v: an integer of 4301 digits (at most 4300)", ("v",)),
        ("NaN", "NaN is not a JSON number", ()),
        ('{"a": ', "invalid JSON: Expecting value at line 1 column 7", ()),
    ],
)
def test_what_json_cannot_carry_on_is_refused_naming_its_path(body, message, path):
    with pytest.raises(JsonError) as err:
        loads(body)
    assert (err.value.message, err.value.path) == (message, path)


def test_the_first_fault_in_document_order_is_named():
    with pytest.raises(JsonError) as err:
        loads('[{"a": {"b": [1, NaN]}}, NaN]')
    assert err.value.path == (0, "a", "b", 1)


def test_an_integer_of_4300_digits_is_a_number():
    assert loads('{"v": ' + "9" * 4300 + "}") == {"v": int("9" * 4300)}


def test_lone_surrogates_become_the_replacement_character_in_keys_and_values():
    value = loads(r'{"k\ud800": ["x\udc00y", "\ud83d\ude00"], "n": {"\udfff": "\ud800"}}')
    assert value == {"k\ufffd": ["x\ufffdy", "\U0001f600"], "n": {"\ufffd": "\ufffd"}}
    assert json.dumps(value, ensure_ascii=False).encode("utf-8")  # UTF-8 can hold it now
    assert loads(r'"\udead"') == "\ufffd"
    assert loads(r'"\\ud800"') == "\\ud800"  # an escaped backslash, not an escape


def test_nesting_deeper_than_the_limit_is_refused_not_a_crash():
    assert loads("[" * MAX_DEPTH + "]" * MAX_DEPTH)
    with pytest.raises(JsonError, match=f"nested deeper than {MAX_DEPTH} levels") as err:
        loads('{"a": ' * (MAX_DEPTH + 1) + "1" + "}" * (MAX_DEPTH + 1))
    assert len(err.value.path) == MAX_DEPTH
    assert loads("[[[]]]", max_depth=3) == [[[]]]
    with pytest.raises(JsonError, match="nested deeper than 2 levels"):
        loads("[[[]]]", max_depth=2)
    with pytest.raises(JsonError, match="nested deeper"):
        loads("[" * 100_000 + "]" * 100_000)  # deeper than Python's recursion limit


def test_bytes_must_be_utf8():
    with pytest.raises(JsonError, match=r"not valid UTF-8 \(byte 7\)"):
        loads(b'{"a": "\xff"}')


def test_paths_are_written_as_the_rule_language_does_and_kept_short():
    assert where(("http", "status")) == "http.status"
    assert where((3, "tags", 0)) == "3.tags.0"
    assert where(("k" * 100,)) == "k" * 39 + "…"
    long = where(tuple("abcdefghij" * 30))
    assert len(long) == 201 and long.startswith("a.b.c") and long.endswith("i.j") and "…" in long
