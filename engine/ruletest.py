"""`alert-engine test`: rule unit tests, like `promtool test rules`, run offline.

A test file names `rule_files:` (relative to itself) and lists `tests:`, each with `events` and `expect`:
the notifications the events must cause, as `{rule, service}` plus any of `dedup_key`, `severity`,
`summary`. The notifications must equal `expect` exactly: nothing missing, nothing unexpected.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path as FsPath
from typing import Any

from engine.fanout import fan_out
from engine.render import Notification
from engine.rules import load_ruleset
from engine.rules.errors import RuleError
from engine.rules.load import load_file
from engine.rules.validate import schema_problems

COMPARED = ("rule", "service", "dedup_key", "severity", "summary")


@dataclass(frozen=True)
class Outcome:
    """One test's result: what was expected but not sent, and what was sent but not expected."""

    file: str
    name: str
    missing: tuple[Mapping[str, Any], ...]
    unexpected: tuple[Mapping[str, Any], ...]

    @property
    def passed(self) -> bool:
        return not self.missing and not self.unexpected

    def report(self) -> str:
        lines = [f"{'ok  ' if self.passed else 'FAIL'}  {self.file}: {self.name}"]
        lines += [f"      - missing:    {_flow(item)}" for item in self.missing]
        lines += [f"      + unexpected: {_flow(item)}" for item in self.unexpected]
        return "\n".join(lines)


def run_test_file(file: str, now: datetime) -> list[Outcome] | list[RuleError]:
    """Run every test in one file; the file's own errors (or its rules') come back instead."""
    doc = load_file(file)
    if isinstance(doc, RuleError):
        return [doc]
    errors = [doc.error(p) for p in schema_problems(file, doc.data, "ruletest")]
    if errors:
        return errors
    base = FsPath(file).parent
    loaded = load_ruleset([str(base / p) for p in doc.data["rule_files"]], allow_missing_secrets=True)
    if loaded.ruleset is None:
        return list(loaded.errors)
    outcomes = []
    for test in doc.data["tests"]:
        rs = loaded.ruleset
        sent = [n for event in test["events"] for n in fan_out(rs, rs.match(event), now)]
        missing, unexpected = compare(test["expect"], sent)
        outcomes.append(Outcome(file, test["name"], tuple(missing), tuple(unexpected)))
    return outcomes


def observed(n: Notification) -> dict[str, Any]:
    """The fields of a notification that a test can expect."""
    return {"rule": n.rule, "service": n.service, "dedup_key": n.dedup_key, "severity": n.severity,
            "summary": n.summary}


def compare(expect: list[Mapping[str, Any]], sent: list[Notification]) -> tuple[list, list]:
    """Pair each expectation with a sent notification that has every field it names; return the rest."""
    left = [observed(n) for n in sent]
    missing = []
    for item in expect:
        hit = next((i for i, got in enumerate(left) if all(got[k] == v for k, v in item.items())), None)
        if hit is None:
            missing.append(dict(item))
        else:
            del left[hit]
    return missing, left


def _flow(item: Mapping[str, Any]) -> str:
    return "{" + ", ".join(f"{k}: {item[k]!r}" for k in COMPARED if k in item) + "}"
