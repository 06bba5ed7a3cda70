"""What deciding concludes, before anything is rendered: page an alert, hold it back (and why), resolve it.

`engine.decide` returns these; `engine.fanout.render_decisions` turns pages and resolves into the
notifications to send (a hold sends nothing: it is counted, `alert_engine_holds_total{reason}`, and
`alert-engine eval --explain` shows it). Plain values: no state, no rendering, nothing to do with I/O.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from engine.rules.ruleset import Rule

THROTTLED, MUTED, SILENCED, INHIBITED = "throttled", "muted", "silenced", "inhibited"
HOLD_REASONS = (THROTTLED, MUTED, SILENCED, INHIBITED)  # in the order decide checks them: silenced first


@dataclass(frozen=True)
class Page:
    """A trigger of `rule` for `event`, to every service the rule lists. `extra`: what goes into its
    details besides the rendered ones (the triggers held back since the last page); `origin`: the endpoint
    the event came in by (`sentry.ORIGIN`), None for POST /v1/events."""

    rule: Rule
    event: Mapping[str, Any] = field(repr=False)
    origin: str | None = None
    extra: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Hold:
    """A trigger of the alert `dedup_key` of `rule` held back, counted on the alert, never lost.

    `reason`: one of HOLD_REASONS. `until`: when what holds it ends, when known (seconds since the epoch:
    the throttle's end, the mute window's end, the silence's `until`). `by`: what holds it (`mute[0]`, the
    rule's first mute window; `silence 3`; the dedup key of the open alert that inhibits it)."""

    rule: str
    dedup_key: str
    reason: str
    until: float | None = None
    by: str | None = None


@dataclass(frozen=True)
class Resolve:
    """The resolve of the alert `dedup_key` of `rule` on `service`, one the trigger went to."""

    rule: str
    service: str
    dedup_key: str


Decision = Page | Hold | Resolve
