"""The one sandboxed Jinja environment, and the templates rules are compiled into.

Templates are compiled when a rule set is compiled, never per event. A source without `{{`, `{%` or
`{#` is a constant: it renders to itself without Jinja.

The environment (`ENVIRONMENT`) is an `ImmutableSandboxedEnvironment` with autoescape off and:
- `ChainableUndefined`: a missing field renders empty, also down a chain (`{{ event.a.b.c }}`);
- `None` renders as the empty string;
- on a mapping, `a.b` looks up the key `b` before the attribute, so an event field named `items`,
  `values` or `update` is the field, not the dict method;
- an unsafe attribute (`{{ event.__class__ }}`, `{{ event.pop }}`) raises `SecurityError` instead of
  rendering empty, so it is reported like any other failure.

Every failure while rendering (`{{ 1/0 }}`, a `SecurityError`, calling a missing method) is raised as
one `TemplateRenderError(field, message)`; the caller (render.py) falls back to the field's default.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import lru_cache
from typing import TYPE_CHECKING, Any

import jinja2
from jinja2 import ChainableUndefined
from jinja2.runtime import new_context
from jinja2.sandbox import ImmutableSandboxedEnvironment, SecurityError

from engine.rules.errors import Path, Problem, key_name

if TYPE_CHECKING:
    from engine.rules.ruleset import Rule

_MARKERS = ("{{", "{%", "{#")
TEMPLATE_CACHE = 16384  # distinct template texts kept compiled


class _AlertEnvironment(ImmutableSandboxedEnvironment):
    """The sandbox, preferring mapping keys over attributes and raising on unsafe access."""

    def getattr(self, obj: Any, attribute: str) -> Any:
        if isinstance(obj, Mapping):
            try:
                return obj[attribute]
            except (LookupError, TypeError):
                pass
        return super().getattr(obj, attribute)

    def unsafe_undefined(self, obj: Any, attribute: str) -> jinja2.Undefined:
        raise SecurityError(f"access to attribute {attribute!r} of {type(obj).__name__!r} object is unsafe")


def _finalize(value: Any) -> Any:
    return "" if value is None else value


ENVIRONMENT = _AlertEnvironment(
    autoescape=False,
    undefined=ChainableUndefined,
    finalize=_finalize,
    keep_trailing_newline=True,  # a constant and a template render trailing newlines alike
)


class TemplateSyntaxError(ValueError):
    """A template that does not compile; `line` is the line within the template (1-based)."""

    def __init__(self, message: str, line: int, source: str) -> None:
        self.message = message
        self.line = line
        self.source = source
        where = f" (line {line} of the template)" if "\n" in source.rstrip("\n") else ""
        super().__init__(f"{message}{where}")


class TemplateRenderError(Exception):
    """A template failed while rendering; `field` names what was being rendered (e.g. `summary`)."""

    def __init__(self, field: str, message: str) -> None:
        self.field = field
        self.message = message
        super().__init__(f"{field}: {message}")


@dataclass(frozen=True)
class Template:
    """A compiled template. Equal when their sources are equal; `_compiled` is None for a constant."""

    source: str
    _compiled: jinja2.Template | None = field(default=None, repr=False, compare=False)

    @property
    def is_constant(self) -> bool:
        return self._compiled is None

    def render(self, context: Mapping[str, Any], *, field: str = "template") -> str:
        """The rendered text; raises TemplateRenderError naming `field` on any failure."""
        compiled = self._compiled
        if compiled is None:
            return self.source
        try:
            # a shared context holding the globals is used as it is, where Template.render would chain
            # it to the template's globals through new mappings on every render (most of a short render)
            variables = {**ENVIRONMENT.globals, **context}
            ctx = new_context(ENVIRONMENT, compiled.name, compiled.blocks, variables, shared=True)
            return ENVIRONMENT.concat(compiled.root_render_func(ctx))
        except Exception as exc:
            raise TemplateRenderError(field, f"{type(exc).__name__}: {exc}") from exc


def compile_template(source: str) -> Template:
    """Compile one template; raises TemplateSyntaxError with the line within the template."""
    if not any(marker in source for marker in _MARKERS):
        return Template(source)
    return _compiled(source)


@lru_cache(maxsize=TEMPLATE_CACHE)
def _compiled(source: str) -> Template:
    """Jinja compiles a template in about a millisecond and keeps its code: rules share the same texts
    (10,000 rules, a handful of summaries), so each text is compiled once, across reloads too. The
    environment is immutable and sandboxed, so a compiled template is safe to share."""
    try:
        return Template(source, ENVIRONMENT.from_string(source))
    except jinja2.TemplateSyntaxError as exc:
        raise TemplateSyntaxError(exc.message or str(exc), exc.lineno, source) from exc


def compile_template_at(
    source: str, *, file: str, path: Path, problems: list[Problem], rule: str | None
) -> Template | None:
    """Compile one template found at `path` in `file`; a syntax error is appended to `problems`."""
    try:
        return compile_template(source)
    except TemplateSyntaxError as exc:
        problems.append(Problem(file, path, f"template syntax error in {key_name(path)}: {exc}", rule))
        return None


@dataclass(frozen=True)
class _MappingNode:
    entries: tuple[tuple[str, Any], ...]


# A node is a Template, a _MappingNode, a tuple of nodes (a list), or a JSON scalar kept as it is.


@dataclass(frozen=True)
class TemplateTree:
    """A compiled nested structure (the rule's `details`): every string in it is a Template."""

    root: Any

    def render(self, context: Mapping[str, Any], *, field: str = "details") -> Any:
        """A fresh JSON-ready value; raises TemplateRenderError naming the failing leaf (`details.a.0`)."""
        return _render_node(self.root, context, field)


def _render_node(node: Any, context: Mapping[str, Any], where: str) -> Any:
    if isinstance(node, Template):
        return node.render(context, field=where)
    if isinstance(node, _MappingNode):
        return {key: _render_node(value, context, f"{where}.{key}") for key, value in node.entries}
    if isinstance(node, tuple):
        return [_render_node(item, context, f"{where}.{i}") for i, item in enumerate(node)]
    return node


def compile_tree(
    value: Any, *, file: str, path: Path, problems: list[Problem], rule: str | None
) -> TemplateTree:
    """Compile a nested value; syntax errors and unsupported values are appended to `problems`."""
    return TemplateTree(_compile_node(value, file, path, problems, rule))


def _compile_node(value: Any, file: str, path: Path, problems: list[Problem], rule: str | None) -> Any:
    if isinstance(value, str):
        compiled = compile_template_at(value, file=file, path=path, problems=problems, rule=rule)
        return compiled if compiled is not None else Template(value)
    if value is None or isinstance(value, bool | int | float):
        return value
    if isinstance(value, dt.date):  # YAML turns unquoted dates into date/datetime objects
        return value.isoformat()
    if isinstance(value, Mapping):
        return _MappingNode(
            tuple((str(k), _compile_node(v, file, (*path, k), problems, rule)) for k, v in value.items())
        )
    if isinstance(value, list | tuple):
        return tuple(_compile_node(v, file, (*path, i), problems, rule) for i, v in enumerate(value))
    problems.append(Problem(file, path, f"unsupported value of type {type(value).__name__}", rule))
    return None


@lru_cache(maxsize=64)  # every event of a request is rendered at the same `now`
def iso_utc(moment: dt.datetime, *, timespec: str = "seconds") -> str:
    """ISO 8601 in UTC with a trailing `Z`, e.g. `2026-11-28T09:46:20Z`."""
    return moment.astimezone(dt.UTC).isoformat(timespec=timespec).replace("+00:00", "Z")


def context(rule: Rule, event: Mapping[str, Any], now: dt.datetime) -> dict[str, Any]:
    """What templates see: `event`, `rule.name`, `rule.description`, and `now` (ISO 8601 UTC)."""
    return {
        "event": event,
        "rule": {"name": rule.name, "description": rule.description},
        "now": iso_utc(now),
    }
