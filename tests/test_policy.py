"""engine/rules/policy.py: stateful rule keys compiled (and their errors located), and mute windows in time."""

from __future__ import annotations

from datetime import datetime

import pytest

from engine.rules import load_ruleset
from engine.rules.conditions import parse_field
from engine.rules.policy import STATELESS, Inhibit, Spike, Threshold

KEY = "0123456789abcdef0123456789abcdef"
HEAD = f"""\
services:
  pay: {{service_key: "{KEY}"}}
rules:
"""


def load(tmp_path, rules: str):
    path = tmp_path / "rules.yaml"
    path.write_text(HEAD + rules)
    return str(path), load_ruleset([str(path)])


def at(iso: str) -> float:
    return datetime.fromisoformat(iso.replace("Z", "+00:00")).timestamp()


def window(tmp_path, spec: str):
    _, result = load(tmp_path, f"  - {{name: r, match: {{field: x, exists: true}}, services: [pay], mute: [{spec}]}}\n")
    assert result.ruleset is not None, [str(e) for e in result.errors]
    return result.ruleset.rule("r").policy.mute[0]


def test_every_key_compiles_to_seconds_and_paths(tmp_path):
    _, result = load(tmp_path, """\
  - name: r
    match: {field: x, exists: true}
    services: [pay]
    threshold: {count: 20, window: 5m}
    throttle: 1h30m
    resolve: {after: 2d, match: {field: status, equals: ok}}
    inhibit: {by: [up], equal: [cluster, [labels, k8s.io]]}
  - name: s
    match: {field: x, exists: true}
    services: [pay]
    spike: {ratio: 3, window: 10m}
  - name: c
    match: {field: x, exists: true}
    services: [pay]
    change: {field: deploy.status}
  - name: up
    match: {field: x, exists: true}
    services: [pay]
    absent: {for: 90s}
  - {name: plain, match: {field: x, exists: true}, services: [pay]}
""")
    rs = result.ruleset
    assert rs is not None and result.errors == ()
    r = rs.rule("r").policy
    assert (r.threshold, r.throttle, r.resolve_after) == (Threshold(20, 300.0), 5400.0, 172800.0)
    assert r.resolve_match({"status": "ok"}) and not r.resolve_match({"status": "down"})
    assert r.inhibit == Inhibit(("up",), (("cluster",), ("labels", "k8s.io")))
    assert rs.rule("s").policy.spike == Spike(3.0, 600.0, min_count=1)
    assert rs.rule("c").policy.change == parse_field("deploy.status")
    assert rs.rule("up").policy.absent == 90.0
    assert rs.rule("plain").policy is STATELESS


@pytest.mark.parametrize(("spec", "key", "message"), [
    ('{cron: "61 2 * * SUN", duration: 2h}', "cron", "invalid cron expression '61 2 * * SUN': "),
    ('{cron: "0 2 * * SUN", duration: 2h, timezone: Mars/Olympus}', "timezone",
     "unknown time zone 'Mars/Olympus' (use an IANA name like Europe/Berlin)"),
    ('{start: "2026-12-27T00:00:00Z", end: "2026-12-24T00:00:00Z"}', "end", "a mute window must end after it starts"),
    ('{start: "2026-12-24T00:00:00Z", end: "2026-12-24T00:00:00Z"}', "end", "a mute window must end after it starts"),
    ('{start: "2026-12-24T00:00:00", end: "2026-12-27T00:00:00Z"}', "start",
     "time '2026-12-24T00:00:00' has no zone: add Z or an offset like +01:00"),
    ('{start: "2026-12-24T00:00:00Z", end: "2026-12-27T00:00:00"}', "end",
     "time '2026-12-27T00:00:00' has no zone: add Z or an offset like +01:00"),
    ('{start: "Christmas", end: "2026-12-27T00:00:00Z"}', "start",
     "invalid time 'Christmas': use ISO 8601 with a zone, like 2026-12-24T00:00:00Z"),
])
def test_a_bad_mute_window_is_an_error_at_its_key(tmp_path, spec, key, message):
    line = f"  - {{name: r, match: {{field: x, exists: true}}, services: [pay], mute: [{spec}]}}\n"
    file, result = load(tmp_path, line)
    assert result.ruleset is None
    [error] = result.errors
    column = line.index(spec) + spec.index(f"{key}:") + 1
    assert (error.file, error.line, error.col, error.rule) == (file, 4, column, "r")
    assert error.message.startswith(message)


def test_two_kinds_of_condition_cannot_be_combined(tmp_path):
    file, result = load(tmp_path, """\
  - name: r
    match: {field: x, exists: true}
    services: [pay]
    threshold: {count: 20, window: 5m}
    spike: {ratio: 3, window: 10m}
""")
    assert [str(e) for e in result.errors] == [
        f"{file}:8:5: rule 'r': 'threshold' and 'spike' cannot be combined: a rule pages on one kind of condition"]


def test_inhibit_by_an_unknown_rule_is_an_error_and_by_one_without_resolve_a_warning(tmp_path):
    file, result = load(tmp_path, """\
  - {name: node-down, match: {field: type, equals: node_down}, services: [pay]}
  - name: svc
    match: {field: type, equals: health}
    services: [pay]
    inhibit: {by: [node-down, node-dwn]}
""")
    assert [str(e) for e in result.errors] == [
        f"{file}:8:31: rule 'svc': unknown rule 'node-dwn' (did you mean 'node-down'?)"]
    assert [str(e) for e in result.warnings] == [
        f"{file}:8:20: warning: rule 'svc': rule 'node-down' has no resolve: once it fires it inhibits this rule "
        "until a Sentry resolve or a restart"]


def test_an_inhibitor_with_a_resolve_gives_no_warning(tmp_path):
    _, result = load(tmp_path, """\
  - {name: node-down, match: {field: type, equals: node_down}, services: [pay], resolve: {after: 10m}}
  - {name: svc, match: {field: type, equals: health}, services: [pay], inhibit: {by: [node-down]}}
""")
    assert result.ruleset is not None and (result.errors, result.warnings) == ((), ())


def test_absent_expect_builds_each_group_as_the_event_a_heartbeat_of_it_would_be(tmp_path):
    _, result = load(tmp_path, """\
  - name: hb
    match: {field: type, equals: heartbeat}
    services: [pay]
    group_by: [job, site.name, [labels, k8s.pod]]
    absent:
      for: 1h
      expect: [{job: db, site.name: eu, labels.k8s.pod: web-0}, {job: 7, site.name: null, labels.k8s.pod: x}]
""")
    assert result.errors == (), [str(e) for e in result.errors]
    assert result.ruleset.rule("hb").policy.expect == (
        {"job": "db", "site": {"name": "eu"}, "labels": {"k8s.pod": "web-0"}},
        {"job": 7, "site": {"name": None}, "labels": {"k8s.pod": "x"}},
    )


def test_absent_expect_must_name_exactly_the_group_by_fields(tmp_path):
    file, result = load(tmp_path, """\
  - name: hb
    match: {field: type, equals: heartbeat}
    services: [pay]
    group_by: [job, site.name]
    absent:
      for: 1h
      expect:
        - {job: db}
        - {job: db, site.name: eu, jb: x}
  - name: nogroups
    match: {field: type, equals: heartbeat}
    services: [pay]
    absent: {for: 1h, expect: [{job: db}]}
""")
    assert [str(e) for e in result.errors] == [
        f"{file}:11:11: rule 'hb': missing group_by field 'site.name': an expected group names exactly its "
        "group_by fields (job, site.name)",
        f"{file}:12:36: rule 'hb': 'jb' is not a group_by field of this rule (did you mean 'job'?): an "
        "expected group names exactly its group_by fields (job, site.name)",
        f"{file}:16:23: rule 'nogroups': expect names groups by their group_by values, but this rule has no "
        "group_by",
    ]


def test_a_fixed_window_includes_its_start_and_excludes_its_end(tmp_path):
    w = window(tmp_path, '{start: "2026-12-24T00:00:00+01:00", end: "2026-12-27T00:00:00Z"}')
    start, end = at("2026-12-23T23:00:00Z"), at("2026-12-27T00:00:00Z")
    assert w.active(start - 0.001) is None
    assert w.active(start) == w.active(end - 0.001) == (start, end)
    assert w.active(end) is None


def test_a_cron_window_without_a_time_zone_is_in_utc(tmp_path):
    w = window(tmp_path, '{cron: "30 6 * * *", duration: 15m}')
    assert w.active(at("2026-07-01T06:29:59Z")) is None
    assert w.active(at("2026-07-01T06:30:00Z")) == (at("2026-07-01T06:30:00Z"), at("2026-07-01T06:45:00Z"))
    assert w.active(at("2026-07-01T06:44:59.9Z")) is not None
    assert w.active(at("2026-07-01T06:45:00Z")) is None


def test_overlapping_occurrences_keep_the_window_open(tmp_path):
    w = window(tmp_path, '{cron: "0 * * * *", duration: 90m}')
    assert w.active(at("2026-01-01T01:30:00Z")) == (at("2026-01-01T01:00:00Z"), at("2026-01-01T02:30:00Z"))
    assert w.active(at("2026-01-01T01:29:59Z")) == (at("2026-01-01T00:00:00Z"), at("2026-01-01T01:30:00Z"))


BERLIN_SUNDAY_2AM = '{cron: "0 2 * * SUN", duration: 2h, timezone: Europe/Berlin}'


@pytest.mark.parametrize(("day", "start", "end"), [
    ("2026-03-22", "2026-03-22T01:00:00Z", "2026-03-22T03:00:00Z"),  # winter: 02:00 CET = 01:00 UTC
    ("2026-04-05", "2026-04-05T00:00:00Z", "2026-04-05T02:00:00Z"),  # summer: 02:00 CEST = 00:00 UTC
    # spring forward: 02:00 never happens; the window opens when the clock jumps (03:00 CEST), for 2 hours
    ("2026-03-29", "2026-03-29T01:00:00Z", "2026-03-29T03:00:00Z"),
])
def test_a_berlin_window_stays_at_2am_local_across_dst(tmp_path, day, start, end):
    w = window(tmp_path, BERLIN_SUNDAY_2AM)
    assert w.active(at(start) - 1) is None
    assert w.active(at(start)) == (at(start), at(end))
    assert w.active(at(end) - 0.5) == (at(start), at(end))
    assert w.active(at(end)) is None


def test_on_the_day_dst_ends_a_berlin_window_opens_at_both_2ams_and_covers_their_union(tmp_path):
    w = window(tmp_path, BERLIN_SUNDAY_2AM)
    first, second = at("2026-10-25T00:00:00Z"), at("2026-10-25T01:00:00Z")  # 02:00 CEST, then 02:00 CET
    assert w.active(first - 1) is None
    assert w.active(first) == (first, first + 7200)
    assert w.active(second + 1800) in ((first, first + 7200), (second, second + 7200))
    assert w.active(second + 7199.5) == (second, second + 7200)
    assert w.active(second + 7200) is None  # 04:00 CET: three hours in all, then closed
    assert w.active(at("2026-11-01T01:00:00Z")) is not None  # next Sunday: 02:00 CET again
