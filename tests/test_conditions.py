"""The condition language: operators, JSON equality, field paths, lists and macros, and located problems."""

from __future__ import annotations

from typing import Any

import pytest

from engine.rules.conditions import (
    Anchor,
    Condition,
    Definitions,
    compile_condition,
    equality_key,
    field_values,
    parse_field,
)
from engine.rules.errors import Problem

AT = ("rules", 0, "match")


def compiled(node: Any, definitions: Definitions | None = None) -> tuple[Condition, list[Problem]]:
    problems: list[Problem] = []
    condition = compile_condition(
        node, file="r.yaml", path=AT, definitions=definitions or Definitions(), problems=problems, rule="r"
    )
    return condition, problems


def holds(node: Any, event: dict[str, Any], definitions: Definitions | None = None) -> bool:
    condition, problems = compiled(node, definitions)
    assert problems == []
    return condition(event)


# --- operators -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("node", "event", "expected"),
    [
        ({"field": "s", "equals": 500}, {"s": 500}, True),
        ({"field": "s", "equals": 500}, {"s": 500.0}, True),
        ({"field": "s", "equals": 500.0}, {"s": 500}, True),
        ({"field": "s", "equals": 500}, {"s": "500"}, False),
        ({"field": "s", "equals": "500"}, {"s": 500}, False),
        ({"field": "s", "equals": True}, {"s": 1}, False),
        ({"field": "s", "equals": 1}, {"s": True}, False),
        ({"field": "s", "equals": 1.0}, {"s": True}, False),
        ({"field": "s", "equals": 0}, {"s": False}, False),
        ({"field": "s", "equals": False}, {"s": False}, True),
        ({"field": "s", "equals": None}, {"s": None}, True),
        ({"field": "s", "equals": None}, {}, False),
        ({"field": "s", "equals": "x"}, {"s": ["x"]}, False),
        ({"field": "s", "equals": "x"}, {"s": {"x": 1}}, False),
        ({"field": "s", "in": ["a", 2, None]}, {"s": "a"}, True),
        ({"field": "s", "in": ["a", 2, None]}, {"s": 2.0}, True),
        ({"field": "s", "in": ["a", 2, None]}, {"s": None}, True),
        ({"field": "s", "in": ["a", 2, None]}, {"s": "2"}, False),
        ({"field": "s", "in": [1, 0]}, {"s": True}, False),
        ({"field": "s", "in": ["a", "b"]}, {"s": "c"}, False),
        ({"field": "s", "in": ["a", "b"]}, {"s": ["a"]}, False),
        ({"field": "m", "regex": "^time ?out$"}, {"m": "timeout"}, True),
        ({"field": "m", "regex": "out"}, {"m": "a timeout here"}, True),
        ({"field": "m", "regex": "^out"}, {"m": "timeout"}, False),
        ({"field": "m", "regex": "5"}, {"m": 500}, False),
        ({"field": "m", "contains": "err"}, {"m": "an error"}, True),
        ({"field": "m", "contains": "err"}, {"m": "fine"}, False),
        ({"field": "m", "contains": "err"}, {"m": ["warn", "err"]}, True),
        ({"field": "m", "contains": "err"}, {"m": ["error"]}, False),
        ({"field": "m", "contains": 5}, {"m": [1, 5.0]}, True),
        ({"field": "m", "contains": 1}, {"m": [True]}, False),
        ({"field": "m", "contains": None}, {"m": [None]}, True),
        ({"field": "m", "contains": 5}, {"m": "5"}, False),
        ({"field": "m", "contains": "x"}, {"m": {"x": 1}}, False),
        ({"field": "m", "prefix": "db-"}, {"m": "db-1"}, True),
        ({"field": "m", "prefix": "db-"}, {"m": "web-db-1"}, False),
        ({"field": "m", "prefix": "1"}, {"m": 12}, False),
        ({"field": "m", "suffix": ".prod"}, {"m": "a.prod"}, True),
        ({"field": "m", "suffix": ".prod"}, {"m": "a.prod.x"}, False),
        ({"field": "n", "gt": 5}, {"n": 6}, True),
        ({"field": "n", "gt": 5}, {"n": 5}, False),
        ({"field": "n", "gte": 5}, {"n": 5.0}, True),
        ({"field": "n", "gte": 5}, {"n": 4.9}, False),
        ({"field": "n", "lt": 0.5}, {"n": 0}, True),
        ({"field": "n", "lt": 0.5}, {"n": 1}, False),
        ({"field": "n", "lte": 2}, {"n": 2}, True),
        ({"field": "n", "lte": 2}, {"n": 3}, False),
        ({"field": "n", "gt": 0}, {"n": True}, False),
        ({"field": "n", "lt": 10}, {"n": "5"}, False),
        ({"field": "n", "lt": 10}, {"n": None}, False),
        ({"field": "n", "lt": 10}, {}, False),
    ],
)
def test_operator(node: dict[str, Any], event: dict[str, Any], expected: bool) -> None:
    assert holds(node, event) is expected


@pytest.mark.parametrize(
    ("event", "present"),
    [({"a": 1}, True), ({"a": None}, True), ({"a": False}, True), ({}, False), ({"b": 1}, False)],
)
def test_exists_counts_null_as_present(event: dict[str, Any], present: bool) -> None:
    assert holds({"field": "a", "exists": True}, event) is present
    assert holds({"field": "a", "exists": False}, event) is not present


@pytest.mark.parametrize(
    ("node", "event", "expected"),
    [
        ({"field": "s", "equals": "Prod", "ignore_case": True}, {"s": "PROD"}, True),
        ({"field": "s", "equals": "Prod"}, {"s": "PROD"}, False),
        ({"field": "s", "equals": "straße", "ignore_case": True}, {"s": "STRASSE"}, True),
        ({"field": "s", "equals": 5, "ignore_case": True}, {"s": 5.0}, True),
        ({"field": "s", "in": ["Prod", 1], "ignore_case": True}, {"s": "pROD"}, True),
        ({"field": "s", "in": ["Prod", 1], "ignore_case": True}, {"s": 1}, True),
        ({"field": "s", "in": ["Prod", 1], "ignore_case": True}, {"s": "stage"}, False),
        ({"field": "s", "in": ["Prod", "Stage"]}, {"s": "prod"}, False),
        ({"field": "s", "regex": "^ERR", "ignore_case": True}, {"s": "error: x"}, True),
        ({"field": "s", "regex": "^ERR"}, {"s": "error: x"}, False),
        ({"field": "s", "contains": "TIMEOUT", "ignore_case": True}, {"s": "a Timeout"}, True),
        ({"field": "s", "contains": "TIMEOUT", "ignore_case": True}, {"s": ["timeout"]}, True),
        ({"field": "s", "contains": "TIMEOUT"}, {"s": "a Timeout"}, False),
        ({"field": "s", "prefix": "DB-", "ignore_case": True}, {"s": "db-1"}, True),
        ({"field": "s", "prefix": "DB-"}, {"s": "db-1"}, False),
        ({"field": "s", "suffix": ".PROD", "ignore_case": True}, {"s": "a.prod"}, True),
        ({"field": "s", "suffix": ".PROD"}, {"s": "a.prod"}, False),
    ],
)
def test_ignore_case(node: dict[str, Any], event: dict[str, Any], expected: bool) -> None:
    assert holds(node, event) is expected


def test_pathological_regex_is_linear_with_re2() -> None:
    condition, _ = compiled({"field": "m", "regex": "(a+)+$"})
    assert condition({"m": "a" * 50_000 + "b"}) is False
    assert condition({"m": "b" + "a" * 50_000}) is True


# --- field paths ------------------------------------------------------------------------------------


def test_parse_field() -> None:
    assert parse_field("http.status") == ("http", "status")
    assert parse_field("exception.values.0.type") == ("exception", "values", 0, "type")
    assert parse_field("a.*.b") == ("a", "*", "b")
    assert parse_field("a.01.-1") == ("a", "01", "-1")
    assert parse_field(["tags", "k8s.pod"]) == ("tags", "k8s.pod")
    assert parse_field(["a", 0, "*", "0"]) == ("a", 0, "*", "0")


EVENT = {
    "http": {"status": 503},
    "exception": {"values": [{"type": "KeyError"}, {"type": "ValueError", "module": None}]},
    "by_id": {"0": "zero", "1": {"type": "OSError"}},
    "tags": {"k8s.pod": "web-1", "k8s": {"pod": "nested"}},
    "text": "plain",
}


@pytest.mark.parametrize(
    ("spec", "values"),
    [
        ("http.status", [503]),
        ("http.missing", []),
        ("exception.values.0.type", ["KeyError"]),
        ("exception.values.2.type", []),
        ("exception.values.*.type", ["KeyError", "ValueError"]),
        ("exception.values.*.module", [None]),
        ("by_id.0", ["zero"]),
        ("by_id.*.type", ["OSError"]),
        ("by_id.*", ["zero", {"type": "OSError"}]),
        (["tags", "k8s.pod"], ["web-1"]),
        ("tags.k8s.pod", ["nested"]),
        ("text.0", []),
        ("text.*", []),
        (["exception", "values", "0", "type"], []),  # a literal "0" is a key, never a list index
        (["exception", "values", -1, "type"], []),
    ],
)
def test_field_values(spec: Any, values: list[Any]) -> None:
    assert field_values(EVENT, parse_field(spec)) == values


@pytest.mark.parametrize(
    ("node", "expected"),
    [
        ({"field": "exception.values.*.type", "equals": "ValueError"}, True),
        ({"field": "exception.values.*.type", "equals": "TypeError"}, False),
        ({"field": "exception.values.1.type", "prefix": "Value"}, True),
        ({"field": "exception.values.0.type", "prefix": "Value"}, False),
        ({"field": "by_id.*.type", "equals": "OSError"}, True),
        ({"field": "by_id.0", "equals": "zero"}, True),
        ({"field": ["tags", "k8s.pod"], "equals": "web-1"}, True),
        ({"field": "tags.k8s.pod", "equals": "web-1"}, False),
        ({"field": "http.status.code", "equals": 503}, False),
        ({"field": "text.x", "exists": False}, True),
        ({"field": "exception.values.*.module", "exists": True}, True),
        ({"field": "exception.values.*.module", "exists": False}, False),
        ({"field": "exception.values.*.line", "exists": False}, True),
        ({"field": "exception.values.*.line", "exists": True}, False),
        ({"field": "exception.values.0.module", "exists": True}, False),
        ({"field": "exception.values.1.module", "exists": True}, True),
        ({"field": "exception.values.1.module", "equals": None}, True),
    ],
)
def test_paths_in_conditions(node: dict[str, Any], expected: bool) -> None:
    assert holds(node, EVENT) is expected


def test_a_wrong_type_on_the_way_is_false_not_an_error() -> None:
    for event in ({"a": "text"}, {"a": 5}, {"a": [1, 2]}, {"a": None}, {"a": {"b": []}}):
        assert holds({"field": "a.b.c", "equals": 1}, event) is False
        assert holds({"field": "a.b.c", "exists": False}, event) is True


# --- boolean structure, lists, macros ---------------------------------------------------------------


def test_nested_all_any_not() -> None:
    node = {
        "all": [
            {"field": "env", "equals": "prod"},
            {"any": [{"field": "status", "gte": 500}, {"field": "message", "contains": "timeout"}]},
            {"not": {"field": "service", "in": ["canary", "test"]}},
        ]
    }
    assert holds(node, {"env": "prod", "status": 503, "service": "api"}) is True
    assert holds(node, {"env": "prod", "status": 200, "message": "db timeout", "service": "api"}) is True
    assert holds(node, {"env": "prod", "status": 200, "message": "ok", "service": "api"}) is False
    assert holds(node, {"env": "prod", "status": 503, "service": "canary"}) is False
    assert holds(node, {"env": "dev", "status": 503, "service": "api"}) is False
    assert holds({"any": [{"field": "a", "equals": 1}, {"field": "b", "equals": 1},
                          {"field": "c", "equals": 1}]}, {"c": 1}) is True
    assert holds({"all": [{"field": "a", "equals": 1}, {"field": "b", "equals": 1},
                          {"field": "c", "equals": 1}]}, {"a": 1, "b": 1}) is False


def definitions() -> Definitions:
    return Definitions(
        lists={"prod_envs": ("defs.yaml", ("lists", "prod_envs"), ["production", "prod"])},
        macros={
            "is_prod": ("defs.yaml", ("macros", "is_prod"), {"field": "env", "in": {"list": "prod_envs"}}),
            "prod_5xx": ("defs.yaml", ("macros", "prod_5xx"),
                         {"all": [{"macro": "is_prod"}, {"field": "status", "gte": 500}]}),
        },
    )


def test_list_and_macro_and_macro_using_macro() -> None:
    defs = definitions()
    assert holds({"field": "env", "in": {"list": "prod_envs"}}, {"env": "prod"}, defs) is True
    assert holds({"field": "env", "in": {"list": "prod_envs"}}, {"env": "dev"}, defs) is False
    assert holds({"macro": "is_prod"}, {"env": "production"}, defs) is True
    assert holds({"macro": "prod_5xx"}, {"env": "prod", "status": 502}, defs) is True
    assert holds({"macro": "prod_5xx"}, {"env": "prod", "status": 404}, defs) is False
    assert holds({"not": {"macro": "prod_5xx"}}, {"env": "dev", "status": 502}, defs) is True


def test_a_macro_compiles_once_and_is_shared() -> None:
    defs = definitions()
    first, _ = compiled({"macro": "is_prod"}, defs)
    second, _ = compiled({"macro": "is_prod"}, defs)
    assert first is second


def test_anchors_are_the_equality_leaves_every_match_requires() -> None:
    defs = definitions()
    condition, _ = compiled(
        {"all": [{"macro": "prod_5xx"}, {"field": "svc", "equals": "api"},
                 {"any": [{"field": "x", "equals": 1}, {"field": "y", "equals": 2}]},
                 {"not": {"field": "z", "equals": 3}}]},
        defs,
    )
    assert set(condition.anchors) == {
        Anchor(("env",), frozenset({"production", "prod"})),
        Anchor(("svc",), frozenset({"api"})),
    }
    either, _ = compiled({"any": [{"field": "svc", "equals": "a"}, {"field": "svc", "in": ["b", True]}]})
    assert either.anchors == (Anchor(("svc",), frozenset({"a", "b", equality_key(True)})),)
    both, _ = compiled({"all": [{"field": "svc", "in": ["a", "b"]}, {"field": "svc", "in": ["b", "c"]}]})
    assert both.anchors == (Anchor(("svc",), frozenset({"b"})),)
    folded, _ = compiled({"field": "svc", "equals": "API", "ignore_case": True})
    assert folded.anchors == (Anchor(("svc",), frozenset({"api"}), ignore_case=True),)


def test_equality_key_is_json_equality() -> None:
    assert equality_key(500) == equality_key(500.0)
    assert equality_key("500") != equality_key(500)
    assert equality_key(True) != equality_key(1)
    assert equality_key(False) != equality_key(0.0)
    scalar_keys = {equality_key(v) for v in (1, 1.0, "1", "[1]", True, False, None, "")}
    assert equality_key([1]) not in scalar_keys  # a list or mapping never equals a scalar target
    assert equality_key({"a": 1}) not in scalar_keys


# --- problems, located ------------------------------------------------------------------------------


def test_invalid_regex_is_reported_at_the_regex_key_and_never_matches() -> None:
    condition, problems = compiled({"any": [{"field": "m", "regex": "("}, {"field": "m", "exists": False}]})
    assert problems == [
        Problem("r.yaml", (*AT, "any", 0, "regex"), "invalid regex '(': missing ): (", rule="r")
    ]
    assert condition({"m": "("}) is False
    assert condition({}) is True


def test_unsupported_re2_syntax_is_an_invalid_regex() -> None:
    _, problems = compiled({"field": "m", "regex": "(a)\\1"})
    assert [p.path for p in problems] == [(*AT, "regex")]
    assert problems[0].message.startswith("invalid regex '(a)\\1': ")


def test_unknown_list_with_did_you_mean() -> None:
    condition, problems = compiled({"field": "env", "in": {"list": "prod_env"}}, definitions())
    message = "unknown list 'prod_env' (did you mean 'prod_envs'?)"
    assert problems == [Problem("r.yaml", (*AT, "in", "list"), message, rule="r")]
    assert condition({"env": "prod"}) is False
    _, problems = compiled({"field": "env", "in": {"list": "zzz"}}, definitions())
    assert [p.message for p in problems] == ["unknown list 'zzz'"]


def test_unknown_macro_with_did_you_mean() -> None:
    condition, problems = compiled({"not": {"macro": "is_prd"}}, definitions())
    assert problems == [
        Problem("r.yaml", (*AT, "not", "macro"), "unknown macro 'is_prd' (did you mean 'is_prod'?)", rule="r")
    ]
    assert condition({}) is True  # the broken part is never true; `not` of it is
    _, problems = compiled({"macro": "zzz"}, definitions())
    assert [p.message for p in problems] == ["unknown macro 'zzz'"]


def test_macro_cycle_is_reported_once_at_the_macro_definition() -> None:
    defs = Definitions(macros={
        "b": ("m.yaml", ("macros", "b"), {"all": [{"macro": "a"}, {"macro": "a"}]}),
        "a": ("m.yaml", ("macros", "a"), {"any": [{"macro": "b"}, {"field": "x", "equals": 1}]}),
        "self": ("s.yaml", ("macros", "self"), {"not": {"macro": "self"}}),
    })
    condition, problems = compiled({"macro": "b"}, defs)
    defs.check_all(problems)
    assert problems == [
        Problem("m.yaml", ("macros", "a"), "macro cycle: a -> b -> a"),
        Problem("s.yaml", ("macros", "self"), "macro cycle: self -> self"),
    ]
    assert condition({"x": 1}) is True  # b = a and a; a = (never) or x == 1


def test_problems_in_a_macro_are_reported_once_at_the_macro() -> None:
    defs = Definitions(
        lists={"envs": ("l.yaml", ("lists", "envs"), ["prod"])},
        macros={
            "bad": ("m.yaml", ("macros", "bad"),
                    {"all": [{"field": "m", "regex": "[z-a]"}, {"field": "e", "in": {"list": "env"}}]}),
            "unused": ("m.yaml", ("macros", "unused"), {"macro": "nope"}),
        },
    )
    problems: list[Problem] = []
    for i in range(3):
        compile_condition({"macro": "bad"}, file="r.yaml", path=("rules", i, "match"),
                          definitions=defs, problems=problems, rule=f"r{i}")
    defs.check_all(problems)
    defs.check_all(problems)
    assert [(p.file, p.path, p.rule) for p in problems] == [
        ("m.yaml", ("macros", "bad", "all", 0, "regex"), None),
        ("m.yaml", ("macros", "bad", "all", 1, "in", "list"), None),
        ("m.yaml", ("macros", "unused", "macro"), None),
    ]
    assert problems[0].message.startswith("invalid regex '[z-a]': ")
    assert problems[1].message == "unknown list 'env' (did you mean 'envs'?)"
    assert problems[2].message == "unknown macro 'nope'"
