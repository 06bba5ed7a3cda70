"""Rule files -> plain Python documents, with the line and column of every key and list item.

A rules path is a file or a directory searched recursively for `*.yaml` / `*.yml`. YAML is composed
into nodes first so that each mapping key and sequence item keeps its mark; errors found later (schema,
semantics) are reported at the offending key through `Document.locate`.
"""

from __future__ import annotations

import contextlib
import hashlib
from dataclasses import dataclass, field
from pathlib import Path as FsPath
from typing import Any

import yaml

from engine.rules.errors import Path, Problem, RuleError

RULE_SUFFIXES = (".yaml", ".yml")


@dataclass
class Document:
    """One rule file: its data, its sha256, and where each path in it was written."""

    file: str
    data: Any
    sha256: str
    marks: dict[Path, tuple[int, int]] = field(default_factory=dict)

    def locate(self, path: Path) -> tuple[int, int]:
        """(line, col), 1-based, of the key or item at `path`, or of its nearest ancestor."""
        while path:
            mark = self.marks.get(path)
            if mark is not None:
                return mark
            path = path[:-1]
        return self.marks.get((), (1, 1))

    def rule_name(self, path: Path) -> str | None:
        """The name of the rule that `path` lies in, if it lies in `rules[i]` and that rule has one."""
        if len(path) >= 2 and path[0] == "rules" and isinstance(path[1], int):
            rules = self.data.get("rules") if isinstance(self.data, dict) else None
            if isinstance(rules, list) and path[1] < len(rules) and isinstance(rules[path[1]], dict):
                name = rules[path[1]].get("name")
                return name if isinstance(name, str) else None
        return None

    def error(self, problem: Problem) -> RuleError:
        line, col = self.locate(problem.path)
        rule = problem.rule if problem.rule is not None else self.rule_name(problem.path)
        return RuleError(problem.file, line, col, rule, problem.message, problem.warning)


def find_rule_files(paths: list[str]) -> tuple[list[str], list[RuleError]]:
    """Expand rules paths into rule files, in a stable order; a missing path is an error."""
    files: list[str] = []
    errors: list[RuleError] = []
    for raw in paths:
        p = FsPath(raw)
        if p.is_dir():
            found = sorted(str(f) for f in p.rglob("*") if f.suffix in RULE_SUFFIXES and f.is_file())
            files.extend(found)
        elif p.is_file():
            files.append(raw)
        else:
            errors.append(RuleError(raw, 1, 1, None, "no such file or directory"))
    return list(dict.fromkeys(files)), errors  # each file once, in the order found


def fingerprint(paths: list[str]) -> dict[str, str]:
    """The sha256 of every rule file under `paths` as they are now (unreadable ones left out)."""
    out = {}
    for file in find_rule_files(paths)[0]:
        with contextlib.suppress(OSError):
            out[file] = hashlib.sha256(FsPath(file).read_bytes()).hexdigest()
    return out


def load_file(file: str) -> Document | RuleError:
    """Read and parse one rule file; a YAML error comes back as a located RuleError."""
    try:
        raw = FsPath(file).read_bytes()
    except OSError as exc:
        return RuleError(file, 1, 1, None, f"cannot read file: {exc.strerror or exc}")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        return RuleError(file, 1, 1, None, f"not valid UTF-8 at byte {exc.start}")
    doc = Document(file, None, hashlib.sha256(raw).hexdigest())
    try:
        node = yaml.compose(text, Loader=_COMPOSER)
        # a constructor per file: it remembers every node it built, which would keep them all alive
        doc.data = {} if node is None else _construct(node, (), doc.marks, yaml.SafeLoader(""))
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line, col = (mark.line + 1, mark.column + 1) if mark else (1, 1)
        hint = _yaml_hint(exc, text)
        return RuleError(file, line, col, None, f"invalid YAML: {exc.problem or exc.context}{hint}")
    except _DuplicateKey as exc:
        return RuleError(file, exc.line, exc.col, None, f"duplicate key '{exc.key}'")
    doc.marks[()] = (node.start_mark.line + 1, node.start_mark.column + 1) if node is not None else (1, 1)
    return doc


def _yaml_hint(exc: yaml.MarkedYAMLError, text: str) -> str:
    """A plain-words hint for the YAML mistakes people make most (tabs, indentation), as ` (hint)`, or ""."""
    mark, begun = exc.problem_mark, exc.context_mark
    if mark is None:
        return ""
    lines = text.splitlines()
    source = lines[mark.line] if mark.line < len(lines) else ""
    indent = source[:len(source) - len(source.lstrip(" \t"))]
    if "\t" in indent or source[mark.column:mark.column + 1] == "\t":
        return " (YAML does not allow tabs for indentation: indent with spaces)"
    problem = exc.problem or ""
    if problem.startswith("mapping values are not allowed"):
        return " (a value that contains ': ' must be quoted, e.g. summary: \"disk: full\"; or this line is " \
               "indented too far)"
    col = mark.column + 1
    if begun is None:
        return ""
    start_line, start_col = begun.line + 1, begun.column + 1
    if problem == "did not find expected key":
        if source.lstrip().startswith("-") and col == start_col:
            return f" (a list item '-' cannot stand among the keys of the mapping begun on line {start_line})"
        if col != start_col:
            return (f" (bad indentation: this line starts in column {col}, but the keys of the mapping begun on "
                    f"line {start_line} start in column {start_col})")
    if problem == "did not find expected '-' indicator" and col != start_col:
        return (f" (bad indentation: this line starts in column {col}, but the items of the list begun on line "
                f"{start_line} start with '-' in column {start_col})")
    return ""


class _DuplicateKey(Exception):
    def __init__(self, key: str, line: int, col: int) -> None:
        super().__init__(key)
        self.key, self.line, self.col = key, line, col


# libyaml's parser when PyYAML was built with it (the wheels are): about 4 times faster on large files
_COMPOSER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


def _construct(node: yaml.Node, path: Path, marks: dict[Path, tuple[int, int]], scalars: yaml.SafeLoader) -> Any:
    if isinstance(node, yaml.MappingNode):
        scalars.flatten_mapping(node)  # resolves `<<:` merge keys
        out: dict[Any, Any] = {}
        for key_node, value_node in node.value:
            key = _construct(key_node, path, marks, scalars)
            if not isinstance(key, (str, int, float, bool)) and key is not None:
                raise yaml.constructor.ConstructorError(
                    None, None, "mapping keys must be scalars", key_node.start_mark
                )
            if key in out:
                raise _DuplicateKey(str(key), key_node.start_mark.line + 1, key_node.start_mark.column + 1)
            child = (*path, key if isinstance(key, str | int) else str(key))
            marks[child] = (key_node.start_mark.line + 1, key_node.start_mark.column + 1)
            out[key] = _construct(value_node, child, marks, scalars)
        return out
    if isinstance(node, yaml.SequenceNode):
        items = []
        for i, item in enumerate(node.value):
            child = (*path, i)
            marks[child] = (item.start_mark.line + 1, item.start_mark.column + 1)
            items.append(_construct(item, child, marks, scalars))
        return items
    if node.tag == "tag:yaml.org,2002:timestamp":
        return node.value  # dates stay text: JSON has no date type and the schema expects strings
    return scalars.construct_object(node, deep=True)
