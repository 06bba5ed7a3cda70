"""engine/rules/numeric.py: warnings for conditions that treat a usually numeric field as text."""

from __future__ import annotations

import pytest

from engine.rules import load_ruleset
from engine.rules.numeric import is_number_like

HEAD = "services:\n  sre: {service_key: abcdefgh1234abcdefgh1234abcdefgh}\n"


def warnings_of(tmp_path, text: str) -> list[str]:
    path = tmp_path / "r.yaml"
    path.write_text(HEAD + text)
    result = load_ruleset([str(path)])
    assert result.ruleset is not None, [str(e) for e in result.errors]  # warnings never stop a load
    return [str(w).removeprefix(f"{path}:") for w in result.warnings]


def rule(*leaves: str, name: str = "a") -> str:
    body = "".join(f"        - {leaf}\n" for leaf in leaves)
    return f"  - name: {name}\n    services: [sre]\n    match:\n      all:\n{body}"


def test_a_quoted_number_on_a_field_compared_as_a_number_elsewhere_is_a_warning_with_the_fix(tmp_path):
    text = "rules:\n" + rule("{field: code, gte: 500}") + rule("{field: code, equals: \"503\"}", name="b")
    assert warnings_of(tmp_path, text) == [
        f"13:25: warning: rule 'b': '503' is a string, but 'code' is usually a number (gte at {tmp_path}/r.yaml:8), "
        "and a string never equals a number: remove the quotes: equals: 503"]


def test_in_with_quoted_numbers_directly_or_through_a_list_is_a_warning(tmp_path):
    text = ("lists:\n  codes: [\"502\", \"503\", gone]\nrules:\n"
            + rule("{field: http.status, in: [\"500\", 501, \"x\"]}", "{field: exit_code, in: {list: codes}}"))
    assert warnings_of(tmp_path, text) == [
        "10:32: warning: rule 'a': '500' is a string, but 'http.status' is usually a number (a well-known numeric "
        "field), and a string never equals a number: remove the quotes",
        "11:30: warning: rule 'a': '502', '503' (in list 'codes') are strings, but 'exit_code' is usually a number "
        "(a well-known numeric field), and a string never equals a number: remove the quotes in list 'codes'",
    ]


def test_a_list_mixing_numbers_and_quoted_numbers_is_a_warning_on_any_field(tmp_path):
    assert warnings_of(tmp_path, "rules:\n" + rule("{field: code, in: [\"500\", 501]}")) == [
        "8:25: warning: rule 'a': '500' is a string, but 'code' is usually a number (its other values are "
        "numbers), and a string never equals a number: remove the quotes"]


@pytest.mark.parametrize("op", ["regex", "prefix", "suffix", "contains"])
def test_a_string_operator_on_a_usually_numeric_field_is_a_warning(tmp_path, op):
    text = "rules:\n" + rule(f"{{field: latency_ms, {op}: \"5\"}}")
    assert warnings_of(tmp_path, text) == [
        f"8:31: warning: rule 'a': {op} only matches strings, but 'latency_ms' is usually a number (a well-known "
        "numeric field): compare it as a number instead (gt, gte, lt, lte, or equals / in with unquoted numbers)"]


def test_a_comparison_in_a_macro_counts_and_resolve_match_is_checked_too(tmp_path):
    text = ("macros:\n  slow: {field: [timings, total], gt: 3}\nrules:\n" + rule("{macro: slow}")
            + "    resolve: {match: {field: timings.total, regex: \"^0\"}}\n")
    assert warnings_of(tmp_path, text) == [
        f"11:45: warning: rule 'a': regex only matches strings, but 'timings.total' is usually a number (gt at "
        f"{tmp_path}/r.yaml:4): compare it as a number instead (gt, gte, lt, lte, or equals / in with unquoted "
        "numbers)"]


def test_strings_on_fields_not_known_to_be_numeric_are_fine(tmp_path):
    text = "rules:\n" + rule("{field: status, equals: \"503\"}", "{field: zip, regex: \"^0\"}",
                             "{field: http.status, equals: \"5xx\"}", "{field: version, in: [\"1\", \"2\"]}")
    assert warnings_of(tmp_path, text) == []


@pytest.mark.parametrize(("text", "like"), [
    ("503", True), (" 42 ", True), ("-1", True), ("0.5", True), ("0", True),
    ("0503", False), ("1e5", False), ("5xx", False), ("", False), ("1.", False), ("+1", False),
])
def test_number_like_means_what_yaml_reads_as_a_number_without_quotes(text, like):
    assert is_number_like(text) is like
