"""engine/ruletest.py: rule test files run offline on a driven clock, and what they report."""

from __future__ import annotations

from engine.rules.errors import RuleError
from engine.ruletest import run_test_file

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
