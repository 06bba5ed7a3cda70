"""Match + service -> the PagerDuty body to POST (Events API v2 or legacy v1), limits enforced.

Pure: no clock (`now` is passed in), no I/O. What a field falls back to:
- severity: the rule's template (stripped, lower-cased, one of critical|error|warning|info), else the
  service's default severity, else `error`. A value outside that set is a template error; an empty one
  means "unset". `auto` maps the event's `level` (fatal -> critical, error, warning, info and debug ->
  info); another level falls back like an unset severity.
- summary / v1 description: the rule's template, else `<rule name>: <event.message | event.title |
  "event matched">`; truncated to 1,024 characters ending with `…`.
- source: the rule's template, else `event.host` (a non-empty string or a number), else `alert-engine`.
  PagerDuty refuses a blank summary or source (400, final): a template that renders blank (empty or
  whitespace) takes the default and is recorded as a template error.
- Events that came in by the Sentry endpoint (`origin="sentry"`, engine/sources/sentry.py; never decided
  by a field of the event): the summary defaults to the event's title and the dedup key to
  `sentry-issue-<issue_id>` (metric alerts: `sentry-metric-<incident_id>`), before the defaults below;
  the issue's (or incident's) URL becomes v2 `client_url` and a link "View in Sentry" after the rule's
  links (v1: a link context, and `client_url` too).
- dedup key: the rule's template, else the rule name and the `group_by` values joined by `/` (a
  non-string value as compact JSON, several values of a wildcard path joined by `,`, a missing one
  empty). A key over 255 characters becomes its first 190 characters + `~` + the sha256 of the whole.
- timestamp (v2): the event's `timestamp` (ISO 8601, or seconds since the epoch, milliseconds when
  > 1e11) in UTC with `Z`, else (also when UTC cannot hold it) `now`.
- custom details (v2) / details (v1): the rule's `details` tree, else the whole event; always a mapping
  (PagerDuty takes only an object): any other value is wrapped as `{"details": value}`.
- component, group, class: omitted when unset or rendered empty; links without href and images
  without src are dropped; empty link/image lists are omitted. An image whose src is not an `https://`
  URL is dropped too (PagerDuty shows only HTTPS images), recorded as a template error.

A template that fails at run time never drops the page: its field takes the default and the failure
is recorded in the details under `template_error` (`{field: message}`).

The service key is not in the body: the body is stored without it, and delivery puts the key the
current rule set gives the service in front of it at send time (`with_key`: v2 `routing_key`, v1
`service_key`), so a rotated key reaches every queued page. Displays show it masked (`masked_body`).

Body limit: a body whose JSON as it is sent (`encode`: compact, UTF-8, measured once and stored as
measured, plus the key field of the service's key at render time) exceeds PagerDuty's 512 KB, 512,000
bytes (the figure Alertmanager and Grafana use too), gets its details replaced by
`{"_truncated": "custom_details trimmed: body was N bytes, limit 512000", ...}` followed by the top-level
detail keys that still fit, `template_error` first, then in their order, skipping any key that does not
fit. Fields other than the details are not trimmed.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import hashlib
import json
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from engine.rules.conditions import field_values
from engine.rules.ruleset import SEVERITIES, Image, Link, Match, Rule, Service, mask_key
from engine.sources import sentry
from engine.templates import Template, TemplateRenderError, context, iso_utc

CLIENT = "alert-engine"
DEFAULT_SOURCE = "alert-engine"
DEFAULT_SEVERITY = "error"
SUMMARY_LIMIT = 1024
DEDUP_KEY_LIMIT = 255
DEDUP_KEY_PREFIX = 190  # 190 + "~" + 64 hex digits = 255
BODY_LIMIT = 512_000  # bytes: PagerDuty's "512 KB"
EPOCH_MILLISECONDS_ABOVE = 1e11

API_PATHS = {"v2": "/v2/enqueue", "v1": "/generic/2010-04-15/create_event.json"}
_KEY_FIELDS = {"v2": "routing_key", "v1": "service_key"}


@dataclass(frozen=True)
class Notification:
    """One body to POST to one PagerDuty service. `body` has no service key: see `with_key`."""

    rule: str
    service: str
    api: str  # "v2" or "v1"
    action: str  # "trigger" or "resolve"
    dedup_key: str
    body: dict[str, Any] = field(repr=False, hash=False)
    summary: str = ""  # what the page says (v2 payload.summary, v1 description); empty for resolves
    severity: str | None = None  # v2 only: the v1 API has no severity
    encoded: str = field(default="", repr=False, compare=False)  # `body` as `encode` wrote it, when known

    def json(self) -> str:
        """The body as stored: the serialisation render measured against the size limit, made once."""
        return self.encoded or encode(self.body)

    @property
    def path(self) -> str:
        return API_PATHS[self.api]

    def url(self, base: str) -> str:
        return base.rstrip("/") + self.path

    def masked_body(self, key: str) -> dict[str, Any]:
        """The body as sent to a service with `key`, the key masked: the one place displays (dry-run
        lines, `eval`) add the key."""
        return {_KEY_FIELDS[self.api]: mask_key(key), **self.body}


def with_key(api: str, payload: bytes, key: str) -> bytes:
    """A stored body (`Notification.json()` in UTF-8) as PagerDuty takes it: the key field (v2
    `routing_key`, v1 `service_key`) put first. Delivery calls it at send time with the current key."""
    head = encode({_KEY_FIELDS[api]: key}).encode("utf-8")  # b'{"routing_key":"..."}'
    rest = payload[1:]
    return head[:-1] + (b"}" if rest == b"}" else b"," + rest)


def _key_room(service: Service) -> int:
    """Bytes `with_key` adds to a body for this service's key."""
    return len(encode({_KEY_FIELDS[service.api]: service.key}).encode("utf-8")) - 1


def render(match: Match, service: Service, now: dt.datetime, origin: str | None = None) -> Notification:
    """The trigger notification of `match` for `service` (v1 or v2, as the service says); `origin`: the
    endpoint the event came in by (`sentry.ORIGIN`: Sentry's defaults), None for POST /v1/events."""
    rendering = _Rendering(match.rule, match.event, now, origin)
    summary = _truncate(rendering.summary(), SUMMARY_LIMIT)
    dedup_key = limit_dedup_key(rendering.dedup_key())
    links, images = rendering.links(), rendering.images()
    sentry_url = sentry.issue_link(match.event) if rendering.from_sentry else None
    if sentry_url and all(link["href"] != sentry_url for link in links):
        links.append({"href": sentry_url, "text": sentry.LINK_TEXT})
    if service.api == "v2":
        payload = rendering.v2_payload(summary, service)
        payload["custom_details"] = rendering.details()  # last: it reports every failure before it
        body: dict[str, Any] = {
            "event_action": "trigger",
            "dedup_key": dedup_key,
            "payload": payload,
        }
        if links:
            body["links"] = links
        if images:
            body["images"] = images
        body["client"] = CLIENT
        if sentry_url:
            body["client_url"] = sentry_url
        encoded = _fit_body(body, payload, "custom_details", _key_room(service))
    elif service.api == "v1":
        body = {
            "event_type": "trigger",
            "incident_key": dedup_key,
            "description": summary,
            "details": rendering.details(),
            "client": CLIENT,
        }
        if sentry_url:
            body["client_url"] = sentry_url  # the URL v2 sends as client_url, as Alertmanager's v1 bodies do
        contexts = [{"type": "link", **x} for x in links] + [{"type": "image", **x} for x in images]
        if contexts:
            body["contexts"] = contexts
        encoded = _fit_body(body, body, "details", _key_room(service))
    else:
        raise ValueError(f"service {service.name!r}: unknown api {service.api!r}")
    severity = body["payload"]["severity"] if service.api == "v2" else None
    return Notification(match.rule.name, service.name, service.api, "trigger", dedup_key, body, summary, severity,
                        encoded)


def render_resolve(rule_name: str, service: Service, dedup_key: str) -> Notification:
    """The resolve notification for an incident opened under `dedup_key`."""
    dedup_key = limit_dedup_key(dedup_key)
    if service.api == "v2":
        body = {"event_action": "resolve", "dedup_key": dedup_key}
    elif service.api == "v1":
        body = {"event_type": "resolve", "incident_key": dedup_key}
    else:
        raise ValueError(f"service {service.name!r}: unknown api {service.api!r}")
    return Notification(rule_name, service.name, service.api, "resolve", dedup_key, body)


class _Rendering:
    """One rule's fields rendered for one event, collecting template failures as `{field: message}`."""

    def __init__(self, rule: Rule, event: Mapping[str, Any], now: dt.datetime, origin: str | None) -> None:
        self.rule = rule
        self.event = event
        self.now = now
        self.from_sentry = origin == sentry.ORIGIN
        self.ctx = context(rule, event, now)
        self.errors: dict[str, str] = {}

    def text(self, template: Template | None, name: str) -> str:
        """The rendered text, or "" when unset or failed (the failure is recorded)."""
        if template is None:
            return ""
        try:
            return template.render(self.ctx, field=name)
        except TemplateRenderError as exc:
            self.errors[exc.field] = exc.message
            return ""

    def required_text(self, template: Template | None, name: str) -> str:
        """`text` for a field PagerDuty refuses blank: a template rendering blank gives "" and is recorded."""
        text = self.text(template, name)
        if template is not None and not text.strip() and name not in self.errors:
            self.errors[name] = "rendered blank, which PagerDuty refuses: the default was sent"
            return ""
        return text

    def summary(self) -> str:
        return (self.required_text(self.rule.summary, "summary")
                or (sentry.default_summary(self.event) if self.from_sentry else None)
                or default_summary(self.rule, self.event))

    def dedup_key(self) -> str:
        return (self.text(self.rule.dedup_key, "dedup_key")
                or (sentry.default_dedup_key(self.event) if self.from_sentry else None)
                or default_dedup_key(self.rule, self.event))

    def severity(self, service: Service) -> str:
        fallback = service.severity or DEFAULT_SEVERITY
        rendered = self.text(self.rule.severity, "severity").strip().lower()
        if not rendered:
            return fallback
        if rendered == sentry.AUTO_SEVERITY:
            return sentry.auto_severity(self.event.get("level")) or fallback
        if rendered not in SEVERITIES:
            self.errors["severity"] = f"rendered {rendered!r}, not one of {', '.join(SEVERITIES)}"
            return fallback
        return rendered

    def v2_payload(self, summary: str, service: Service) -> dict[str, Any]:
        """The v2 payload without its custom details."""
        rule = self.rule
        payload: dict[str, Any] = {
            "summary": summary,
            "source": self.required_text(rule.source, "source") or default_source(self.event),
            "severity": self.severity(service),
            "timestamp": event_timestamp(self.event, self.now),
        }
        for name, template in (("component", rule.component), ("group", rule.group), ("class", rule.class_)):
            if text := self.text(template, name):
                payload[name] = text
        return payload

    def links(self) -> list[dict[str, str]]:
        return [link for i, x in enumerate(self.rule.links) if (link := self._link(x, i))]

    def images(self) -> list[dict[str, str]]:
        return [image for i, x in enumerate(self.rule.images) if (image := self._image(x, i))]

    def _link(self, link: Link, i: int) -> dict[str, str] | None:
        href = self.text(link.href, f"links.{i}.href")
        if not href:
            return None
        text = self.text(link.text, f"links.{i}.text")
        return {"href": href, "text": text} if text else {"href": href}

    def _image(self, image: Image, i: int) -> dict[str, str] | None:
        src = self.text(image.src, f"images.{i}.src")
        if not src:
            return None
        if src[:8].lower() != "https://":
            self.errors[f"images.{i}.src"] = "not an https:// URL, which PagerDuty does not show: image dropped"
            return None
        rendered = {"src": src}
        if href := self.text(image.href, f"images.{i}.href"):
            rendered["href"] = href
        if alt := self.text(image.alt, f"images.{i}.alt"):
            rendered["alt"] = alt
        return rendered

    def details(self) -> dict[str, Any]:
        """The rendered details (default: the whole event) as a mapping, with `template_error` when anything
        failed. Any other value is wrapped as `{"details": value}`: PagerDuty takes only an object.

        Call it last: it reports the failures of every field rendered before it.
        """
        details: Any = dict(self.event)
        if self.rule.details is not None:
            try:
                details = self.rule.details.render(self.ctx, field="details")
            except TemplateRenderError as exc:
                self.errors[exc.field] = exc.message
        if not isinstance(details, dict):
            details = {"details": details}
        if not self.errors:
            return details
        return {**details, "template_error": dict(self.errors)}


def default_summary(rule: Rule, event: Mapping[str, Any]) -> str:
    for name in ("message", "title"):
        value = event.get(name)
        if isinstance(value, str) and value.strip():
            return f"{rule.name}: {value}"
    return f"{rule.name}: event matched"


def default_source(event: Mapping[str, Any]) -> str:
    host = event.get("host")
    if isinstance(host, str) and host.strip():
        return host
    if isinstance(host, int | float) and not isinstance(host, bool):
        return str(host)
    return DEFAULT_SOURCE


def default_dedup_key(rule: Rule, event: Mapping[str, Any]) -> str:
    parts = [rule.name]
    for path in rule.group_by:
        parts.append(",".join(_key_text(value) for value in field_values(event, path)))
    return "/".join(parts)


def _key_text(value: Any) -> str:
    if isinstance(value, str):
        return value
    if type(value) is int:
        return str(value)  # what json.dumps gives, without its machinery
    return json.dumps(value, separators=(",", ":"), sort_keys=True)


def limit_dedup_key(key: str) -> str:
    """The key itself when PagerDuty accepts its length, else a stable shortened form (≤ 255)."""
    if len(key) <= DEDUP_KEY_LIMIT:
        return key
    return key[:DEDUP_KEY_PREFIX] + "~" + hashlib.sha256(key.encode("utf-8")).hexdigest()


def event_timestamp(event: Mapping[str, Any], now: dt.datetime) -> str:
    """The event's `timestamp` as ISO 8601 UTC (`...Z`) when it parses to a time UTC can hold, else `now`."""
    moment = parse_timestamp(event.get("timestamp")) or now
    return iso_utc(moment, timespec="milliseconds" if moment.microsecond else "seconds")


def parse_timestamp(value: Any) -> dt.datetime | None:
    """The moment in UTC, or None: unparsable, or beyond what a datetime holds once in UTC
    (`9999-12-31T23:59:59-01:00`, an integer too big for a float)."""
    try:
        if isinstance(value, str):
            moment = dt.datetime.fromisoformat(value.strip())
            return moment.astimezone(dt.UTC) if moment.tzinfo is not None else moment.replace(tzinfo=dt.UTC)
        if isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value):
            seconds = value / 1000 if value > EPOCH_MILLISECONDS_ABOVE else value
            return dt.datetime.fromtimestamp(seconds, tz=dt.UTC)
    except (OverflowError, OSError, ValueError):
        return None
    return None


def _truncate(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def encode(body: Mapping[str, Any]) -> str:
    """The one serialisation of a body: compact JSON, UTF-8 as is. What is measured is what is sent."""
    return json.dumps(body, separators=(",", ":"), ensure_ascii=False)


def body_size(body: Mapping[str, Any]) -> int:
    """Bytes of the body as it is sent (`encode`, in UTF-8)."""
    return len(encode(body).encode("utf-8"))


def _fit_body(body: dict[str, Any], holder: dict[str, Any], key: str, key_room: int) -> str:
    """Trim `holder[key]` (the details, a mapping) in place until the body, with `key_room` bytes of key
    field, fits BODY_LIMIT, 512,000 bytes (module docstring); the body's serialisation."""
    text = encode(body)
    size = (len(text) if text.isascii() else len(text.encode("utf-8"))) + key_room
    if size <= BODY_LIMIT:
        return text
    details: dict[str, Any] = holder[key]
    trimmed: dict[str, Any] = {"_truncated": f"{key} trimmed: body was {size} bytes, limit {BODY_LIMIT}"}
    holder[key] = trimmed
    room = BODY_LIMIT - body_size(body) - key_room
    names = sorted(details, key=lambda name: name != "template_error")  # stable: template_error first
    for name in names:
        cost = len(encode({name: details[name]}).encode("utf-8")) - 2 + len(",")  # minus "{}"
        if cost <= room:
            trimmed[name] = details[name]
            room -= cost
    return encode(body)


def alert_key(rule: Rule, event: Mapping[str, Any], now: dt.datetime, origin: str | None = None) -> str:
    """The dedup key a trigger of `rule` for `event` (come in by `origin`) carries: the identity of the alert."""
    return limit_dedup_key(_Rendering(rule, event, now, origin).dedup_key())


def with_details(api: str, body: dict[str, Any], extra: Mapping[str, Any]) -> dict[str, Any]:
    """A copy of a trigger body whose details (v2 `payload.custom_details`, v1 `details`) also hold
    `extra`; details that are not a mapping are wrapped as `{"details": value, **extra}`."""
    body = dict(body)
    if api == "v2":
        payload = dict(body.get("payload") or {})
        payload["custom_details"] = _merged(payload.get("custom_details"), extra)
        body["payload"] = payload
    else:
        body["details"] = _merged(body.get("details"), extra)
    return body


def add_details(notification: Notification, extra: Mapping[str, Any]) -> Notification:
    """The notification with `extra` added to its details (see `with_details`)."""
    return dataclasses.replace(notification, body=with_details(notification.api, notification.body, extra),
                               encoded="")


def _merged(details: Any, extra: Mapping[str, Any]) -> dict[str, Any]:
    if details is None:
        return dict(extra)
    if isinstance(details, dict):
        return {**details, **extra}
    return {"details": details, **extra}
