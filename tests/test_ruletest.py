"""engine/ruletest.py: rule test files run offline on a driven clock, and what they report."""

from __future__ import annotations

from engine.rules.errors import RuleError
from engine.ruletest import Outcome, run_test_file

RULES = """\
services:
  sre: {service_key: abcdefgh1234}
  ops: {service_key: abcdefgh1234, api: v1}
rules:
  - name: backup
    match: {field: type, equals: backup_done}
    services: [sre, ops]
    summary: "backup {{ event.job }} is silent"
    group_by: [job]
    absent: {for: 1h, expect: [{job: db}, {job: files}]}
"""


def write(tmp_path, tests: str, rule_files: str = "[rules.yaml]"):
    (tmp_path / "rules.yaml").write_text(RULES)
    test_file = tmp_path / "t.yaml"
    test_file.write_text(f"rule_files: {rule_files}\ntests:\n{tests}")
    return str(test_file)


def test_a_rule_file_that_does_not_exist_is_an_error_at_its_path_saying_paths_are_relative_to_the_test(tmp_path):
    sub = tmp_path / "tests"
    sub.mkdir()
    (tmp_path / "rules.yaml").write_text(RULES)
    test_file = sub / "t.yaml"
    test_file.write_text("rule_files: [../rules.yaml, rules.yaml]\ntests:\n  - {name: x, events: [], expect: []}\n")
    [error] = run_test_file(str(test_file))
    assert isinstance(error, RuleError)
    assert str(error) == (f"{test_file}:1:29: rule file rules.yaml does not exist: rule_files paths are relative "
                          f"to the test file, so this is {sub / 'rules.yaml'}")


def test_a_timeline_shows_an_expected_group_that_never_reports(tmp_path):
    file = write(tmp_path, """\
  - name: files never reports
    until: 2h
    events:
      - {at: 30m, event: {type: backup_done, job: db}}
    expect:
      - {rule: backup, service: sre, at: 1h, dedup_key: backup/files, summary: backup files is silent}
      - {rule: backup, service: ops, at: 1h, dedup_key: backup/files}
      - {rule: backup, service: sre, at: 1h30m, dedup_key: backup/db}
      - {rule: backup, service: ops, at: 1h30m, dedup_key: backup/db}
""")
    [outcome] = run_test_file(file)
    assert isinstance(outcome, Outcome) and outcome.passed, outcome.report()


def test_a_failure_prints_each_line_as_an_expect_item_to_paste_without_python_values(tmp_path):
    file = write(tmp_path, """\
  - name: nothing expected
    until: 1h
    events: [{at: 10m, event: {type: backup_done, job: files}}]
    expect:
      - {rule: backup, service: sre, action: resolve}
""")
    [outcome] = run_test_file(file)
    assert outcome.report().splitlines() == [
        f"FAIL  {file}: nothing expected",
        "      - missing:    {rule: backup, service: sre, action: resolve}",
        "      + unexpected: {rule: backup, service: sre, at: 1h, dedup_key: backup/db, severity: error, "
        "summary: backup db is silent}",
        "      + unexpected: {rule: backup, service: ops, at: 1h, dedup_key: backup/db, summary: backup db is silent}",
    ]
