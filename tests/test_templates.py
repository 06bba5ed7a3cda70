"""The sandboxed template environment: compiling, rendering, context, trees and failures."""

from __future__ import annotations

import datetime as dt

import pytest

from engine.rules.errors import Problem
from engine.rules.ruleset import Rule
from engine.templates import (
    Template,
    TemplateRenderError,
    TemplateSyntaxError,
    compile_template,
    compile_template_at,
    compile_tree,
    context,
)

NOW = dt.datetime(2026, 11, 28, 9, 46, 20, 123456, tzinfo=dt.UTC)


def make_rule(**fields: object) -> Rule:
    return Rule(name="disk-full", order=0, condition=lambda event: True, services=("ops",), **fields)


def render(source: str, event: dict | None = None) -> str:
    return compile_template(source).render({"event": event or {}})


def test_constant_is_not_compiled_and_renders_itself() -> None:
    template = compile_template("plain text, even with } and { and %")
    assert template.is_constant
    assert template.render({}) == "plain text, even with } and { and %"
    assert template == Template("plain text, even with } and { and %")


def test_template_with_an_expression_is_compiled() -> None:
    template = compile_template("{{ event.host }} is {# a comment #}down")
    assert not template.is_constant
    assert template.source == "{{ event.host }} is {# a comment #}down"
    assert template.render({"event": {"host": "db1"}}) == "db1 is down"


def test_trailing_newline_is_kept_like_a_constant() -> None:
    assert render("{{ event.a }}\n", {"a": "x"}) == "x\n"


def test_missing_fields_render_empty_including_chains() -> None:
    assert render("[{{ event.missing }}]") == "[]"
    assert render("[{{ event.a.b.c }}]") == "[]"
    assert render("[{{ event['a']['b'] }}]") == "[]"
    assert render("[{{ event.host.b }}]", {"host": "db1"}) == "[]"
    assert render("[{{ event.a | upper }}]") == "[]"


def test_none_renders_empty() -> None:
    assert render("[{{ event.a }}]", {"a": None}) == "[]"
    assert render("[{{ none }}]") == "[]"


def test_autoescape_is_off() -> None:
    assert render("{{ event.a }}", {"a": "<b>&</b>"}) == "<b>&</b>"


def test_mapping_keys_win_over_dict_methods() -> None:
    event = {"items": "three", "values": [1, 2], "update": "soon"}
    assert render("{{ event.items }} {{ event.values | length }} {{ event.update }}", event) == "three 2 soon"
    assert render("{{ event.items() | list | length }}", {"a": 1}) == "1"


def test_filters_and_control_flow_work() -> None:
    source = "{% for t in event.tags %}{{ t | upper }}{% if not loop.last %},{% endif %}{% endfor %}"
    assert render(source, {"tags": ["a", "b"]}) == "A,B"
    assert render("{{ event.n * 2 }}", {"n": 21}) == "42"


def test_runtime_error_raises_template_render_error_with_field() -> None:
    with pytest.raises(TemplateRenderError) as caught:
        compile_template("{{ 1 / 0 }}").render({}, field="summary")
    assert caught.value.field == "summary"
    assert caught.value.message == "ZeroDivisionError: division by zero"
    assert str(caught.value) == "summary: ZeroDivisionError: division by zero"


def test_calling_a_missing_method_raises_template_render_error() -> None:
    with pytest.raises(TemplateRenderError, match="UndefinedError"):
        render("{{ event.nothing() }}")


def test_arithmetic_on_a_missing_field_raises_template_render_error() -> None:
    with pytest.raises(TemplateRenderError, match="UndefinedError"):
        render("{{ event.missing + 1 }}")


@pytest.mark.parametrize(
    "source",
    [
        "{{ event.__class__.__mro__ }}",
        "{{ event.__class__ }}",
        "{{ ''.__class__.__mro__[1].__subclasses__() }}",
        "{{ event.tags.append(1) }}",
        "{{ event.pop('host') }}",
        "{{ '{0.__class__}'.format(event) }}",
        "{{ lipsum.__globals__ }}",
    ],
)
def test_sandbox_blocks_unsafe_access(source: str) -> None:
    event = {"host": "db1", "tags": ["a"]}
    with pytest.raises(TemplateRenderError, match="SecurityError"):
        render(source, event)
    assert event == {"host": "db1", "tags": ["a"]}


def test_syntax_error_carries_message_and_line() -> None:
    with pytest.raises(TemplateSyntaxError) as caught:
        compile_template("first line\n{{ event.host }}\n{{ event.a + }}")
    assert caught.value.line == 3
    assert "unexpected" in caught.value.message
    assert str(caught.value).endswith("(line 3 of the template)")


def test_single_line_syntax_error_does_not_mention_a_line() -> None:
    with pytest.raises(TemplateSyntaxError) as caught:
        compile_template("{% if %}")
    assert caught.value.line == 1
    assert "line" not in str(caught.value).replace(caught.value.message, "")


def test_unknown_filter_is_a_compile_time_error() -> None:
    with pytest.raises(TemplateSyntaxError, match="No filter named 'nosuch'"):
        compile_template("{{ event.a | nosuch }}")


def test_compile_template_at_collects_problems() -> None:
    problems: list[Problem] = []
    ok = compile_template_at(
        "{{ event.a }}", file="r.yaml", path=("rules", 0, "summary"), problems=problems, rule="x"
    )
    bad = compile_template_at(
        "{{ event.a", file="r.yaml", path=("rules", 0, "source"), problems=problems, rule="x"
    )
    assert ok == Template("{{ event.a }}")
    assert bad is None
    assert len(problems) == 1
    problem = problems[0]
    assert (problem.file, problem.path, problem.rule) == ("r.yaml", ("rules", 0, "source"), "x")
    assert problem.message.startswith("template syntax error in source: ")  # the field, within its rule


def test_tree_renders_nested_structure_and_keeps_scalars() -> None:
    problems: list[Problem] = []
    tree = compile_tree(
        {"host": "{{ event.host }}", "n": 3, "ratio": 0.5, "on": True, "off": None,
         "list": ["{{ rule.name }}", 1, {"deep": "at {{ now }}"}], "day": dt.date(2026, 11, 28), 7: "seven"},
        file="r.yaml", path=("rules", 0, "details"), problems=problems, rule="disk-full",
    )  # fmt: skip
    assert problems == []
    ctx = context(make_rule(), {"host": "db1"}, NOW)
    assert tree.render(ctx) == {
        "host": "db1",
        "n": 3,
        "ratio": 0.5,
        "on": True,
        "off": None,
        "list": ["disk-full", 1, {"deep": "at 2026-11-28T09:46:20Z"}],
        "day": "2026-11-28",
        "7": "seven",
    }


def test_tree_render_returns_fresh_values() -> None:
    tree = compile_tree({"a": ["x"]}, file="r.yaml", path=(), problems=[], rule=None)
    first = tree.render({})
    first["a"].append("y")
    assert tree.render({}) == {"a": ["x"]}


def test_tree_collects_syntax_errors_and_unsupported_values_at_their_paths() -> None:
    problems: list[Problem] = []
    compile_tree(
        {"ok": "{{ event.a }}", "bad": ["x", "{% for %}"], "odd": {1, 2}},
        file="r.yaml", path=("rules", 2, "details"), problems=problems, rule="r",
    )  # fmt: skip
    assert [(p.path, p.message.split(":")[0]) for p in problems] == [
        (("rules", 2, "details", "bad", 1), "template syntax error in details.bad.1"),
        (("rules", 2, "details", "odd"), "unsupported value of type set"),
    ]


def test_tree_render_error_names_the_failing_leaf() -> None:
    tree = compile_tree({"a": [{"b": "{{ 1 / 0 }}"}]}, file="r.yaml", path=(), problems=[], rule=None)
    with pytest.raises(TemplateRenderError) as caught:
        tree.render({})
    assert caught.value.field == "details.a.0.b"


def test_context_exposes_event_rule_and_now() -> None:
    rule = make_rule(description="Disk is nearly full")
    event = {"host": "db1"}
    ctx = context(rule, event, NOW)
    assert ctx == {
        "event": event,
        "rule": {"name": "disk-full", "description": "Disk is nearly full"},
        "now": "2026-11-28T09:46:20Z",
    }
    source = "{{ rule.name }}|{{ rule.description }}|{{ now }}|{{ event.host }}"
    assert compile_template(source).render(ctx) == "disk-full|Disk is nearly full|2026-11-28T09:46:20Z|db1"


def test_context_now_is_converted_to_utc() -> None:
    paris = dt.timezone(dt.timedelta(hours=1))
    ctx = context(make_rule(), {}, dt.datetime(2026, 11, 28, 10, 46, 20, tzinfo=paris))
    assert ctx["now"] == "2026-11-28T09:46:20Z"
