"""The one place where a matched event fans out: every match, to every service its rule lists."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import Any

from engine.render import Notification, render
from engine.rules.ruleset import RuleSet


def fan_out(ruleset: RuleSet, event: Mapping[str, Any], now: datetime) -> list[Notification]:
    """The notifications one event causes, in rule-file order, then in each rule's service order."""
    services = ruleset.services
    return [render(m, services[name], now) for m in ruleset.match(event) for name in m.rule.services]
