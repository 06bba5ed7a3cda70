"""Conditions: a rule's `match` tree compiled once into a fast predicate over JSON events.

A condition is `all`, `any`, `not`, `{macro: NAME}`, or a leaf: `field` plus one operator. Compilation
turns the tree into nested closures, so matching an event does no parsing and no dispatch on node types.
Semantic problems (invalid RE2 regex, unknown list or macro, macro cycle) are appended to a problem list
and the broken part compiles to "never true", so that one load reports every problem at once.

Values compare as JSON values: 500 equals 500.0, "500" does not equal 500, true does not equal 1.
`equality_key` is that equality as a hashable key; the candidate index (`index.py`) relies on it and on
`Condition.anchors`, the equality leaves that every match of a condition requires.
"""

from __future__ import annotations

import difflib
import operator
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import re2

from engine.rules.errors import Path, Problem

# A parsed field path: mapping keys (str), list indexes (int), and "*" for any element or value.
FieldPath = tuple[str | int, ...]
WILDCARD = "*"

Event = Mapping[str, Any]
ValueTest = Callable[[Any], bool]
Predicate = Callable[[Event], bool]


class _Missing:
    __slots__ = ()

    def __repr__(self) -> str:
        return "MISSING"


MISSING: Any = _Missing()  # what `value_getter` returns when the path leads nowhere
_NO_KEY = object()  # the equality key of anything no scalar can equal (lists, mappings, MISSING)
_NUMBERS = (int, float)


def parse_field(spec: str | Sequence[str | int]) -> FieldPath:
    """`http.status` or `[tags, k8s.pod]` -> a FieldPath.

    In the dotted form a segment of decimal digits (no leading zero) is a list index; in the list form
    items are taken literally, except that ints index lists and "*" is still the wildcard.
    """
    if isinstance(spec, str):
        return tuple(int(s) if s.isascii() and s.isdigit() and (s == "0" or s[0] != "0") else s
                     for s in spec.split("."))
    for segment in spec:
        if not isinstance(segment, str | int) or isinstance(segment, bool):
            raise TypeError(f"a field segment is a string or an int, not {segment!r}")
    return tuple(spec)


def _step(value: Any, segment: str | int) -> Any:
    """One non-wildcard segment down from `value`, or MISSING."""
    if isinstance(value, dict):
        return value.get(segment if type(segment) is str else str(segment), MISSING)
    if isinstance(value, list) and type(segment) is int and 0 <= segment < len(value):
        return value[segment]
    return MISSING


def field_values(event: Any, path: FieldPath) -> list[Any]:
    """Every value found at `path` (0 or 1 without a wildcard; any number with one)."""
    found = [event]
    for segment in path:
        below: list[Any] = []
        for value in found:
            if segment == WILDCARD:
                if isinstance(value, dict):
                    below.extend(value.values())
                elif isinstance(value, list):
                    below.extend(value)
            else:
                value = _step(value, segment)
                if value is not MISSING:
                    below.append(value)
        if not below:
            return below
        found = below
    return found


def value_getter(path: FieldPath) -> Callable[[Event], Any]:
    """A fast `event -> value or MISSING` for a path without a wildcard."""
    if WILDCARD in path:
        raise ValueError(f"value_getter needs a path without '*': {path!r}")
    if len(path) == 1 and type(path[0]) is str:
        key = path[0]
        return lambda event: event.get(key, MISSING)

    def get(event: Event) -> Any:
        value: Any = event
        for segment in path:
            value = _step(value, segment)
            if value is MISSING:
                break
        return value

    return get


def equality_key(value: Any) -> Any:
    """A hashable key equal for JSON-equal scalars: 500 ~ 500.0, but true !~ 1 and "1" !~ 1."""
    kind = type(value)
    if kind is str or kind is int or kind is float or value is None:
        return value
    if kind is bool:
        return ("bool", value)
    return _NO_KEY


def folded_key(value: Any) -> Any:
    """`equality_key`, with strings casefolded (for `ignore_case`)."""
    return value.casefold() if type(value) is str else equality_key(value)


@dataclass(frozen=True)
class Anchor:
    """The condition can only be true if a value at `path` has its (folded) equality key in `keys`."""

    path: FieldPath
    keys: frozenset[Any]
    ignore_case: bool = False


@dataclass(frozen=True, eq=False)
class Condition:
    """A compiled condition: call it with an event. `anchors` are what `CandidateIndex` indexes on."""

    test: Predicate
    anchors: tuple[Anchor, ...] = ()

    def __call__(self, event: Event) -> bool:
        return self.test(event)


NEVER = Condition(lambda event: False)  # what a broken part of a condition compiles to


class Definitions:
    """The global `lists` and `macros` of a rule set, each with the file and path that defined it.

    `Definitions(lists={name: (file, path, values)}, macros={name: (file, path, node)})`. A macro is
    compiled on first use and once only; its problems are reported at its own file and path. This is a
    load-time helper: compiled conditions keep no reference to it.
    """

    def __init__(
        self,
        lists: Mapping[str, tuple[str, Path, Sequence[Any]]] | None = None,
        macros: Mapping[str, tuple[str, Path, Any]] | None = None,
    ) -> None:
        self._lists = dict(lists or {})
        self._macros = dict(macros or {})
        self._compiled: dict[str, Condition] = {}
        self._compiling: list[str] = []
        self._cycles_reported: set[tuple[str, ...]] = set()

    def list_values(self, name: str) -> Sequence[Any] | None:
        """The values of list `name`, or None when there is no such list."""
        entry = self._lists.get(name)
        return None if entry is None else entry[2]

    def list_names(self) -> list[str]:
        return list(self._lists)

    def macro_names(self) -> list[str]:
        return list(self._macros)

    def macro(self, name: str, problems: list[Problem]) -> Condition | None:
        """Macro `name` compiled (once), or None when there is no such macro."""
        compiled = self._compiled.get(name)
        if compiled is not None:
            return compiled
        if name not in self._macros:
            return None
        if name in self._compiling:
            self._report_cycle(name, problems)
            return NEVER
        file, path, node = self._macros[name]
        self._compiling.append(name)
        try:
            compiled = _Compiler(file, self, problems, None).compile(node, path)
        finally:
            self._compiling.pop()
        self._compiled[name] = compiled
        return compiled

    def check_all(self, problems: list[Problem]) -> None:
        """Compile every macro, used or not, so that each one's problems are reported."""
        for name in self._macros:
            self.macro(name, problems)

    def _report_cycle(self, name: str, problems: list[Problem]) -> None:
        loop = self._compiling[self._compiling.index(name):]
        start = loop.index(min(loop))  # the same cycle reads the same whichever macro was entered first
        cycle = (*loop[start:], *loop[:start])
        if cycle in self._cycles_reported:
            return
        self._cycles_reported.add(cycle)
        file, path, _ = self._macros[cycle[0]]
        problems.append(Problem(file, path, "macro cycle: " + " -> ".join((*cycle, cycle[0]))))


def compile_condition(
    node: Any,
    *,
    file: str,
    path: Path,
    definitions: Definitions,
    problems: list[Problem],
    rule: str | None = None,
) -> Condition:
    """Compile a schema-valid condition `node` found at `path` in `file`; problems go to `problems`."""
    return _Compiler(file, definitions, problems, rule).compile(node, path)


def _did_you_mean(word: str, choices: list[str]) -> str:
    close = difflib.get_close_matches(word, choices, n=1)
    return f" (did you mean '{close[0]}'?)" if close else ""


class _Compiler:
    """Compiles the condition nodes of one rule (or one macro body) in one file."""

    def __init__(self, file: str, definitions: Definitions, problems: list[Problem], rule: str | None):
        self.file = file
        self.definitions = definitions
        self.problems = problems
        self.rule = rule

    def problem(self, path: Path, message: str) -> Condition:
        self.problems.append(Problem(self.file, path, message, self.rule))
        return NEVER

    def compile(self, node: Mapping[str, Any], path: Path) -> Condition:
        if "all" in node:
            return _all_of([self.compile(c, (*path, "all", i)) for i, c in enumerate(node["all"])])
        if "any" in node:
            return _any_of([self.compile(c, (*path, "any", i)) for i, c in enumerate(node["any"])])
        if "not" in node:
            inner = self.compile(node["not"], (*path, "not")).test
            return Condition(lambda event: not inner(event))
        if "macro" in node:
            name = node["macro"]
            found = self.definitions.macro(name, self.problems)
            if found is None:
                unknown = f"unknown macro '{name}'{_did_you_mean(name, self.definitions.macro_names())}"
                return self.problem((*path, "macro"), unknown)
            return found
        return self.leaf(node, path)

    def leaf(self, node: Mapping[str, Any], path: Path) -> Condition:
        op = next(key for key in node if key in _OPERATORS)
        arg = node[op]
        field = parse_field(node["field"])
        ignore_case = bool(node.get("ignore_case", False))
        if op == "exists":
            return Condition(_exists(field, arg))
        if op == "regex":
            options = re2.Options()
            options.log_errors = False
            options.never_capture = True
            options.case_sensitive = not ignore_case
            try:
                search = re2.compile(arg, options).search
            except re2.error as exc:
                reason = exc.args[0].decode("utf-8", "replace") if exc.args else "cannot compile"
                return self.problem((*path, op), f"invalid regex '{arg}': {reason}")
            return Condition(_any_value(field, lambda v: type(v) is str and search(v) is not None))
        if op == "equals" or op == "in":
            values = [arg] if op == "equals" else arg
            if isinstance(values, Mapping):
                name = values["list"]
                values = self.definitions.list_values(name)
                if values is None:
                    unknown = f"unknown list '{name}'{_did_you_mean(name, self.definitions.list_names())}"
                    return self.problem((*path, op, "list"), unknown)
            keys = frozenset(map(folded_key if ignore_case else equality_key, values))
            anchor = Anchor(field, keys, ignore_case)
            return Condition(_any_value(field, _member_of(keys, ignore_case)), (anchor,))
        return Condition(_any_value(field, _VALUE_TESTS[op](arg, ignore_case)))


def _member_of(keys: frozenset[Any], ignore_case: bool) -> ValueTest:
    """The value's (folded) equality key is one of `keys`."""
    if all(type(k) is str for k in keys):
        if len(keys) == 1:
            (only,) = keys
            if ignore_case:
                return lambda v: type(v) is str and v.casefold() == only
            return lambda v: type(v) is str and v == only
        if ignore_case:
            return lambda v: type(v) is str and v.casefold() in keys
        return lambda v: type(v) is str and v in keys
    key = folded_key if ignore_case else equality_key
    return lambda v: key(v) in keys


def _contains(needle: Any, ignore_case: bool) -> ValueTest:
    """A string containing `needle`, or a list with an element equal to it."""
    if type(needle) is str and ignore_case:
        folded = needle.casefold()

        def test(v: Any) -> bool:
            if type(v) is str:
                return folded in v.casefold()
            return type(v) is list and any(type(e) is str and e.casefold() == folded for e in v)

        return test
    if type(needle) is str:
        return lambda v: (type(v) is str or type(v) is list) and needle in v
    key = equality_key(needle)
    return lambda v: type(v) is list and any(equality_key(e) == key for e in v)


def _affix(method: Callable[[str, str], bool]) -> Callable[[str, bool], ValueTest]:
    def build(affix: str, ignore_case: bool) -> ValueTest:
        if ignore_case:
            folded = affix.casefold()
            return lambda v: type(v) is str and method(v.casefold(), folded)
        return lambda v: type(v) is str and method(v, affix)

    return build


def _compare(op: Callable[[Any, Any], bool]) -> Callable[[Any, bool], ValueTest]:
    def build(bound: Any, ignore_case: bool) -> ValueTest:
        return lambda v: type(v) in _NUMBERS and op(v, bound)

    return build


_VALUE_TESTS: dict[str, Callable[[Any, bool], ValueTest]] = {
    "contains": _contains,
    "prefix": _affix(str.startswith),
    "suffix": _affix(str.endswith),
    "gt": _compare(operator.gt),
    "gte": _compare(operator.ge),
    "lt": _compare(operator.lt),
    "lte": _compare(operator.le),
}
_OPERATORS = frozenset({"equals", "in", "regex", "exists", *_VALUE_TESTS})


def _any_value(field: FieldPath, test: ValueTest) -> Predicate:
    """True when the value at `field` (any of them, with a wildcard) passes `test`."""
    if WILDCARD in field:
        return lambda event: any(map(test, field_values(event, field)))
    if len(field) == 1 and type(field[0]) is str:
        key = field[0]
        return lambda event: test(event.get(key, MISSING))
    get = value_getter(field)
    return lambda event: test(get(event))


def _exists(field: FieldPath, wanted: bool) -> Predicate:
    if WILDCARD in field:
        return lambda event: bool(field_values(event, field)) is wanted
    get = value_getter(field)
    if wanted:
        return lambda event: get(event) is not MISSING
    return lambda event: get(event) is MISSING


def _all_of(parts: list[Condition]) -> Condition:
    if len(parts) == 1:
        return parts[0]
    tests = tuple(p.test for p in parts)
    if len(tests) == 2:
        first, second = tests
        return Condition(lambda event: first(event) and second(event), _all_anchors(parts))
    return Condition(lambda event: all(t(event) for t in tests), _all_anchors(parts))


def _any_of(parts: list[Condition]) -> Condition:
    if len(parts) == 1:
        return parts[0]
    tests = tuple(p.test for p in parts)
    if len(tests) == 2:
        first, second = tests
        return Condition(lambda event: first(event) or second(event), _any_anchors(parts))
    return Condition(lambda event: any(t(event) for t in tests), _any_anchors(parts))


def _all_anchors(parts: list[Condition]) -> tuple[Anchor, ...]:
    """Every part's anchors; two on the same field require a key in both (intersection)."""
    merged: dict[tuple[FieldPath, bool], frozenset[Any]] = {}
    for part in parts:
        for a in part.anchors:
            at = (a.path, a.ignore_case)
            merged[at] = merged[at] & a.keys if at in merged else a.keys
    return tuple(Anchor(path, keys, ignore_case) for (path, ignore_case), keys in merged.items())


def _any_anchors(parts: list[Condition]) -> tuple[Anchor, ...]:
    """A field anchored in every alternative anchors the whole `any` on the union of their keys."""
    common: dict[tuple[FieldPath, bool], frozenset[Any]] | None = None
    for part in parts:
        mine = {(a.path, a.ignore_case): a.keys for a in part.anchors}
        if common is not None:
            mine = {at: common[at] | keys for at, keys in mine.items() if at in common}
        common = mine
    return tuple(Anchor(path, keys, ignore_case) for (path, ignore_case), keys in (common or {}).items())
