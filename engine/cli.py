"""The `alert-engine` command: parse arguments, call the engine, print, exit with a status.

Exit status: 0 success, 1 invalid input (rule errors, failed rule tests), 2 usage error.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path as FsPath

from engine import __version__
from engine.fanout import fan_out
from engine.rules import LoadResult, load_ruleset
from engine.ruletest import Outcome, run_test_file
from engine.sources.events import EventError, parse_events

DEFAULT_PAGERDUTY_URL = "https://events.pagerduty.com"

EPILOG = """\
commands:
  check   validate rule files: every error as FILE:LINE:COL: rule 'NAME': message
  eval    print, as JSON lines, the notifications that events would cause (offline, keys masked)
  test    run rule unit tests (rule_files + tests with events and expected notifications)

exit status: 0 ok, 1 invalid rules / failed tests / bad events, 2 usage error
"""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="alert-engine",
        description="Rule-based alert engine: events in, matched against YAML rules, paged out to PagerDuty.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"alert-engine {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    check = sub.add_parser("check", help="validate rule files and directories",
                           description="Validate rule files (directories are searched for *.yaml, *.yml). "
                           "Prints 'ok: N rules, M services in K files' or every error with its location.")
    check.add_argument("paths", nargs="+", metavar="PATH", help="rule file or directory")
    check.add_argument("--allow-missing-secrets", action="store_true",
                       help="report a missing key variable or key file as a warning (for CI without secrets)")
    check.set_defaults(func=cmd_check)

    ev = sub.add_parser("eval", help="show the notifications events would cause, offline",
                        description="Match events against the rules and print one JSON line per notification "
                        'that would be sent: {"event", "rule", "service", "api", "url", "body"}, keys masked. '
                        "Nothing touches the network; missing service keys are warnings.")
    ev.add_argument("paths", nargs="+", metavar="PATH", help="rule file or directory")
    ev.add_argument("--events", required=True, metavar="FILE",
                    help="NDJSON or a JSON array (or one object) of events; '-' reads stdin")
    ev.add_argument("--url", default=DEFAULT_PAGERDUTY_URL, help="PagerDuty base URL shown in 'url' "
                    "(default: %(default)s)")
    ev.set_defaults(func=cmd_eval)

    test = sub.add_parser("test", help="run rule unit tests",
                          description="Run rule unit tests. A test file names rule_files (relative to itself) "
                          "and tests, each with events and the exact notifications expected "
                          "({rule, service} plus any of dedup_key, severity, summary).")
    test.add_argument("files", nargs="+", metavar="TESTFILE", help="test file (YAML)")
    test.set_defaults(func=cmd_test)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return args.func(args)


def _print_problems(result: LoadResult) -> None:
    for problem in (*result.errors, *result.warnings):
        print(problem, file=sys.stderr)


def cmd_check(args: argparse.Namespace) -> int:
    result = load_ruleset(args.paths, allow_missing_secrets=args.allow_missing_secrets)
    _print_problems(result)
    if result.ruleset is None:
        print(f"invalid: {len(result.errors)} error(s)", file=sys.stderr)
        return 1
    rs = result.ruleset
    print(f"ok: {len(rs.rules)} rules, {len(rs.services)} services in {len(result.files)} files")
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    result = load_ruleset(args.paths, allow_missing_secrets=True)
    _print_problems(result)
    if result.ruleset is None:
        return 1
    try:
        body = sys.stdin.buffer.read() if args.events == "-" else FsPath(args.events).read_bytes()
    except OSError as exc:
        print(f"{args.events}: cannot read: {exc.strerror or exc}", file=sys.stderr)
        return 1
    ndjson = args.events.endswith((".ndjson", ".jsonl")) or _looks_like_ndjson(body)
    try:
        events = parse_events(body, ndjson=ndjson)
    except EventError as exc:
        where = f" (event {exc.index})" if exc.index is not None else ""
        print(f"{args.events}{where}: {exc.message}", file=sys.stderr)
        return 1
    now = datetime.now(UTC)
    base = args.url.rstrip("/")
    for i, event in enumerate(events):
        for n in fan_out(result.ruleset, event, now):
            line = {"event": i, "rule": n.rule, "service": n.service, "api": n.api, "url": n.url(base),
                    "body": n.masked_body()}
            print(json.dumps(line, ensure_ascii=False))
    return 0


def _looks_like_ndjson(body: bytes) -> bool:
    """More than one non-blank line, each starting an object: NDJSON rather than one pretty JSON value."""
    lines = [line.strip() for line in body.splitlines() if line.strip()]
    return len(lines) > 1 and all(line.startswith(b"{") and line.endswith(b"}") for line in lines)


def cmd_test(args: argparse.Namespace) -> int:
    now = datetime.now(UTC)
    failed = passed = 0
    for file in args.files:
        results = run_test_file(file, now)
        for item in results:
            if isinstance(item, Outcome):
                print(item.report())
                passed += item.passed
                failed += not item.passed
            else:
                print(item, file=sys.stderr)
                failed += 1
    print(f"{passed} passed, {failed} failed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
