"""engine/rules/compile.py: semantic checks after the schema, each located, and the built RuleSet."""

from __future__ import annotations

import pytest

from engine.rules import load_ruleset

KEY = "0123456789abcdef0123456789abcdef"  # 32 characters, as PagerDuty's integration keys
SERVICES = f"services:\n  sre: {{service_key: {KEY}}}\n"


def rule(name: str = "a", match: str = "{field: x, equals: 1}", extra: str = "", services: str = "[sre]") -> str:
    return f"  - name: {name}\n    services: {services}\n    match: {match}\n{extra}"


def load(tmp_path, *texts: str, env=None, allow_missing_secrets=False):
    for i, text in enumerate(texts):
        (tmp_path / f"f{i}.yaml").write_text(text)
    return load_ruleset([str(tmp_path)], env=env or {}, allow_missing_secrets=allow_missing_secrets)


def errors_of(result) -> list[str]:
    return [f"{e.file.rsplit('/', 1)[-1]}:{e.line}:{e.col}: {e.rule}: {e.message}" for e in result.errors]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        pytest.param(SERVICES + "rules:\n" + rule(services="[sre, pager]"),
                     "f0.yaml:5:21: a: unknown service 'pager'", id="unknown-service"),
        pytest.param(SERVICES + "rules:\n" + rule(services="[ser]"),
                     "f0.yaml:5:16: a: unknown service 'ser' (did you mean 'sre'?)", id="unknown-service-close"),
        pytest.param(SERVICES + "rules:\n" + rule(match="{field: x, regex: '(unclosed'}"),
                     "f0.yaml:6:23: a: invalid regex '(unclosed'", id="bad-regex"),
        pytest.param(SERVICES + "rules:\n" + rule(extra="    summary: '{{ event.x '\n"),
                     "f0.yaml:7:5: a: template syntax error", id="template-syntax"),
        pytest.param(SERVICES + "rules:\n" + rule(extra="    severity: urgent\n"),
                     "f0.yaml:7:5: a: severity must be one of critical, error, warning, info or a template, "
                     "not 'urgent'", id="bad-severity"),
        pytest.param(SERVICES + "rules:\n" + rule(match="{macro: is_prd}") + "macros:\n  is_prod: "
                     "{field: env, equals: prod}\n",
                     "f0.yaml:6:13: a: unknown macro 'is_prd' (did you mean 'is_prod'?)", id="unknown-macro"),
        pytest.param(SERVICES + "rules:\n" + rule(match="{field: env, in: {list: envs}}"),
                     "f0.yaml:6:30: a: unknown list 'envs'", id="unknown-list"),
        pytest.param(SERVICES + "rules:\n" + rule(match="{macro: m1}")
                     + "macros:\n  m1: {macro: m2}\n  m2: {not: {macro: m1}}\n",
                     "f0.yaml:8:3: None: macro cycle: m1 -> m2 -> m1", id="macro-cycle"),
        pytest.param(SERVICES + "rules:\n" + rule() + rule(),
                     "f0.yaml:7:5: a: rule 'a' is already defined at", id="duplicate-rule"),
    ],
)
def test_each_kind_of_semantic_error_names_file_line_and_rule(tmp_path, text, expected):
    result = load(tmp_path, text)
    assert result.ruleset is None
    assert any(e.startswith(expected) for e in errors_of(result)), errors_of(result)


def test_duplicates_across_files_name_the_first_definition(tmp_path):
    result = load(tmp_path, SERVICES + "rules:\n" + rule(), SERVICES + "rules:\n" + rule())
    first = str(tmp_path / "f0.yaml")
    assert errors_of(result) == [
        f"f1.yaml:2:3: None: service 'sre' is already defined at {first}:2",
        f"f1.yaml:4:5: a: rule 'a' is already defined at {first}:4",
    ]


def test_missing_key_variable_names_the_service_never_a_key(tmp_path):
    text = "services:\n  pay:\n    service_key: ${PD_PAY}\n  sre:\n    service_key: sekrit-${PD_SRE}\n" \
           "rules:\n" + rule(services="[pay, sre]")
    env = {"PD_SRE": "x" * 25}
    result = load(tmp_path, text, env=env)
    assert errors_of(result) == ["f0.yaml:3:5: None: service 'pay': environment variable PD_PAY is not set"]
    assert "sekrit" not in str(result.errors)
    relaxed = load(tmp_path, text, env=env, allow_missing_secrets=True)
    assert relaxed.ruleset is not None and relaxed.errors == ()
    # the placeholder of the missing key gets no warning about its length
    assert [w.message for w in relaxed.warnings] == ["service 'pay': environment variable PD_PAY is not set"]
    assert relaxed.ruleset.services["sre"].key == "sekrit-" + "x" * 25


def test_key_files_are_read_stripped_and_checked(tmp_path):
    keys = tmp_path / "keys"
    keys.mkdir()
    (keys / "sre").write_text("  0123456789abcdef0123456789abcdef\n")
    (keys / "empty").write_text("\n")
    rules_dir = tmp_path / "rules"
    rules_dir.mkdir()
    text = (f"services:\n  sre: {{service_key_file: {keys / 'sre'}}}\n"
            f"  empty: {{service_key_file: {keys / 'empty'}}}\n"
            f"  gone: {{service_key_file: {keys / 'gone'}}}\n"
            "rules:\n" + rule(services="[sre, empty, gone]"))
    result = load(rules_dir, text)
    messages = [e.message for e in result.errors]
    assert messages == [
        f"service 'empty': key file {keys / 'empty'} is empty",
        f"service 'gone': cannot read key file {keys / 'gone'}: No such file or directory",
    ]
    (keys / "empty").write_text("fedcba9876543210\n")
    (keys / "gone").write_text("00001111222233334444\n")
    ok = load(rules_dir, text)
    assert ok.ruleset is not None
    assert ok.ruleset.services["sre"].key == "0123456789abcdef0123456789abcdef"
    assert "0123456789abcdef" not in repr(ok.ruleset.services["sre"])


def test_a_key_that_is_not_32_characters_is_a_warning_naming_service_place_and_length(tmp_path):
    keys = tmp_path / "keys"
    keys.mkdir()
    (keys / "file").write_text("f" * 33 + "\n")
    rules_dir = tmp_path / "rules"
    rules_dir.mkdir()
    text = (f"services:\n  ok: {{service_key: {KEY}}}\n  short:\n    service_key: ${{PD_SHORT}}\n"
            f"  long: {{service_key_file: {keys / 'file'}}}\n"
            "rules:\n" + rule(services="[ok, short, long]"))
    result = load(rules_dir, text, env={"PD_SHORT": "s3cr3t-but-20-chars!"})
    assert result.ruleset is not None and result.errors == ()
    assert [str(w).rsplit("/", 1)[-1] for w in result.warnings] == [
        "f0.yaml:4:5: warning: service 'short': key is 20 characters, PagerDuty integration keys are 32",
        "f0.yaml:5:10: warning: service 'long': key is 33 characters, PagerDuty integration keys are 32",
    ]
    assert "s3cr3t" not in str(result.warnings) and "fff" not in str(result.warnings)


def test_unused_service_is_a_warning_and_the_rule_set_is_built(tmp_path):
    result = load(tmp_path, SERVICES + f"  spare: {{service_key: {KEY}}}\nrules:\n" + rule())
    assert result.ruleset is not None
    assert [str(w).split(": ", 1)[1] for w in result.warnings] == ["warning: service 'spare' is not used by any rule"]


def test_the_built_rule_set_keeps_file_order_defaults_and_disabled_rules(tmp_path):
    text = SERVICES + "  v1svc: {service_key: k, api: v1, severity: warning}\nrules:\n" + \
        rule("first") + rule("disabled", extra="    enabled: false\n") + rule("last", services="[v1svc, sre]")
    rs = load(tmp_path, text).ruleset
    assert [r.name for r in rs.rules] == ["first", "disabled", "last"]
    assert [r.order for r in rs.rules] == [0, 1, 2]
    assert rs.rules[1].enabled is False
    assert rs.services["v1svc"].api == "v1" and rs.services["v1svc"].severity == "warning"
    assert rs.services["sre"].api == "v2" and rs.services["sre"].severity is None
    assert [m.rule.name for m in rs.match({"x": 1})] == ["first", "last"]  # the disabled rule never matches
    assert rs.rules[2].services == ("v1svc", "sre")
    assert len(rs.sha256) == 64 and set(rs.files) == {str(tmp_path / "f0.yaml")}


def test_a_rule_file_may_hold_only_lists_and_macros(tmp_path):
    shared = "lists:\n  envs: [prod, production]\nmacros:\n  is_prod: {field: env, in: {list: envs}}\n"
    result = load(tmp_path, shared, SERVICES + "rules:\n" + rule(match="{macro: is_prod}"))
    assert result.errors == ()
    assert [m.rule.name for m in result.ruleset.match({"env": "production"})] == ["a"]
    assert result.ruleset.match({"env": "dev"}) == []


def test_no_rule_files_is_an_error(tmp_path):
    result = load_ruleset([str(tmp_path)])
    assert [e.message for e in result.errors] == ["no rule files (*.yaml, *.yml) found"]


def test_an_unknown_service_lists_the_known_ones_with_a_did_you_mean(tmp_path):
    text = SERVICES + "  payments: {service_key: k}\nrules:\n" + rule(services="[payment, sre]")
    assert errors_of(load(tmp_path, text)) == [
        "f0.yaml:6:16: a: unknown service 'payment' (did you mean 'payments'?); known services: payments, sre"]


def test_an_unknown_service_when_there_are_none_says_so(tmp_path):
    assert errors_of(load(tmp_path, "rules:\n" + rule())) == [
        "f0.yaml:3:16: a: unknown service 'sre': no services are defined (add it under 'services:' in a rule file)"]


def test_a_long_list_of_known_services_is_cut(tmp_path):
    many = "".join(f"  s{i:02}: {{service_key: k}}\n" for i in range(25))
    [error] = load(tmp_path, "services:\n" + many + "rules:\n" + rule(services="[zzz]")).errors
    assert error.message == ("unknown service 'zzz'; known services: " + ", ".join(f"s{i:02}" for i in range(20))
                             + " and 5 more")


def test_a_template_syntax_error_names_the_field_it_is_in(tmp_path):
    text = SERVICES + "rules:\n" + rule(extra="    summary: '{{ event.x '\n    details: {region: '{% if %}'}\n"
                                              "    links: [{href: 'ok', text: '{{ }}'}]\n")
    errors = load(tmp_path, text).errors
    assert [(e.line, e.col, e.message.split(":")[0]) for e in errors] == [
        (7, 5, "template syntax error in summary"),
        (8, 15, "template syntax error in details.region"),
        (9, 26, "template syntax error in links.0.text"),
    ]
