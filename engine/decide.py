"""Deciding what to page: thresholds, spikes, changes, absence, throttles, mute windows, inhibition,
silences and resolves. Deterministic and free of I/O: time is the `now` passed in.

`decide(ruleset, state, event, now, origin=...)` handles one event (`origin`: the endpoint it came in
by, `sentry.ORIGIN` for Sentry's webhooks, None for POST /v1/events); `tick(ruleset, state, now)` does
the timed work (resolve-after, absent checks and the groups `absent.expect` watches, the end of mute
windows, silence expiry, pruning); `resolve_key(ruleset, state, dedup_key)` is Sentry's resolve. Each
updates `state` in place (touching every group it changes: the caller stores `state.changes()` with the
notifications, and puts the touched groups back when that fails) and returns its decisions
(`engine.decisions`: page, hold and why, resolve), which `engine.fanout.render_decisions` renders.

A rule with no stateful keys pages on every match and keeps no state at all.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

from engine.decisions import INHIBITED, MUTED, SILENCED, THROTTLED, Decision, Hold, Page, Resolve
from engine.render import alert_key
from engine.rules.conditions import MISSING, field_values, value_getter
from engine.rules.policy import STATELESS, MuteWindow
from engine.rules.ruleset import Match, Rule, RuleSet
from engine.sources import sentry
from engine.state import Group, Silence, State
from engine.units import iso_seconds

SPIKE_BUCKETS = 30  # a spike window is counted in this many buckets
SILENCE_KEPT = 7 * 86400.0  # expired silences stay listed this long
IDLE_KEPT = 86400.0  # a group with nothing to count or resolve is forgotten after this long without events
STALE_OPEN = 30 * 86400.0  # an open alert that can still be resolved is forgotten after this long without events


def decide(ruleset: RuleSet, state: State, event: Mapping[str, Any], now: float,
           matches: list[Match] | None = None, *, origin: str | None = None) -> list[Decision]:
    """The decisions one event causes, and the state it leaves behind. `matches`: the event's matches on
    `ruleset` when the caller already has them. `origin`: the endpoint the event came in by."""
    out: list[Decision] = []
    resolvers = [ruleset.rules[i] for i in ruleset.resolvers(event)]  # a list: rule-file order
    resolving = {rule.name for rule in resolvers}
    for rule in resolvers:
        out += _resolve_match(ruleset, state, rule, event, now, origin)
    for m in ruleset.match(event) if matches is None else matches:
        if m.rule.name not in resolving:
            out += _on_match(ruleset, state, m.rule, event, now, origin)
    return out


def tick(ruleset: RuleSet, state: State, now: float) -> list[Decision]:
    """Timed work due at `now`: resolves after silence, absent groups, ended mute windows, expiries."""
    out: list[Decision] = []
    expected = _watch_expected(ruleset, state, now)
    for name in list(state.groups):
        rule = ruleset.rule(name)
        if rule is None:
            continue
        policy = rule.policy
        watched = expected.get(name, {})
        for g in list(state.groups[name].values()):
            if policy.absent and g.event is None and g.key not in watched:
                # expected once, never seen, and no longer expected: forgotten (its page resolved)
                if g.open:
                    out += _close(ruleset, state, rule, g)
                state.drop(g)
            elif g.open and policy.resolve_after and not policy.absent and _quiet(g, now) >= policy.resolve_after:
                out += _close(ruleset, state, rule, g)
            elif policy.absent and rule.enabled and not g.open and _quiet(g, now) >= policy.absent:
                out += _trigger(ruleset, state, rule, g, g.event if g.event is not None else watched[g.key], now)
            elif g.held and g.open and rule.enabled and _mute_window(rule, now) is None:
                g.held = False  # the window is over and the alert still open: page it now
                out += _trigger(ruleset, state, rule, g, g.event or {}, now)
            elif _forgettable(rule, g, now):
                state.drop(g)
    for silence in list(state.silences.values()):
        if now >= silence.until + SILENCE_KEPT:
            state.drop_silence(silence)
    return out


def _watch_expected(ruleset: RuleSet, state: State, now: float) -> dict[str, dict[str, Mapping[str, Any]]]:
    """The groups that `absent` rules expect, by rule and dedup key. One not in the state yet is watched
    from `now` on (the daemon's first tick, or the reload that added it), so it pages if still unseen `for`
    later. A group never seen keeps `event` None: its page is rendered from what the rule expects."""
    expected = _expected_groups(ruleset, now)
    for name, keys in expected.items():
        rule = ruleset.by_name[name]
        known = state.groups.get(name, {})
        for key in [k for k in keys if k not in known] if rule.enabled else ():
            g = state.group(name, key)
            g.last_seen = now
            state.touch(g)
    return expected


# the expected groups of the last rule set seen: tick runs every second and they change only with the rules
_expected: tuple[RuleSet, dict[str, dict[str, Mapping[str, Any]]]] | None = None


def _expected_groups(ruleset: RuleSet, now: float) -> dict[str, dict[str, Mapping[str, Any]]]:
    """Every `absent.expect` group by rule and dedup key, computed as for a heartbeat of it (`alert_key` on
    the event the rule built from the expected values); once per rule set."""
    global _expected
    if _expected is None or _expected[0] is not ruleset:
        moment = _moment(now)
        _expected = ruleset, {rule.name: {alert_key(rule, event, moment): event for event in rule.policy.expect}
                              for rule in ruleset.rules if rule.policy.expect}
    return _expected[1]


def resolve_key(ruleset: RuleSet, state: State, dedup_key: str) -> list[Decision]:
    """Sentry's resolve: every open alert with this dedup key whose events came in by the Sentry endpoint,
    on every service it paged. An alert already resolved is left alone (a resend does nothing)."""
    out: list[Decision] = []
    for name in list(state.groups):
        g = state.groups[name].get(dedup_key)
        rule = ruleset.rule(name)
        if g is not None and g.open and _resolved_elsewhere(g.origin) and rule is not None:
            out += _close(ruleset, state, rule, g)
    return out


def _on_match(ruleset: RuleSet, state: State, rule: Rule, event: Mapping[str, Any], now: float,
              origin: str | None) -> list[Decision]:
    policy = rule.policy
    if policy is STATELESS and rule.name not in ruleset.inhibit_fields and not _resolved_elsewhere(origin):
        # nothing can resolve or use this alert: page every match and keep no state
        if state.silences:
            key = alert_key(rule, event, _moment(now), origin)
            silence = _silence(state, rule, event, key, now)
            if silence is not None:
                return [Hold(rule.name, key, SILENCED, silence.until, f"silence {silence.id}")]
        return [Page(rule, event, origin)]
    g = state.group(rule.name, alert_key(rule, event, _moment(now), origin))
    state.touch(g)
    g.last_seen = now
    if policy.absent:  # a heartbeat: it can only end an absence
        g.event, g.origin = dict(event), origin
        return _close(ruleset, state, rule, g) if g.open else []
    if not _fires(policy, g, event, now):
        return []
    g.event, g.origin = dict(event), origin
    return _trigger(ruleset, state, rule, g, event, now)


def _resolved_elsewhere(origin: str | None) -> bool:
    """Events of an endpoint that resolves them later (Sentry resolves its issues): their alerts are tracked."""
    return origin == sentry.ORIGIN


def _fires(policy: Any, g: Group, event: Mapping[str, Any], now: float) -> bool:
    if policy.threshold:
        window = policy.threshold.window
        g.hits = [t for t in g.hits if t > now - window] + [now]
        if len(g.hits) < policy.threshold.count:
            return False
        g.hits = []  # a trigger resets the count
        return True
    if policy.spike:
        spike = policy.spike
        width = spike.window / SPIKE_BUCKETS
        bucket = int(now // width)
        g.buckets = {b: c for b, c in g.buckets.items() if b > bucket - 2 * SPIKE_BUCKETS}
        g.buckets[bucket] = g.buckets.get(bucket, 0) + 1
        current = sum(c for b, c in g.buckets.items() if b > bucket - SPIKE_BUCKETS)
        previous = sum(c for b, c in g.buckets.items() if b <= bucket - SPIKE_BUCKETS)
        if current < spike.min_count or current < spike.ratio * previous:
            return False
        g.buckets = {}
        return True
    if policy.change:
        values = field_values(event, policy.change)
        value = values[0] if values else None
        first = not g.has_value
        changed = not first and (value != g.value or type(value) is not type(g.value))
        g.value, g.has_value = value, True
        return changed
    return True


def _trigger(ruleset: RuleSet, state: State, rule: Rule, g: Group, event: Mapping[str, Any], now: float
             ) -> list[Decision]:
    """Page the alert, unless something holds it back; a held trigger is counted, never lost."""
    state.touch(g)
    g.labels = {name: _value(event, path) for name, path in ruleset.inhibit_labels(rule.name)}
    muted = _mute_window(rule, now)
    hold = _hold(ruleset, state, rule, g, event, now, muted)
    if hold is not None:
        g.suppressed += 1
        g.suppressed_first = g.suppressed_first if g.suppressed_first is not None else now
        g.suppressed_last = now
        if hold.reason == MUTED and muted is not None and muted[1].renotify:
            g.open = g.held = True  # paged when the window ends, if still open then
        elif hold.reason == THROTTLED or rule.policy.absent:
            g.open = True  # still the same incident; an absence is counted once, not every tick
        return [hold]
    extra: dict[str, Any] = {}
    if g.suppressed:
        extra = {"suppressed_count": g.suppressed, "suppressed_since": _iso(g.suppressed_first),
                 "suppressed_until": _iso(g.suppressed_last)}
    g.open, g.held = True, False
    g.services = list(rule.services)
    g.last_trigger = now
    g.suppressed, g.suppressed_first, g.suppressed_last = 0, None, None
    return [Page(rule, event, g.origin, extra)]


def _hold(ruleset: RuleSet, state: State, rule: Rule, g: Group, event: Mapping[str, Any], now: float,
          muted: tuple[int, MuteWindow, float] | None) -> Hold | None:
    """What holds this trigger back, in the order they are checked, if anything does. `muted`: the rule's
    mute window active at `now` (`_mute_window`)."""
    silence = _silence(state, rule, event, g.key, now)
    if silence is not None:
        return Hold(rule.name, g.key, SILENCED, silence.until, f"silence {silence.id}")
    if muted is not None:
        index, _, end = muted
        return Hold(rule.name, g.key, MUTED, end, f"mute[{index}]")
    inhibitor = _inhibitor(ruleset, state, rule, event)
    if inhibitor is not None:
        return Hold(rule.name, g.key, INHIBITED, by=inhibitor.key)
    throttle = rule.policy.throttle
    if throttle and g.last_trigger is not None and now - g.last_trigger < throttle:
        return Hold(rule.name, g.key, THROTTLED, g.last_trigger + throttle)
    return None


def _resolve_match(ruleset: RuleSet, state: State, rule: Rule, event: Mapping[str, Any], now: float,
                   origin: str | None) -> list[Decision]:
    g = state.groups.get(rule.name, {}).get(alert_key(rule, event, _moment(now), origin))
    if g is None or not g.open:
        return []
    g.last_seen = now
    return _close(ruleset, state, rule, g)


def _close(ruleset: RuleSet, state: State, rule: Rule, g: Group) -> list[Decision]:
    """Resolve an open alert on every service its trigger went to (none if its page was held)."""
    services = [] if g.held else g.services
    g.open, g.held, g.services = False, False, []
    g.suppressed, g.suppressed_first, g.suppressed_last = 0, None, None
    state.touch(g)
    return [Resolve(rule.name, s, g.key) for s in services if s in ruleset.services]


def _silence(state: State, rule: Rule, event: Mapping[str, Any], key: str, now: float) -> Silence | None:
    """The active silence that covers this match, if one does (it counts it); silences see
    {rule, dedup_key, event}."""
    if not state.silences:
        return None
    subject = {"rule": rule.name, "dedup_key": key, "event": event}
    for silence in state.silences.values():
        if silence.active(now) and silence.condition(subject):
            silence.covered += 1
            state.touch_silence(silence)
            return silence
    return None


def _inhibitor(ruleset: RuleSet, state: State, rule: Rule, event: Mapping[str, Any]) -> Group | None:
    """The open alert that inhibits this match, if one does."""
    inhibit = rule.policy.inhibit
    if inhibit is None:
        return None
    wanted = {".".join(map(str, p)): _value(event, p) for p in inhibit.equal}
    for by in inhibit.by:
        for g in state.open_groups(by):
            if not g.held and all(g.labels.get(name) == value for name, value in wanted.items()):
                return g
    return None


def _mute_window(rule: Rule, now: float) -> tuple[int, MuteWindow, float] | None:
    """The first of the rule's mute windows active at `now`: its index, itself, and the end of the
    occurrence that holds `now`."""
    for i, window in enumerate(rule.policy.mute):
        occurrence = window.active(now)
        if occurrence is not None:
            return i, window, occurrence[1]
    return None


def _quiet(g: Group, now: float) -> float:
    return now - (g.last_seen if g.last_seen is not None else now)


def _forgettable(rule: Rule, g: Group, now: float) -> bool:
    """Whether a group can go: nothing counts on it any more and nothing will ever resolve it.

    Heartbeat groups, last values (change), and held pages are kept. An alert that something can
    resolve (resolve.after / resolve.match, or Sentry) is kept open until STALE_OPEN without events;
    any other group goes once it has been quiet longer than its throttle and windows (at least a day).
    """
    policy = rule.policy
    if policy.absent or g.has_value or g.held:
        return False
    quiet = _quiet(g, now)
    if g.open and (policy.resolve_after or policy.resolve_match or _resolved_elsewhere(g.origin)):
        return quiet >= STALE_OPEN
    return quiet >= max(IDLE_KEPT, policy.throttle or 0, policy.threshold.window if policy.threshold else 0,
                        2 * policy.spike.window if policy.spike else 0)


def _value(event: Mapping[str, Any], path: Any) -> Any:
    value = value_getter(path)(event)
    return None if value is MISSING else value


def _moment(now: float) -> datetime:
    return datetime.fromtimestamp(now, UTC)


def _iso(moment: float | None) -> str | None:
    return None if moment is None else iso_seconds(moment)
