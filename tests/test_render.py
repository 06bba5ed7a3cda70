"""Rendering PagerDuty v1/v2 bodies: exact bodies, defaults, fallbacks, limits, links and images."""

from __future__ import annotations

import datetime as dt
import hashlib
import json
from typing import Any

import pytest

from engine.render import BODY_LIMIT, Notification, render, render_resolve, with_key
from engine.rules.conditions import parse_field
from engine.rules.ruleset import Image, Link, Match, Rule, Service
from engine.sources import sentry
from engine.templates import compile_template, compile_tree

NOW = dt.datetime(2026, 11, 28, 9, 46, 20, tzinfo=dt.UTC)
V2_KEY = "R0123456789abcdefV2KEY"
V1_KEY = "S0123456789abcdefV1KEY"
V2 = Service("ops", "v2", V2_KEY)
V1 = Service("legacy", "v1", V1_KEY)


def t(source: str) -> Any:
    return compile_template(source)


def make_rule(**fields: Any) -> Rule:
    for name in ("severity", "summary", "source", "dedup_key", "component", "group", "class_"):
        if isinstance(fields.get(name), str):
            fields[name] = t(fields[name])
    if "details" in fields:
        fields["details"] = compile_tree(fields["details"], file="r.yaml", path=(), problems=[], rule=None)
    if "group_by" in fields:
        fields["group_by"] = tuple(parse_field(f) for f in fields["group_by"])
    return Rule(name="disk-full", order=0, condition=lambda event: True, services=("ops",), **fields)


def page(event: dict[str, Any], service: Service = V2, *, origin: str | None = None, **rule_fields: Any
         ) -> Notification:
    return render(Match(make_rule(**rule_fields), event), service, NOW, origin=origin)


def payload(event: dict[str, Any], **rule_fields: Any) -> dict[str, Any]:
    return page(event, **rule_fields).body["payload"]


def sent_size(notification: Notification) -> int:
    """Bytes PagerDuty receives: the stored body with the key delivery puts in at send time."""
    key = V2_KEY if notification.api == "v2" else V1_KEY
    return len(with_key(notification.api, notification.json().encode(), key))


# --- whole bodies -------------------------------------------------------------------------------------


def test_v2_body_with_every_field() -> None:
    event = {
        "host": "db1",
        "message": "disk 97% full",
        "team": "storage",
        "timestamp": "2026-11-28T09:00:00Z",
    }
    notification = page(
        event,
        severity="{{ 'critical' if event.team == 'storage' else 'info' }}",
        summary="{{ event.host }}: {{ event.message }}",
        source="{{ event.host }}.example.com",
        component="disk",
        group="{{ event.team }}",
        class_="capacity",
        group_by=["host"],
        details={"team": "{{ event.team }}", "threshold": 95},
        links=(Link(t("https://runbooks/{{ rule.name }}"), t("Runbook")),),
        images=(Image(t("https://graphs/{{ event.host }}.png"), t("graph"), t("https://graphs")),),
    )
    assert notification.body == {
        "event_action": "trigger",
        "dedup_key": "disk-full/db1",
        "payload": {
            "summary": "db1: disk 97% full",
            "source": "db1.example.com",
            "severity": "critical",
            "timestamp": "2026-11-28T09:00:00Z",
            "component": "disk",
            "group": "storage",
            "class": "capacity",
            "custom_details": {"team": "storage", "threshold": 95},
        },
        "links": [{"href": "https://runbooks/disk-full", "text": "Runbook"}],
        "images": [{"src": "https://graphs/db1.png", "href": "https://graphs", "alt": "graph"}],
        "client": "alert-engine",
    }
    assert (notification.rule, notification.service, notification.api, notification.action) == (
        "disk-full", "ops", "v2", "trigger",
    )  # fmt: skip
    assert notification.dedup_key == "disk-full/db1"


def test_v2_body_with_defaults_only() -> None:
    event = {"host": "db1", "message": "disk full"}
    assert page(event).body == {
        "event_action": "trigger",
        "dedup_key": "disk-full",
        "payload": {
            "summary": "disk-full: disk full",
            "source": "db1",
            "severity": "error",
            "timestamp": "2026-11-28T09:46:20Z",
            "custom_details": {"host": "db1", "message": "disk full"},
        },
        "client": "alert-engine",
    }


def test_v1_body_with_links_and_images() -> None:
    event = {"host": "db1", "title": "Disk full"}
    notification = page(
        event,
        V1,
        severity="critical",
        group_by=["host"],
        links=(Link(t("https://runbooks/disk"), t("Runbook")), Link(t("https://wiki/disk"))),
        images=(Image(t("https://graphs/db1.png"), t("graph")), Image(t("https://graphs/2.png"))),
    )
    assert notification.body == {
        "event_type": "trigger",
        "incident_key": "disk-full/db1",
        "description": "disk-full: Disk full",
        "details": {"host": "db1", "title": "Disk full"},
        "client": "alert-engine",
        "contexts": [
            {"type": "link", "href": "https://runbooks/disk", "text": "Runbook"},
            {"type": "link", "href": "https://wiki/disk"},
            {"type": "image", "src": "https://graphs/db1.png", "alt": "graph"},
            {"type": "image", "src": "https://graphs/2.png"},
        ],
    }
    assert (notification.api, notification.action, notification.dedup_key) == (
        "v1",
        "trigger",
        "disk-full/db1",
    )


def test_v1_body_with_defaults_only_has_no_contexts() -> None:
    assert page({"a": 1}, V1).body == {
        "event_type": "trigger",
        "incident_key": "disk-full",
        "description": "disk-full: event matched",
        "details": {"a": 1},
        "client": "alert-engine",
    }


def test_unknown_api_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown api 'v3'"):
        page({}, Service("odd", "v3", V2_KEY))


# --- defaults -------------------------------------------------------------------------------------------


def test_severity_from_rule_service_or_error() -> None:
    service_with_default = Service("s", "v2", V2_KEY, severity="info")
    assert page({}, service_with_default, severity="warning").body["payload"]["severity"] == "warning"
    assert page({}, service_with_default).body["payload"]["severity"] == "info"
    assert payload({})["severity"] == "error"


def test_rendered_severity_is_stripped_and_lower_cased() -> None:
    assert payload({"level": " CRITICAL\n"}, severity="{{ event.level }}")["severity"] == "critical"


def test_severity_rendering_empty_falls_back_silently() -> None:
    body = payload({}, severity="{{ event.level }}")
    assert body["severity"] == "error"
    assert "template_error" not in body["custom_details"]


def test_invalid_rendered_severity_falls_back_to_service_default_and_is_recorded() -> None:
    rule = make_rule(severity="{{ event.level }}")
    service = Service("s", "v2", V2_KEY, severity="warning")
    body = render(Match(rule, {"level": "fatal"}), service, NOW).body["payload"]
    assert body["severity"] == "warning"
    assert body["custom_details"] == {
        "level": "fatal",
        "template_error": {"severity": "rendered 'fatal', not one of critical, error, warning, info"},
    }


@pytest.mark.parametrize(
    ("event", "summary"),
    [
        ({"message": "disk full", "title": "ignored"}, "disk-full: disk full"),
        ({"message": "", "title": "Disk alert"}, "disk-full: Disk alert"),
        ({"message": 42, "title": "  "}, "disk-full: event matched"),
        ({}, "disk-full: event matched"),
    ],
)
def test_default_summary(event: dict[str, Any], summary: str) -> None:
    assert payload(event)["summary"] == summary


def test_summary_template_rendering_empty_takes_the_default() -> None:
    assert payload({"message": "m"}, summary="{{ event.missing }}")["summary"] == "disk-full: m"


BLANK = "rendered blank, which PagerDuty refuses: the default was sent"


@pytest.mark.parametrize("blank", ["{{ event.missing }}", " ", "{{ event.pad }}\n\t"])
def test_blank_summary_and_source_take_the_defaults_and_are_recorded(blank: str) -> None:
    body = payload({"host": "db1", "message": "m", "pad": "  "}, summary=blank, source=blank)
    assert (body["summary"], body["source"]) == ("disk-full: m", "db1")
    assert body["custom_details"]["template_error"] == {"summary": BLANK, "source": BLANK}
    without_host = payload({}, source=blank)
    assert without_host["source"] == "alert-engine"


def test_blank_v1_description_takes_the_default_and_is_recorded() -> None:
    body = page({"title": "Disk full"}, V1, summary="  ").body
    assert body["description"] == "disk-full: Disk full"
    assert body["details"]["template_error"] == {"summary": BLANK}


def test_a_summary_with_text_around_blanks_is_sent_as_rendered() -> None:
    body = payload({}, summary=" disk full ")
    assert body["summary"] == " disk full " and "template_error" not in body["custom_details"]


@pytest.mark.parametrize(
    ("host", "source"),
    [
        ("db1", "db1"),
        (42, "42"),
        (1.5, "1.5"),
        ("", "alert-engine"),
        (True, "alert-engine"),
        (None, "alert-engine"),
    ],
)
def test_default_source(host: Any, source: str) -> None:
    assert payload({"host": host})["source"] == source


def test_source_without_host_field() -> None:
    assert payload({})["source"] == "alert-engine"


def test_component_group_class_omitted_when_unset_or_empty() -> None:
    body = payload({}, component="{{ event.c }}", group="", class_=None)
    assert not {"component", "group", "class"} & body.keys()


# --- dedup key --------------------------------------------------------------------------------------


def test_dedup_key_is_the_rule_name_without_group_by() -> None:
    assert page({"host": "db1"}).dedup_key == "disk-full"


def test_dedup_key_joins_group_by_values() -> None:
    notification = page({"host": "db1", "disk": {"mount": "/var"}}, group_by=["host", "disk.mount"])
    assert notification.dedup_key == "disk-full/db1//var"
    assert notification.body["dedup_key"] == "disk-full/db1//var"


def test_dedup_key_missing_value_is_empty() -> None:
    assert page({"disk": "sda"}, group_by=["host", "disk"]).dedup_key == "disk-full//sda"


def test_dedup_key_non_string_values_are_compact_json() -> None:
    event = {"code": 503, "ok": False, "none": None, "labels": {"b": 2, "a": "x"}, "ids": [1, "2"]}
    notification = page(event, group_by=["code", "ok", "none", "labels", "ids"])
    assert notification.dedup_key == 'disk-full/503/false/null/{"a":"x","b":2}/[1,"2"]'


def test_dedup_key_wildcard_values_are_joined_by_commas() -> None:
    event = {"pods": [{"name": "a"}, {"name": "b"}, {"name": 3}]}
    assert page(event, group_by=["pods.*.name"]).dedup_key == "disk-full/a,b,3"


def test_dedup_key_template_wins_over_group_by() -> None:
    notification = page({"host": "db1"}, dedup_key="disk/{{ event.host }}", group_by=["host"])
    assert notification.dedup_key == "disk/db1"


def test_long_dedup_key_is_shortened_stably() -> None:
    event = {"host": "h" * 400}
    key = "disk-full/" + "h" * 400
    first = page(event, group_by=["host"])
    second = page(event, group_by=["host"])
    assert first.dedup_key == second.dedup_key
    assert len(first.dedup_key) <= 255
    assert first.dedup_key == key[:190] + "~" + hashlib.sha256(key.encode()).hexdigest()
    assert first.body["dedup_key"] == first.dedup_key
    assert page({"host": "h" * 399}, group_by=["host"]).dedup_key != first.dedup_key


def test_dedup_key_of_255_characters_is_kept() -> None:
    host = "h" * (255 - len("disk-full/"))
    assert page({"host": host}, group_by=["host"]).dedup_key == "disk-full/" + host


# --- templates: context, missing fields, failures ---------------------------------------------------------


def test_templates_see_event_rule_and_now() -> None:
    body = payload(
        {"host": "db1"},
        description="Disk nearly full",
        summary="{{ rule.name }}|{{ rule.description }}|{{ now }}|{{ event.host }}",
    )
    assert body["summary"] == "disk-full|Disk nearly full|2026-11-28T09:46:20Z|db1"


def test_missing_fields_render_empty_in_a_page() -> None:
    assert payload({}, summary="[{{ event.a.b.c }}]")["summary"] == "[]"


def test_runtime_error_falls_back_and_records_template_error() -> None:
    body = payload({"message": "m"}, summary="{{ 1 / 0 }}", component="{{ event.x.y() }}")
    assert body["summary"] == "disk-full: m"
    assert "component" not in body
    assert body["custom_details"] == {
        "message": "m",
        "template_error": {
            "summary": "ZeroDivisionError: division by zero",
            "component": "UndefinedError: 'dict object' has no attribute 'x'",
        },
    }


def test_sandbox_escape_falls_back_instead_of_crashing() -> None:
    body = payload({"host": "db1"}, source="{{ event.__class__.__mro__ }}")
    assert body["source"] == "db1"
    assert body["custom_details"]["template_error"]["source"].startswith("SecurityError: access to attribute")


def test_failing_details_fall_back_to_the_whole_event() -> None:
    body = payload({"a": 1}, details={"x": "{{ 1 / 0 }}"})
    assert body["custom_details"] == {
        "a": 1,
        "template_error": {"details.x": "ZeroDivisionError: division by zero"},
    }


def test_template_error_wraps_details_that_are_not_a_mapping() -> None:
    body = payload({}, details=["{{ rule.name }}"], summary="{{ 1 / 0 }}")
    assert body["custom_details"] == {
        "details": ["disk-full"],
        "template_error": {"summary": "ZeroDivisionError: division by zero"},
    }


def test_template_error_in_v1_goes_into_details() -> None:
    body = page({}, V1, summary="{{ 1 / 0 }}", dedup_key="{{ event.n + 1 }}").body
    assert body["description"] == "disk-full: event matched"
    assert body["incident_key"] == "disk-full"
    assert set(body["details"]["template_error"]) == {"summary", "dedup_key"}


@pytest.mark.parametrize(
    ("details", "sent"),
    [
        ("{{ rule.name }}", {"details": "disk-full"}),
        (["{{ rule.name }}", 2], {"details": ["disk-full", 2]}),
        (42, {"details": 42}),
    ],
)
def test_details_that_are_not_a_mapping_are_sent_as_an_object(details: Any, sent: dict[str, Any]) -> None:
    assert payload({}, details=details)["custom_details"] == sent
    assert page({}, V1, details=details).body["details"] == sent


def test_rendering_does_not_change_the_event() -> None:
    event = {"a": {"b": 1}}
    payload(event, summary="{{ 1 / 0 }}")
    assert event == {"a": {"b": 1}}


# --- links and images -------------------------------------------------------------------------------------


def test_links_and_images_with_empty_href_or_src_are_dropped() -> None:
    body = page(
        {"url": "https://x"},
        links=(
            Link(t("{{ event.missing }}"), t("gone")),
            Link(t("{{ event.url }}"), t("{{ event.nothing }}")),
        ),
        images=(Image(t("{{ event.missing }}"), t("gone")),),
    ).body
    assert body["links"] == [{"href": "https://x"}]
    assert "images" not in body


def test_failing_link_is_dropped_and_recorded() -> None:
    body = page({}, links=(Link(t("{{ 1 / 0 }}")),)).body
    assert "links" not in body
    assert body["payload"]["custom_details"]["template_error"] == {
        "links.0.href": "ZeroDivisionError: division by zero"
    }


def test_images_without_an_https_src_are_dropped_and_recorded() -> None:
    images = (Image(t("http://graphs/{{ event.host }}.png")), Image(t("HTTPS://graphs/ok.png")),
              Image(t("graphs/relative.png")))
    v2 = page({"host": "db1"}, images=images).body
    assert v2["images"] == [{"src": "HTTPS://graphs/ok.png"}]
    note = "not an https:// URL, which PagerDuty does not show: image dropped"
    assert v2["payload"]["custom_details"]["template_error"] == {"images.0.src": note, "images.2.src": note}
    v1 = page({"host": "db1"}, V1, images=images).body
    assert v1["contexts"] == [{"type": "image", "src": "HTTPS://graphs/ok.png"}]
    assert set(v1["details"]["template_error"]) == {"images.0.src", "images.2.src"}


def test_v1_carries_client_url_when_a_url_is_known() -> None:
    event = {"source": "sentry", "issue_id": "7", "issue_url": "https://acme.sentry.io/issues/7/"}
    v1, v2 = page(event, V1, origin=sentry.ORIGIN).body, page(event, origin=sentry.ORIGIN).body
    assert v1["client_url"] == v2["client_url"] == "https://acme.sentry.io/issues/7/"
    assert "client_url" not in page({"host": "db1"}, V1).body


def test_v1_without_usable_links_has_no_contexts() -> None:
    assert "contexts" not in page({}, V1, links=(Link(t("{{ event.none }}")),)).body


# --- timestamp --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("2026-11-28T08:00:00Z", "2026-11-28T08:00:00Z"),
        ("2026-11-28T10:00:00+02:00", "2026-11-28T08:00:00Z"),
        ("2026-11-28T08:00:00.250Z", "2026-11-28T08:00:00.250Z"),
        ("2026-11-28T08:00:00", "2026-11-28T08:00:00Z"),
        (1764316800, "2025-11-28T08:00:00Z"),
        (1764316800.5, "2025-11-28T08:00:00.500Z"),
        (1764316800123, "2025-11-28T08:00:00.123Z"),
        ("garbage", "2026-11-28T09:46:20Z"),
        ("1764316800", "2026-11-28T09:46:20Z"),
        (True, "2026-11-28T09:46:20Z"),
        (float("nan"), "2026-11-28T09:46:20Z"),
        (1e300, "2026-11-28T09:46:20Z"),
        (None, "2026-11-28T09:46:20Z"),
        # beyond what UTC can hold: a datetime's limits once converted, an integer too big for a float
        ("9999-12-31T23:59:59-01:00", "2026-11-28T09:46:20Z"),
        ("0001-01-01T00:00:00+01:00", "2026-11-28T09:46:20Z"),
        ("9999-12-31T23:59:59+00:00", "9999-12-31T23:59:59Z"),
        pytest.param(10**400, "2026-11-28T09:46:20Z", id="int-too-big-for-a-float"),
        pytest.param(-(10**400), "2026-11-28T09:46:20Z", id="negative-int-too-big-for-a-float"),
    ],
)
def test_timestamp(value: Any, expected: str) -> None:
    assert payload({"timestamp": value})["timestamp"] == expected


def test_timestamp_defaults_to_now() -> None:
    assert payload({})["timestamp"] == "2026-11-28T09:46:20Z"


# --- limits -----------------------------------------------------------------------------------------------


def test_summary_is_truncated_to_1024_characters() -> None:
    summary = payload({"message": "x" * 5000})["summary"]
    assert len(summary) == 1024
    assert summary == ("disk-full: " + "x" * 5000)[:1023] + "…"


def test_summary_of_1024_characters_is_kept() -> None:
    message = "x" * (1024 - len("disk-full: "))
    assert payload({"message": message})["summary"] == "disk-full: " + message


def test_v1_description_is_truncated_to_1024_characters() -> None:
    description = page({"message": "é" * 2000}, V1).body["description"]
    assert len(description) == 1024
    assert description.endswith("…")


def test_big_body_has_its_details_trimmed_with_a_marker() -> None:
    event = {"small": "s", "huge": "x" * 600_000, "after": 1, "also_huge": "é" * 300_000}
    notification = page(event, summary="{{ 1 / 0 }}")
    assert sent_size(notification) <= BODY_LIMIT
    assert notification.json() == json.dumps(notification.body, ensure_ascii=False, separators=(",", ":"))
    details = notification.body["payload"]["custom_details"]
    assert list(details) == ["_truncated", "template_error", "small", "after"]
    assert details["_truncated"].startswith("custom_details trimmed: body was ")
    assert details["_truncated"].endswith(" bytes, limit 512000")
    assert details["template_error"] == {"summary": "ZeroDivisionError: division by zero"}


def test_the_limit_is_pagerdutys_512000_bytes_not_512_kib() -> None:
    assert BODY_LIMIT == 512_000
    notification = page({"keep": "k", "big": "x" * 513_000})  # about 513,200 bytes: under 512 KiB (524,288)
    assert sent_size(notification) <= 512_000
    details = notification.body["payload"]["custom_details"]
    assert list(details) == ["_truncated", "keep"]
    assert details["_truncated"].endswith(" bytes, limit 512000")


def test_trimming_keeps_every_key_that_fits() -> None:
    event = {f"k{i}": "x" * 100_000 for i in range(8)}
    details = page(event).body["payload"]["custom_details"]
    assert list(details) == ["_truncated", "k0", "k1", "k2", "k3", "k4"]


def test_a_key_that_fits_to_the_byte_is_kept_and_one_byte_more_is_not() -> None:
    huge = "z" * 1_000_000  # the marker's byte count has 7 digits in all three bodies
    probe = page({"a": "", "b": huge})
    room = BODY_LIMIT - sent_size(probe)
    exact = page({"a": "y" * room, "b": huge})
    assert sent_size(exact) == BODY_LIMIT  # counting the key that is put in at send time
    assert list(exact.body["payload"]["custom_details"]) == ["_truncated", "a"]
    over = page({"a": "y" * (room + 1), "b": huge})
    assert sent_size(over) < BODY_LIMIT
    assert list(over.body["payload"]["custom_details"]) == ["_truncated"]


def test_big_v1_body_with_details_that_are_not_a_mapping() -> None:
    notification = page({}, V1, details=["x" * 600_000])
    assert sent_size(notification) <= BODY_LIMIT
    assert notification.json() == json.dumps(notification.body, ensure_ascii=False, separators=(",", ":"))
    assert list(notification.body["details"]) == ["_truncated"]
    assert notification.body["details"]["_truncated"].startswith("details trimmed: body was ")


def test_body_under_the_limit_is_untouched() -> None:
    event = {"big": "x" * 500_000}
    assert page(event).body["payload"]["custom_details"] == event


# --- the notification ---------------------------------------------------------------------------------------


def test_paths_and_urls() -> None:
    v2, v1 = page({}), page({}, V1)
    assert v2.path == "/v2/enqueue"
    assert v1.path == "/generic/2010-04-15/create_event.json"
    assert v2.url("https://events.pagerduty.com/") == "https://events.pagerduty.com/v2/enqueue"
    assert v1.url("http://127.0.0.1:8080") == "http://127.0.0.1:8080/generic/2010-04-15/create_event.json"


def test_bodies_carry_no_key_and_with_key_puts_it_first_at_send_time() -> None:
    v2, v1 = page({"a": 1}), page({"a": 1}, V1)
    resolve = render_resolve("disk-full", V2, "disk-full/db1")
    for n in (v2, v1, resolve):
        assert V2_KEY not in n.json() and V1_KEY not in n.json()
        assert "routing_key" not in n.body and "service_key" not in n.body
    sent = with_key("v2", v2.json().encode(), "NEW-KEY-0001")
    assert sent.startswith(b'{"routing_key":"NEW-KEY-0001","event_action":"trigger",')
    assert json.loads(sent) == {"routing_key": "NEW-KEY-0001", **v2.body}
    assert json.loads(with_key("v1", v1.json().encode(), "K")) == {"service_key": "K", **v1.body}
    assert with_key("v2", b"{}", "K") == b'{"routing_key":"K"}'


def test_masked_body_shows_the_key_masked_where_it_is_sent() -> None:
    v2, v1 = page({"a": 1}), page({"a": 1}, V1)
    assert v2.masked_body(V2_KEY) == {"routing_key": "****" + V2_KEY[-4:], **v2.body}
    assert next(iter(v2.masked_body(V2_KEY))) == "routing_key"
    assert v1.masked_body(V1_KEY) == {"service_key": "****" + V1_KEY[-4:], **v1.body}
    assert V2_KEY not in json.dumps(v2.masked_body(V2_KEY))


def test_repr_does_not_print_the_key() -> None:
    notification = page({"a": 1})
    assert V2_KEY not in repr(notification)
    assert V2_KEY not in str(notification)
    assert "disk-full" in repr(notification)


def test_render_resolve_v2_and_v1() -> None:
    v2 = render_resolve("disk-full", V2, "disk-full/db1")
    assert v2.body == {"event_action": "resolve", "dedup_key": "disk-full/db1"}
    assert (v2.rule, v2.service, v2.api, v2.action, v2.dedup_key) == (
        "disk-full",
        "ops",
        "v2",
        "resolve",
        "disk-full/db1",
    )
    assert v2.path == "/v2/enqueue"
    v1 = render_resolve("disk-full", V1, "disk-full/db1")
    assert v1.body == {"event_type": "resolve", "incident_key": "disk-full/db1"}
    assert v1.action == "resolve"
    assert V1_KEY not in repr(v1)
    assert v1.masked_body(V1_KEY)["service_key"] == "****" + V1_KEY[-4:]


def test_render_resolve_matches_the_shortened_trigger_key() -> None:
    trigger = page({"host": "h" * 400}, group_by=["host"])
    raw_key = "disk-full/" + "h" * 400
    assert render_resolve("disk-full", V2, raw_key).dedup_key == trigger.dedup_key
    assert render_resolve("disk-full", V2, trigger.dedup_key).dedup_key == trigger.dedup_key
