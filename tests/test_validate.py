"""engine/rules/validate.py: schema errors, translated and located at the offending key."""

from __future__ import annotations

import pytest

from engine.rules import load_ruleset
from engine.rules.validate import load_schema

VALID_SERVICE = "services:\n  sre: {service_key: abcdefgh1234}\n"

# (rule file text, expected "LINE:COL: rule 'NAME': message" or "LINE:COL: message")
BROKEN = [
    pytest.param("servces: {}\n", "1:1: unknown key 'servces' (did you mean 'services'?)", id="unknown-top-key"),
    pytest.param(
        VALID_SERVICE + "rules:\n  - name: a\n    services: [sre]\n    matchh: {field: x, equals: 1}\n",
        "4:5: rule 'a': missing required key 'match'", id="missing-key"),
    pytest.param(
        VALID_SERVICE + "rules:\n  - name: a\n    services: [sre]\n    match: {field: x, equals: 1}\n"
        "    sevrity: critical\n",
        "7:5: rule 'a': unknown key 'sevrity' (did you mean 'severity'?)", id="rule-typo"),
    pytest.param(
        VALID_SERVICE + "rules:\n  - name: a\n    services: sre\n    match: {field: x, equals: 1}\n",
        "5:5: rule 'a': 'services' must be a list, not a string", id="wrong-type"),
    pytest.param(
        VALID_SERVICE + "rules:\n  - name: a\n    services: []\n    match: {field: x, equals: 1}\n",
        "5:5: rule 'a': 'services' must not be empty", id="empty-services"),
    pytest.param(
        VALID_SERVICE + "rules:\n  - name: a\n    services: [sre]\n    match:\n      filed: x\n      equals: 1\n",
        "7:7: rule 'a': unknown key 'filed' (did you mean 'field'?)", id="condition-typo"),
    pytest.param(
        VALID_SERVICE + "rules:\n  - name: a\n    services: [sre]\n    match: {field: x}\n",
        "6:5: rule 'a': condition on field 'x' needs an operator: one of equals, in, regex, contains, "
        "prefix, suffix, exists, gt, gte, lt, lte", id="no-operator"),
    pytest.param(
        VALID_SERVICE + "rules:\n  - name: a\n    services: [sre]\n    match: {field: x, equals: 1, regex: y}\n",
        "6:5: rule 'a': a condition takes exactly one operator, found equals, regex", id="two-operators"),
    pytest.param(
        VALID_SERVICE + "rules:\n  - name: a\n    services: [sre]\n    match:\n      all:\n"
        "        - {field: x, gt: high}\n",
        "8:22: rule 'a': 'gt' must be a number, not a string", id="nested-leaf-type"),
    pytest.param(
        VALID_SERVICE + "rules:\n  - name: a\n    services: [sre]\n    match: {any: []}\n",
        "6:13: rule 'a': 'any' must not be empty", id="empty-any"),
    pytest.param(
        VALID_SERVICE + "rules:\n  - name: a\n    services: [sre]\n    match: {all: [], field: x}\n",
        "6:5: rule 'a': a condition takes exactly one of all, any, not, macro, field; found all, field",
        id="two-kinds"),
    pytest.param(
        VALID_SERVICE + "rules:\n  - name: bad name\n    services: [sre]\n    match: {field: x, equals: 1}\n",
        "4:5: rule 'bad name': invalid name 'bad name': use 1-128 characters of A-Z a-z 0-9 _ . : -",
        id="bad-name"),
    pytest.param("services:\n  sre: {api: v2}\n",
                 "2:3: a service needs exactly one of 'service_key' or 'service_key_file'", id="no-key"),
    pytest.param("services:\n  sre: {service_key: k, api: v3}\n",
                 "2:25: 'api' must be one of v2, v1, not 'v3'", id="bad-api"),
    pytest.param(
        VALID_SERVICE + "rules:\n  - name: off\n    services: [sre]\n    match: {field: x, equals: 1}\n",
        "4:5: 'name' must be a string, not a boolean (YAML reads yes/no/on/off/true/false as booleans: quote it)",
        id="yaml-boolean-name"),
    pytest.param("- just\n- a list\n", "1:1: the file must be a mapping, not a list", id="not-a-mapping"),
    pytest.param(
        VALID_SERVICE + "rules:\n  - name: a\n    services: [sre]\n    match: {field: x, equals: 1}\n"
        "    details: '{{ event.message }}'\n",
        "7:5: rule 'a': 'details' must be a mapping or null, not a string", id="details-string"),
    pytest.param(
        VALID_SERVICE + "rules:\n  - name: a\n    services: [sre]\n    match: {field: x, equals: 1}\n"
        "    details:\n      - '{{ event.message }}'\n",
        "7:5: rule 'a': 'details' must be a mapping or null, not a list", id="details-list"),
    pytest.param(
        VALID_SERVICE + "rules:\n  - name: a\n    services: [sre]\n    match: {field: x, gte: \"500\"}\n",
        "6:23: rule 'a': 'gte' must be a number, not a string (remove the quotes: gte: 500)", id="quoted-number"),
    pytest.param("services:\n  sre: {service_key: k, api: null}\n",
                 "2:25: 'api' must be one of v2, v1, not null", id="enum-shows-json-not-python"),
    pytest.param(
        VALID_SERVICE + "rules:\n  - name: a\n    services: [sre]\n    match: {field: x, equals: 1}\n"
        "    mute:\n      - {cron: \"0 2 * * SUN\", timezone: Europe/Berlin}\n",
        "8:9: rule 'a': missing required key 'duration': a recurring mute window is cron + duration (+ timezone)",
        id="mute-without-duration"),
    pytest.param(
        VALID_SERVICE + "rules:\n  - name: a\n    services: [sre]\n    match: {field: x, equals: 1}\n"
        "    mute:\n      - {start: \"2026-12-24T00:00:00Z\"}\n",
        "8:9: rule 'a': missing required key 'end': a fixed mute window is start + end", id="mute-without-end"),
    pytest.param(
        VALID_SERVICE + "rules:\n  - name: a\n    services: [sre]\n    match: {field: x, equals: 1}\n"
        "    mute:\n      - {cron: \"0 2 * * SUN\", duration: 2h, end: \"2026-12-24T00:00:00Z\"}\n",
        "8:9: rule 'a': a mute window is either cron + duration (+ timezone) or start + end, not both: found cron, "
        "duration, end", id="mute-mixed"),
]


@pytest.mark.parametrize(("text", "expected"), BROKEN)
def test_each_kind_of_schema_error_names_file_line_and_key(tmp_path, text, expected):
    path = tmp_path / "broken.yaml"
    path.write_text(text)
    result = load_ruleset([str(path)])
    assert result.ruleset is None
    assert f"{path}:{expected}" in [str(e) for e in result.errors]


def test_every_schema_error_in_every_file_is_reported_before_semantics(tmp_path):
    (tmp_path / "a.yaml").write_text("servces: {}\nruls: []\n")
    (tmp_path / "b.yaml").write_text("rules:\n  - name: x\n    services: [nope]\n    match: {field: a, gt: b}\n")
    result = load_ruleset([str(tmp_path)])
    messages = [(e.file.rsplit("/", 1)[-1], e.line, e.message) for e in result.errors]
    assert messages == [
        ("a.yaml", 1, "unknown key 'servces' (did you mean 'services'?)"),
        ("a.yaml", 2, "unknown key 'ruls' (did you mean 'rules'?)"),
        ("b.yaml", 4, "'gt' must be a number, not a string"),
    ]  # the unknown service is a semantic error: reported once the schema errors are fixed


def test_details_may_be_a_mapping_or_null(tmp_path):
    path = tmp_path / "rules.yaml"
    path.write_text(VALID_SERVICE + "rules:\n" + "".join(
        f"  - name: r{i}\n    services: [sre]\n    match: {{field: x, equals: 1}}\n    details: {details}\n"
        for i, details in enumerate(["{a: '{{ event.a }}', b: [1, 2]}", "{}", "null"])))
    result = load_ruleset([str(path)])
    assert result.errors == () and result.ruleset is not None


def test_schemas_are_valid_2020_12_and_shipped_with_the_package():
    from jsonschema import Draft202012Validator

    for name in ("rules", "ruletest"):
        schema = load_schema(name)
        Draft202012Validator.check_schema(schema)
        assert schema["$schema"].endswith("2020-12/schema")
