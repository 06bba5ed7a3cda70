"""engine/sources/sentry.py: each Sentry webhook resource -> the flat event (or resolve), and the Sentry
defaults that render.py applies (dedup key, summary, link, `severity: auto`)."""

from __future__ import annotations

import copy
import datetime as dt
import json
from pathlib import Path
from typing import Any

import pytest

from engine.render import render
from engine.rules import load_ruleset
from engine.rules.ruleset import RuleSet
from engine.sources.sentry import (
    ORIGIN,
    BodyTime,
    SentryEvent,
    SentryPayloadError,
    auto_severity,
    default_dedup_key,
    legacy_to_event,
    to_event,
)

FIXTURES = Path(__file__).parent / "fixtures" / "sentry"
NOW = dt.datetime(2026, 11, 28, 9, 46, 20, tzinfo=dt.UTC)
ISSUES = "https://sentry.example.com/organizations/acme/issues/"  # sources.sentry url + organization


def fixture(name: str) -> dict[str, Any]:
    return json.loads((FIXTURES / f"{name}.json").read_text())


def mapped(resource: str, name: str, issues_url: str | None = None) -> dict[str, Any]:
    """The flat event of a fixture, without the original payload kept under `sentry`."""
    result = to_event(resource, fixture(name), issues_url=issues_url)
    assert result.event is not None and result.resolves is None
    return {k: v for k, v in result.event.items() if k != "sentry"}


# --- resources -> events ---------------------------------------------------------------------------


def test_the_documented_event_alert_becomes_one_flat_event():
    payload = fixture("event_alert")
    result = to_event("event_alert", payload)
    assert result.describe() == "sentry event_alert triggered (issue 1117540176)"
    assert result.event == {
        "source": "sentry",
        "sentry": {"resource": "event_alert", "action": "triggered", "event": payload["data"]["event"]},
        "title": "ReferenceError: heck is not defined",
        "level": "error",
        "culprit": "?(<anonymous>)",
        "platform": "javascript",
        "event_id": "e4874d664c3540c1a32eab185f12c5ab",
        "timestamp": "2019-08-19T21:06:17.677000Z",
        "project": "front-end",  # the slug, from the event's API URL; the payload has only the id
        "project_id": "1",
        "url": "https://sentry.io/organizations/test-org/issues/1117540176/events/e4874d664c3540c1a32eab185f12c5ab/",
        "issue_id": "1117540176",
        "issue_url": "https://sentry.io/organizations/test-org/issues/1117540176/",
        "triggered_rule": "Very Important Alert Rule!",
        "tags": {"browser": "Chrome 75.0.3770", "browser.name": "Chrome", "handled": "no", "level": "error",
                 "mechanism": "onerror", "os": "Mac OS X 10.14.0", "os.name": "Mac OS X", "user": "ip:162.217.75.90",
                 "url": "https://null.jsbin.com/runner"},
    }


def test_an_event_alert_carries_environment_and_release_and_the_issue_page_of_new_style_urls():
    event = mapped("event_alert", "event_alert_checkout_fatal")
    assert {k: event[k] for k in ("project", "level", "environment", "release", "issue_id", "issue_url")} == {
        "project": "checkout", "level": "fatal", "environment": "production", "release": "checkout@1.4.2",
        "issue_id": "4242", "issue_url": "https://acme.sentry.io/issues/4242/"}
    assert event["tags"]["team"] == "payments"


def test_environment_and_release_fall_back_to_the_tags():
    payload = fixture("event_alert_checkout_fatal")
    del payload["data"]["event"]["environment"]
    payload["data"]["event"]["release"] = None
    event = to_event("event_alert", payload).event
    assert event is not None
    assert (event["environment"], event["release"]) == ("production", "checkout@1.4.2")


def test_an_issue_webhook_gives_the_issue_and_keeps_its_data():
    payload = fixture("issue_created")
    result = to_event("Issue", payload)  # the resource header's case does not matter
    assert result.event is not None and result.event["sentry"] == {
        "resource": "issue", "action": "created", "data": payload["data"]}
    assert mapped("issue", "issue_created") == {
        "source": "sentry", "issue_id": "1170820242", "short_id": "FRONT-END-9",
        "title": "ReferenceError: blooopy is not defined", "culprit": "?(runner)", "level": "error",
        "project": "front-end", "status": "unresolved", "substatus": "escalating", "platform": "javascript",
        "url": "https://sentry.io/organizations/test-org/issues/1170820242/",
        "issue_url": "https://sentry.io/organizations/test-org/issues/1170820242/",
        "timestamp": "2019-08-19T20:58:37.391000Z"}


def test_a_regression_and_an_assignment_flow_through_the_rules_like_new_issues():
    regressed = mapped("issue", "issue_unresolved")
    assert (regressed["status"], regressed["substatus"]) == ("unresolved", "regressed")
    assert regressed["project"] == "checkout"
    assert mapped("issue", "issue_assigned")["assignee"] == "Ada Lovelace"


def test_issue_webhooks_carry_no_page_so_the_configured_sentry_and_organization_give_the_link():
    assert "issue_url" not in mapped("issue", "issue_unresolved")  # Sentry's serialised issue has no web_url
    regressed = mapped("issue", "issue_unresolved", ISSUES)
    assert regressed["url"] == regressed["issue_url"] == ISSUES + "4242/"
    # the page a payload does carry comes first
    assert mapped("issue", "issue_created", ISSUES)["issue_url"] == \
        "https://sentry.io/organizations/test-org/issues/1170820242/"
    payload = fixture("event_alert_checkout_fatal")
    del payload["data"]["event"]["web_url"]
    event = to_event("event_alert", payload, issues_url=ISSUES).event
    assert event is not None and event["issue_url"] == ISSUES + "4242/"


@pytest.mark.parametrize("name", ["issue_resolved", "issue_ignored", "issue_archived"])
def test_resolving_an_issue_in_sentry_resolves_its_alert_and_matches_nothing(name):
    result = to_event("issue", fixture(name))
    assert result == SentryEvent("issue", name.split("_")[1], "issue 4242", None, "sentry-issue-4242")
    assert result.describe() == f"sentry issue {name.split('_')[1]} (issue 4242): resolves sentry-issue-4242"


def test_metric_alerts_give_title_status_rule_projects_and_incident():
    assert mapped("metric_alert", "metric_alert_critical") == {
        "source": "sentry", "title": "Critical: Too many errors",
        "description": "1000 events in the last 10 minutes\nFilter: level:error", "status": "critical",
        "level": "fatal", "alert_rule": "Too many errors", "alert_rule_id": "7", "projects": ["bar"],
        "project": "bar", "incident_id": "4", "url": "https://sentry.io/organizations/baz/alerts/1/",
        "incident_url": "https://sentry.io/organizations/baz/alerts/1/", "timestamp": "2020-09-13T12:26:40.000000Z"}
    assert mapped("metric_alert", "metric_alert_warning")["level"] == "warning"
    resolved = to_event("metric_alert", fixture("metric_alert_resolved"))
    assert (resolved.event, resolved.resolves) == (None, "sentry-metric-4")


def test_a_metric_alert_open_is_an_active_incident_at_no_threshold_level():
    payload = fixture("metric_alert_critical")
    payload["action"] = "open"
    event = to_event("metric_alert", payload).event
    assert event is not None
    assert (event["status"], event["incident_id"], "level" in event) == ("open", "4", False)


# --- the body's own time ----------------------------------------------------------------------------


def test_an_event_alert_is_dated_by_sentrys_receipt_of_the_event_else_by_the_events_own_time():
    payload = fixture("event_alert_checkout_fatal")
    assert to_event("event_alert", payload).happened == BodyTime("data.event.received", 1795856400.0)
    del payload["data"]["event"]["received"]
    assert to_event("event_alert", payload).happened == BodyTime("data.event.datetime", 1795856400.0)
    payload["data"]["event"]["datetime"] = "not a time"
    assert to_event("event_alert", payload).happened == BodyTime("data.event.timestamp", 1795856400.0)
    payload["data"]["event"].update(received=10**400, datetime=float("inf"), timestamp="9999-12-31T23:59:59-01:00")
    assert to_event("event_alert", payload).happened == BodyTime("data.event.timestamp", 253402304399.0)


def test_a_metric_alert_resolve_is_dated_by_its_close_and_nothing_else_is_dated():
    payload = fixture("metric_alert_resolved")
    assert to_event("metric_alert", payload).happened is None  # date_closed: null
    payload["data"]["metric_alert"]["date_closed"] = "2020-09-13T12:36:40.000000Z"
    assert to_event("metric_alert", payload).happened == BodyTime("data.metric_alert.date_closed", 1600000600.0)
    # the incident's other dates are its start's: a later critical -> warning change carries them unchanged
    assert to_event("metric_alert", fixture("metric_alert_critical")).happened is None
    # an issue's lastSeen is its last event's, days before a resolve perhaps; the legacy plugin signs nothing
    assert to_event("issue", fixture("issue_resolved")).happened is None
    assert to_event("issue", fixture("issue_unresolved")).happened is None
    assert legacy_to_event(fixture("legacy_webhook")).happened is None


@pytest.mark.parametrize(
    ("resource", "name", "described"),
    [
        ("installation", "installation_created",
         "sentry installation created (installation a8e5d37a-696c-4c54-adb5-b3f28d64c7de): accepted, not matched"),
        ("comment", "comment_created",
         "sentry comment created (installation eac5a0ae-60ec-418f-9318-46dc5e7e52ec): accepted, not matched"),
        ("error", "event_alert", "sentry error triggered (installation a8e5d37a-696c-4c54-adb5-b3f28d64c7de): "
         "accepted, not matched"),
    ],
)
def test_installation_and_other_resources_are_accepted_but_not_matched(resource, name, described):
    result = to_event(resource, fixture(name))
    assert (result.event, result.resolves, result.describe()) == (None, None, described)


def test_an_unknown_action_of_a_known_resource_is_accepted_but_not_matched():
    payload = fixture("issue_created")
    payload["action"] = "deleted"
    assert to_event("issue", payload).describe() == "sentry issue deleted (issue 1170820242): accepted, not matched"


def test_the_legacy_webhooks_plugin_body_becomes_the_same_kind_of_event():
    payload = fixture("legacy_webhook")
    result = legacy_to_event(payload)
    assert result.event is not None and result.event["sentry"] == {
        "resource": "legacy", "action": "triggered", "event": payload["event"]}
    event = {k: v for k, v in result.event.items() if k != "sentry"}
    assert event == {
        "source": "sentry", "title": "ZeroDivisionError: division by zero",
        "message": "ZeroDivisionError: division by zero", "level": "fatal", "culprit": "cart.total in compute",
        "environment": "production", "release": "checkout@1.4.2", "platform": "python",
        "event_id": "9f0c6a3b2d1e4f5a8b7c6d5e4f3a2b1c", "timestamp": 1795856400.0, "project": "checkout",
        "url": "https://acme.sentry.io/issues/4242/?referrer=webhooks_plugin", "issue_id": "4242",
        "issue_url": "https://acme.sentry.io/issues/4242/?referrer=webhooks_plugin",
        "triggered_rule": "Checkout fatal errors",
        "tags": {"environment": "production", "level": "fatal", "release": "checkout@1.4.2", "team": "payments"}}


def _without(path: str):
    def change(payload: dict[str, Any]) -> None:
        *parents, last = path.split(".")
        for key in parents:
            payload = payload[key]
        del payload[last]
    return change


def _set(path: str, value: Any):
    def change(payload: dict[str, Any]) -> None:
        *parents, last = path.split(".")
        for key in parents:
            payload = payload[key]
        payload[last] = value
    return change


@pytest.mark.parametrize(
    ("resource", "name", "change", "message"),
    [
        ("event_alert", "event_alert", _without("data.event"), "missing 'data.event'"),
        ("event_alert", "event_alert", _set("data.event", "x"), "'data.event' must be a JSON object, not a string"),
        ("event_alert", "event_alert", _without("data"), "missing 'data'"),
        ("event_alert", "event_alert", _without("data.event.issue_id"), "missing 'data.event.issue_id'"),
        ("event_alert", "event_alert", _set("data.event.issue_id", True),
         "'data.event.issue_id' must be a string or an integer id, not a boolean"),
        ("event_alert", "event_alert", _set("data.event.tags", "a=b"),
         "'data.event.tags' must be a list of [key, value] pairs, not a string"),
        ("event_alert", "event_alert", _set("data.event.tags", [["a", "b"], ["c"]]),
         "'data.event.tags.1' must be a [key, value] pair, not a list"),
        ("event_alert", "event_alert", _without("action"), "'action' must be a non-empty string, not null"),
        ("issue", "issue_created", _set("action", 3), "'action' must be a non-empty string, not a number"),
        ("issue", "issue_created", _without("data.issue"), "missing 'data.issue'"),
        ("issue", "issue_resolved", _set("data.issue.id", ""),
         "'data.issue.id' must be a string or an integer id, not an empty string"),
        ("metric_alert", "metric_alert_critical", _set("data.metric_alert", []),
         "'data.metric_alert' must be a JSON object, not a list"),
        ("metric_alert", "metric_alert_resolved", _without("data.metric_alert.id"), "missing 'data.metric_alert.id'"),
    ],
)
def test_a_malformed_payload_of_a_known_resource_names_the_field_at_fault(resource, name, change, message):
    payload = fixture(name)
    change(payload)
    with pytest.raises(SentryPayloadError) as info:
        to_event(resource, payload)
    assert info.value.message == message


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda: to_event("issue", [1]), "the body must be a JSON object, not a list"),
        (lambda: to_event("installation", None), "the body must be a JSON object, not null"),
        (lambda: to_event(" ", {}), "missing Sentry-Hook-Resource header"),
        (lambda: legacy_to_event("x"), "the body must be a JSON object, not a string"),
        (lambda: legacy_to_event({**fixture("legacy_webhook"), "project": {"slug": "x"}}),
         "'project' must be the project's slug, not an object"),
        (lambda: legacy_to_event({k: v for k, v in fixture("legacy_webhook").items() if k != "id"}), "missing 'id'"),
        (lambda: legacy_to_event({k: v for k, v in fixture("legacy_webhook").items() if k != "event"}),
         "missing 'event'"),
    ],
)
def test_a_body_that_is_no_sentry_payload_at_all_is_refused(call, message):
    with pytest.raises(SentryPayloadError) as info:
        call()
    assert info.value.message == message


# --- defaults ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(("level", "severity"), [("fatal", "critical"), ("error", "error"), ("warning", "warning"),
                                                 ("info", "info"), ("debug", "info"), (" Fatal ", "critical"),
                                                 ("sample", None), (None, None), (3, None)])
def test_auto_severity_maps_sentry_levels(level, severity):
    assert auto_severity(level) == severity


def test_the_default_dedup_key_is_per_sentry_issue_or_incident():
    assert default_dedup_key({"issue_id": "4242"}) == "sentry-issue-4242"
    assert default_dedup_key({"issue_id": 4242}) == "sentry-issue-4242"
    assert default_dedup_key(to_event("metric_alert", fixture("metric_alert_critical")).event) == "sentry-metric-4"
    assert default_dedup_key({"source": "sentry"}) is None


# --- through render ---------------------------------------------------------------------------------

RULES = """\
services:
  pay: {service_key: R0123456789abcdefPAY, severity: warning}
  legacy: {service_key: S0123456789abcdefOLD, api: v1}
  plain: {service_key: P0123456789abcdefPLN}
rules:
  - name: sentry-all
    match: {field: source, equals: sentry}
    services: [pay, legacy, plain]
    severity: auto
  - name: grouped
    match: {field: source, equals: sentry}
    services: [plain]
    group_by: [environment]
    summary: "{{ event.project }} broke"
    links: [{href: "{{ event.issue_url }}", text: Issue}]
  - name: own-key
    match: {field: source, equals: sentry}
    services: [plain]
    dedup_key: "mine/{{ event.issue_id }}"
    severity: "{{ 'auto' if event.level else 'info' }}"
  - name: any-source
    match: {field: kind, equals: plain}
    services: [pay, plain]
    severity: auto
"""


@pytest.fixture(scope="module")
def ruleset(tmp_path_factory) -> RuleSet:
    path = tmp_path_factory.mktemp("rules") / "sentry.yaml"
    path.write_text(RULES)
    result = load_ruleset([str(path)], env={})
    assert result.ruleset is not None, result.errors
    return result.ruleset


def pages(ruleset: RuleSet, event: dict[str, Any], origin: str | None = ORIGIN) -> dict[tuple[str, str], Any]:
    return {(m.rule.name, name): render(m, ruleset.services[name], NOW, origin)
            for m in ruleset.match(event) for name in m.rule.services}


def test_a_sentry_event_pages_one_incident_per_issue_titled_and_linked_to_sentry(ruleset):
    sent = pages(ruleset, to_event("event_alert", fixture("event_alert_checkout_fatal")).event)
    v2 = sent[("sentry-all", "pay")]
    assert (v2.dedup_key, v2.summary, v2.severity) == ("sentry-issue-4242", "ZeroDivisionError: division by zero",
                                                        "critical")
    assert v2.body["client_url"] == "https://acme.sentry.io/issues/4242/"
    assert v2.body["links"] == [{"href": "https://acme.sentry.io/issues/4242/", "text": "View in Sentry"}]
    assert v2.body["payload"]["timestamp"] == "2026-11-28T09:00:00Z"
    v1 = sent[("sentry-all", "legacy")].body
    assert (v1["incident_key"], v1["description"]) == ("sentry-issue-4242", "ZeroDivisionError: division by zero")
    assert v1["contexts"] == [{"type": "link", "href": "https://acme.sentry.io/issues/4242/", "text": "View in Sentry"}]
    assert v1["client_url"] == "https://acme.sentry.io/issues/4242/"  # as v2, and as Alertmanager sends v1


def test_the_rules_own_keys_summaries_and_links_come_first(ruleset):
    sent = pages(ruleset, to_event("event_alert", fixture("event_alert_checkout_fatal")).event)
    grouped = sent[("grouped", "plain")]
    assert (grouped.dedup_key, grouped.summary) == ("sentry-issue-4242", "checkout broke")  # not grouped/production
    assert grouped.body["links"] == [{"href": "https://acme.sentry.io/issues/4242/", "text": "Issue"}]  # not twice
    own = sent[("own-key", "plain")]
    assert (own.dedup_key, own.severity) == ("mine/4242", "critical")  # a template may render auto, too


def test_a_metric_alert_pages_one_incident_linked_to_the_incident(ruleset):
    sent = pages(ruleset, to_event("metric_alert", fixture("metric_alert_warning")).event)
    n = sent[("sentry-all", "pay")]
    assert (n.dedup_key, n.summary, n.severity) == ("sentry-metric-4", "Warning: Too many errors", "warning")
    assert n.body["client_url"] == "https://sentry.io/organizations/baz/alerts/1/"


def test_severity_auto_works_for_any_event_and_falls_back_to_the_service_default_then_error(ruleset):
    def severities(level: Any) -> dict[str, Any]:
        event = {"kind": "plain"} if level is None else {"kind": "plain", "level": level}
        return {service: n.severity for (_, service), n in pages(ruleset, event).items()}

    assert severities("fatal") == {"pay": "critical", "plain": "critical"}
    assert severities("debug") == {"pay": "info", "plain": "info"}
    assert severities("verbose") == {"pay": "warning", "plain": "error"}
    assert severities(None) == {"pay": "warning", "plain": "error"}


def test_non_sentry_events_keep_the_usual_defaults_and_get_no_sentry_link(ruleset):
    event = {"kind": "plain", "title": "t", "issue_id": "1", "issue_url": "https://sentry.example/issues/1/"}
    n = pages(ruleset, event, None)[("any-source", "plain")]
    assert (n.dedup_key, n.summary) == ("any-source", "any-source: t")
    assert "client_url" not in n.body and "links" not in n.body


def test_sentrys_defaults_follow_the_endpoint_not_a_source_field(ruleset):
    """A Sentry-shaped event with `source: sentry` sent to POST /v1/events matches the same rules, but
    pages like any other event: no Sentry dedup key, title or link."""
    event = to_event("event_alert", fixture("event_alert_checkout_fatal")).event
    assert event is not None and event["source"] == "sentry"
    n = pages(ruleset, event, None)[("sentry-all", "pay")]
    assert (n.dedup_key, n.summary) == ("sentry-all", "sentry-all: ZeroDivisionError: division by zero")
    assert "client_url" not in n.body and "links" not in n.body
    assert n.severity == "critical"  # `severity: auto` reads `level` on any event


def test_a_long_sentry_title_is_cut_to_pagerdutys_limit(ruleset):
    payload = fixture("event_alert_checkout_fatal")
    payload["data"]["event"]["title"] = "x" * 5000
    n = pages(ruleset, to_event("event_alert", payload).event)[("sentry-all", "pay")]
    assert len(n.summary) == 1024 and n.summary.endswith("…")


def test_the_original_payload_is_not_changed_by_mapping_or_rendering(ruleset):
    payload = fixture("event_alert_checkout_fatal")
    before = copy.deepcopy(payload)
    event = to_event("event_alert", payload).event
    pages(ruleset, event)
    assert payload == before


def test_severity_auto_is_a_valid_constant_and_a_near_miss_is_explained(tmp_path):
    path = tmp_path / "r.yaml"
    path.write_text("services:\n  s: {service_key: abcdefgh1234}\nrules:\n"
                    "  - {name: a, match: {field: x, equals: 1}, services: [s], severity: automatic}\n")
    result = load_ruleset([str(path)], env={})
    assert [e.message for e in result.errors] == [
        "severity must be one of critical, error, warning, info or a template, not 'automatic' "
        "(or auto: from the event's level)"]
