"""The one place where a matched event fans out: every match, to every service its rule lists."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

from engine.render import Notification, render
from engine.rules.ruleset import Match, RuleSet


def fan_out(ruleset: RuleSet, matches: Sequence[Match], now: datetime, origin: str | None = None
            ) -> list[Notification]:
    """The notifications the matches cause, in rule-file order, then in each rule's service order; `origin`:
    the endpoint their event came in by (see `render`)."""
    services = ruleset.services
    return [render(m, services[name], now, origin) for m in matches for name in m.rule.services]
