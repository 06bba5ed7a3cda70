"""The candidate index: a superset of the matching rules, in order, without asking every rule."""

from __future__ import annotations

from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from engine.rules.conditions import Condition, Definitions, compile_condition
from engine.rules.errors import Problem
from engine.rules.index import CandidateIndex


def compiled(node: Any, definitions: Definitions | None = None) -> Condition:
    problems: list[Problem] = []
    condition = compile_condition(node, file="r.yaml", path=("rules", 0, "match"),
                                  definitions=definitions or Definitions(), problems=problems)
    assert problems == []
    return condition


def matching(conditions: list[Condition | None], event: dict[str, Any]) -> list[int]:
    return [i for i, c in enumerate(conditions) if c is not None and c(event)]


def test_rules_pinning_distinct_services_yield_only_their_own() -> None:
    conditions: list[Condition | None] = [
        compiled({"all": [{"field": "service", "equals": f"svc-{i}"}, {"field": "status", "gte": 500}]})
        for i in range(1000)
    ]
    index = CandidateIndex(conditions)
    assert index.candidates({"service": "svc-42", "status": 503}) == [42]
    assert index.candidates({"service": "other", "status": 503}) == []
    assert index.candidates({"status": 503}) == []
    assert index.always == ()


def test_the_most_selective_anchor_is_chosen() -> None:
    # Every rule pins status 500 too; filing them under it would make every 500 a candidate for all.
    conditions: list[Condition | None] = [
        compiled({"all": [{"field": "status", "equals": 500}, {"field": "service", "equals": f"s{i}"}]})
        for i in range(50)
    ]
    index = CandidateIndex(conditions)
    assert index.candidates({"status": 500, "service": "s7"}) == [7]


def test_rules_without_anchor_are_always_candidates_and_disabled_rules_never() -> None:
    conditions: list[Condition | None] = [
        compiled({"field": "message", "regex": "timeout"}),
        None,
        compiled({"field": "service", "equals": "api"}),
        compiled({"any": [{"field": "service", "equals": "api"}, {"field": "env", "equals": "prod"}]}),
        compiled({"not": {"field": "service", "equals": "api"}}),
        None,
        compiled({"field": "service", "in": ["api", "web"]}),
    ]
    index = CandidateIndex(conditions)
    assert index.always == (0, 3, 4)
    assert index.candidates({"service": "api"}) == [0, 2, 3, 4, 6]
    assert index.candidates({"service": "web"}) == [0, 3, 4, 6]
    assert index.candidates({}) == [0, 3, 4]


def test_lookups_use_json_equality() -> None:
    conditions: list[Condition | None] = [
        compiled({"field": "status", "equals": 500}),
        compiled({"field": "status", "equals": "500"}),
        compiled({"field": "flag", "equals": True}),
        compiled({"field": "flag", "in": [1, 0]}),
        compiled({"field": "value", "equals": None}),
    ]
    index = CandidateIndex(conditions)
    assert index.candidates({"status": 500.0}) == [0]
    assert index.candidates({"status": "500"}) == [1]
    assert index.candidates({"flag": True}) == [2]
    assert index.candidates({"flag": 1.0}) == [3]
    assert index.candidates({"flag": False}) == []
    assert index.candidates({"value": None}) == [4]
    assert index.candidates({"status": [500], "flag": {"a": 1}}) == []


def test_ignore_case_and_wildcard_and_nested_anchors() -> None:
    conditions: list[Condition | None] = [
        compiled({"field": "service", "equals": "API", "ignore_case": True}),
        compiled({"field": "exception.values.*.type", "in": ["KeyError", "OSError"]}),
        compiled({"field": ["tags", "k8s.pod"], "equals": "web-1"}),
        compiled({"field": "service", "prefix": "ap"}),
    ]
    index = CandidateIndex(conditions)
    assert index.candidates({"service": "api"}) == [0, 3]
    event = {"exception": {"values": [{"type": "KeyError"}, {"type": "OSError"}]},
             "tags": {"k8s.pod": "web-1"}}
    assert index.candidates(event) == [1, 2, 3]


def test_anchors_through_macros_and_impossible_rules() -> None:
    defs = Definitions(
        lists={"empty": ("l.yaml", ("lists", "empty"), [])},
        macros={"is_api": ("m.yaml", ("macros", "is_api"), {"field": "service", "equals": "api"})},
    )
    conditions: list[Condition | None] = [
        compiled({"all": [{"macro": "is_api"}, {"field": "message", "regex": "x"}]}, defs),
        compiled({"all": [{"field": "a", "equals": 1}, {"field": "a", "equals": 2}]}),
        compiled({"field": "a", "in": {"list": "empty"}}, defs),
    ]
    index = CandidateIndex(conditions)
    assert index.always == ()
    assert index.candidates({"service": "api", "a": 1}) == [0]
    assert index.candidates({"a": 2}) == []


# --- property: the index never loses a match --------------------------------------------------------

# Small domains, so that rules match often: ints vs floats vs bools, strings that differ only in case.
DOMAIN = [0, 1, 1.0, 0.5, True, False, None, "x", "X", "xy", "ß", "SS"]
VALUES = st.sampled_from(DOMAIN)
FIELDS = st.sampled_from(["a", "b", "n.x", ["n", "x"], "l.*", "l.0", "n.*"])
STRING_OPERATORS = {"regex": st.sampled_from(["^x", "y", "^$", "s", "X$"]),
                    "prefix": st.sampled_from(["x", "X", ""]),
                    "suffix": st.sampled_from(["y", "S"])}
OTHER_OPERATORS = {"equals": VALUES, "in": st.lists(VALUES, min_size=1, max_size=3),
                   "contains": VALUES, "exists": st.booleans(),
                   "gt": st.sampled_from([0, 0.5, 1]), "gte": st.sampled_from([0, 1]),
                   "lt": st.sampled_from([1, 1.5]), "lte": st.sampled_from([0, 2])}


@st.composite
def leaves(draw: st.DrawFn) -> dict[str, Any]:
    operators = {**STRING_OPERATORS, **OTHER_OPERATORS}
    op = draw(st.sampled_from([*sorted(operators), *["equals", "in"] * 4]))  # favour indexable leaves
    node = {"field": draw(FIELDS), op: draw(operators[op])}
    if (op in STRING_OPERATORS or op in ("equals", "in", "contains")) and draw(st.booleans()):
        node["ignore_case"] = True
    return node


CONDITIONS = st.recursive(
    leaves(),
    lambda inner: st.one_of(
        st.builds(lambda cs: {"all": cs}, st.lists(inner, min_size=1, max_size=3)),
        st.builds(lambda cs: {"any": cs}, st.lists(inner, min_size=1, max_size=3)),
        st.builds(lambda c: {"not": c}, inner),
    ),
    max_leaves=6,
)
CONTAINERS = st.one_of(
    VALUES,
    st.lists(VALUES, max_size=3),
    st.dictionaries(st.sampled_from(["0", "1", "x"]), VALUES, max_size=2),
)
EVENTS = st.fixed_dictionaries({}, optional={"a": VALUES, "b": VALUES, "n": CONTAINERS, "l": CONTAINERS})


ABSENT = object()


def corpus() -> list[dict[str, Any]]:
    """Every pairing of `a` and `n.x` over the domain (absent included), with `l` varied alongside.

    Random events alone seldom satisfy a rule's equality leaves; these make anchored matches common.
    """
    containers: list[Any] = [ABSENT, *DOMAIN, *([v, "x"] for v in DOMAIN), *({"0": v} for v in DOMAIN)]
    events = []
    for i, (a, x) in enumerate((a, x) for a in [ABSENT, *DOMAIN] for x in [ABSENT, *DOMAIN]):
        pairs = {"a": a, "n": {} if x is ABSENT else {"x": x}, "l": containers[i % len(containers)]}
        events.append({key: value for key, value in pairs.items() if value is not ABSENT})
    return events


CORPUS = corpus()


@settings(max_examples=250, deadline=None)
@given(st.lists(st.one_of(st.none(), CONDITIONS), max_size=10), st.lists(EVENTS, max_size=10))
def test_candidates_filtered_by_condition_equal_brute_force(
    nodes: list[dict[str, Any] | None], events: list[dict[str, Any]]
) -> None:
    conditions = [None if node is None else compiled(node) for node in nodes]
    index = CandidateIndex(conditions)
    for event in [*events, *CORPUS]:
        candidates = index.candidates(event)
        assert candidates == sorted(set(candidates))
        assert all(conditions[i] is not None for i in candidates)
        assert [i for i in candidates if conditions[i](event)] == matching(conditions, event)
