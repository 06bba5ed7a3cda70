"""The immutable compiled rule set: services, rules, and `RuleSet.match`."""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from engine.rules.conditions import Condition
from engine.rules.index import CandidateIndex
from engine.rules.policy import STATELESS, Policy
from engine.templates import Template, TemplateTree

SEVERITIES = ("critical", "error", "warning", "info")


def mask_key(key: str) -> str:
    """`****abcd`: enough to tell keys apart in output, never enough to use one."""
    return "****" + key[-4:] if len(key) >= 8 else "****"


@dataclass(frozen=True)
class Service:
    """One PagerDuty service: where a match is paged. `key` is a secret and never printed."""

    name: str
    api: str  # "v2" (Events API v2) or "v1" (legacy generic create_event)
    key: str = field(repr=False)
    severity: str | None = None  # default severity for rules that set none
    file: str = ""
    line: int = 0

    @property
    def masked_key(self) -> str:
        return mask_key(self.key)


@dataclass(frozen=True)
class Link:
    href: Template
    text: Template | None = None


@dataclass(frozen=True)
class Image:
    src: Template
    alt: Template | None = None
    href: Template | None = None


@dataclass(frozen=True)
class Rule:
    """One compiled rule. Template fields are None when the rule leaves them to their default."""

    name: str
    order: int  # position in rule-file order across the whole set
    condition: Condition
    services: tuple[str, ...]
    description: str = ""
    enabled: bool = True
    severity: Template | None = None
    summary: Template | None = None
    source: Template | None = None
    dedup_key: Template | None = None
    component: Template | None = None
    group: Template | None = None
    class_: Template | None = None
    group_by: tuple[tuple[Any, ...], ...] = ()  # parsed field paths
    group_by_names: tuple[str, ...] = ()  # the field paths as written, for dedup keys and output
    details: TemplateTree | None = None
    links: tuple[Link, ...] = ()
    images: tuple[Image, ...] = ()
    policy: Policy = STATELESS  # thresholds, throttles, resolves, mute windows… (engine.decide)
    file: str = ""
    line: int = 0


@dataclass(frozen=True)
class Match:
    """A rule matched an event."""

    rule: Rule
    event: Mapping[str, Any]


@dataclass(frozen=True)
class RuleSet:
    """Everything one load produced. Never mutated: a reload builds a new one and swaps the reference."""

    rules: tuple[Rule, ...]
    services: Mapping[str, Service]
    files: Mapping[str, str]  # path -> sha256 of its content
    index: CandidateIndex
    resolve_index: CandidateIndex  # over the rules' `resolve.match` conditions
    by_name: Mapping[str, Rule]
    inhibit_fields: Mapping[str, tuple[tuple[str, Any], ...]]  # rule -> (name, path) its inhibitors compare

    @property
    def sha256(self) -> str:
        """One hash over every loaded file, to tell rule sets apart."""
        h = hashlib.sha256()
        for path in sorted(self.files):
            h.update(path.encode() + b"\0" + self.files[path].encode() + b"\n")
        return h.hexdigest()

    def match(self, event: Mapping[str, Any]) -> list[Match]:
        """Every enabled rule whose condition holds for the event, in rule-file order."""
        rules = self.rules
        return [Match(rules[i], event) for i in self.index.candidates(event) if rules[i].condition(event)]

    def resolvers(self, event: Mapping[str, Any]) -> list[int]:
        """The enabled rules whose `resolve.match` holds for the event, in rule-file order."""
        rules = self.rules
        return [i for i in self.resolve_index.candidates(event)
                if (resolves := rules[i].policy.resolve_match) is not None and resolves(event)]

    def rule(self, name: str) -> Rule | None:
        return self.by_name.get(name)

    def inhibit_labels(self, name: str) -> tuple[tuple[str, Any], ...]:
        """The fields whose values an open alert of rule `name` keeps, for rules it inhibits to compare."""
        return self.inhibit_fields.get(name, ())
