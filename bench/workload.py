"""What the benchmark sends: generated rule files, events, and request bodies.

Rule `r{i}` matches `{"service": "svc-{i}", "http": {"status": >= 500}}` and pages service `pd-{i % 10}`
(`pd-8` and `pd-9` speak the legacy v1 API, the others v2). Its dedup key is `r{i}/{seq}` (`group_by:
[seq]`), so every event is its own alert and the fake PagerDuty can tell, from the dedup key alone,
which event a page is for. The optional `fanout` rule matches `{"kind": "fanout"}` and pages all ten.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

SERVICES = tuple(f"pd-{s}" for s in range(10))
V1_SERVICES = frozenset({"pd-8", "pd-9"})
SUMMARY = "{{ event.service }} returned {{ event.http.status }}"
JSON = "application/json"
NDJSON = "application/x-ndjson"


def service_key(service: str) -> str:
    return f"bench-key-{service}-0123456789abcdef"


def write_rules(directory: Path, rules: int, *, files: int = 1, fanout: bool = False) -> Path:
    """Write `rules` indexable rules (split over `files` files) and the services file; the directory."""
    directory.mkdir(parents=True, exist_ok=True)
    services = ["services:"]
    for name in SERVICES:
        api = ", api: v1" if name in V1_SERVICES else ""
        services.append(f"  {name}: {{service_key: {service_key(name)}{api}}}")
    (directory / "services.yaml").write_text("\n".join(services) + "\n")
    per_file = -(-rules // files)
    for f in range(files):
        lines = ["rules:"]
        for i in range(f * per_file, min(rules, (f + 1) * per_file)):
            lines += [
                f"  - name: r{i}",
                f"    match: {{all: [{{field: service, equals: svc-{i}}}, {{field: http.status, gte: 500}}]}}",
                f"    services: [{SERVICES[i % len(SERVICES)]}]",
                f'    summary: "{SUMMARY}"',
                "    group_by: [seq]",
            ]
        if fanout and f == 0:
            lines += [
                "  - name: fanout",
                "    match: {field: kind, equals: fanout}",
                f"    services: [{', '.join(SERVICES)}]",
                '    summary: "fan-out event {{ event.seq }}"',
                "    group_by: [seq]",
            ]
        (directory / f"rules-{f:02d}.yaml").write_text("\n".join(lines) + "\n")
    return directory


def event(seq: int, rule: int, *, matching: bool = True) -> dict[str, Any]:
    """Event `seq`, for rule `r{rule}`; it matches that rule unless `matching` is false (then the rule is
    still a candidate, through the index, and its status condition fails)."""
    return {
        "service": f"svc-{rule}",
        "http": {"status": 503 if matching else 200, "path": f"/api/v1/orders/{seq}"},
        "host": f"web-{seq % 50}",
        "message": "upstream returned an error",
        "seq": seq,
    }


def fanout_event(seq: int) -> dict[str, Any]:
    return {"kind": "fanout", "host": f"web-{seq % 50}", "message": "fan me out", "seq": seq}


def seq_of(dedup_key: str) -> int:
    """The event sequence number a dedup key (`RULE/SEQ`) was made from."""
    return int(dedup_key.rsplit("/", 1)[1])


@dataclass(frozen=True)
class Post:
    """One request body to POST to `/v1/events`, and the sequence numbers of the events in it."""

    body: bytes
    content_type: str
    seqs: tuple[int, ...]


def json_post(events: Sequence[dict[str, Any]]) -> Post:
    """One event as a JSON object, several as a JSON array."""
    value: Any = events[0] if len(events) == 1 else list(events)
    return Post(json.dumps(value).encode(), JSON, tuple(e["seq"] for e in events))


def ndjson_post(events: Sequence[dict[str, Any]]) -> Post:
    body = "".join(json.dumps(e) + "\n" for e in events).encode()
    return Post(body, NDJSON, tuple(e["seq"] for e in events))


def batches(events: Sequence[dict[str, Any]], size: int, *, ndjson: bool = False) -> list[Post]:
    make = ndjson_post if ndjson else json_post
    return [make(events[i:i + size]) for i in range(0, len(events), size)]


def endless(first_seq: int, size: int, rules: int, match_every: int = 1) -> Iterator[Post]:
    """JSON posts of `size` events each, sequence numbers counting up from `first_seq`; the events whose
    sequence number is a multiple of `match_every` match a rule (one page each), the others none."""
    seq = first_seq
    while True:
        yield json_post([event(s, s % rules, matching=s % match_every == 0) for s in range(seq, seq + size)])
        seq += size
