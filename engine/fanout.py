"""The one place where a matched event fans out: every match, to every service its rule lists."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

from engine.render import Notification, render
from engine.rules.ruleset import Match, RuleSet


def fan_out(ruleset: RuleSet, matches: Sequence[Match], now: datetime) -> list[Notification]:
    """The notifications the matches cause, in rule-file order, then in each rule's service order."""
    services = ruleset.services
    return [render(m, services[name], now) for m in matches for name in m.rule.services]
