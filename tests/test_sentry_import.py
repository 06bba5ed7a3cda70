"""engine/sentry_import.py (and `alert-engine import sentry-plugin`): a Sentry PagerDuty plugin
configuration becomes a rule file that routes every event to the key the plugin would have used."""

from __future__ import annotations

import itertools
from typing import Any

import pytest

from engine.cli import main
from engine.rules import load_ruleset
from engine.rules.ruleset import RuleSet
from engine.sentry_import import PluginConfigError, import_plugin, parse_routes

MAIN_KEY = "a1b2c3d4e5f60718293a4b5c6d7e8f90"
PROD_KEY = "b2c3d4e5f60718293a4b5c6d7e8f90a1"
OTHER_KEY = "c3d4e5f60718293a4b5c6d7e8f90a1b2"
ROUTES = f"""\
# the plugin's "Tag routing" box
environment,production,{PROD_KEY}

 device , Other , {OTHER_KEY}
browser.name,Chrome,{PROD_KEY}
"""


def load(tmp_path, text: str, keys: dict[str, str]) -> RuleSet:
    path = tmp_path / "sentry-plugin.yaml"
    path.write_text(text)
    result = load_ruleset([str(path)], env=keys)
    assert result.ruleset is not None, [str(e) for e in result.errors]
    assert result.warnings == ()
    return result.ruleset


def paged_keys(ruleset: RuleSet, event: dict[str, Any]) -> list[str]:
    return [ruleset.services[s].key for m in ruleset.match(event) for s in m.rule.services]


def plugin_key(tags: dict[str, str], routes_text: str, main_key: str) -> str:
    """What sentry_plugins/pagerduty/plugin.py does: the first route whose tag has the value, else the main key."""
    for route in (r.strip() for r in routes_text.split("\n")):
        fields = [f.strip() for f in route.split(",")]
        if len(fields) != 3:
            continue
        tag_key, tag_value, route_key = fields
        if tag_key in tags and tags[tag_key] == tag_value:
            return route_key
    return main_key


def test_three_routes_become_rules_that_page_exactly_the_key_the_plugin_would(tmp_path):
    text, keys = import_plugin("checkout", MAIN_KEY, ROUTES)
    assert keys == {"SENTRY_PD_CHECKOUT_KEY": MAIN_KEY, "SENTRY_PD_CHECKOUT_ENVIRONMENT_PRODUCTION_KEY": PROD_KEY,
                    "SENTRY_PD_CHECKOUT_DEVICE_OTHER_KEY": OTHER_KEY}
    assert all(key not in text for key in keys.values())
    ruleset = load(tmp_path, text, keys)
    assert sorted(ruleset.services) == ["sentry-checkout", "sentry-checkout-device-Other",
                                        "sentry-checkout-environment-production"]
    assert {s.api for s in ruleset.services.values()} == {"v1"}  # the plugin spoke the generic v1 API
    choices = {"environment": [None, "production", "staging"], "device": [None, "Other", "iPhone"],
               "browser.name": [None, "Chrome", "Firefox"]}
    for values in itertools.product(*choices.values()):
        tags = {tag: value for tag, value in zip(choices, values, strict=True) if value is not None}
        event = {"source": "sentry", "project": "checkout", "issue_id": "1", "tags": tags}
        assert paged_keys(ruleset, event) == [plugin_key(tags, ROUTES, MAIN_KEY)], tags


def test_only_sentry_events_of_the_project_page(tmp_path):
    text, keys = import_plugin("checkout", MAIN_KEY, ROUTES)
    ruleset = load(tmp_path, text, keys)
    tags = {"environment": "production"}
    assert paged_keys(ruleset, {"source": "sentry", "project": "billing", "tags": tags}) == []
    assert paged_keys(ruleset, {"project": "checkout", "tags": tags}) == []
    assert paged_keys(ruleset, {"source": "sentry", "project": "checkout"}) == [MAIN_KEY]


def test_without_routes_every_event_of_the_project_pages_the_main_key(tmp_path):
    text, keys = import_plugin("front-end", MAIN_KEY, None)
    assert keys == {"SENTRY_PD_FRONT_END_KEY": MAIN_KEY}
    ruleset = load(tmp_path, text, keys)
    assert [r.name for r in ruleset.rules] == ["sentry-plugin-front-end-default"]
    assert paged_keys(ruleset, {"source": "sentry", "project": "front-end", "tags": {"a": "b"}}) == [MAIN_KEY]


def test_a_route_to_the_main_key_uses_the_main_service(tmp_path):
    text, keys = import_plugin("checkout", MAIN_KEY, f"team,data,{MAIN_KEY}\nteam,web,{OTHER_KEY}\n")
    ruleset = load(tmp_path, text, keys)
    assert sorted(ruleset.services) == ["sentry-checkout", "sentry-checkout-team-web"]
    assert paged_keys(ruleset, {"source": "sentry", "project": "checkout", "tags": {"team": "data"}}) == [MAIN_KEY]


@pytest.mark.parametrize("value", ['say "hi"', "true", "123", "null", "a: b", "#x", "back\\slash", "naïve ✓",
                                   "tab\there", "[x]", "{y}", "${NOT_A_VAR}", "emoji 😀", "nbsp\xa0x"])
def test_tag_names_and_values_are_matched_literally_whatever_they_contain(tmp_path, value):
    tag = f"k{value}"  # a line starting with '#' is a comment
    text, keys = import_plugin("checkout", MAIN_KEY, f"{tag},{value},{OTHER_KEY}\n")
    ruleset = load(tmp_path, text, keys)
    assert paged_keys(ruleset, {"source": "sentry", "project": "checkout", "tags": {tag: value}}) == [OTHER_KEY]
    assert paged_keys(ruleset, {"source": "sentry", "project": "checkout", "tags": {tag: "other"}}) == [MAIN_KEY]


def test_routing_lines_are_stripped_and_comments_and_blank_lines_skipped():
    routes = parse_routes(ROUTES)
    assert [(r.line, r.tag, r.value, r.key) for r in routes] == [
        (2, "environment", "production", PROD_KEY), (4, "device", "Other", OTHER_KEY),
        (5, "browser.name", "Chrome", PROD_KEY)]


@pytest.mark.parametrize(
    ("routes", "message"),
    [
        ("# ok\nenvironment,production\n", 'line 2: expected "tag,value,service_key", found 2 field(s)'),
        ("a,b,c,d\n", 'line 1: expected "tag,value,service_key", found 4 field(s)'),
        ("a, ,key\n", "line 1: empty value"),
        (" ,b,key\n", "line 1: empty tag"),
        ("a,b,\n", "line 1: empty service key"),
        ("a,b,k1\n\na,b,k2\n", "line 3: the route for a=b repeats line 1, which always wins"),
    ],
)
def test_a_malformed_routing_line_is_an_error_naming_its_line_and_never_the_key(routes, message):
    with pytest.raises(PluginConfigError) as info:
        import_plugin("checkout", MAIN_KEY, routes)
    assert str(info.value) == message
    assert "k1" not in str(info.value) and "k2" not in str(info.value)


@pytest.mark.parametrize(
    ("project", "key", "message"),
    [
        ("", MAIN_KEY, "'' is not a Sentry project slug (letters, digits, '-' and '_')"),
        ("my project", MAIN_KEY, "'my project' is not a Sentry project slug (letters, digits, '-' and '_')"),
        ("checkout", "", "the service key must be one word: no spaces or commas"),
        ("checkout", "two words", "the service key must be one word: no spaces or commas"),
    ],
)
def test_a_bad_project_or_service_key_is_refused(project, key, message):
    with pytest.raises(PluginConfigError) as info:
        import_plugin(project, key, None)
    assert str(info.value) == message


def test_the_command_prints_the_rule_file_on_stdout_and_the_keys_on_stderr(tmp_path, capsys):
    routes = tmp_path / "routes.txt"
    routes.write_text(ROUTES)
    code = main(["import", "sentry-plugin", "--project", "checkout", "--service-key", MAIN_KEY,
                 "--routes", str(routes)])
    out, err = capsys.readouterr()
    assert code == 0
    assert out == import_plugin("checkout", MAIN_KEY, ROUTES)[0]
    assert MAIN_KEY not in out and PROD_KEY not in out
    assert err.splitlines()[1:] == [f"SENTRY_PD_CHECKOUT_KEY={MAIN_KEY}",
                                    f"SENTRY_PD_CHECKOUT_ENVIRONMENT_PRODUCTION_KEY={PROD_KEY}",
                                    f"SENTRY_PD_CHECKOUT_DEVICE_OTHER_KEY={OTHER_KEY}"]


def test_the_command_names_the_routes_file_and_line_of_a_malformed_route(tmp_path, capsys):
    routes = tmp_path / "routes.txt"
    routes.write_text("# routes\nenvironment;production;KEY\n")
    code = main(["import", "sentry-plugin", "--project", "checkout", "--service-key", MAIN_KEY,
                 "--routes", str(routes)])
    out, err = capsys.readouterr()
    assert (code, out) == (1, "")
    assert err == f'{routes}:2: expected "tag,value,service_key", found 1 field(s)\n'
    assert main(["import", "sentry-plugin", "--project", "checkout", "--service-key", MAIN_KEY,
                 "--routes", str(tmp_path / "missing.txt")]) == 1
    assert "cannot read" in capsys.readouterr().err
