"""Rule files: load (YAML with marks), validate (schema), compile (semantics -> immutable RuleSet).

`load_ruleset` is the one validation path shared by `check`, `eval`, `test`, daemon start-up and reload.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from engine.rules.compile import compile_documents
from engine.rules.errors import RuleError
from engine.rules.load import Document, find_rule_files, load_file
from engine.rules.ruleset import RuleSet
from engine.rules.validate import schema_problems


@dataclass(frozen=True)
class LoadResult:
    """A rule set (None when there are errors), every error, and warnings that do not stop a load."""

    ruleset: RuleSet | None
    errors: tuple[RuleError, ...]
    warnings: tuple[RuleError, ...]
    files: tuple[str, ...]


def load_ruleset(paths: list[str], *, env: Mapping[str, str] | None = None,
                 allow_missing_secrets: bool = False) -> LoadResult:
    """Find, parse, schema-check and compile every rule file under `paths`."""
    files, errors = find_rule_files(paths)
    docs: list[Document] = []
    for file in list(files):
        loaded = load_file(file)
        if isinstance(loaded, RuleError):
            errors.append(loaded)
            continue
        if isinstance(loaded.data, dict) and "rule_files" in loaded.data:
            # a rule test file: skipped when a directory search finds it beside the rules it tests
            files.remove(file)
            if file in paths:
                errors.append(RuleError(file, 1, 1, None, "this is a rule test file: run it with "
                                        "'alert-engine test', not as rules"))
            continue
        docs.append(loaded)
        errors.extend(loaded.error(p) for p in schema_problems(file, loaded.data))
    if not files and not errors:
        errors.append(RuleError(", ".join(paths) or ".", 1, 1, None, "no rule files (*.yaml, *.yml) found"))
    if errors:
        return LoadResult(None, tuple(_ordered(errors)), (), tuple(files))
    ruleset, problems = compile_documents(docs, env=env, allow_missing_secrets=allow_missing_secrets)
    by_file = {d.file: d for d in docs}
    located = _ordered(by_file[p.file].error(p) for p in problems)
    return LoadResult(
        ruleset,
        tuple(e for e in located if not e.warning),
        tuple(e for e in located if e.warning),
        tuple(files),
    )


def _ordered(errors: Iterable[RuleError]) -> list[RuleError]:
    return sorted(errors, key=lambda e: (e.file, e.line, e.col))
