"""Fuzzing the real daemon with hostile bodies (hypothesis, a bounded number of cases): deep nesting, huge
integers, non-finite numbers, lone surrogates, odd and huge strings and keys, wrong types, raw bytes, at
POST /v1/events (JSON and NDJSON), POST /v1/sources/sentry (correctly signed), /v1/silences and /v1/test.
No answer is a 5xx, every answer is JSON, and the daemon is healthy and pages after."""

from __future__ import annotations

import asyncio
import copy
import http.client
import json
from dataclasses import dataclass
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.e2e.test_sentry import FIXTURES, SECRET, signed

EXAMPLES = 250  # about 10 s on one core

RULES = """\
services:
  pay: {service_key: "${PD_PAY}"}
  ops: {service_key: "${PD_OPS}", api: v1}
rules:
  - name: everything
    match: {any: [{field: service, exists: true}, {field: source, equals: sentry}]}
    services: [pay, ops]
    summary: "{{ event.service }}: {{ event.message }}"
    group_by: [host, v]
  - name: numbers
    match: {field: v, gte: 0}
    services: [pay]
    change: {field: v}
"""


class Raw(str):
    """JSON text to put in a body as it is: what json.dumps cannot write (NaN, 5,000 digits, 3,000 levels)."""


RAW = st.sampled_from(["NaN", "Infinity", "-Infinity", "1e400", "-1E+999", "9" * 5000, "-" + "1" * 4301,
                       "1" * 4300, "4.9e-324", "1.7976931348623157e308", "-0", "0.1e-999999"]).map(Raw)
DEEP = st.integers(1, 3000).flatmap(lambda n: st.sampled_from([Raw("[" * n + "]" * n),
                                                               Raw('{"a":' * n + "1" + "}" * n)]))
SURROGATE = st.integers(0xD800, 0xDFFF).map(chr)
TEXT = st.one_of(st.text(max_size=40), st.lists(st.one_of(SURROGATE, st.characters()), max_size=8).map("".join),
                 st.integers(1000, 100_000).map(lambda n: "k" * n))
JSON_LEAF = st.one_of(st.none(), st.booleans(), st.integers(), st.integers(10**300, 10**310), st.floats(), TEXT)


def nested(leaf: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    return st.recursive(leaf, lambda inner: st.lists(inner, max_size=4) | st.dictionaries(TEXT, inner, max_size=4),
                        max_leaves=12)


# JSON, hostile but valid (accepted, matched, rendered, sent) or not (NaN, 1e400, too deep: refused)
VALUE = st.one_of(nested(JSON_LEAF), nested(st.one_of(JSON_LEAF, RAW, st.floats(allow_nan=True,
                                                                                   allow_infinity=True))), DEEP)
TIMESTAMP = st.one_of(
    st.sampled_from(["9999-12-31T23:59:59-01:00", "0001-01-01T00:00:00+01:00", "9999-12-31T23:59:59.999999Z",
                     "2026-02-30T00:00:00Z", "", " ", "now"]),
    st.datetimes().map(lambda d: d.isoformat()), st.integers(), st.floats(), RAW)
EVENT = st.one_of(
    st.fixed_dictionaries({"service": st.one_of(TEXT, VALUE)},
                          optional={"host": VALUE, "v": VALUE, "message": VALUE, "timestamp": TIMESTAMP,
                                    "level": st.sampled_from(["fatal", "error", "nonsense"]), "details": VALUE}),
    VALUE)
SENTRY = st.tuples(
    st.sampled_from(["event_alert", "issue", "metric_alert", "installation", "error", "comment", "x"]),
    st.one_of(st.fixed_dictionaries({"action": st.one_of(st.sampled_from(
        ["triggered", "created", "resolved", "critical", "warning"]), TEXT, VALUE)}, optional={"data": st.one_of(
            st.fixed_dictionaries({}, optional={"event": EVENT, "issue": VALUE, "metric_alert": VALUE,
                                                "triggered_rule": VALUE, "project": VALUE}), VALUE)}),
              VALUE))


# real webhooks (resource, payload), each to have one value replaced by a hostile one: mapped, matched, rendered
RESOURCES = ("event_alert", "metric_alert", "issue", "installation", "comment")
WEBHOOKS = [(next(r for r in RESOURCES if f.stem.startswith(r)), json.loads(f.read_text()))
            for f in sorted(FIXTURES.glob("*.json")) if f.stem != "legacy_webhook"]


def paths(value: Any, path: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    items = value.items() if isinstance(value, dict) else enumerate(value) if isinstance(value, list) else ()
    return [path] + [p for key, item in items for p in paths(item, (*path, key))]


@st.composite
def webhooks(draw: st.DrawFn) -> tuple[str, Any]:
    resource, payload = draw(st.sampled_from(WEBHOOKS))
    payload = copy.deepcopy(payload)
    *parent, last = draw(st.sampled_from(paths(payload)[1:]))
    holder = payload
    for key in parent:
        holder = holder[key]
    holder[last] = draw(st.one_of(VALUE, TIMESTAMP))
    return resource, payload


def dump(value: Any, ascii_only: bool) -> str:
    if isinstance(value, Raw):
        return str(value)
    if isinstance(value, dict):
        return "{" + ",".join(json.dumps(k, ensure_ascii=ascii_only) + ":" + dump(v, ascii_only)
                              for k, v in value.items()) + "}"
    if isinstance(value, list):
        return "[" + ",".join(dump(v, ascii_only) for v in value) + "]"
    return json.dumps(value, ensure_ascii=ascii_only)


def encoded(text: str) -> bytes:
    return text.encode("utf-8", "surrogatepass")  # a raw surrogate makes invalid UTF-8: that is a case too


@dataclass(frozen=True)
class Case:
    path: str
    headers: dict[str, str]
    body: bytes


JSON = {"Content-Type": "application/json"}


@st.composite
def cases(draw: st.DrawFn) -> Case:
    kind = draw(st.sampled_from(["events", "ndjson", "sentry", "webhook", "silences", "test", "bytes"]))
    ascii_only = draw(st.booleans())
    if kind == "events":
        return Case("/v1/events", JSON, encoded(dump(draw(st.one_of(EVENT, st.lists(EVENT, max_size=5))),
                                                     ascii_only)))
    if kind == "ndjson":
        lines = [dump(e, ascii_only) for e in draw(st.lists(EVENT, max_size=5))]
        return Case("/v1/events", {"Content-Type": "application/x-ndjson"}, encoded("\n".join(lines)))
    if kind in ("sentry", "webhook"):
        resource, payload = draw(SENTRY if kind == "sentry" else webhooks())
        body = encoded(dump(payload, ascii_only))
        return Case("/v1/sources/sentry", signed(body, resource=resource), body)
    if kind == "silences":
        body = draw(st.fixed_dictionaries({}, optional={"match": VALUE, "until": st.one_of(TEXT, VALUE, TIMESTAMP),
                                                        "comment": VALUE}) | VALUE)
        return Case("/v1/silences", JSON, encoded(dump(body, ascii_only)))
    if kind == "test":
        body = draw(st.fixed_dictionaries({"service": st.one_of(st.just("nope"), TEXT, VALUE)},
                                          optional={"resolve_after": st.one_of(TEXT, VALUE)}) | VALUE)
        return Case("/v1/test", JSON, encoded(dump(body, ascii_only)))
    path = draw(st.sampled_from(["/v1/events", "/v1/sources/sentry"]))
    body = draw(st.binary(max_size=200))
    return Case(path, signed(body) if "sentry" in path else JSON, body)


def post(port: int, case: Case) -> tuple[int, str, bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        conn.request("POST", case.path, body=case.body, headers=case.headers)
        response = conn.getresponse()
        return response.status, response.getheader("Content-Type", ""), response.read()
    finally:
        conn.close()


def fuzz(port: int) -> int:
    answered = [0]

    @settings(max_examples=EXAMPLES, deadline=None, database=None,
              suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.large_base_example])
    @given(cases())
    def one(case: Case) -> None:
        status, ctype, body = post(port, case)
        assert status < 500, (case, status, body[:500])
        assert ctype.startswith("application/json"), (case, status, ctype, body[:500])
        answer = json.loads(body)
        assert status < 400 or isinstance(answer.get("error"), str), (case, status, answer)
        answered[0] += 1

    one()
    return answered[0]


async def test_no_hostile_body_gets_a_5xx_and_the_daemon_stays_healthy(start_daemon, fake_pagerduty, tmp_path):
    secrets = tmp_path / "sentry-secret"
    secrets.write_text(SECRET + "\n")
    daemon = await start_daemon(RULES, sources={"sentry": {"client_secret_file": str(secrets)}},
                                log={"level": "warning"})
    assert await asyncio.to_thread(fuzz, daemon.port) >= EXAMPLES
    for path in ("/healthz", "/readyz"):
        status, _ = await daemon.request("GET", path)
        assert status == 200
    status, answer = await daemon.post_events({"service": "after-the-fuzz", "host": "h", "message": "ok"})
    assert status == 202 and answer["notifications"] == 2
    await fake_pagerduty.wait_until(lambda rs: sum("after-the-fuzz" in json.dumps(r.body) for r in rs) == 2,
                                    timeout=15)
    for received in fake_pagerduty.requests:  # everything sent was valid JSON, NaN and Infinity included
        assert received.body is not None
        json.dumps(received.body, allow_nan=False)
    await daemon.stop()
    assert "internal error" not in daemon.output()
