"""The one place where a matched event fans out: every match, to every service its rule lists; and where
decisions (`engine.decisions`) become the notifications they send."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from datetime import UTC, datetime

from engine.decisions import Decision, Page, Resolve
from engine.render import Notification, add_details, render, render_resolve
from engine.rules.ruleset import Match, RuleSet


def fan_out(ruleset: RuleSet, matches: Sequence[Match], now: datetime, origin: str | None = None
            ) -> list[Notification]:
    """The notifications the matches cause, in rule-file order, then in each rule's service order; `origin`:
    the endpoint their event came in by (see `render`)."""
    services = ruleset.services
    return [render(m, services[name], now, origin) for m in matches for name in m.rule.services]


def render_decisions(ruleset: RuleSet, decisions: Iterable[Decision], now: float) -> list[Notification]:
    """The notifications of decisions taken at `now`, in their order: a page to every service of its rule
    (its `extra` added to the details), a resolve to its service; a hold sends nothing."""
    out: list[Notification] = []
    moment = datetime.fromtimestamp(now, UTC)
    for decision in decisions:
        if isinstance(decision, Page):
            pages = fan_out(ruleset, [Match(decision.rule, decision.event)], moment, decision.origin)
            out += [add_details(n, decision.extra) for n in pages] if decision.extra else pages
        elif isinstance(decision, Resolve):
            out.append(render_resolve(decision.rule, ruleset.services[decision.service], decision.dedup_key))
    return out
