"""Sentry webhooks -> one flat event each, and the defaults render.py gives Sentry events.

Pure: no I/O, no clock. The caller first checks the request with `verify` (from `sentry_auth`,
re-exported here), answering 401 for `SentryAuthError`; then `to_event` (or `legacy_to_event` for the
legacy WebHooks plugin body) gives its meaning, 400 for `SentryPayloadError`; then `check_body_time` on
its `happened`, 401 again; else 202. A `SentryEvent` whose `event` is None is logged, never matched.

Sentry's integration platform names the resource in `Sentry-Hook-Resource`: installation, event_alert,
issue, metric_alert, error, comment, ... Every flat event has `source: sentry` and
`sentry: {resource, action, ...}` for rules to match; fields without a value are left out. Resolving
actions (issue resolved / ignored / archived, metric_alert resolved) carry no event to match, only
`resolves`: the dedup key whose open alert they close.

Sentry's defaults below (dedup key, summary, link) apply to events that came in by the Sentry endpoint
(`origin=ORIGIN` through intake, decide and render), never because of a field an event carries.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any
from urllib.parse import quote

from engine.sources.sentry_auth import (
    SIGNATURE_HEADER,
    TIMESTAMP_HEADER,
    BodyTime,
    SentryAuthError,
    check_body_time,
    verify,
)

__all__ = [
    "AUTO_SEVERITY", "LINK_TEXT", "ORIGIN", "RESOURCE_HEADER", "SIGNATURE_HEADER", "TIMESTAMP_HEADER", "BodyTime",
    "SentryAuthError", "SentryEvent", "SentryPayloadError", "auto_severity", "check_body_time",
    "default_dedup_key", "default_summary", "issue_dedup_key", "issue_link", "issue_page", "legacy_to_event",
    "metric_dedup_key", "to_event", "verify",
]

ORIGIN = "sentry"  # the `origin` of events that came in by POST /v1/sources/sentry
SOURCE = "sentry"  # the `source` field of their flat events, for rules to match
LEGACY_RESOURCE = "legacy"  # the body of the legacy WebHooks plugin, which has no resource header
RESOURCE_HEADER = "Sentry-Hook-Resource"
LINK_TEXT = "View in Sentry"
AUTO_SEVERITY = "auto"  # `severity: auto` on a rule: the severity follows the event's `level`

_SEVERITY_OF_LEVEL = {"fatal": "critical", "error": "error", "warning": "warning", "info": "info", "debug": "info"}
_ISSUE_ACTIONS = frozenset({"created", "unresolved", "resolved", "ignored", "archived", "assigned"})
_ISSUE_RESOLVING = frozenset({"resolved", "ignored", "archived"})
_METRIC_ACTIVE = frozenset({"critical", "warning", "open"})  # open: active, at no threshold's level
_METRIC_LEVELS = {"critical": "fatal", "warning": "warning"}  # action -> level
_EVENT_TIMES = ("received", "datetime", "timestamp")  # Sentry's clock on receipt first, then the SDK's
_ISSUE_WEB_URL = re.compile(r"^(https?://.*?/issues/[^/?#]+/?)")
_API_PROJECT = re.compile(r"/api/0/projects/[^/]+/([^/]+)/")


class SentryPayloadError(ValueError):
    """A payload of a known resource that lacks what it must have: answer 400 with the message."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


@dataclass(frozen=True)
class SentryEvent:
    """What one webhook means: an event to match (or None), and the dedup key it resolves (or None)."""

    resource: str
    action: str
    subject: str = ""  # what it is about, for logs: "issue 4242", "metric alert 4"
    event: dict[str, Any] | None = field(default=None, repr=False, hash=False)
    resolves: str | None = None
    happened: BodyTime | None = None  # when its news happened by the body's own time, where it says

    def describe(self) -> str:
        text = f"sentry {self.resource} {self.action}".rstrip()
        if self.subject:
            text += f" ({self.subject})"
        if self.resolves:
            return f"{text}: resolves {self.resolves}"
        return text if self.event is not None else f"{text}: accepted, not matched"


# --- payloads -> events ---------------------------------------------------------------------------


def to_event(resource: str, payload: Any, *, issues_url: str | None = None) -> SentryEvent:
    """The meaning of one integration-platform webhook; SentryPayloadError when a known one is malformed.

    `issues_url` (`{url}/organizations/{org}/issues/`, from the config) gives issues whose payload has no
    page of its own a link: `{issues_url}{id}/`.
    """
    resource = resource.strip().lower()
    if not resource:
        raise SentryPayloadError(f"missing {RESOURCE_HEADER} header")
    body = _object(payload, "the body")
    mapping = _MAPPINGS.get(resource)
    action = body.get("action")
    if mapping is None:
        return SentryEvent(resource, action if isinstance(action, str) else "", _installation(body))
    if not isinstance(action, str) or not action:
        raise SentryPayloadError(f"'action' must be a non-empty string, not {_kind(action)}")
    return mapping(action, body, issues_url)


def issue_page(issues_url: str | None, issue_id: str) -> str | None:
    """`{issues_url}{issue_id}/`: an issue's page in Sentry's web UI; None without `issues_url`."""
    return f"{issues_url}{quote(issue_id, safe='')}/" if issues_url else None


def _event_alert(action: str, body: dict[str, Any], issues_url: str | None) -> SentryEvent:
    data = _member(body, "data", "data")
    original = _member(data, "event", "data.event")
    issue_id = _ident(original, "issue_id", "data.event.issue_id")
    happened = _first_time(original, _EVENT_TIMES, "data.event")
    if action != "triggered":
        return SentryEvent("event_alert", action, f"issue {issue_id}", happened=happened)
    tags = _tags(original.get("tags"), "data.event.tags")
    issue_alert = data.get("issue_alert")
    rule_title = issue_alert.get("title") if isinstance(issue_alert, dict) else None
    web_url = _text(original.get("web_url"))
    event = _flat("event_alert", action, {"event": original}, {
        **_event_fields(original, tags),
        "project": _api_project(original.get("url")),
        "project_id": str(original["project"]) if _is_id(original.get("project")) else None,
        "url": web_url,
        "issue_id": issue_id,
        "issue_url": _issue_web_url(web_url) or issue_page(issues_url, issue_id),
        "triggered_rule": _text(data.get("triggered_rule")) or _text(rule_title),
        "tags": tags,
    })
    return SentryEvent("event_alert", action, f"issue {issue_id}", event, happened=happened)


def _issue(action: str, body: dict[str, Any], issues_url: str | None) -> SentryEvent:
    """Issue webhooks carry no time of their news: `lastSeen` is the issue's last event, which can be
    days before a resolve or an assignment. Sentry's serialised issue has no page of its own either
    (`permalink` is null without a user), hence `issues_url`."""
    data = _member(body, "data", "data")
    issue = _member(data, "issue", "data.issue")
    issue_id = _ident(issue, "id", "data.issue.id")
    subject = f"issue {issue_id}"
    if action in _ISSUE_RESOLVING:
        return SentryEvent("issue", action, subject, resolves=issue_dedup_key(issue_id))
    if action not in _ISSUE_ACTIONS:
        return SentryEvent("issue", action, subject)
    project = issue.get("project")
    web_url = _text(issue.get("web_url")) or _text(issue.get("permalink")) or issue_page(issues_url, issue_id)
    event = _flat("issue", action, {"data": data}, {
        "issue_id": issue_id,
        "short_id": _text(issue.get("shortId")),
        "title": _text(issue.get("title")),
        "culprit": _text(issue.get("culprit")),
        "level": _text(issue.get("level")),
        "project": _text(project.get("slug")) if isinstance(project, dict) else _text(project),
        "status": _text(issue.get("status")),
        "substatus": _text(issue.get("substatus")),
        "platform": _text(issue.get("platform")),
        "url": web_url,
        "issue_url": web_url,
        "assignee": _assignee(data.get("assignee")),
        "timestamp": _text(issue.get("lastSeen")) or _text(issue.get("firstSeen")),
    })
    return SentryEvent("issue", action, subject, event)


def _metric_alert(action: str, body: dict[str, Any], issues_url: str | None) -> SentryEvent:
    """Only a resolve carries the time of its news (`date_closed`): the incident's other dates are those
    of its start, which a later critical -> warning -> critical change carries unchanged."""
    data = _member(body, "data", "data")
    incident = _member(data, "metric_alert", "data.metric_alert")
    incident_id = _ident(incident, "id", "data.metric_alert.id")
    subject = f"metric alert {incident_id}"
    if action == "resolved":
        return SentryEvent("metric_alert", action, subject, resolves=metric_dedup_key(incident_id),
                           happened=_first_time(incident, ("date_closed",), "data.metric_alert"))
    if action not in _METRIC_ACTIVE:
        return SentryEvent("metric_alert", action, subject)
    rule: dict[str, Any] = incident["alert_rule"] if isinstance(incident.get("alert_rule"), dict) else {}
    projects = [p for p in (incident.get("projects") or rule.get("projects") or []) if isinstance(p, str)]
    web_url = _text(data.get("web_url"))
    rule_id = rule.get("id")
    event = _flat("metric_alert", action, {"data": data}, {
        "title": _text(data.get("description_title")) or _text(incident.get("title")) or _text(rule.get("name")),
        "description": _text(data.get("description_text")),
        "status": action,
        "level": _METRIC_LEVELS.get(action),
        "alert_rule": _text(rule.get("name")),
        "alert_rule_id": str(rule_id) if _is_id(rule_id) else None,
        "projects": projects or None,
        "project": projects[0] if projects else None,
        "environment": _text(rule.get("environment")),
        "incident_id": incident_id,
        "url": web_url,
        "incident_url": web_url,
        "timestamp": _text(incident.get("date_detected")) or _text(incident.get("date_started")),
    })
    return SentryEvent("metric_alert", action, subject, event)


_MAPPINGS: dict[str, Callable[[str, dict[str, Any], str | None], SentryEvent]] = {
    "event_alert": _event_alert,
    "issue": _issue,
    "metric_alert": _metric_alert,
}


def legacy_to_event(payload: Any) -> SentryEvent:
    """The legacy WebHooks plugin body: `{id, project, culprit, level, url, message, event: {...}}`.

    No `happened`: the plugin signs nothing, so whoever can send it can write any time into it too."""
    body = _object(payload, "the body")
    issue_id = _ident(body, "id", "id")
    project = _text(body.get("project"))
    if project is None:
        raise SentryPayloadError(f"'project' must be the project's slug, not {_kind(body.get('project'))}")
    original = _member(body, "event", "event")
    tags = _tags(original.get("tags"), "event.tags")
    url = _text(body.get("url"))
    fields = _event_fields(original, tags)
    event = _flat(LEGACY_RESOURCE, "triggered", {"event": original}, {
        **fields,
        "title": fields["title"] or _text(body.get("message")),
        "message": _text(body.get("message")) or fields["message"],
        "level": _text(body.get("level")) or fields["level"],
        "culprit": _text(body.get("culprit")) or fields["culprit"],
        "project": project,
        "url": url,
        "issue_id": issue_id,
        "issue_url": url,
        "triggered_rule": _rule_names(body.get("triggering_rules")),
        "tags": tags,
    })
    return SentryEvent(LEGACY_RESOURCE, "triggered", f"issue {issue_id}", event)


def _event_fields(original: Mapping[str, Any], tags: Mapping[str, Any]) -> dict[str, Any]:
    """The fields a Sentry error event (in an event_alert or a legacy body) gives directly."""
    timestamp = original.get("datetime") or original.get("timestamp")
    return {
        "title": _text(original.get("title")),
        "message": _text(original.get("message")),
        "level": _text(original.get("level")) or _text(tags.get("level")),
        "culprit": _text(original.get("culprit")),
        "environment": _text(original.get("environment")) or _text(tags.get("environment")),
        "release": _text(original.get("release")) or _text(tags.get("release")) or _text(tags.get("sentry:release")),
        "platform": _text(original.get("platform")),
        "event_id": _text(original.get("event_id")),
        "timestamp": timestamp if isinstance(timestamp, str | int | float) and not isinstance(timestamp, bool)
        else None,
    }


def _flat(resource: str, action: str, original: dict[str, Any], fields: Mapping[str, Any]) -> dict[str, Any]:
    event: dict[str, Any] = {"source": SOURCE, "sentry": {"resource": resource, "action": action, **original}}
    event.update((k, v) for k, v in fields.items() if v is not None)
    return event


# --- defaults that render.py applies to Sentry events ---------------------------------------------


def issue_dedup_key(issue_id: str) -> str:
    return f"sentry-issue-{issue_id}"


def metric_dedup_key(incident_id: str) -> str:
    return f"sentry-metric-{incident_id}"


def default_dedup_key(event: Mapping[str, Any]) -> str | None:
    """`sentry-issue-<issue_id>`, or `sentry-metric-<incident_id>` for metric alerts; None without one."""
    sentry = event.get("sentry")
    if isinstance(sentry, Mapping) and sentry.get("resource") == "metric_alert":
        incident_id = event.get("incident_id")
        return metric_dedup_key(str(incident_id)) if _is_id(incident_id) else None
    issue_id = event.get("issue_id")
    return issue_dedup_key(str(issue_id)) if _is_id(issue_id) else None


def default_summary(event: Mapping[str, Any]) -> str | None:
    """The title of a Sentry event; None without one."""
    return _text(event.get("title"))


def issue_link(event: Mapping[str, Any]) -> str | None:
    """Where a person looks at it in Sentry: the issue's URL (metric alerts: the incident's), if http(s)."""
    url = _text(event.get("issue_url")) or _text(event.get("incident_url"))
    return url if url and url.startswith(("https://", "http://")) else None


def auto_severity(level: Any) -> str | None:
    """fatal -> critical, error -> error, warning -> warning, info and debug -> info; else None."""
    return _SEVERITY_OF_LEVEL.get(level.strip().lower()) if isinstance(level, str) else None


# --- small readers ---------------------------------------------------------------------------------


def _kind(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, str):
        return "an empty string" if not value else "a string"
    return "a list" if isinstance(value, list) else "an object" if isinstance(value, dict) else type(value).__name__


def _object(value: Any, what: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise SentryPayloadError(f"{what} must be a JSON object, not {_kind(value)}")
    return value


def _member(obj: Mapping[str, Any], key: str, where: str) -> dict[str, Any]:
    if key not in obj:
        raise SentryPayloadError(f"missing '{where}'")
    return _object(obj[key], f"'{where}'")


def _is_id(value: Any) -> bool:
    return (isinstance(value, str) and value != "") or (isinstance(value, int) and not isinstance(value, bool))


def _ident(obj: Mapping[str, Any], key: str, where: str) -> str:
    if key not in obj:
        raise SentryPayloadError(f"missing '{where}'")
    value = obj[key]
    if not _is_id(value):
        raise SentryPayloadError(f"'{where}' must be a string or an integer id, not {_kind(value)}")
    return str(value)


def _text(value: Any) -> str | None:
    return value if isinstance(value, str) and value else None


def _first_time(obj: Mapping[str, Any], keys: tuple[str, ...], where: str) -> BodyTime | None:
    """The first of `keys` in `obj` holding a time (ISO 8601, or seconds since the epoch)."""
    for key in keys:
        moment = _epoch_seconds(obj.get(key))
        if moment is not None:
            return BodyTime(f"{where}.{key}", moment)
    return None


def _epoch_seconds(value: Any) -> float | None:
    if isinstance(value, int | float) and not isinstance(value, bool):
        try:
            seconds = float(value)
        except OverflowError:  # an integer beyond any float
            return None
        return seconds if math.isfinite(seconds) else None
    if not isinstance(value, str):
        return None
    try:
        moment = datetime.fromisoformat(value.strip())
    except ValueError:
        return None
    return (moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)).timestamp()


def _tags(value: Any, where: str) -> dict[str, Any]:
    """Sentry's `[[key, value], ...]` (or `[{key, value}, ...]`, or already a mapping) as a mapping."""
    if value is None:
        return {}
    if isinstance(value, dict):
        return dict(value)
    if not isinstance(value, list):
        raise SentryPayloadError(f"'{where}' must be a list of [key, value] pairs, not {_kind(value)}")
    tags: dict[str, Any] = {}
    for i, item in enumerate(value):
        if isinstance(item, list) and len(item) == 2 and isinstance(item[0], str):
            tags[item[0]] = item[1]
        elif isinstance(item, dict) and isinstance(item.get("key"), str) and "value" in item:
            tags[item["key"]] = item["value"]
        else:
            raise SentryPayloadError(f"'{where}.{i}' must be a [key, value] pair, not {_kind(item)}")
    return tags


def _api_project(url: Any) -> str | None:
    """The project's slug from an event's API URL (`.../api/0/projects/ORG/PROJECT/events/ID/`)."""
    match = _API_PROJECT.search(url) if isinstance(url, str) else None
    return match.group(1) if match else None


def _issue_web_url(event_web_url: str | None) -> str | None:
    """The issue's page, from the page of one of its events (`.../issues/ID/events/EVENT/`)."""
    match = _ISSUE_WEB_URL.match(event_web_url) if event_web_url else None
    return match.group(1) if match else None


def _assignee(value: Any) -> str | None:
    """The name (else the e-mail) of whom an issue was assigned to."""
    return (_text(value.get("name")) or _text(value.get("email"))) if isinstance(value, dict) else None


def _rule_names(value: Any) -> str | None:
    """The legacy body's `triggering_rules` (a list of rule labels), joined by ", "."""
    names = [r for r in value if isinstance(r, str) and r] if isinstance(value, list) else []
    return ", ".join(names) or None


def _installation(body: Mapping[str, Any]) -> str:
    installation = body.get("installation")
    uuid = installation.get("uuid") if isinstance(installation, dict) else None
    return f"installation {uuid}" if isinstance(uuid, str) and uuid else ""
