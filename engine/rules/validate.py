"""Schema validation of one rule file, with errors an operator can act on.

jsonschema's own messages for `oneOf` ("is not valid under any of the given schemas") say nothing
useful, so each error is translated here: unknown keys get a "did you mean", a condition that fails its
`oneOf` is explained from its discriminating key, and the errors of the branch it meant are reported at
their own paths.
"""

from __future__ import annotations

import difflib
import json
from collections.abc import Iterator
from functools import cache
from importlib import resources
from typing import Any, cast

import jsonschema_rs
from jsonschema import Draft202012Validator
from jsonschema.exceptions import ValidationError

from engine.rules.errors import Path, Problem, shown
from engine.rules.numeric import is_number_like

CONDITION_KINDS = ("all", "any", "not", "macro", "field")
OPERATORS = ("equals", "in", "regex", "contains", "prefix", "suffix", "exists", "gt", "gte", "lt", "lte")
NAME_PATTERN = "^[A-Za-z0-9_.:-]{1,128}$"
_BRANCH_OF_KIND = {kind: i for i, kind in enumerate(CONDITION_KINDS)}  # order of $defs/condition oneOf


@cache
def load_schema(name: str) -> dict[str, Any]:
    """A JSON Schema shipped with the package (`schemas/NAME.schema.json`)."""
    text = resources.files("engine").joinpath("schemas", f"{name}.schema.json").read_text("utf-8")
    return json.loads(text)


@cache
def _validator(name: str) -> Draft202012Validator:
    return Draft202012Validator(load_schema(name))


@cache
def _fast_validator(name: str) -> Any:
    return jsonschema_rs.validator_for(load_schema(name))


def schema_problems(file: str, data: Any, schema: str = "rules") -> list[Problem]:
    """Every schema violation in `data`, as problems located by path, in document order.

    jsonschema-rs says whether there is any (10,000 rules in milliseconds, where jsonschema takes tens
    of seconds); only then does jsonschema find them, for the error structure the messages are made of.
    """
    if _fast_validator(schema).is_valid(data):
        return []
    return sorted(_problems(_validator(schema), file, data), key=lambda p: [str(x) for x in p.path])


@cache
def _condition_validator() -> Draft202012Validator:
    schema = load_schema("rules")
    return Draft202012Validator({"$defs": schema["$defs"], "$ref": "#/$defs/condition"})


def condition_problems(file: str, data: Any) -> list[Problem]:
    """Schema violations of one condition on its own (a silence's `match`), located by path."""
    return _problems(_condition_validator(), file, data)


def _problems(validator: Draft202012Validator, file: str, data: Any) -> list[Problem]:
    problems: dict[tuple[Path, str], Problem] = {}
    for error in validator.iter_errors(data):
        for path, message in _translate(error):
            problems.setdefault((path, message), Problem(file, path, message))
    return list(problems.values())


def did_you_mean(word: str, choices: Any) -> str:
    """` (did you mean 'x'?)` when a choice is close to `word`, else an empty string."""
    close = difflib.get_close_matches(str(word), [str(c) for c in choices], n=1, cutoff=0.6)
    return f" (did you mean '{close[0]}'?)" if close else ""


def _name(path: Path) -> str:
    for part in reversed(path):
        if isinstance(part, str):
            return f"'{part}'"
    return "the file" if not path else "this item"


def _json_type(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, (int, float)):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, dict):
        return "a mapping"
    return type(value).__name__


_TYPE_WORDS = {
    "object": "a mapping", "array": "a list", "string": "a string", "number": "a number",
    "integer": "an integer", "boolean": "true or false", "null": "null",
}


def _translate(error: ValidationError) -> Iterator[tuple[Path, str]]:
    path: Path = tuple(error.absolute_path)
    kind, schema, instance, wanted = error.validator, _schema(error), cast(Any, error.instance), _wanted(error)
    if kind == "additionalProperties":
        allowed = schema.get("properties", {})
        for key in instance:
            if key not in allowed:
                yield (*path, key), f"unknown key '{key}'{did_you_mean(key, allowed)}"
    elif kind == "required":
        for key in wanted:
            if key not in instance:
                yield path, f"missing required key '{key}'"
    elif kind == "oneOf":
        yield from _translate_one_of(error, path)
    elif kind == "type":
        expected = wanted
        types = [expected] if isinstance(expected, str) else list(expected)
        words = " or ".join(_TYPE_WORDS.get(t, t) for t in types)
        what = "the file" if not path else _name(path)
        hint = ""
        if isinstance(instance, bool) and "string" in types:
            hint = " (YAML reads yes/no/on/off/true/false as booleans: quote it)"
        elif path and isinstance(instance, str) and is_number_like(instance) and {"number", "integer"} & set(types):
            hint = f" (remove the quotes: {path[-1]}: {instance.strip()})"
        yield path, f"{what} must be {words}, not {_json_type(instance)}{hint}"
    elif kind == "enum":
        choices = ", ".join(str(c) for c in wanted)
        yield path, f"{_name(path)} must be one of {choices}, not {shown(instance)}"
    elif kind == "pattern" and schema.get("pattern") == NAME_PATTERN:
        yield path, f"invalid name {shown(instance)}: use 1-128 characters of A-Z a-z 0-9 _ . : -"
    elif kind == "pattern":
        hint = f": {schema['description']}" if "description" in schema else ""
        yield path, f"{_name(path)} is not valid: {shown(instance)}{hint}"
    elif kind in ("minItems", "minLength"):
        yield path, f"{_name(path)} must not be empty"
    elif kind == "uniqueItems":
        yield path, f"{_name(path)} lists the same entry twice"
    elif kind == "minimum" or kind == "exclusiveMinimum":
        yield path, f"{_name(path)} must be at least {wanted}"
    else:
        yield path, error.message


def _translate_one_of(error: ValidationError, path: Path) -> Iterator[tuple[Path, str]]:
    schema, instance = _schema(error), cast(Any, error.instance)
    branches = schema["oneOf"]
    refs = [b.get("$ref") for b in branches]
    if "#/$defs/leaf" in refs:
        yield from _explain_condition(error, path)
    elif all(set(b) == {"required"} for b in branches):
        found = [op for op in OPERATORS if op in instance]
        ops = ", ".join(OPERATORS)
        if not found:
            yield path, f"condition on field {shown(instance.get('field'))} needs an operator: one of {ops}"
        else:
            yield path, f"a condition takes exactly one operator, found {', '.join(found)}"
    elif any("service_key" in b.get("required", ()) for b in branches):
        yield path, "a service needs exactly one of 'service_key' or 'service_key_file'"
    elif len(path) >= 2 and path[-2] == "mute" and isinstance(instance, dict):
        yield path, _explain_mute(instance)
    elif (path and path[-1] == "field") or (len(path) >= 2 and path[-2] == "group_by"):
        yield path, "a field is a dotted path string or a list of path segments"
    elif path and path[-1] == "in":
        yield path, "'in' takes a non-empty list of values or {list: NAME}"
    elif "description" in schema:
        yield path, f"{_name(path)} is not valid: {shown(instance)}; {_lower_first(schema['description'])}"
    else:
        yield path, error.message


def _schema(error: ValidationError) -> dict[str, Any]:
    """The (sub)schema that failed: always a mapping in our schemas (the stubs allow a bool)."""
    return cast(dict[str, Any], error.schema)


def _wanted(error: ValidationError) -> Any:
    """What the failed keyword asked for (`required`'s keys, `type`'s types, `enum`'s choices...)."""
    return cast(Any, error.validator_value)


def _explain_mute(window: dict[str, Any]) -> str:
    """What a mute window that is neither a recurring nor a fixed one lacks, or mixes."""
    recurring: list[str] = [k for k in ("cron", "duration", "timezone") if k in window]
    fixed: list[str] = [k for k in ("start", "end") if k in window]
    if recurring and fixed:
        return (f"a mute window is either cron + duration (+ timezone) or start + end, not both: found "
                f"{', '.join(recurring + fixed)}")
    if fixed:
        return f"missing required key '{'end' if 'start' in window else 'start'}': a fixed mute window is start + end"
    missing = [k for k in ("cron", "duration") if k not in window]
    if recurring and missing:
        keys = "keys 'cron' and 'duration'" if len(missing) == 2 else f"key '{missing[0]}'"
        return f"missing required {keys}: a recurring mute window is cron + duration (+ timezone)"
    return "a mute window needs cron + duration (+ timezone), or start + end"


def _lower_first(text: str) -> str:
    return text[:1].lower() + text[1:]


def _explain_condition(error: ValidationError, path: Path) -> Iterator[tuple[Path, str]]:
    instance = error.instance
    if not isinstance(instance, dict):
        yield path, f"a condition must be a mapping, not {_json_type(instance)}"
        return
    kinds = [k for k in CONDITION_KINDS if k in instance]
    if len(kinds) > 1:
        yield path, f"a condition takes exactly one of all, any, not, macro, field; found {', '.join(kinds)}"
        return
    if not kinds:
        known = (*CONDITION_KINDS, "ignore_case", *OPERATORS)
        unknown = [k for k in instance if k not in known]
        for key in unknown:
            yield (*path, key), f"unknown key '{key}'{did_you_mean(key, known)}"
        if not unknown:
            yield path, "a condition needs one of 'all', 'any', 'not', 'macro', or 'field' with an operator"
        return
    branch = _BRANCH_OF_KIND[kinds[0]]
    for sub in error.context or ():
        if sub.relative_schema_path and sub.relative_schema_path[0] == branch:
            yield from _translate(sub)
