"""The `alert-engine` commands that talk to a running daemon over its HTTP API: `history`,
`dead-letters`, `silence`, `send-test`. Each takes `--api URL` and `--token` (engine/cli.py builds the
parser); an API error is printed with the daemon's message and gives exit status 1.
"""

from __future__ import annotations

import argparse
import json
import sys
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Sequence
from typing import Any

import yaml

from engine.table import plural, table
from engine.units import parse_duration

COVERED_LEGEND = ("COVERED: the matches a silence held back from paging, one per match whatever the number of "
                  "services; on a stateful rule, a match counts when it would have triggered (a threshold's "
                  "matches once, when reached); a match several silences cover counts on one of them.")


def _api(args: argparse.Namespace, method: str, path: str, body: dict | None = None, *,
         timeout: float = 30) -> dict | None:
    """Call the daemon's API; print the error and return None when it fails."""
    url = args.api.rstrip("/") + path
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(url, data=data, method=method, headers={"Content-Type": "application/json"})
    if args.token:
        request.add_header("Authorization", f"Bearer {args.token}")
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return json.loads(response.read() or b"{}")
    except urllib.error.HTTPError as exc:
        try:
            message = json.loads(exc.read()).get("error", exc.reason)
        except ValueError:
            message = exc.reason
        if exc.code == 401 and not args.token:  # the daemon's message names the scope needed
            message = f"{message}; give a token with --token or $ALERT_ENGINE_TOKEN"
        print(f"alert-engine: {method} {url}: HTTP {exc.code}: {message}", file=sys.stderr)
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        print(f"alert-engine: cannot reach the daemon at {args.api}: {reason}", file=sys.stderr)
    return None


def cmd_history(args: argparse.Namespace) -> int:
    query = {k: v for k, v in (("rule", args.rule), ("service", args.service), ("since", args.since),
                               ("limit", str(args.limit))) if v}
    answer = _api(args, "GET", "/v1/notifications?" + urllib.parse.urlencode(query))
    if answer is None:
        return 1
    headers = ("TIME", "RULE", "SERVICE", "ACTION", "DEDUP KEY", "OUTCOME", "STATUS", "ATTEMPTS", "REASON")
    _listing(args, answer["notifications"], "no notifications", headers, lambda r: (
        _second(r["sent"]), r["rule"], r["service"], r["action"], r["dedup_key"], r["outcome"], r["status"],
        r["attempts"], _reason(r)))
    return 0


def _listing(args: argparse.Namespace, rows: list[dict[str, Any]], empty: str, headers: Sequence[str],
             cells: Callable[[dict[str, Any]], Sequence[object]]) -> None:
    """Print rows the API gave: one JSON line each with --json, else a table (or `empty` on stderr)."""
    if args.json:
        for row in rows:
            print(json.dumps(row, ensure_ascii=False))
    elif not rows:
        print(empty, file=sys.stderr)
    else:
        for line in table(headers, map(cells, rows)):
            print(line)


def _second(iso: str) -> str:
    """An API time (ISO 8601 UTC with microseconds) to the second, for a table."""
    return iso[:19] + "Z" if len(iso) > 20 else iso


def _reason(row: dict) -> str:
    """Why a history row or dead letter is what it is: a dead letter's reason and, when PagerDuty answered,
    what it said; what a trigger was collapsed into; nothing for a delivered one."""
    from engine.pagerduty import explain  # and aiohttp: only for the listings that show PagerDuty's answers

    if row.get("reason"):
        said = f"; PagerDuty said: {explain(row['response'])}" if row["status"] is not None else ""
        return row["reason"] + said
    return row["response"] if row.get("outcome") == "collapsed" else ""


def cmd_dead_letters(args: argparse.Namespace) -> int:
    if args.action == "list":
        answer = _api(args, "GET", "/v1/dead-letters")
        if answer is None:
            return 1
        headers = ("ID", "FAILED", "SERVICE", "RULE", "DEDUP KEY", "ATTEMPTS", "STATUS", "REASON")
        _listing(args, answer["dead_letters"], "no dead letters", headers, lambda r: (
            r["id"], _second(r["failed"]), r["service"], r["rule"], r["dedup_key"], r["attempts"], r["status"],
            _reason(r)))
        return 0
    if args.action == "retry":
        if not args.ids:
            print("alert-engine dead-letters retry: give the ID(s) to retry", file=sys.stderr)
            return 2
        failed = 0
        for ident in args.ids:
            answer = _api(args, "POST", f"/v1/dead-letters/{ident}/retry")
            if answer is None:
                failed += 1
            else:
                print(f"dead letter {ident} is back in the outbox as notification {answer['notification_id']}")
        return 1 if failed else 0
    if args.ids:
        purged = [ident for ident in args.ids if _api(args, "DELETE", f"/v1/dead-letters/{ident}") is not None]
        print(f"purged {plural(len(purged), 'dead letter')}")
        return 0 if len(purged) == len(args.ids) else 1
    answer = _api(args, "DELETE", "/v1/dead-letters")
    if answer is None:
        return 1
    print(f"purged {plural(answer['purged'], 'dead letter')}")
    return 0


def cmd_silence(args: argparse.Namespace) -> int:
    if args.silence_action == "add":
        try:
            match = yaml.safe_load(args.match)
        except yaml.YAMLError as exc:
            print(f"alert-engine silence add: --match is not YAML/JSON: {exc}", file=sys.stderr)
            return 2
        body = {"match": match, "until": args.until, "comment": args.comment, "created_by": args.created_by}
        answer = _api(args, "POST", "/v1/silences", body)
        if answer is None:
            return 1
        if answer.get("decided") is False:
            print(f"alert-engine: the silence is stored for the decider (inbox {answer['inbox']}), which has not "
                  "taken it yet: it takes effect once decided; `silence list` shows it then", file=sys.stderr)
            return 3
        print(f"silence {answer['id']} added, until {answer['until']}")
        return 0
    if args.silence_action == "list":
        answer = _api(args, "GET", "/v1/silences")
        if answer is None:
            return 1
        headers = ("ID", "STATE", "UNTIL", "COVERED", "BY", "COMMENT", "MATCH")
        _listing(args, answer["silences"], "no silences", headers, lambda s: (
            s["id"], "active" if s["active"] else "expired", _second(s["until"]), s["covered"], s["created_by"],
            s["comment"], json.dumps(s["match"], ensure_ascii=False)))
        if answer["silences"] and not args.json:
            print(COVERED_LEGEND)
        return 0
    failed = 0
    for ident in args.ids:
        answer = _api(args, "DELETE", f"/v1/silences/{ident}")
        if answer is None:
            failed += 1
        elif answer.get("decided") is False:
            print(f"silence {ident}: expiry stored for the decider, which has not taken it yet", file=sys.stderr)
            failed += 1
        else:
            print(f"silence {ident} expired")
    return 1 if failed else 0


def cmd_send_test(args: argparse.Namespace) -> int:
    resolve_after, wait = _seconds(args.resolve_after), _seconds(args.wait)
    body = {"service": args.service, "resolve_after": resolve_after, "wait": wait}
    try:
        timeout = parse_duration(wait) + 30
    except ValueError:
        timeout = 30  # the daemon says what is wrong with it
    answer = _api(args, "POST", "/v1/test", body, timeout=timeout)
    if answer is None:  # refused, still retrying, or not sent: the daemon's reason is printed
        return 1
    service, dedup_key = answer["service"], answer["dedup_key"]
    if answer["outcome"] == "queued":
        print(f"test page queued for service {service} (dedup key {dedup_key}), not waiting for PagerDuty: "
              f"see alert-engine history --service {service}; its resolve: {answer['resolve']}")
    elif answer["status"] is None:
        print(f"dry run: the test page for service {service} was written to the daemon's output, not sent "
              f"(dedup key {dedup_key}); its resolve: {answer['resolve']}")
    else:
        said = answer["response"]
        said = said if isinstance(said, str) else json.dumps(said, ensure_ascii=False)
        print(f"PagerDuty accepted the test page for service {service}: HTTP {answer['status']} {said}")
        print(f"dedup key {dedup_key}; its resolve: {answer['resolve']}")
    return 0


def _seconds(text: str) -> str | float:
    """A duration argument as the API takes it: a bare number (`0`) as seconds, anything else (`30s`) as given."""
    try:
        return float(text)
    except ValueError:
        return text
