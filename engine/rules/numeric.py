"""Warnings for conditions that treat a usually numeric field as text, so that they most likely never match.

Values compare as JSON values: the string "503" never equals the number 503, and `regex`, `prefix`,
`suffix` and `contains` (with a string) only ever match strings. So a condition on a field that is usually
a number, with a number written as a string (`equals: "503"`, `in: ["500", "502"]`, also through a named
list) or with one of those string operators, is reported with the fix. A field is usually numeric when:

- some condition of the rule set (any rule, `resolve.match` or macro) compares it with `gt`, `gte`, `lt`
  or `lte`, or with `equals` / `in` and a number; or
- its name is a well-known numeric one: its last segment is in `NUMERIC_NAMES` or ends with one of
  `NUMERIC_SUFFIXES`, or it is `http.status` / `response.status`.

A number-like string is an integer or a decimal as YAML writes numbers (`503`, `-1`, `0.5`; no leading
zero, which YAML would read as octal), so that "remove the quotes" gives the number.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping
from typing import Any

from engine.rules.conditions import FieldPath, parse_field
from engine.rules.errors import Path, Problem, shown
from engine.rules.load import Document

NUMERIC_NAMES = frozenset({
    "status_code", "http_status", "exit_code", "exitcode", "return_code", "returncode", "pid", "port",
    "count", "retries", "attempts", "replicas",
})
NUMERIC_SUFFIXES = ("_ms", "_seconds", "_bytes", "_count", "_percent", "_total")
NUMERIC_PATHS = frozenset({("http", "status"), ("response", "status")})
_NUMBER_LIKE = re.compile(r"-?(0|[1-9][0-9]*)(\.[0-9]+)?")
_NUMERIC_OPERATORS = ("gt", "gte", "lt", "lte")
_STRING_OPERATORS = ("regex", "prefix", "suffix", "contains")

Leaf = tuple[Document, Path, Mapping[str, Any]]


def is_number_like(text: str) -> bool:
    """Whether `text` reads as a number when written without quotes in YAML (`503`, `-1`, `0.5`)."""
    return _NUMBER_LIKE.fullmatch(text.strip()) is not None


def numeric_warnings(docs: list[Document]) -> list[Problem]:
    """A warning, with the fix, for every condition that treats a usually numeric field as text."""
    lists: dict[str, list[Any]] = {}
    for doc in docs:
        for name, values in doc.data.get("lists", {}).items():
            lists.setdefault(name, values)
    leaves = list(_all_leaves(docs))
    compared: dict[FieldPath, list[tuple[tuple[str, Path], str]]] = {}  # field -> where it is used as a number
    for doc, path, node in leaves:
        op = _operator(node)
        values = _values(node, op, lists)
        if op in _NUMERIC_OPERATORS or any(_is_number(v) for v in values):
            line, _ = doc.locate((*path, op))
            how = op if op in _NUMERIC_OPERATORS else f"{op} a number"
            where = (doc.file, path)
            compared.setdefault(parse_field(node["field"]), []).append((where, f"{how} at {doc.file}:{line}"))
    problems = []
    for doc, path, node in leaves:
        field = parse_field(node["field"])
        uses = compared.get(field, [])
        elsewhere = [why for leaf, why in uses if leaf != (doc.file, path)]
        why = (elsewhere[0] if elsewhere else "a well-known numeric field" if _numeric_name(field)
               else "its other values are numbers" if uses else None)
        if why is None:
            continue
        op = _operator(node)
        name = node["field"] if isinstance(node["field"], str) else ".".join(map(str, node["field"]))
        if op in _STRING_OPERATORS and isinstance(node[op], str):
            message = (f"{op} only matches strings, but '{name}' is usually a number ({why}): compare it as a "
                       "number instead (gt, gte, lt, lte, or equals / in with unquoted numbers)")
        else:
            quoted = [v for v in _values(node, op, lists) if isinstance(v, str) and is_number_like(v)]
            if not quoted:
                continue
            what = ", ".join(shown(v) for v in quoted)
            via = f" (in list '{node[op]['list']}')" if isinstance(node[op], Mapping) else ""
            fix = f": {op}: {quoted[0].strip()}" if op == "equals" else via and f" in list '{node[op]['list']}'"
            message = (f"{what}{via} {'is a string' if len(quoted) == 1 else 'are strings'}, but '{name}' is "
                       f"usually a number ({why}), and a string never equals a number: remove the quotes{fix}")
        problems.append(Problem(doc.file, (*path, op), message, warning=True))
    return problems


def _all_leaves(docs: list[Document]) -> Iterator[Leaf]:
    for doc in docs:
        for i, rule in enumerate(doc.data.get("rules", [])):
            yield from _leaves(doc, rule["match"], ("rules", i, "match"))
            if "match" in rule.get("resolve", {}):
                yield from _leaves(doc, rule["resolve"]["match"], ("rules", i, "resolve", "match"))
        for name, node in doc.data.get("macros", {}).items():
            yield from _leaves(doc, node, ("macros", name))


def _leaves(doc: Document, node: Mapping[str, Any], path: Path) -> Iterator[Leaf]:
    for kind in ("all", "any"):
        if kind in node:
            for i, child in enumerate(node[kind]):
                yield from _leaves(doc, child, (*path, kind, i))
            return
    if "not" in node:
        yield from _leaves(doc, node["not"], (*path, "not"))
    elif "field" in node:
        yield doc, path, node


def _operator(node: Mapping[str, Any]) -> str:
    return next(k for k in node if k not in ("field", "ignore_case"))


def _values(node: Mapping[str, Any], op: str, lists: Mapping[str, list[Any]]) -> list[Any]:
    """The values an `equals` or `in` leaf compares with (a named list's, for `in: {list: NAME}`)."""
    if op == "equals":
        return [node[op]]
    if op == "in":
        arg = node[op]
        return list(lists.get(arg["list"], ())) if isinstance(arg, Mapping) else list(arg)
    return []


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _numeric_name(field: FieldPath) -> bool:
    last = field[-1] if field else ""
    if not isinstance(last, str):
        return False
    return last in NUMERIC_NAMES or last.endswith(NUMERIC_SUFFIXES) or tuple(field[-2:]) in NUMERIC_PATHS
