"""engine/decide.py: `decide` and `tick` on a driven clock, every stateful feature at its edges, and the
decisions they return: pages (rendered here to check what they send), holds with their reason, resolves."""

from __future__ import annotations

import textwrap
from datetime import UTC, datetime

from engine.decide import IDLE_KEPT, SILENCE_KEPT, decide, resolve_key, tick
from engine.decisions import Decision, Hold, Page, Resolve
from engine.fanout import render_decisions
from engine.render import Notification
from engine.rules import load_ruleset
from engine.rules.ruleset import RuleSet
from engine.silences import parse_silence
from engine.sources.sentry import ORIGIN as SENTRY
from engine.state import Group, State

KEY = "0123456789abcdef0123456789abcdef"
T0 = datetime(2026, 1, 1, tzinfo=UTC).timestamp()  # a multiple of every spike bucket width used here
MIN, HOUR, DAY = 60, 3600, 86400


def load(tmp_path, rules: str) -> RuleSet:
    path = tmp_path / "rules.yaml"
    path.write_text(f"""\
services:
  pay: {{service_key: "{KEY}"}}
  ops: {{service_key: "{KEY}", api: v1}}
rules:
{textwrap.indent(textwrap.dedent(rules), "  ")}""")
    result = load_ruleset([str(path)])
    assert result.ruleset is not None, [str(e) for e in result.errors]
    return result.ruleset


def rendered(rs: RuleSet, decisions: list[Decision], now: float = T0) -> list[Notification]:
    """The notifications the decisions send (no rule here has a template that reads `now`)."""
    return render_decisions(rs, decisions, now)


def sent(rs: RuleSet, decisions: list[Decision]) -> list[tuple[str, str, str, str]]:
    return [(n.rule, n.service, n.action, n.dedup_key) for n in rendered(rs, decisions)]


def pages(decisions: list[Decision]) -> int:
    return sum(isinstance(d, Page) for d in decisions)


def details(n: Notification) -> dict:
    return n.body["payload"]["custom_details"] if n.api == "v2" else n.body["details"]


def iso(moment: float) -> str:
    return datetime.fromtimestamp(moment, UTC).isoformat().replace("+00:00", "Z")


ERR = {"service": "checkout", "level": "error", "host": "a"}


# -- threshold -------------------------------------------------------------------------------------------

THRESHOLD = """\
- name: errs
  match: {field: level, equals: error}
  services: [pay]
  group_by: [host]
  threshold: {count: 3, window: 5m}
"""


def test_threshold_pages_on_the_nth_match_in_the_window_not_the_n_minus_first(tmp_path):
    rs, state = load(tmp_path, THRESHOLD), State()
    assert decide(rs, state, ERR, T0) == []
    assert decide(rs, state, {**ERR, "host": "b"}, T0 + 1) == []  # counted per group
    assert decide(rs, state, ERR, T0 + 2) == []
    assert sent(rs, decide(rs, state, ERR, T0 + 299)) == [("errs", "pay", "trigger", "errs/a")]


def test_a_match_exactly_one_window_old_no_longer_counts(tmp_path):
    rs, state = load(tmp_path, THRESHOLD), State()
    for t in (0, 100):
        decide(rs, state, ERR, T0 + t)
    assert decide(rs, state, ERR, T0 + 300) == []  # the match at 0 has dropped out: 2 in the window
    assert sent(rs, decide(rs, state, ERR, T0 + 399.9)) == [("errs", "pay", "trigger", "errs/a")]


def test_a_trigger_resets_the_count(tmp_path):
    rs, state = load(tmp_path, THRESHOLD), State()
    assert [pages(decide(rs, state, ERR, T0 + t)) for t in range(7)] == [0, 0, 1, 0, 0, 1, 0]


def test_a_group_that_never_fired_is_forgotten_after_a_day_without_matches(tmp_path):
    rs, state = load(tmp_path, THRESHOLD), State()
    decide(rs, state, ERR, T0)
    state.changes()
    tick(rs, state, T0 + IDLE_KEPT - 1)
    assert "a" not in str(state.changes().deletes) and state.groups
    tick(rs, state, T0 + IDLE_KEPT)
    assert state.groups == {} and state.changes().deletes == (("errs", "errs/a"),)


# -- throttle --------------------------------------------------------------------------------------------

def test_throttle_holds_triggers_until_it_expires_and_the_next_page_carries_what_it_held(tmp_path):
    rs, state = load(tmp_path, """\
        - {name: t, match: {field: level, equals: error}, services: [pay, ops], group_by: [host], throttle: 10m}
        """), State()
    assert sent(rs, decide(rs, state, ERR, T0)) == [("t", "pay", "trigger", "t/a"), ("t", "ops", "trigger", "t/a")]
    throttled = Hold("t", "t/a", "throttled", until=T0 + 600)
    assert decide(rs, state, ERR, T0 + MIN) == decide(rs, state, ERR, T0 + 599) == [throttled]
    assert sent(rs, decide(rs, state, {**ERR, "host": "b"}, T0 + 599)) == [  # another dedup key is not held
        ("t", "pay", "trigger", "t/b"), ("t", "ops", "trigger", "t/b")]
    paged = rendered(rs, decide(rs, state, ERR, T0 + 600))
    assert [(n.rule, n.service, n.action, n.dedup_key) for n in paged] == [("t", "pay", "trigger", "t/a"),
                                                                          ("t", "ops", "trigger", "t/a")]
    held = {"suppressed_count": 2, "suppressed_since": iso(T0 + MIN), "suppressed_until": iso(T0 + 599)}
    assert details(paged[0]) == details(paged[1]) == {**ERR, **held}
    # the throttle runs again from the last page
    assert decide(rs, state, ERR, T0 + 601) == [Hold("t", "t/a", "throttled", until=T0 + 1200)]
    [page, _] = rendered(rs, decide(rs, state, ERR, T0 + 1200))
    assert details(page)["suppressed_count"] == 1  # only what was held since the last page


# -- resolve ---------------------------------------------------------------------------------------------

def test_resolve_after_quiet_goes_to_every_service_paged_once_and_not_before(tmp_path):
    rs, state = load(tmp_path, """\
        - {name: r, match: {field: level, equals: error}, services: [pay, ops], group_by: [host], resolve: {after: 15m}}
        """), State()
    decide(rs, state, ERR, T0)
    assert len(rendered(rs, decide(rs, state, ERR, T0 + 5 * MIN))) == 2  # no throttle: each match pages
    assert tick(rs, state, T0 + 20 * MIN - 1) == []  # quiet is counted from the last match
    resolves = tick(rs, state, T0 + 20 * MIN)
    assert resolves == [Resolve("r", "pay", "r/a"), Resolve("r", "ops", "r/a")]
    assert [n.body for n in rendered(rs, resolves)] == [
        {"event_action": "resolve", "dedup_key": "r/a"},  # the key is put in at send time
        {"event_type": "resolve", "incident_key": "r/a"},
    ]
    assert tick(rs, state, T0 + 20 * MIN + 1) == [] and tick(rs, state, T0 + HOUR) == []


def test_resolve_match_resolves_the_open_alert_of_its_group_only(tmp_path):
    rs, state = load(tmp_path, """\
        - name: r
          match: {field: level, equals: error}
          services: [pay]
          group_by: [host]
          resolve: {match: {field: status, equals: recovered}}
        """), State()
    decide(rs, state, ERR, T0)
    assert decide(rs, state, {"status": "recovered", "host": "b"}, T0 + 1) == []
    # an event the resolve matches is not also counted as a match of the rule
    assert sent(rs, decide(rs, state, {**ERR, "status": "recovered"}, T0 + 2)) == [("r", "pay", "resolve", "r/a")]
    assert decide(rs, state, {"status": "recovered", "host": "a"}, T0 + 3) == []  # already resolved


def test_several_resolves_of_one_event_come_in_rule_file_order(tmp_path):
    names = [f"r{i}" for i in (5, 1, 4, 2, 0, 3)]
    rule = "- {name: NAME, match: {field: level, equals: error}, services: [pay], resolve: {match: {field: ok, gt: 0}}}"
    rs, state = load(tmp_path, "\n".join(rule.replace("NAME", n) for n in names) + "\n"), State()
    assert [d.rule.name for d in decide(rs, state, ERR, T0) if isinstance(d, Page)] == names
    assert [d.rule for d in decide(rs, state, {"ok": 1}, T0 + 1) if isinstance(d, Resolve)] == names


# -- spike -----------------------------------------------------------------------------------------------

SPIKE = """\
- name: sp
  match: {field: level, equals: error}
  services: [pay]
  group_by: [host]
  spike: {ratio: 3, window: 10m, min_count: 3}
"""


def test_spike_pages_when_the_current_window_reaches_ratio_times_the_previous(tmp_path):
    rs, state = load(tmp_path, SPIKE), State()
    decide(rs, state, ERR, T0)
    decide(rs, state, ERR, T0 + 1)  # the previous window: 2, so 6 are needed
    assert [pages(decide(rs, state, ERR, T0 + 600 + i)) for i in range(6)] == [0, 0, 0, 0, 0, 1]
    assert decide(rs, state, ERR, T0 + 610) == []  # a trigger resets the counts: 1 < min_count


def test_spike_needs_min_count_when_the_previous_window_is_empty(tmp_path):
    rs, state = load(tmp_path, SPIKE), State()
    assert [pages(decide(rs, state, ERR, T0 + i)) for i in range(3)] == [0, 0, 1]


def test_spike_previous_window_ends_two_windows_back(tmp_path):
    rs, state = load(tmp_path, SPIKE), State()
    for host in ("a", "a", "b", "b"):
        decide(rs, state, {**ERR, "host": host}, T0)
    # a's 2 are less than two windows old: 6 are needed; b's are two windows old, no longer counted
    assert [pages(decide(rs, state, ERR, T0 + 1199)) for _ in range(6)] == [0, 0, 0, 0, 0, 1]
    assert [pages(decide(rs, state, {**ERR, "host": "b"}, T0 + 1200)) for _ in range(3)] == [0, 0, 1]


# -- change ----------------------------------------------------------------------------------------------

def test_change_records_the_first_value_and_pages_on_each_change(tmp_path):
    rs, state = load(tmp_path, """\
        - {name: ch, match: {field: type, equals: deploy}, services: [pay], group_by: [app], change: {field: status}}
        """), State()

    def status(app: str, t: float, **value) -> int:
        return pages(decide(rs, state, {"type": "deploy", "app": app, **value}, T0 + t))

    assert status("a", 0, status="ok") == 0  # first value: recorded only
    assert status("a", 1, status="ok") == 0
    assert status("b", 2, status="failed") == 0  # first value of another group
    assert status("a", 3, status="failed") == 1
    assert status("a", 4, status="failed") == 0
    assert status("a", 5) == 1  # missing reads as null: a change from "failed"
    assert status("a", 6, status=None) == 0  # null and missing are the same value
    assert status("a", 7, status=1) == 1
    assert status("a", 8, status=1.0) == 1  # equal, but another type
    assert status("a", 9, status="1.0") == 1


# -- absent ----------------------------------------------------------------------------------------------

ABSENT = """\
- name: hb
  match: {field: type, equals: heartbeat}
  services: [pay, ops]
  group_by: [job]
  summary: "{{ event.job }} is silent"
  absent: {for: 10m}
"""
BEAT = {"type": "heartbeat", "job": "bill"}


def test_absent_pages_once_after_for_and_the_next_heartbeat_resolves_it(tmp_path):
    rs, state = load(tmp_path, ABSENT), State()
    assert tick(rs, state, T0) == []  # a group never seen is not absent
    assert decide(rs, state, BEAT, T0) == []  # heartbeats never page
    assert tick(rs, state, T0 + 599) == []
    paged = rendered(rs, tick(rs, state, T0 + 600))
    assert [(n.rule, n.service, n.action, n.dedup_key) for n in paged] == [("hb", "pay", "trigger", "hb/bill"),
                                                                          ("hb", "ops", "trigger", "hb/bill")]
    assert paged[0].summary == "bill is silent"  # rendered from the last heartbeat
    assert tick(rs, state, T0 + 601) == [] and tick(rs, state, T0 + 2 * HOUR) == []
    assert decide(rs, state, BEAT, T0 + 2 * HOUR) == [Resolve("hb", "pay", "hb/bill"), Resolve("hb", "ops", "hb/bill")]
    assert tick(rs, state, T0 + 2 * HOUR + 599) == []
    assert pages(tick(rs, state, T0 + 2 * HOUR + 600)) == 1


def test_after_a_restart_absent_clocks_restart_at_the_start_time(tmp_path):
    rs, before = load(tmp_path, ABSENT), State()
    decide(rs, before, BEAT, T0)
    stored = list(before.changes().upserts)
    restart = T0 + HOUR
    state = State(started=restart)
    state.restore(stored)
    assert tick(rs, state, restart) == [] and tick(rs, state, restart + 599) == []
    assert pages(tick(rs, state, restart + 600)) == 1
    naive = State()  # without `started`, the hour the engine was down would count as silence
    naive.restore(stored)
    assert pages(tick(rs, naive, restart)) == 1


# -- absent.expect ---------------------------------------------------------------------------------------

EXPECT = """\
- name: backup
  match: {field: type, equals: backup_done}
  services: [pay, ops]
  group_by: [job, site.name]
  summary: "{{ event.job }} in {{ event.site.name }} is silent"
  absent: {for: 1h, expect: [{job: db, site.name: eu}, {job: files, site.name: eu}]}
"""
DONE = {"type": "backup_done", "job": "db", "site": {"name": "eu"}}


def test_an_expected_group_never_seen_pages_for_after_the_start_rendered_from_what_is_expected(tmp_path):
    rs, state = load(tmp_path, EXPECT), State(started=T0)
    assert tick(rs, state, T0) == []  # watched from here, seen or not
    assert decide(rs, state, DONE, T0 + 30 * MIN) == []  # db reports: its clock restarts
    assert tick(rs, state, T0 + HOUR - 1) == []
    paged = rendered(rs, tick(rs, state, T0 + HOUR))
    assert [(n.rule, n.service, n.action, n.dedup_key) for n in paged] == [
        ("backup", "pay", "trigger", "backup/files/eu"), ("backup", "ops", "trigger", "backup/files/eu")]
    assert paged[0].summary == "files in eu is silent"
    assert tick(rs, state, T0 + HOUR + 1) == []  # once per absence
    assert sent(rs, tick(rs, state, T0 + 90 * MIN)) == [  # db, an hour after its last report
        ("backup", "pay", "trigger", "backup/db/eu"), ("backup", "ops", "trigger", "backup/db/eu")]
    back = {**DONE, "job": "files"}
    assert sent(rs, decide(rs, state, back, T0 + 2 * HOUR)) == [("backup", "pay", "resolve", "backup/files/eu"),
                                                           ("backup", "ops", "resolve", "backup/files/eu")]


def test_an_expected_group_is_watched_again_from_the_start_after_a_restart(tmp_path):
    rs, before = load(tmp_path, EXPECT), State(started=T0)
    tick(rs, before, T0)
    stored = list(before.changes().upserts)
    assert [key for _, key, _ in stored] == ["backup/db/eu", "backup/files/eu"]  # stored with the state
    restart = T0 + 50 * MIN
    state = State(started=restart)
    state.restore(stored)
    assert tick(rs, state, restart) == [] and tick(rs, state, restart + HOUR - 1) == []
    assert len(rendered(rs, tick(rs, state, restart + HOUR))) == 4  # both groups, on both services
    fresh = State(started=restart)  # a first start with nothing stored: the same
    assert tick(rs, fresh, restart) == [] and len(rendered(rs, tick(rs, fresh, restart + HOUR))) == 4


def test_a_group_no_longer_expected_and_never_seen_is_forgotten_and_its_page_resolved(tmp_path):
    rs, state = load(tmp_path, EXPECT), State(started=T0)
    decide(rs, state, DONE, T0)
    tick(rs, state, T0)
    assert len(rendered(rs, tick(rs, state, T0 + HOUR))) == 4  # db (seen) and files (never seen) are both absent
    fewer = load(tmp_path, EXPECT.replace(", {job: files, site.name: eu}", ""))
    assert sent(fewer, tick(fewer, state, T0 + HOUR + 1)) == [("backup", "pay", "resolve", "backup/files/eu"),
                                                        ("backup", "ops", "resolve", "backup/files/eu")]
    assert set(state.groups["backup"]) == {"backup/db/eu"}  # the seen one stays tracked
    assert tick(fewer, state, T0 + 3 * HOUR) == []


def test_a_disabled_rule_watches_nothing_until_enabled(tmp_path):
    disabled = load(tmp_path, EXPECT + "  enabled: false\n")
    state = State(started=T0)
    assert tick(disabled, state, T0) == [] and state.groups == {}
    enabled = load(tmp_path, EXPECT)
    assert tick(enabled, state, T0 + 5 * HOUR) == []  # watched from when it is enabled
    assert len(rendered(enabled, tick(enabled, state, T0 + 6 * HOUR))) == 4


# -- mute windows ----------------------------------------------------------------------------------------

def test_a_fixed_mute_window_holds_pages_from_its_start_to_its_end(tmp_path):
    rs, state = load(tmp_path, """\
        - name: m
          match: {field: level, equals: error}
          services: [pay]
          mute: [{start: "2026-01-01T01:00:00Z", end: "2026-01-01T02:00:00Z"}]
        """), State()
    assert pages(decide(rs, state, ERR, T0 + HOUR - 1)) == 1
    muted = Hold("m", "m", "muted", until=T0 + 2 * HOUR, by="mute[0]")
    assert decide(rs, state, ERR, T0 + HOUR) == decide(rs, state, ERR, T0 + 2 * HOUR - 1) == [muted]
    assert tick(rs, state, T0 + 2 * HOUR) == []  # without on_end: renotify, the end pages nothing
    [page] = rendered(rs, decide(rs, state, ERR, T0 + 2 * HOUR))
    assert details(page) == {**ERR, "suppressed_count": 2, "suppressed_since": "2026-01-01T01:00:00Z",
                             "suppressed_until": "2026-01-01T01:59:59Z"}


def test_a_berlin_cron_window_across_both_dst_changes(tmp_path):
    rs, state = load(tmp_path, """\
        - name: m
          match: {field: level, equals: error}
          services: [pay]
          mute: [{cron: "0 2 * * SUN", duration: 2h, timezone: Europe/Berlin}]
        """), State()

    def paged_at(*moments: str) -> list[int]:
        return [pages(decide(rs, state, ERR, datetime.fromisoformat(f"{m}+00:00").timestamp())) for m in moments]

    # spring forward: 02:00 CET never happens; the window is 03:00-05:00 CEST (01:00-03:00 UTC)
    assert paged_at("2026-03-29T00:59:59", "2026-03-29T01:00:00", "2026-03-29T02:59:59", "2026-03-29T03:00:00"
                 ) == [1, 0, 0, 1]
    # fall back: 02:00 happens twice (00:00 and 01:00 UTC); muted from the first until 2h after the second
    assert paged_at("2026-10-24T23:59:59", "2026-10-25T00:00:00", "2026-10-25T02:59:59", "2026-10-25T03:00:00"
                 ) == [1, 0, 0, 1]


RENOTIFY = """\
- name: m
  match: {field: result, equals: failed}
  services: [pay, ops]
  group_by: [table]
  resolve: {match: {field: result, equals: ok}}
  mute: [{start: "2026-01-01T01:00:00Z", end: "2026-01-01T02:00:00Z", on_end: renotify}]
"""
FAILED, OK = {"result": "failed", "table": "orders"}, {"result": "ok", "table": "orders"}


def test_on_end_renotify_pages_an_alert_still_open_when_the_window_ends(tmp_path):
    rs, state = load(tmp_path, RENOTIFY), State()
    assert decide(rs, state, FAILED, T0 + HOUR + 60) == [Hold("m", "m/orders", "muted", T0 + 2 * HOUR, "mute[0]")]
    assert tick(rs, state, T0 + 2 * HOUR - 1) == []
    paged = rendered(rs, tick(rs, state, T0 + 2 * HOUR))
    assert [(n.rule, n.service, n.action, n.dedup_key) for n in paged] == [("m", "pay", "trigger", "m/orders"),
                                                                          ("m", "ops", "trigger", "m/orders")]
    assert details(paged[0])["suppressed_count"] == details(paged[1])["suppressed_count"] == 1
    assert tick(rs, state, T0 + 2 * HOUR + 1) == []
    # and its resolve goes where the page went
    assert decide(rs, state, OK, T0 + 3 * HOUR) == [Resolve("m", "pay", "m/orders"), Resolve("m", "ops", "m/orders")]


def test_on_end_renotify_pages_nothing_for_an_alert_resolved_inside_the_window(tmp_path):
    rs, state = load(tmp_path, RENOTIFY), State()
    decide(rs, state, FAILED, T0 + HOUR + 60)
    assert decide(rs, state, OK, T0 + HOUR + 120) == []  # its page was held: nothing to resolve
    assert tick(rs, state, T0 + 2 * HOUR) == []


# -- inhibition ------------------------------------------------------------------------------------------

INHIBIT = """\
- name: node-down
  match: {field: type, equals: node_down}
  services: [pay]
  group_by: [cluster, node]
  resolve: {match: {field: type, equals: node_up}}
- name: svc
  match: {field: type, equals: unhealthy}
  services: [pay]
  group_by: [cluster, service]
  inhibit: {by: [node-down], equal: [cluster]}
"""


def test_inhibit_holds_pages_while_an_alert_with_the_same_value_is_open(tmp_path):
    rs, state = load(tmp_path, INHIBIT), State()
    assert pages(decide(rs, state, {"type": "node_down", "cluster": "c1", "node": "n1"}, T0)) == 1
    assert decide(rs, state, {"type": "unhealthy", "cluster": "c1", "service": "api"}, T0 + 1) == [
        Hold("svc", "svc/c1/api", "inhibited", by="node-down/c1/n1")]
    assert sent(rs, decide(rs, state, {"type": "unhealthy", "cluster": "c2", "service": "api"}, T0 + 2)) == [
        ("svc", "pay", "trigger", "svc/c2/api")]
    assert sent(rs, decide(rs, state, {"type": "node_up", "cluster": "c1", "node": "n1"}, T0 + 3)) == [
        ("node-down", "pay", "resolve", "node-down/c1/n1")]
    [page] = rendered(rs, decide(rs, state, {"type": "unhealthy", "cluster": "c1", "service": "api"}, T0 + 4))
    assert details(page)["suppressed_count"] == 1


# -- silences --------------------------------------------------------------------------------------------

DISK = "- {name: disk, match: {field: type, equals: disk}, services: [pay], group_by: [host]}\n"


def silence(state: State, match: dict, until: str = "1h", ident: int = 1) -> None:
    state.touch_silence(parse_silence({"match": match, "until": until}, ident=ident, now=T0))


def test_a_silence_counts_the_matches_it_covers_until_it_expires(tmp_path):
    rs, state = load(tmp_path, DISK), State()
    silence(state, {"field": "event.host", "equals": "db-1"})
    state.changes()
    silenced = Hold("disk", "disk/db-1", "silenced", until=T0 + HOUR, by="silence 1")
    assert decide(rs, state, {"type": "disk", "host": "db-1"}, T0) == [silenced]
    assert sent(rs, decide(rs, state, {"type": "disk", "host": "db-2"}, T0)) == [
        ("disk", "pay", "trigger", "disk/db-2")]
    assert decide(rs, state, {"type": "disk", "host": "db-1"}, T0 + HOUR - 1) == [silenced]
    assert state.silences[1].covered == 2
    [(ident, stored)] = state.changes().silences
    assert ident == 1 and '"covered":2' in stored
    assert pages(decide(rs, state, {"type": "disk", "host": "db-1"}, T0 + HOUR)) == 1  # expired at `until`
    assert state.groups == {}  # a silence gives a stateless rule no state


def test_a_silence_sees_the_rule_and_the_dedup_key(tmp_path):
    rs, state = load(tmp_path, DISK + "- {name: other, match: {field: type, equals: disk}, services: [pay]}\n"), State()
    silence(state, {"field": "rule", "equals": "other"})
    silence(state, {"field": "dedup_key", "equals": "disk/db-1"}, ident=2)
    assert sent(rs, decide(rs, state, {"type": "disk", "host": "db-1"}, T0)) == []
    assert sent(rs, decide(rs, state, {"type": "disk", "host": "db-2"}, T0)) == [
        ("disk", "pay", "trigger", "disk/db-2")]
    assert (state.silences[1].covered, state.silences[2].covered) == (2, 1)


def test_an_expired_silence_is_kept_a_week_then_dropped(tmp_path):
    rs, state = load(tmp_path, DISK), State()
    silence(state, {"field": "rule", "equals": "disk"})
    state.changes()
    tick(rs, state, T0 + HOUR + SILENCE_KEPT - 1)
    assert 1 in state.silences and not state.changes()
    tick(rs, state, T0 + HOUR + SILENCE_KEPT)
    assert state.silences == {} and state.changes().silence_deletes == (1,)


def test_a_silenced_trigger_is_counted_and_reported_by_the_next_page(tmp_path):
    rs, state = load(tmp_path, THRESHOLD), State()
    silence(state, {"field": "event.host", "equals": "a"})
    assert [decide(rs, state, ERR, T0 + t) for t in range(3)] == [
        [], [], [Hold("errs", "errs/a", "silenced", until=T0 + HOUR, by="silence 1")]]
    assert state.silences[1].covered == 1
    decided = [decide(rs, state, ERR, T0 + HOUR + t) for t in range(3)]
    assert decided[:2] == [[], []] and pages(decided[2]) == 1
    assert details(rendered(rs, decided[2])[0])["suppressed_count"] == 1


# -- stateless rules, Sentry resolves --------------------------------------------------------------------

def test_a_rule_without_stateful_keys_pages_every_match_and_keeps_no_state(tmp_path):
    rs, state = load(tmp_path, DISK), State()
    assert [pages(decide(rs, state, {"type": "disk", "host": "db-1"}, T0 + t)) for t in range(3)] == [1, 1, 1]
    assert tick(rs, state, T0 + DAY) == []
    assert state.groups == {} and not state.changes()


def test_sentry_alerts_are_tracked_so_sentrys_resolve_reaches_every_service_paged(tmp_path):
    rs, state = load(tmp_path, """\
        - {name: s, match: {field: level, equals: fatal}, services: [pay, ops], dedup_key: "issue-{{ event.issue }}"}
        """), State()
    decide(rs, state, {"level": "fatal", "issue": 7}, T0)
    assert state.groups == {}  # not from Sentry: nothing can resolve it, nothing kept
    decide(rs, state, {"level": "fatal", "issue": 8}, T0, origin=SENTRY)
    assert resolve_key(rs, state, "issue-7") == []
    resolves = resolve_key(rs, state, "issue-8")
    assert resolves == [Resolve("s", "pay", "issue-8"), Resolve("s", "ops", "issue-8")]
    assert rendered(rs, resolves)[1].body == {"event_type": "resolve", "incident_key": "issue-8"}
    assert resolve_key(rs, state, "issue-8") == []  # Sentry says it again (a resend): nothing more to do


def test_sentry_behaviour_follows_the_endpoint_never_a_source_field(tmp_path):
    rs, state = load(tmp_path, """\
        - {name: s, match: {field: level, equals: fatal}, services: [pay], throttle: 1h,
           dedup_key: "sentry-issue-{{ event.issue_id }}"}
        - {name: plain, match: {field: level, equals: fatal}, services: [pay]}
        """), State()
    claimed = {"source": "sentry", "level": "fatal", "issue_id": "9", "title": "boom"}
    paged = rendered(rs, decide(rs, state, claimed, T0))  # by POST /v1/events: a field is just a field
    assert [(n.rule, n.service, n.action, n.dedup_key) for n in paged] == [
        ("s", "pay", "trigger", "sentry-issue-9"), ("plain", "pay", "trigger", "plain")]
    assert paged[1].summary == "plain: boom" and "client_url" not in paged[1].body
    assert list(state.groups) == ["s"]  # `plain` is stateless and not from Sentry: nothing kept
    assert resolve_key(rs, state, "sentry-issue-9") == []  # Sentry resolves only what came from Sentry
    assert state.groups["s"]["sentry-issue-9"].open


def test_a_sentry_alert_held_by_a_mute_window_renotifies_with_sentrys_defaults(tmp_path):
    rs, state = load(tmp_path, """\
        - name: s
          match: {field: level, equals: fatal}
          services: [pay]
          mute: [{start: "2026-01-01T01:00:00Z", end: "2026-01-01T02:00:00Z", on_end: renotify}]
        """), State()
    event = {"level": "fatal", "issue_id": "5", "title": "boom", "issue_url": "https://sentry.io/o/issues/5/"}
    assert decide(rs, state, event, T0 + HOUR + 60, origin=SENTRY) == [
        Hold("s", "sentry-issue-5", "muted", T0 + 2 * HOUR, "mute[0]")]
    stored = Group.load(state.groups["s"]["sentry-issue-5"].dump())  # across a restart, too
    assert stored.origin == SENTRY
    state.groups["s"]["sentry-issue-5"] = stored
    [page] = rendered(rs, tick(rs, state, T0 + 2 * HOUR))
    assert (page.dedup_key, page.summary, page.body["client_url"]) == ("sentry-issue-5", "boom",
                                                                       "https://sentry.io/o/issues/5/")
    assert sent(rs, resolve_key(rs, state, "sentry-issue-5")) == [("s", "pay", "resolve", "sentry-issue-5")]


def test_a_disabled_rule_never_pages_from_the_clock_but_still_resolves(tmp_path):
    rs, state = load(tmp_path, ABSENT), State()
    decide(rs, state, BEAT, T0)
    decide(rs, state, {**BEAT, "job": "ship"}, T0 + 300)
    assert pages(tick(rs, state, T0 + 600)) == 1  # bill is absent, and paged
    disabled = load(tmp_path, ABSENT + "  enabled: false\n")  # a reload keeps the state of the same name
    assert tick(disabled, state, T0 + 900) == []  # ship is absent too, but its rule is disabled
    rs, state = load(tmp_path, """\
        - {name: r, match: {field: level, equals: error}, services: [pay], resolve: {after: 15m}}
        """), State()
    decide(rs, state, ERR, T0)
    disabled = load(tmp_path, "- {name: r, match: {field: level, equals: error}, services: [pay], enabled: false, "
                    "resolve: {after: 15m}}\n")
    assert sent(disabled, tick(disabled, state, T0 + 900)) == [("r", "pay", "resolve", "r")]
    rs, state = load(tmp_path, RENOTIFY), State()
    decide(rs, state, FAILED, T0 + HOUR + 60)
    assert tick(load(tmp_path, RENOTIFY + "  enabled: false\n"), state, T0 + 2 * HOUR) == []  # no renotify
