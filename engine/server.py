"""The HTTP API (aiohttp): routes only. Each handler parses the request, calls the daemon, answers JSON.

Every error is JSON, `{"error": "..."}`; nothing a client sends produces a 500. Who may call what is the
table ACCESS: with a tokens file, a route needs `Authorization: Bearer <token>` of a token with its scope
(401 without a known token, 403 without the scope); without one, the API is open.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any, TypeVar

from aiohttp import web

from engine.api import Engine
from engine.config import ADMIN, EVENTS, READ, ApiToken
from engine.decider import Queued, accepted_view, queued_view
from engine.deliver import RETRYING
from engine.intake import RequestTooLarge
from engine.metrics import CONTENT_TYPE as METRICS_CONTENT_TYPE
from engine.request_body import RequestError, read_body, too_large
from engine.sendtest import DEFAULT_WAIT, MAX_WAIT
from engine.silences import SilenceError
from engine.sources import sentry, sentry_auth
from engine.sources.events import EventError, parse_events
from engine.sources.json_body import JsonError, loads
from engine.state import Silence
from engine.store import StorageError
from engine.units import parse_duration, parse_moment

log = logging.getLogger("alert_engine.server")

JSON_TYPES = ("application/json",)
NDJSON_TYPES = ("application/x-ndjson", "application/ndjson", "application/jsonl")
DAEMON: web.AppKey[Engine] = web.AppKey("daemon")
MAX_BODY: web.AppKey[int] = web.AppKey("max_body")
T = TypeVar("T")
OFF_LOOP_BYTES = 256 * 1024  # bodies from this size are parsed on a worker thread
STORAGE_RETRY_AFTER = 5  # seconds a client is asked to wait after a storage failure
DECISION_WAIT = 10.0  # seconds `?wait=decided` waits for the decider
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

OPEN = None  # no token needed
METRICS = "metrics"  # OPEN, or READ with ingest.metrics_need_read
# The scope a token needs for each route, when there is a tokens file (`admin` includes `read`). A route
# missing here needs `admin`. HEAD is GET's.
ACCESS: dict[tuple[str, str], str | None] = {
    ("POST", "/v1/events"): EVENTS,
    ("POST", "/v1/sources/sentry"): OPEN,  # Sentry sends no bearer token: its HMAC signature is checked instead
    ("GET", "/healthz"): OPEN,
    ("GET", "/readyz"): OPEN,
    ("GET", "/metrics"): METRICS,
    ("GET", "/v1/rules"): READ,
    ("GET", "/v1/status"): READ,
    ("GET", "/v1/notifications"): READ,
    ("GET", "/v1/dead-letters"): READ,
    ("GET", "/v1/silences"): READ,
    ("POST", "/v1/dead-letters/{id}/retry"): ADMIN,
    ("DELETE", "/v1/dead-letters/{id}"): ADMIN,
    ("DELETE", "/v1/dead-letters"): ADMIN,
    ("POST", "/v1/test"): ADMIN,
    ("POST", "/v1/silences"): ADMIN,
    ("DELETE", "/v1/silences/{id}"): ADMIN,
    ("POST", "/-/reload"): ADMIN,
}


def error(status: int, message: str, *, headers: dict[str, str] | None = None, **more: Any) -> web.Response:
    return web.json_response({"error": message, **more}, status=status, headers=headers)


def make_app(daemon: Engine, max_body: int) -> web.Application:
    app = web.Application(client_max_size=max_body, middlewares=[_errors_as_json, _auth])
    app[DAEMON] = daemon
    app[MAX_BODY] = max_body
    app.add_routes([
        web.post("/v1/events", post_events),
        web.post("/v1/sources/sentry", post_sentry),
        web.get("/healthz", healthz),
        web.get("/readyz", readyz),
        web.get("/metrics", metrics),
        web.get("/v1/rules", rules),
        web.get("/v1/status", status),
        web.get("/v1/notifications", notifications),
        web.get("/v1/dead-letters", dead_letters),
        web.post("/v1/dead-letters/{id}/retry", retry_dead_letter),
        web.delete("/v1/dead-letters/{id}", purge_dead_letter),
        web.delete("/v1/dead-letters", purge_dead_letters),
        web.post("/v1/test", send_test),
        web.post("/v1/silences", add_silence),
        web.get("/v1/silences", list_silences),
        web.delete("/v1/silences/{id}", expire_silence),
        web.post("/-/reload", reload),
    ])
    return app


@web.middleware
async def _errors_as_json(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        return await handler(request)
    except RequestError as exc:
        response = error(exc.status, exc.message, **exc.more)
        if exc.close:
            response.force_close()
        return response
    except StorageError as exc:
        log.error("storage failure on %s %s: %s", request.method, request.path, exc)
        return error(503, f"storage unavailable, nothing was changed: {exc}",
                     headers={"Retry-After": str(STORAGE_RETRY_AFTER)})
    except web.HTTPRequestEntityTooLarge:
        refused = too_large(request.client_max_size)
        return error(refused.status, refused.message)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        return error(exc.status, exc.reason)
    except Exception:
        log.exception("internal error on %s %s", request.method, request.path)
        return error(500, "internal error; see the daemon's log")


@web.middleware
async def _auth(request: web.Request, handler: Handler) -> web.StreamResponse:
    """ACCESS, enforced. Every admin request is logged with the token's name, never the token."""
    daemon = request.app[DAEMON]
    route = request.match_info.route.resource
    if route is None:  # no such route: 404 / 405 as aiohttp answers them
        return await handler(request)
    scope = required_scope(request.method, route.canonical, metrics_need_read=daemon.config.ingest.metrics_need_read)
    where = f"{request.method} {request.path}"
    token = None
    if daemon.tokens is not None and scope is not OPEN:
        token = caller(request)
        if token is None:
            log.warning("refused %s: missing or unknown bearer token", where, extra={"scope": scope})
            return error(401, f"missing or invalid bearer token: this needs a token with the {scope!r} scope",
                         scope=scope)
        if not token.allows(scope):
            log.warning("refused %s: token %r lacks the %r scope", where, token.name, scope,
                        extra={"token_name": token.name, "scope": scope})
            return error(403, f"token {token.name!r} lacks the {scope!r} scope this needs", scope=scope)
    response = await handler(request)
    if scope == ADMIN:
        who = f"token {token.name!r}" if token else "no token (no tokens_file: the API is open)"
        log.info("%s by %s: HTTP %d", where, who, response.status,
                 extra={"token_name": token.name if token else None, "status": response.status})
    return response


def required_scope(method: str, path: str, *, metrics_need_read: bool) -> str | None:
    """The scope a token needs for `method` on the route `path` (its pattern, e.g. /v1/silences/{id})."""
    scope = ACCESS.get(("GET" if method == "HEAD" else method, path), ADMIN)
    if scope == METRICS:
        return READ if metrics_need_read else OPEN
    return scope


def caller(request: web.Request) -> ApiToken | None:
    """The known token in the request's `Authorization: Bearer` header, if any (None without a tokens file)."""
    tokens = request.app[DAEMON].tokens
    scheme, _, given = request.headers.get("Authorization", "").partition(" ")
    if tokens is None or scheme.lower() != "bearer":
        return None
    return tokens.find(given.strip())


async def post_events(request: web.Request) -> web.Response:
    daemon = request.app[DAEMON]
    if daemon.stopping:
        return error(503, "shutting down; send to another instance or retry")
    ctype = request.content_type
    if ctype not in JSON_TYPES + NDJSON_TYPES:
        return error(415, f"unsupported content type {ctype!r}: use application/json or application/x-ndjson")
    with daemon.tracking_request():
        body = await _body(request)
        try:
            events = await off_loop(body, parse_events, body, ndjson=ctype in NDJSON_TYPES)
        except EventError as exc:
            at: dict[str, Any] = {k: v for k, v in (("index", exc.index), ("path", exc.path)) if v is not None}
            return error(400, exc.message, **at)
        limit = daemon.config.ingest.max_events
        if len(events) > limit:
            return error(413, f"{len(events)} events in one request, more than ingest.max_events ({limit}); "
                         "send smaller batches")
        try:
            accepted = await daemon.accept(events, wait=_decision_wait(request))
        except RequestTooLarge as exc:
            return error(413, str(exc))
    return web.json_response(accepted_view(accepted), status=202)


async def post_sentry(request: web.Request) -> web.Response:
    """A Sentry webhook: verified, mapped to one event (or a resolve), then like POST /v1/events."""
    daemon = request.app[DAEMON]
    config = daemon.config.sentry
    if config is None or not daemon.sentry_secrets:
        return error(404, "the Sentry source is not configured (sources.sentry in the config)")
    if daemon.stopping:
        return error(503, "shutting down; Sentry will retry")
    with daemon.tracking_request():
        body = await _body(request)
        resource = request.headers.get(sentry.RESOURCE_HEADER)
        signed = sentry_auth.SIGNATURE_HEADER in request.headers
        now = time.time()
        if resource is not None or signed or not config.allow_unsigned_legacy:
            try:
                sentry_auth.verify(body, request.headers, secrets=sorted(daemon.sentry_secrets),
                                   max_age=config.max_age, now=now)
            except sentry_auth.SentryAuthError as exc:
                return _refused(exc)
        try:
            payload = await off_loop(body, loads, body)
            webhook = (sentry.to_event(resource, payload, issues_url=config.issues_url) if resource is not None
                       else sentry.legacy_to_event(payload))
        except (JsonError, sentry.SentryPayloadError) as exc:
            return error(400, exc.message)
        try:
            sentry_auth.check_body_time(webhook.happened, max_age=config.max_age, now=now)
        except sentry_auth.SentryAuthError as exc:
            return _refused(exc)
        answer = await daemon.accept_sentry(webhook, wait=_decision_wait(request))
    return web.json_response(answer, status=202)


def _refused(exc: sentry_auth.SentryAuthError) -> web.Response:
    log.warning("refused a Sentry webhook: %s", exc.message)
    return error(401, exc.message)


async def off_loop(body: bytes, parse: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    """`parse(*args, **kwargs)` of a request body: inline for a small body, on a worker thread for a large
    one, so that the event loop (`/healthz`, other requests) goes on meanwhile (see json_body's hook)."""
    if len(body) < OFF_LOOP_BYTES:
        return parse(*args, **kwargs)
    return await asyncio.to_thread(parse, *args, **kwargs)


async def healthz(request: web.Request) -> web.Response:
    return web.json_response({"status": "alive"})


async def readyz(request: web.Request) -> web.Response:
    problems = await request.app[DAEMON].readiness_problems()
    if problems:
        return web.json_response({"status": "not ready", "problems": problems}, status=503)
    return web.json_response({"status": "ready"})


async def metrics(request: web.Request) -> web.Response:
    text = await request.app[DAEMON].metrics_text()
    return web.Response(body=text.encode(), headers={"Content-Type": METRICS_CONTENT_TYPE,
                                                     "X-Content-Type-Options": "nosniff"})


async def rules(request: web.Request) -> web.Response:
    return web.json_response(request.app[DAEMON].rules_view())


async def status(request: web.Request) -> web.Response:
    return web.json_response(await request.app[DAEMON].status_view())


async def notifications(request: web.Request) -> web.Response:
    q = request.query
    try:
        since = parse_since(q["since"], time.time()) if "since" in q else None
        limit = int(q.get("limit", "100"))
    except ValueError as exc:
        return error(400, str(exc))
    rows = await request.app[DAEMON].history(rule=q.get("rule"), service=q.get("service"), since=since,
                                                   limit=max(1, min(limit, 10_000)))
    return web.json_response({"notifications": [_row(r, "created", "sent") for r in rows]})


async def dead_letters(request: web.Request) -> web.Response:
    rows = await request.app[DAEMON].dead_letters()
    return web.json_response({"dead_letters": [_row(r, "created", "failed") for r in rows]})


async def retry_dead_letter(request: web.Request) -> web.Response:
    ident = _id(request)
    new_id = await request.app[DAEMON].retry_dead_letter(ident)
    if new_id is None:
        return error(404, f"no dead letter {ident}")
    return web.json_response({"retried": ident, "notification_id": new_id})


async def purge_dead_letter(request: web.Request) -> web.Response:
    ident = _id(request)
    if not await request.app[DAEMON].purge_dead_letters([ident]):
        return error(404, f"no dead letter {ident}")
    return web.json_response({"purged": 1})


async def purge_dead_letters(request: web.Request) -> web.Response:
    return web.json_response({"purged": await request.app[DAEMON].purge_dead_letters()})


async def send_test(request: web.Request) -> web.Response:
    """A test page: 200 once PagerDuty accepted it, 502 when it refused it (a dead letter), 504 when it has
    done neither within `wait` (still queued, retried); 202 without waiting (`wait` 0)."""
    daemon = request.app[DAEMON]
    raw = await _body(request)
    try:
        body = loads(raw)
        service = body["service"]
        resolve_after = parse_duration(body.get("resolve_after", 0))
        wait = parse_duration(body.get("wait", DEFAULT_WAIT))
        if not isinstance(service, str):
            raise ValueError("'service' must be a string")
        if not math.isfinite(resolve_after):
            raise ValueError("'resolve_after' is too long")
        if not 0 <= wait <= MAX_WAIT:
            raise ValueError(f"'wait' must be from 0 to {MAX_WAIT:g}s")
    except (ValueError, KeyError, TypeError, OverflowError) as exc:  # OverflowError: an integer past a float
        return error(400, f'expected {{"service": NAME, "resolve_after": "30s", "wait": "30s"}}: {exc}')
    if service not in (services := daemon.services()):
        return error(404, f"unknown service {service!r}", services=sorted(services))
    result = await daemon.send_test(service, resolve_after, wait)
    answer: dict[str, Any] = {"service": service, "dedup_key": result.dedup_key, "resolve_after": resolve_after,
                              "resolve": result.resolve}
    outcome = result.outcome
    if outcome is None:
        if not wait:
            return web.json_response({**answer, "outcome": "queued"}, status=202)
        last = result.last
        return web.json_response({"error": f"{result.still_queued(wait)}; its resolve: {result.resolve}", **answer,
                                  "outcome": RETRYING,
                                  "status": last.status if last else None,
                                  "response": _answer(last.response) if last else None}, status=504)
    seen = {"outcome": outcome.outcome, "status": outcome.status, "response": _answer(outcome.response)}
    if not outcome.delivered:
        return web.json_response({"error": f"{result.refusal()}; its resolve: {result.resolve}", **answer, **seen,
                                  "reason": outcome.reason}, status=502)
    return web.json_response({**answer, **seen})


def _answer(response: str) -> Any:
    """PagerDuty's answer as it sent it: JSON when it is JSON, else the text."""
    try:
        return loads(response.encode())
    except JsonError:
        return response


async def add_silence(request: web.Request) -> web.Response:
    raw = await _body(request)
    try:
        body = loads(raw)
    except JsonError as exc:
        return error(400, f"the body must be JSON, {{match, until, comment, created_by}}: {exc.message}")
    token = caller(request)
    if token is not None and isinstance(body, dict) and not body.get("created_by"):
        body = {**body, "created_by": token.name}  # who, by default: the token's name
    try:
        silence = await request.app[DAEMON].add_silence(body)
    except SilenceError as exc:
        return error(400, str(exc))
    if isinstance(silence, Queued):
        return _undecided(silence)
    return web.json_response(_silence(silence), status=201)


async def list_silences(request: web.Request) -> web.Response:
    now = time.time()
    silences = await request.app[DAEMON].silences()
    return web.json_response({"silences": [_silence(s, now) for s in silences]})


async def expire_silence(request: web.Request) -> web.Response:
    ident = _id(request)
    silence = await request.app[DAEMON].expire_silence(ident)
    if silence is None:
        return error(404, f"no silence {ident}")
    if isinstance(silence, Queued):
        return _undecided(silence)
    return web.json_response(_silence(silence))


def _undecided(queued: Queued) -> web.Response:
    """A request stored in the inbox that the decider did not take within the wait (no decider now)."""
    return web.json_response({**queued_view(queued), "detail": "stored for the decider, which has not decided "
                              "it yet (is one running? see /v1/status); it takes effect once decided"}, status=202)


def _decision_wait(request: web.Request) -> float:
    """`?wait=decided`: how long a replica that is not the decider waits for the decision."""
    wait = request.query.get("wait")
    if wait is None:
        return 0.0
    if wait != "decided":
        raise web.HTTPBadRequest(reason="wait: the one value is 'decided'")
    return DECISION_WAIT


def _silence(silence: Silence, now: float | None = None) -> dict[str, Any]:
    view = silence.view()
    view["active"] = silence.active(time.time() if now is None else now)
    for name in ("until", "created"):
        view[name] = _iso_precise(view[name])
    return view


async def reload(request: web.Request) -> web.Response:
    result = await request.app[DAEMON].reload()
    return web.json_response(result.view(), status=200 if result.ok else 422)


def parse_since(text: str, now: float) -> float:
    """`since`: seconds since the epoch, an ISO 8601 time, or a duration back from now (`1h`)."""
    try:
        return float(text)
    except ValueError:
        return parse_moment(text, now, ago=True, what="'since'")


async def _body(request: web.Request) -> bytes:
    return await read_body(request, limit=request.app[MAX_BODY],
                           timeout=request.app[DAEMON].config.ingest.body_timeout)


def _id(request: web.Request) -> int:
    try:
        return int(request.match_info["id"])
    except ValueError:
        raise web.HTTPBadRequest(reason="the id must be a number") from None


def _row(row: Any, *times: str) -> dict[str, Any]:
    out = dict(vars(row))
    for name in times:
        out[name] = _iso_precise(out[name])
    return out


def _iso_precise(moment: float) -> str:
    """Epoch seconds as ISO 8601 UTC with microseconds (history and silences keep their exact times). A time
    past what a datetime holds (a silence stored before `until` was capped) shows as the last one it holds."""
    try:
        return datetime.fromtimestamp(moment, UTC).isoformat().replace("+00:00", "Z")
    except (OverflowError, OSError, ValueError):
        return (datetime.max if moment > 0 else datetime.min).isoformat() + "Z"
