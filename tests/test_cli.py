"""engine/cli.py: check / eval / test, their output and exit codes, run as the installed command."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
KEY = "0123456789abcdef0123456789abcdef"
RULES = """\
services:
  pay: {service_key: "${PD_PAY}"}
  ops: {service_key: "${PD_OPS}", api: v1}
rules:
  - name: pay-5xx
    match: {field: http.status, gte: 500}
    services: [pay, ops]
    group_by: [host]
"""


def run(*args: str, stdin: str | None = None, env: dict | None = None, cwd=None) -> subprocess.CompletedProcess:
    full_env = {**os.environ, **(env or {})}
    exe = Path(sys.executable).with_name("alert-engine")
    return subprocess.run([str(exe), *args], input=stdin, capture_output=True, text=True, env=full_env,
                          cwd=cwd, timeout=60)


def rules_file(tmp_path, text: str = RULES) -> str:
    path = tmp_path / "rules.yaml"
    path.write_text(text)
    return str(path)


def test_check_ok_prints_counts(tmp_path):
    proc = run("check", rules_file(tmp_path), env={"PD_PAY": KEY, "PD_OPS": KEY})
    assert (proc.returncode, proc.stdout) == (0, "ok: 1 rule, 2 services in 1 file\n")  # plurals right


def test_check_errors_exit_1_with_located_messages(tmp_path):
    path = rules_file(tmp_path, RULES.replace("services: [pay, ops]", "services: [pay, opz]"))
    proc = run("check", path, env={"PD_PAY": KEY, "PD_OPS": KEY})
    assert proc.returncode == 1
    assert proc.stderr.splitlines() == [
        f"{path}:7:21: rule 'pay-5xx': unknown service 'opz' (did you mean 'ops'?); known services: ops, pay",
        f"{path}:3:3: warning: service 'ops' is not used by any rule",
        "invalid: 1 error",
    ]


def test_check_missing_secrets_error_unless_allowed(tmp_path):
    path = rules_file(tmp_path)
    env = {k: v for k, v in os.environ.items() if k not in ("PD_PAY", "PD_OPS")}
    proc = subprocess.run([str(Path(sys.executable).with_name("alert-engine")), "check", path],
                          capture_output=True, text=True, env=env, timeout=60)
    assert proc.returncode == 1 and "environment variable PD_PAY is not set" in proc.stderr
    proc = subprocess.run([str(Path(sys.executable).with_name("alert-engine")), "check",
                           "--allow-missing-secrets", path], capture_output=True, text=True, env=env, timeout=60)
    assert proc.returncode == 0 and "warning: service 'pay'" in proc.stderr


def test_check_refuses_details_that_are_not_a_mapping_at_the_key(tmp_path):
    path = rules_file(tmp_path, RULES + "    details: '{{ event.message }}'\n")
    proc = run("check", path, env={"PD_PAY": KEY, "PD_OPS": KEY})
    assert proc.returncode == 1
    assert f"{path}:9:5: rule 'pay-5xx': 'details' must be a mapping or null, not a string" in proc.stderr.splitlines()


def test_check_warns_of_a_key_that_is_not_32_characters_without_printing_it(tmp_path):
    path = rules_file(tmp_path)
    proc = run("check", path, env={"PD_PAY": "R0123456789abcdefV2KEY", "PD_OPS": KEY})
    assert (proc.returncode, proc.stdout) == (0, "ok: 1 rule, 2 services in 1 file\n")
    assert proc.stderr.splitlines() == [
        f"{path}:2:9: warning: service 'pay': key is 22 characters, PagerDuty integration keys are 32"]
    env = {k: v for k, v in os.environ.items() if k not in ("PD_PAY", "PD_OPS")}
    placeholders = subprocess.run([str(Path(sys.executable).with_name("alert-engine")), "check",
                                   "--allow-missing-secrets", path], capture_output=True, text=True, env=env,
                                  timeout=60)
    assert placeholders.returncode == 0 and "characters" not in placeholders.stderr


def test_usage_errors_exit_2():
    assert run().returncode == 2
    assert run("check").returncode == 2
    assert run("frobnicate").returncode == 2


def test_help_describes_every_command():
    out = run("--help").stdout
    for word in ("check", "eval", "test", "exit status"):
        assert word in out
    assert "--allow-missing-secrets" in run("check", "--help").stdout
    eval_help = run("eval", "--help").stdout
    for option in ("--events", "--time-field", "--explain", "--stateless"):
        assert option in eval_help


def test_eval_prints_one_masked_json_line_per_notification(tmp_path):
    events = tmp_path / "events.ndjson"
    events.write_text('{"host": "a", "http": {"status": 503}}\n{"host": "b", "http": {"status": 200}}\n'
                      '{"host": "c", "http": {"status": 500}}\n')
    proc = run("eval", rules_file(tmp_path), "--events", str(events), env={"PD_PAY": KEY, "PD_OPS": KEY})
    assert proc.returncode == 0, proc.stderr
    lines = [json.loads(line) for line in proc.stdout.splitlines()]
    assert [(x["event"], x["service"], x["api"]) for x in lines] == [
        (0, "pay", "v2"), (0, "ops", "v1"), (2, "pay", "v2"), (2, "ops", "v1")]
    assert lines[0]["url"] == "https://events.pagerduty.com/v2/enqueue"
    assert lines[1]["url"] == "https://events.pagerduty.com/generic/2010-04-15/create_event.json"
    assert lines[0]["body"]["routing_key"] == "****cdef"
    assert lines[1]["body"]["service_key"] == "****cdef"
    assert lines[0]["body"]["dedup_key"] == "pay-5xx/a"
    assert KEY not in proc.stdout + proc.stderr


def test_eval_reads_a_json_array_from_stdin_and_works_without_keys(tmp_path):
    proc = run("eval", rules_file(tmp_path), "--events", "-", "--url", "http://127.0.0.1:1/",
               stdin='[{"http": {"status": 500}}]', env={"PD_PAY": "", "PD_OPS": ""})
    assert proc.returncode == 0, proc.stderr
    first = json.loads(proc.stdout.splitlines()[0])
    assert first["url"] == "http://127.0.0.1:1/v2/enqueue"


def test_eval_via_sentry_gives_sentry_events_sentrys_defaults(tmp_path):
    event = json.dumps({"source": "sentry", "issue_id": "4242", "title": "boom", "host": "a",
                        "issue_url": "https://sentry.io/organizations/acme/issues/4242/", "http": {"status": 500}})
    env = {"PD_PAY": KEY, "PD_OPS": KEY}
    plain = run("eval", rules_file(tmp_path), "--events", "-", stdin=event, env=env)
    via = run("eval", rules_file(tmp_path), "--events", "-", "--via", "sentry", stdin=event, env=env)
    assert plain.returncode == via.returncode == 0, plain.stderr + via.stderr
    plain_v2, via_v2 = (json.loads(p.stdout.splitlines()[0])["body"] for p in (plain, via))
    assert (plain_v2["dedup_key"], plain_v2["payload"]["summary"]) == ("pay-5xx/a", "pay-5xx: boom")
    assert "client_url" not in plain_v2  # a `source: sentry` field alone makes no Sentry event
    assert (via_v2["dedup_key"], via_v2["payload"]["summary"]) == ("sentry-issue-4242", "boom")
    assert via_v2["client_url"] == "https://sentry.io/organizations/acme/issues/4242/"


def test_eval_bad_events_exit_1_naming_the_item(tmp_path):
    proc = run("eval", rules_file(tmp_path), "--events", "-", stdin='[{"a": 1}, 7]',
               env={"PD_PAY": KEY, "PD_OPS": KEY})
    assert proc.returncode == 1
    assert proc.stderr.strip() == "- (event 1): an event must be a JSON object, not int"


STATEFUL = RULES + """\
  - name: errors
    match: {field: level, equals: error}
    services: [pay, ops]
    group_by: [host]
    threshold: {count: 10, window: 1m}
  - name: deploys
    match: {field: type, equals: deploy}
    services: [pay]
    group_by: [app]
    throttle: 10m
  - name: heartbeat
    match: {field: type, equals: heartbeat}
    services: [pay]
    group_by: [job]
    absent: {for: 10m}
"""
ENV = {"PD_PAY": KEY, "PD_OPS": KEY}


def eval_lines(tmp_path, events: list[dict], *args: str) -> list[dict]:
    proc = run("eval", rules_file(tmp_path, STATEFUL), "--events", "-", *args,
               stdin="\n".join(json.dumps(e) for e in events), env=ENV)
    assert proc.returncode == 0, proc.stderr
    return [json.loads(line) for line in proc.stdout.splitlines()]


def test_eval_decides_as_the_daemon_does_ten_events_at_a_threshold_of_ten_page_once_per_service(tmp_path):
    lines = eval_lines(tmp_path, [{"level": "error", "host": "a"}] * 10)
    assert [(x["event"], x["at"], x["rule"], x["service"], x["body"].get("dedup_key")) for x in lines] == [
        (9, "2026-01-01T00:00:09Z", "errors", "pay", "errors/a"), (9, "2026-01-01T00:00:09Z", "errors", "ops", None)]
    assert lines[1]["body"]["incident_key"] == "errors/a" and lines[1]["body"]["service_key"] == "****cdef"
    stateless = eval_lines(tmp_path, [{"level": "error", "host": "a"}] * 10, "--stateless")
    assert len(stateless) == 20 and "at" not in stateless[0]  # --stateless: every match, as before


def test_eval_a_heartbeat_prints_nothing_unless_stateless(tmp_path):
    assert eval_lines(tmp_path, [{"type": "heartbeat", "job": "bill"}]) == []
    [line] = eval_lines(tmp_path, [{"type": "heartbeat", "job": "bill"}], "--stateless")
    assert (line["event"], line["rule"]) == (0, "heartbeat")


def test_eval_time_field_puts_events_on_their_own_times_in_time_order(tmp_path):
    deploys = [{"type": "deploy", "app": "shop", "ts": ts} for ts in
               ("2026-03-01T10:11:00Z", 1772359200, "2026-03-01T10:05:00+00:00", 1772359200500.0)]
    # 1772359200 is 10:00:00 (seconds); 1772359200500.0 is 10:00:00.5 (milliseconds); listed out of order
    lines = eval_lines(tmp_path, deploys, "--time-field", "ts")
    assert [(x["event"], x["at"]) for x in lines] == [(1, "2026-03-01T10:00:00Z"), (0, "2026-03-01T10:11:00Z")]
    apart = eval_lines(tmp_path, deploys)  # one second apart: the throttle holds all but the first
    assert [(x["event"], x["at"]) for x in apart] == [(0, "2026-01-01T00:00:00Z")]


def test_eval_time_field_missing_or_not_a_time_exits_1_naming_the_event(tmp_path):
    for bad, why in (({"type": "deploy"}, "there is no"), ({"type": "deploy", "ts": "soon"}, '"soon" is not')):
        proc = run("eval", rules_file(tmp_path, STATEFUL), "--events", "-", "--time-field", "ts",
                   stdin=json.dumps([{"type": "deploy", "ts": 1772359200}, bad]), env=ENV)
        assert proc.returncode == 1
        assert proc.stderr.strip() == (f"- (event 1): {why} a time at ts (ISO 8601, or seconds or milliseconds "
                                       "since the epoch)")


def test_eval_explain_prints_each_hold_and_why(tmp_path):
    deploys = [{"type": "deploy", "app": "shop", "ts": f"2026-03-01T10:0{m}:00Z"} for m in (0, 2)]
    lines = eval_lines(tmp_path, deploys, "--time-field", "ts", "--explain")
    assert [x.get("decision") for x in lines] == [None, "hold"]
    assert lines[1] == {"decision": "hold", "event": 1, "at": "2026-03-01T10:02:00Z", "rule": "deploys",
                        "dedup_key": "deploys/shop", "reason": "throttled", "until": "2026-03-01T10:10:00Z"}
    assert len(eval_lines(tmp_path, deploys, "--time-field", "ts")) == 1  # without --explain: pages only


def test_eval_stateless_has_no_clock_and_no_holds(tmp_path):
    for option in ("--time-field=ts", "--explain"):
        proc = run("eval", rules_file(tmp_path), "--events", "-", "--stateless", option, stdin="{}", env=ENV)
        assert proc.returncode == 2 and "--stateless only matches" in proc.stderr


def test_test_command_passes_on_the_shipped_example_tests():
    proc = run("test", *sorted(str(p) for p in (REPO / "rules" / "tests").glob("*.yaml")))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert proc.stdout.splitlines()[-1].endswith(" passed, 0 failed")


def test_test_command_prints_a_diff_and_exits_1_on_mismatch(tmp_path):
    rules_file(tmp_path)
    test_file = tmp_path / "t.yaml"
    test_file.write_text("""\
rule_files: [rules.yaml]
tests:
  - name: wrong expectations
    events: [{host: a, http: {status: 500}}]
    expect:
      - {rule: pay-5xx, service: pay, dedup_key: pay-5xx/a}
      - {rule: pay-5xx, service: sre}
""")
    proc = run("test", str(test_file))
    assert proc.returncode == 1
    assert proc.stdout.splitlines() == [
        f"FAIL  {test_file}: wrong expectations",
        "      - missing:    {rule: pay-5xx, service: sre}",  # YAML to paste, no Python reprs (severity: None)
        "      + unexpected: {rule: pay-5xx, service: ops, dedup_key: pay-5xx/a, summary: 'pay-5xx: event matched'}",
        "0 passed, 1 failed",
    ]


def test_check_prints_warnings_and_counts_several_errors(tmp_path):
    path = rules_file(tmp_path, RULES.replace("gte: 500}", "gte: 500}\n    summary: '{{ x'")
                      .replace("[pay, ops]", "[pay, opz]") + "  - {name: b, match: {field: http.status, "
                      "equals: \"503\"}, services: [pay]}\n")
    proc = run("check", path, env={"PD_PAY": KEY, "PD_OPS": KEY})
    assert proc.returncode == 1
    lines = proc.stderr.splitlines()
    assert lines[-1] == "invalid: 2 errors"
    assert f"{path}:10:43: warning: rule 'b': '503' is a string, but 'http.status' is usually a number (gte at " \
           f"{path}:6), and a string never equals a number: remove the quotes: equals: 503" in lines


def test_test_command_reports_a_broken_test_file_with_its_location(tmp_path):
    test_file = tmp_path / "t.yaml"
    test_file.write_text("rule_files: [rules.yaml]\ntests:\n  - name: x\n    events: []\n    expext: []\n")
    proc = run("test", str(test_file))
    assert proc.returncode == 1
    assert f"{test_file}:5:5: unknown key 'expext' (did you mean 'expect'?)" in proc.stderr


def test_a_rule_test_file_named_as_rules_is_an_error(tmp_path):
    test_file = tmp_path / "t.yaml"
    test_file.write_text("rule_files: [x.yaml]\ntests: []\n")
    proc = run("check", str(test_file))
    assert proc.returncode == 1 and "this is a rule test file" in proc.stderr


def test_check_config_reads_the_tokens_file_and_allow_missing_secrets_makes_a_missing_one_a_warning(tmp_path):
    rules_file(tmp_path)
    config = tmp_path / "engine.yaml"
    config.write_text("rules: [rules.yaml]\nstate_dir: state\ningest: {tokens_file: tokens}\n")
    env = {"PD_PAY": KEY, "PD_OPS": KEY}
    missing = run("check", "--config", str(config), env=env)
    assert missing.returncode == 1 and f"{tmp_path / 'tokens'}: cannot read tokens file" in missing.stderr
    allowed = run("check", "--config", str(config), "--allow-missing-secrets", env=env)
    assert allowed.returncode == 0, allowed.stderr
    assert f"{tmp_path / 'tokens'}: warning: cannot read tokens file: No such file or directory" in allowed.stderr
    (tmp_path / "tokens").write_text("# relay\ntok-relay-0123456789\ntok-admin-0123456789 admin,reed ci\n")
    bad = run("check", "--config", str(config), env=env)
    assert bad.returncode == 1
    assert f"{tmp_path / 'tokens'}:3:22: unknown scope 'reed': the scopes are events, read, admin, separated by " \
        "commas" in bad.stderr.splitlines()
    (tmp_path / "tokens").write_text("# relay\ntok-relay-0123456789\ntok-admin-0123456789 admin,read ci\n")
    old_format = run("check", "--config", str(config), env=env)
    assert old_format.returncode == 0
    assert f"{tmp_path / 'tokens'}:2:1: warning: a token without scopes may only send events" in old_format.stderr
    assert not any("tok-" in p.stderr + p.stdout for p in (missing, allowed, bad, old_format))


def test_the_readmes_checkout_commands_that_need_no_daemon_work_from_the_checkout():
    readme = (REPO / "README.md").read_text()
    section = readme.split("### Run it from a checkout", 1)[1].split("\n## ", 1)[0]
    block = section.split("```sh\n", 1)[1].split("```", 1)[0]
    commands = [line.split("#", 1)[0].split() for line in block.splitlines()]
    assert all(c[0] == ".venv/bin/alert-engine" for c in commands)  # the path a checkout has, as written
    offline = [c[1:] for c in commands if c[1] in ("--help", "check")]
    assert len(offline) == 2
    for args in offline:
        proc = run(*args, cwd=REPO)
        assert proc.returncode == 0, (args, proc.stderr)
