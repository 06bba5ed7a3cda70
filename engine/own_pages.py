"""Pages the engine makes itself: self-alerts (a failed reload, a dead letter, storage) and test pages.

Pure, like render: the daemon decides when, these say what, through the same render functions as
every rule's pages (so the same limits, masking and v1/v2 shapes apply).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

from engine.render import Notification, render, render_resolve
from engine.rules.conditions import NEVER
from engine.rules.ruleset import Match, Rule, Service
from engine.templates import Template

SELF_RULE = "alert-engine:self"
TEST_RULE = "alert-engine:send-test"
RELOAD_FAILED_KEY = "alert-engine/reload-failed"
RULESET_MISMATCH_KEY = "alert-engine/ruleset-mismatch"


def self_alert(services: Sequence[Service], dedup_key: str, summary: str, details: Mapping[str, Any], *,
               host: str, now: float) -> list[Notification]:
    """A critical page about the engine itself, to each self-alert service."""
    rule = _rule(SELF_RULE, summary, dedup_key, "critical", services)
    event = {"source": "alert-engine", "host": host, **details}
    moment = datetime.fromtimestamp(now, UTC)
    return [render(Match(rule, event), s, moment) for s in services]


def self_resolve(services: Sequence[Service], dedup_key: str) -> list[Notification]:
    return [render_resolve(SELF_RULE, s, dedup_key) for s in services]


def dead_letter_alert(services: Sequence[Service], notification: Notification, reason: str, *, host: str,
                      now: float) -> list[Notification]:
    """The self-alert for a dead letter, a refused test page too; none for a dead self-alert (that could loop)."""
    if notification.rule == SELF_RULE:
        return []
    return self_alert(
        services,
        f"alert-engine/dead-letter/{notification.service}",
        f"alert-engine: a page for service {notification.service} (rule {notification.rule}) was "
        f"dead-lettered: {reason}",
        {"rule": notification.rule, "service": notification.service, "dedup_key": notification.dedup_key,
         "reason": reason, "see": "alert-engine dead-letters list"},
        host=host, now=now,
    )


def test_page(service: Service, *, host: str, now: float) -> tuple[Notification, Notification]:
    """A test trigger for one service, and the resolve that closes it. The summary claims nothing about the
    key: it is written before PagerDuty has answered. The dedup key is one of its own (microseconds), so
    that two tests never share an incident or wait behind each other."""
    dedup_key = f"alert-engine/send-test/{service.name}/{int(now * 1_000_000)}"
    summary = f"alert-engine test page for service {service.name}"
    rule = _rule(TEST_RULE, summary, dedup_key, "info", [service])
    event = {"source": "alert-engine send-test", "host": host}
    trigger = render(Match(rule, event), service, datetime.fromtimestamp(now, UTC))
    return trigger, render_resolve(TEST_RULE, service, dedup_key)


def _rule(name: str, summary: str, dedup_key: str, severity: str, services: Sequence[Service]) -> Rule:
    """A rule for the engine's own pages: constant templates only (Template(text) is never rendered)."""
    return Rule(name=name, order=-1, condition=NEVER, services=tuple(s.name for s in services),
                severity=Template(severity), summary=Template(summary), dedup_key=Template(dedup_key))
