"""Validated rule documents -> an immutable RuleSet, with every semantic check on the way.

Semantic checks (after the schema): duplicate names across files, unknown service/list/macro names,
RE2-invalid regexes, Jinja syntax errors, severities, and service keys that cannot be read (a missing
environment variable or key file). A key that is read but is not 32 characters long (PagerDuty's v1 and
v2 integration keys both are) is a warning. All problems are collected; a RuleSet is built only without
errors.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from pathlib import Path as FsPath
from typing import Any

from engine.rules.conditions import Definitions, compile_condition, parse_field
from engine.rules.errors import Path, Problem, shown
from engine.rules.index import CandidateIndex
from engine.rules.load import Document
from engine.rules.numeric import numeric_warnings
from engine.rules.policy import STATELESS, compile_policy
from engine.rules.ruleset import SEVERITIES, Image, Link, Rule, RuleSet, Service
from engine.rules.validate import did_you_mean
from engine.sources.sentry import AUTO_SEVERITY
from engine.templates import Template, compile_template_at, compile_tree

_VAR = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")
_TEMPLATE_FIELDS = ("severity", "summary", "source", "dedup_key", "component", "group", "class")
KEY_LENGTH = 32  # characters of a PagerDuty integration key, Events API v1 and v2 alike


class _Compiler:
    def __init__(self, env: Mapping[str, str], allow_missing_secrets: bool) -> None:
        self.env = env
        self.allow_missing_secrets = allow_missing_secrets
        self.problems: list[Problem] = []
        self.defined: dict[tuple[str, str], tuple[str, Path]] = {}  # (kind, name) -> where

    def first_definition(self, kind: str, name: str, file: str, path: Path, docs: Mapping[str, Document]) -> bool:
        """Record a definition; a second one with the same name is a problem naming the first."""
        where = self.defined.get((kind, name))
        if where is None:
            self.defined[(kind, name)] = (file, path)
            return True
        first_file, first_path = where
        line, _ = docs[first_file].locate(first_path)
        self.problems.append(
            Problem(file, path, f"{kind} '{name}' is already defined at {first_file}:{line}",
                    name if kind == "rule" else None)
        )
        return False

    def service(self, name: str, raw: Mapping[str, Any], file: str, path: Path, line: int) -> Service:
        key = self.read_key(name, raw, file, path)
        if key and len(key) != KEY_LENGTH:  # "" is an unreadable key, already a problem
            which = "service_key" if "service_key" in raw else "service_key_file"
            self.problems.append(Problem(file, (*path, which), f"service '{name}': key is {len(key)} characters, "
                                         f"PagerDuty integration keys are {KEY_LENGTH}", warning=True))
        return Service(name, raw.get("api", "v2"), key, raw.get("severity"), file, line)

    def read_key(self, name: str, raw: Mapping[str, Any], file: str, path: Path) -> str:
        """The service's integration key; an unreadable one is a problem naming the service, never the key."""
        which = "service_key" if "service_key" in raw else "service_key_file"
        text = raw[which]
        missing = [v for v in _VAR.findall(text) if v not in self.env]
        if missing:
            return self.key_problem(file, (*path, which), f"service '{name}': environment variable "
                                    f"{', '.join(missing)} is not set")
        text = _VAR.sub(lambda m: self.env[m.group(1)], text)
        if which == "service_key":
            return text.strip() or self.key_problem(file, (*path, which), f"service '{name}': key is empty")
        try:
            key = FsPath(text).read_text("utf-8").strip()
        except OSError as exc:
            return self.key_problem(file, (*path, which),
                                    f"service '{name}': cannot read key file {text}: {exc.strerror or exc}")
        except UnicodeDecodeError:
            return self.key_problem(file, (*path, which), f"service '{name}': key file {text} is not text")
        return key or self.key_problem(file, (*path, which), f"service '{name}': key file {text} is empty")

    def key_problem(self, file: str, path: Path, message: str) -> str:
        self.problems.append(Problem(file, path, message, warning=self.allow_missing_secrets))
        return ""

    def rule(self, raw: Mapping[str, Any], *, order: int, file: str, path: Path, line: int,
             services: Mapping[str, Service], definitions: Definitions) -> Rule:
        name = raw["name"]
        problems = self.problems
        for i, service in enumerate(raw["services"]):
            if service not in services:
                problems.append(Problem(file, (*path, "services", i), _unknown_service(service, services), name))
        condition = compile_condition(raw["match"], file=file, path=(*path, "match"),
                                      definitions=definitions, problems=problems, rule=name)
        templates: dict[str, Template | None] = {}
        for key in _TEMPLATE_FIELDS:
            if key in raw:
                templates[key] = compile_template_at(raw[key], file=file, path=(*path, key),
                                                     problems=problems, rule=name)
        severity = templates.get("severity")
        if severity is not None and severity.is_constant and severity.source not in (*SEVERITIES, AUTO_SEVERITY):
            problems.append(Problem(file, (*path, "severity"), f"severity must be one of {', '.join(SEVERITIES)}"
                                    f" or a template, not {shown(severity.source)} (or {AUTO_SEVERITY}: from the "
                                    "event's level)", name))
        details = raw.get("details")
        resolve_match = None
        if "match" in raw.get("resolve", {}):
            resolve_match = compile_condition(raw["resolve"]["match"], file=file, path=(*path, "resolve", "match"),
                                              definitions=definitions, problems=problems, rule=name)
        policy = compile_policy(raw, file=file, path=path, rule=name, problems=problems, resolve_match=resolve_match)
        return Rule(
            name=name,
            order=order,
            condition=condition,
            services=tuple(raw["services"]),
            description=raw.get("description", ""),
            enabled=raw.get("enabled", True),
            severity=severity,
            summary=templates.get("summary"),
            source=templates.get("source"),
            dedup_key=templates.get("dedup_key"),
            component=templates.get("component"),
            group=templates.get("group"),
            class_=templates.get("class"),
            group_by=tuple(parse_field(f) for f in raw.get("group_by", ())),
            group_by_names=tuple(f if isinstance(f, str) else ".".join(map(str, f))
                                 for f in raw.get("group_by", ())),
            details=None if details is None else compile_tree(details, file=file, path=(*path, "details"),
                                                              problems=problems, rule=name),
            links=tuple(self.links(raw.get("links", ()), file, (*path, "links"), name)),
            images=tuple(self.images(raw.get("images", ()), file, (*path, "images"), name)),
            policy=STATELESS if policy == STATELESS else policy,
            file=file,
            line=line,
        )

    def links(self, raw: list[Mapping[str, str]], file: str, path: Path, rule: str) -> list[Link]:
        return [Link(self.template(item["href"], file, (*path, i, "href"), rule),
                     self.optional(item, "text", file, (*path, i), rule)) for i, item in enumerate(raw)]

    def images(self, raw: list[Mapping[str, str]], file: str, path: Path, rule: str) -> list[Image]:
        return [Image(self.template(item["src"], file, (*path, i, "src"), rule),
                      self.optional(item, "alt", file, (*path, i), rule),
                      self.optional(item, "href", file, (*path, i), rule)) for i, item in enumerate(raw)]

    def template(self, source: str, file: str, path: Path, rule: str) -> Template:
        """The compiled template; a syntax error is a problem, and the rule set is never built then."""
        compiled = compile_template_at(source, file=file, path=path, problems=self.problems, rule=rule)
        return compiled if compiled is not None else Template("")

    def optional(self, item: Mapping[str, str], key: str, file: str, path: Path, rule: str) -> Template | None:
        return self.template(item[key], file, (*path, key), rule) if key in item else None


def compile_documents(docs: list[Document], *, env: Mapping[str, str] | None = None,
                      allow_missing_secrets: bool = False) -> tuple[RuleSet | None, list[Problem]]:
    """Build the rule set from schema-valid documents; None when any problem is an error."""
    c = _Compiler(os.environ if env is None else env, allow_missing_secrets)
    by_file = {d.file: d for d in docs}
    services: dict[str, Service] = {}
    lists: dict[str, tuple[str, Path, list[Any]]] = {}
    macros: dict[str, tuple[str, Path, Any]] = {}
    for doc in docs:
        for name, raw in doc.data.get("services", {}).items():
            path = ("services", name)
            if c.first_definition("service", name, doc.file, path, by_file):
                services[name] = c.service(name, raw, doc.file, path, doc.locate(path)[0])
        for name, values in doc.data.get("lists", {}).items():
            if c.first_definition("list", name, doc.file, ("lists", name), by_file):
                lists[name] = (doc.file, ("lists", name), values)
        for name, node in doc.data.get("macros", {}).items():
            if c.first_definition("macro", name, doc.file, ("macros", name), by_file):
                macros[name] = (doc.file, ("macros", name), node)
    definitions = Definitions(lists, macros)
    rules: list[Rule] = []
    used: set[str] = set()
    for doc in docs:
        for i, raw in enumerate(doc.data.get("rules", [])):
            path = ("rules", i)
            if not c.first_definition("rule", raw["name"], doc.file, path, by_file):
                continue
            rule = c.rule(raw, order=len(rules), file=doc.file, path=path, line=doc.locate(path)[0],
                          services=services, definitions=definitions)
            rules.append(rule)
            used.update(rule.services)
    definitions.check_all(c.problems)
    c.problems.extend(numeric_warnings(docs))
    by_name = {r.name: r for r in rules}
    inhibit_fields: dict[str, dict[str, Any]] = {}
    for rule in rules:
        inhibit = rule.policy.inhibit
        if inhibit is None:
            continue
        for i, by in enumerate(inhibit.by):
            if by not in by_name:
                c.problems.append(Problem(rule.file, _rule_path(by_file[rule.file], rule.name, "inhibit", "by", i),
                                          f"unknown rule '{by}'{did_you_mean(by, by_name)}", rule.name))
                continue
            fields = inhibit_fields.setdefault(by, {})
            for field_path in inhibit.equal:
                fields[".".join(map(str, field_path))] = field_path
            policy = by_name[by].policy
            if not (policy.resolve_after or policy.resolve_match or policy.absent):
                c.problems.append(Problem(rule.file, _rule_path(by_file[rule.file], rule.name, "inhibit", "by", i),
                                          f"rule '{by}' has no resolve: once it fires it inhibits this rule until "
                                          "a Sentry resolve or a restart", rule.name, warning=True))
    for name, service in services.items():
        if name not in used:
            c.problems.append(Problem(service.file, ("services", name),
                                      f"service '{name}' is not used by any rule", warning=True))
    if any(not p.warning for p in c.problems):
        return None, c.problems
    index = CandidateIndex([r.condition if r.enabled else None for r in rules])
    resolve_index = CandidateIndex([r.policy.resolve_match if r.enabled else None for r in rules])
    labels = {name: tuple(fields.items()) for name, fields in inhibit_fields.items()}
    return RuleSet(tuple(rules), services, {d.file: d.sha256 for d in docs}, index, resolve_index, by_name,
                   labels), c.problems


_KNOWN_LISTED = 20  # an unknown service's message lists at most this many known ones


def _unknown_service(name: str, services: Mapping[str, Service]) -> str:
    """`unknown service 'X'`, with a did-you-mean and the services there are (or that there are none)."""
    if not services:
        return f"unknown service '{name}': no services are defined (add it under 'services:' in a rule file)"
    known = sorted(services)
    listed = ", ".join(known[:_KNOWN_LISTED]) + (f" and {len(known) - _KNOWN_LISTED} more"
                                                 if len(known) > _KNOWN_LISTED else "")
    return f"unknown service '{name}'{did_you_mean(name, known)}; known services: {listed}"


def _rule_path(doc: Document, name: str, *rest: str | int) -> Path:
    """The path of a key inside the rule called `name` in this document."""
    for i, raw in enumerate(doc.data.get("rules", [])):
        if raw.get("name") == name:
            return ("rules", i, *rest)
    return ()
