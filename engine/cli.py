"""The `alert-engine` command: parse arguments, call the engine, print, exit with a status.

Exit status: 0 success, 1 invalid input (rule errors, failed rule tests), 2 usage error.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
from collections.abc import Sequence
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path as FsPath

from engine import __version__
from engine.cli_api import COVERED_LEGEND, cmd_dead_letters, cmd_history, cmd_send_test, cmd_silence
from engine.config import CONFIG_ENV, DEFAULT_CONFIG, SQLITE, Config, default_config_path, load_config, read_dsn
from engine.decisions import Hold
from engine.fanout import fan_out
from engine.logs import configure as configure_logging
from engine.logs import default_format
from engine.reload import load_rules
from engine.render import Notification
from engine.replay import eval_timeline, play
from engine.rules import LoadResult, load_ruleset
from engine.rules.errors import Problem
from engine.rules.ruleset import RuleSet
from engine.ruletest import Outcome, run_test_file
from engine.sentry_import import PluginConfigError, import_plugin
from engine.sources import sentry
from engine.sources.events import EventError, parse_events
from engine.store import StorageError
from engine.table import plural
from engine.templates import iso_utc

DEFAULT_PAGERDUTY_URL = "https://events.pagerduty.com"
DEFAULT_API = "http://127.0.0.1:9595"

EPILOG = """\
commands:
  run           run the daemon: HTTP intake, durable outbox, PagerDuty delivery, SIGHUP reload
  check         validate rule files (or --config and its rules): FILE:LINE:COL: rule 'NAME': message
  migrate       bring a PostgreSQL database (storage.backend: postgresql) to this version's schema
  eval          print, as JSON lines, the notifications that events would cause, decided as the daemon
                decides them on a simulated clock (offline, keys masked)
  test          run rule unit tests (rule_files + tests with events and expected notifications)
  history       what was paged, and when, and what PagerDuty refused (from the running daemon)
  dead-letters  list, retry or purge notifications that could not be delivered
  silence       add, list or expire silences (Alertmanager-style) in the running daemon
  send-test     page one service through the running daemon: PagerDuty's answer proves its key (or not)
  import        turn a Sentry PagerDuty plugin configuration into a rule file (import sentry-plugin)

the commands that talk to a running daemon use --api (default $ALERT_ENGINE_API or
http://127.0.0.1:9595) and, when the daemon has a tokens file, --token (default $ALERT_ENGINE_TOKEN):
a token with the read scope to list (history, list), admin to change anything (admin includes read).

exit status: 0 ok, 1 invalid rules / failed tests / bad events / API error, 2 usage error or
daemon not started (invalid config or rules, state dir or database in use, port in use, database
unusable or at another schema version)
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

    run = sub.add_parser("run", help="run the daemon",
                         description="Run the daemon: POST /v1/events, match, page every listed PagerDuty "
                         "service through the durable outbox. SIGHUP reloads the rules; SIGTERM drains "
                         "and exits. Invalid config or rules: every error printed, exit 2. One daemon per "
                         "state_dir (it is locked), or per PostgreSQL database; a state dir or database in "
                         "use, a port in use or a database that cannot be opened (or is at another schema "
                         "version: alert-engine migrate): one line, exit 2.")
    run.add_argument("--config", default=None, metavar="FILE",
                     help=f"engine.yaml (default: ${CONFIG_ENV} or {DEFAULT_CONFIG})")
    run.add_argument("--dry-run", action="store_true",
                     help="the same pipeline, but deliveries are written to stdout as JSON lines (keys "
                     "masked) instead of sent; missing key variables are warnings")
    run.set_defaults(func=cmd_run)

    check = sub.add_parser("check", help="validate rule files and directories, or a config and its rules",
                           description="Validate rule files (directories are searched for *.yaml, *.yml), or "
                           "with --config the daemon's configuration and the rules it names. Prints "
                           "'ok: N rules, M services in K files' or every error and warning with its location. "
                           "Warnings (a service key that is not 32 characters long, an unused service, a number "
                           "written as a string) do not fail the check; keys are never printed.")
    check.add_argument("paths", nargs="*", metavar="PATH", help="rule file or directory")
    check.add_argument("--config", metavar="FILE", help="check this engine.yaml and its rules too")
    check.add_argument("--allow-missing-secrets", action="store_true",
                       help="report a missing key variable, key file, tokens file or Sentry secret file as a "
                       "warning (for CI without secrets)")
    check.set_defaults(func=cmd_check)

    mig = sub.add_parser("migrate", help="bring the PostgreSQL database to this version's schema",
                         description="With storage.backend: postgresql, apply the schema migrations the database "
                         "lacks (each in its own transaction) and print the versions before and after. Run it "
                         "before the first start and after each upgrade: the daemon does not start on a "
                         "database at another version, and says so. It refuses while an alert-engine runs on "
                         "the database (stop it first). With sqlite there is nothing to do: the daemon "
                         "upgrades its file itself. Exit status: 0 done, 1 the database refused or cannot be "
                         "reached, 2 invalid config.")
    mig.add_argument("--config", default=None, metavar="FILE",
                     help=f"engine.yaml (default: ${CONFIG_ENV} or {DEFAULT_CONFIG})")
    mig.set_defaults(func=cmd_migrate)

    ev = sub.add_parser("eval", help="show the notifications events would cause, offline",
                        description="Run events through the rules as the daemon does (thresholds, throttles, "
                        "mute windows, resolves...) on a simulated clock, and print one JSON line per "
                        'notification that would be sent: {"event", "at", "rule", "service", "api", "url", '
                        '"body"}, keys masked; "event" is the index of the event that caused it, null for '
                        "the timed work (resolve.after, absent), and \"at\" the simulated time. The state starts "
                        "empty and the clock at the first event; the timed work runs every simulated second, "
                        "as the daemon's does, until the last event. Nothing touches the network; missing "
                        "service keys are warnings.")
    ev.add_argument("paths", nargs="+", metavar="PATH", help="rule file or directory")
    ev.add_argument("--events", required=True, metavar="FILE",
                    help="NDJSON or a JSON array (or one object) of events; '-' reads stdin")
    ev.add_argument("--url", default=DEFAULT_PAGERDUTY_URL, help="PagerDuty base URL shown in 'url' "
                    "(default: %(default)s)")
    ev.add_argument("--via", choices=("events", "sentry"), default="events",
                    help="the endpoint the events come in by: events (POST /v1/events, the default) or sentry "
                    "(flat events as POST /v1/sources/sentry makes them, see docs/sentry.md: Sentry's dedup "
                    "keys, summaries and 'View in Sentry' links apply)")
    ev.add_argument("--time-field", metavar="FIELD",
                    help="each event happens at the time in this field (a field path: ts, meta.time; ISO 8601, "
                    "or seconds or milliseconds since the epoch); the clock starts at the earliest. Without "
                    "it, the events come one second apart from 2026-01-01T00:00:00Z")
    ev.add_argument("--explain", action="store_true",
                    help='also print each trigger held back, as {"decision": "hold", "event", "at", "rule", '
                    '"dedup_key", "reason"} with "until" (when what holds it ends) and "by" (mute[0], the '
                    "rule's first mute window; the dedup key of the alert that inhibits it) where known; "
                    "reason: throttled, muted or inhibited (eval starts without silences)")
    ev.add_argument("--stateless", action="store_true",
                    help="match only: every match pages every service of its rule, as if no rule kept state "
                    "(no thresholds, throttles, windows or resolves); \"at\" is left out")
    ev.set_defaults(func=cmd_eval)

    test = sub.add_parser("test", help="run rule unit tests",
                          description="Run rule unit tests. A test file names rule_files (relative to itself) "
                          "and tests, each with events and the exact notifications expected "
                          "({rule, service} plus any of dedup_key, severity, summary).")
    test.add_argument("files", nargs="+", metavar="TESTFILE", help="test file (YAML)")
    test.set_defaults(func=cmd_test)

    api = argparse.ArgumentParser(add_help=False)
    api.add_argument("--api", default=os.environ.get("ALERT_ENGINE_API", DEFAULT_API),
                     help="the daemon's HTTP API (default: $ALERT_ENGINE_API or %(default)s)")
    api.add_argument("--token", default=os.environ.get("ALERT_ENGINE_TOKEN"),
                     help="bearer token, when the daemon has a tokens file: its scope must be read to list, "
                     "admin to change anything (default: $ALERT_ENGINE_TOKEN)")

    hist = sub.add_parser("history", parents=[api], help="what was paged, and when; what was refused",
                          description="The notification log of the running daemon, newest first, as a table: "
                          "time (UTC), rule, service, action, dedup key, outcome (delivered, "
                          "delivered-dry-run, collapsed into a newer trigger, or dead-lettered), PagerDuty's "
                          "HTTP status, attempts, and why (a dead letter's reason with PagerDuty's answer). "
                          "Dead letters are listed while they are kept (retry or purge takes them out).")
    hist.add_argument("--rule", help="only this rule")
    hist.add_argument("--service", help="only this service")
    hist.add_argument("--since", help="ISO 8601 time, epoch seconds, or a duration back from now (1h, 2d)")
    hist.add_argument("--limit", type=int, default=100, help="at most this many rows (default: %(default)s)")
    hist.add_argument("--json", action="store_true", help="print the rows as JSON lines")
    hist.set_defaults(func=cmd_history)

    dead = sub.add_parser("dead-letters", parents=[api], help="list, retry or purge dead letters",
                          description="Notifications PagerDuty rejected (4xx) or that were not delivered "
                          "within give_up_after, or whose service a reload removed. 'retry ID' puts one "
                          "back in the outbox (it goes with the service's key at that time); 'purge [ID...]' "
                          "deletes the given ones, or all. 'list' prints a table: id, when it failed (UTC), "
                          "service, rule, dedup key, attempts, PagerDuty's HTTP status, and the reason with "
                          "PagerDuty's answer.")
    dead.add_argument("action", choices=["list", "retry", "purge"])
    dead.add_argument("ids", nargs="*", type=int, metavar="ID")
    dead.add_argument("--json", action="store_true", help="list: print the rows as JSON lines")
    dead.set_defaults(func=cmd_dead_letters)

    sil = sub.add_parser("silence", help="add, list or expire silences",
                         description="Silences hold pages like Alertmanager's: matches a silence covers are "
                         "counted, not paged, until it ends. The condition is in the rule language and sees "
                         "{rule, dedup_key, event}: e.g. --match '{field: rule, equals: disk-full}' or "
                         "--match '{field: event.host, prefix: db-}'.")
    sil_sub = sil.add_subparsers(dest="silence_action", required=True, metavar="ACTION")
    sil_add = sil_sub.add_parser("add", parents=[api], help="add a silence",
                                 description="Add a silence; exit 0 once it is in effect. With several replicas "
                                 "(docs/ha.md), exit 3 when it was stored but no decider took it within 5 s "
                                 "(during a takeover): it takes effect once one does.")
    sil_add.add_argument("--match", required=True, help="the condition, as YAML or JSON")
    sil_add.add_argument("--until", required=True,
                         help="an ISO 8601 time with a zone, or a duration (2h); at most 365 days ahead")
    sil_add.add_argument("--comment", default="", help="why (shown in list)")
    sil_add.add_argument("--created-by", default=os.environ.get("USER", ""),
                         help="who (default: $USER; when empty, the daemon records the token's name)")
    sil_list = sil_sub.add_parser("list", parents=[api], help="list silences (expired ones for a week)",
                                  description="A table of the silences, expired ones for a week: id, state, "
                                  "until (UTC), covered, who, comment, match. " + COVERED_LEGEND)
    sil_list.add_argument("--json", action="store_true", help="print the silences as JSON lines")
    sil_exp = sil_sub.add_parser("expire", parents=[api], help="end silences now")
    sil_exp.add_argument("ids", nargs="+", type=int, metavar="ID")
    sil.set_defaults(func=cmd_silence)

    st = sub.add_parser("send-test", parents=[api], help="page one service to prove its key",
                        description="Through the running daemon, send a test trigger to SERVICE and wait for "
                        "PagerDuty's answer. Accepted: prints PagerDuty's answer, queues the resolve (due "
                        "--resolve-after after the request) and exits 0. Refused (a dead letter, which raises "
                        "the dead-letter self-alert): prints PagerDuty's reason, queues no resolve, exits 1. "
                        "Neither within --wait (PagerDuty unreachable, or answering 429/5xx): says the page is "
                        "still queued and retried, exits 1.")
    st.add_argument("service", metavar="SERVICE")
    st.add_argument("--resolve-after", default="30s",
                    help="resolve the test incident this long after the request, once PagerDuty accepted it; 0 "
                    "leaves it open (default: %(default)s)")
    st.add_argument("--wait", default="30s",
                    help="wait this long for PagerDuty's answer, at most 2m; 0 only queues the page and "
                    "exits 0 (default: %(default)s)")
    st.set_defaults(func=cmd_send_test)

    imp = sub.add_parser("import", help="turn another tool's alerting configuration into a rule file",
                         description="Turn another tool's alerting configuration into an equivalent rule file.")
    kinds = imp.add_subparsers(dest="kind", required=True, metavar="KIND")
    plugin = kinds.add_parser("sentry-plugin", help="a Sentry PagerDuty plugin configuration",
                              description="Print (on stdout) a rule file that pages like the Sentry PagerDuty "
                              "plugin of one project: the first tag route that matches, else the main service "
                              "key. Keys become ${SENTRY_PD_..._KEY} variables, listed with their values on "
                              "stderr and never written into the file. See docs/sentry.md.")
    plugin.add_argument("--project", required=True, metavar="SLUG", help="the Sentry project's slug")
    plugin.add_argument("--service-key", required=True, metavar="KEY", help="the plugin's Service Key")
    plugin.add_argument("--routes", metavar="FILE", help="the plugin's Tag routing lines, 'tag,value,service "
                        "key' each ('#' comments and blank lines skipped); '-' reads stdin")
    plugin.set_defaults(func=cmd_import_sentry_plugin)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return args.func(args)


def _print_problems(result: LoadResult) -> None:
    for problem in (*result.errors, *result.warnings):
        print(problem, file=sys.stderr)


def _totals(ruleset: RuleSet, files: Sequence[str]) -> str:
    """`3 rules, 1 service in 2 files`."""
    return (f"{plural(len(ruleset.rules), 'rule')}, {plural(len(ruleset.services), 'service')} in "
            f"{plural(len(files), 'file')}")


def cmd_run(args: argparse.Namespace) -> int:
    config = _config(args.config or default_config_path())
    if config is None:
        return 2
    from engine.daemon import run  # the server and its dependencies: only for this command

    redactor = configure_logging(config.log_format or default_format(), config.log_level)
    return asyncio.run(run(config, redactor=redactor, dry_run=args.dry_run))


def cmd_migrate(args: argparse.Namespace) -> int:
    file = args.config or default_config_path()
    config = _config(file)
    if config is None:
        return 2
    if config.storage.backend == SQLITE:
        print(f"{file}: storage is sqlite: the daemon upgrades its database itself; nothing to migrate")
        return 0
    dsn = read_dsn(config.storage)
    if isinstance(dsn, Problem):
        print(f"{dsn.file}: {dsn.message}", file=sys.stderr)
        return 2
    from engine.store.postgres_session import migrate_database  # psycopg: only for this backend

    try:
        where, before, after = asyncio.run(migrate_database(dsn))
    except StorageError as exc:
        print(f"alert-engine migrate: {exc}", file=sys.stderr)
        return 1
    print(f"{where}: at schema version {after}" + (", nothing to do" if before == after else f" (was {before})"))
    return 0


def _config(file: str) -> Config | None:
    loaded = load_config(file)
    if isinstance(loaded, Config):
        return loaded
    for err in loaded:
        print(err, file=sys.stderr)
    return None


def cmd_check(args: argparse.Namespace) -> int:
    if args.config:
        return _check_config(args)
    if not args.paths:
        print("alert-engine check: give rule paths, or --config FILE", file=sys.stderr)
        return 2
    result = load_ruleset(args.paths, allow_missing_secrets=args.allow_missing_secrets)
    _print_problems(result)
    if result.ruleset is None:
        print(f"invalid: {plural(len(result.errors), 'error')}", file=sys.stderr)
        return 1
    print(f"ok: {_totals(result.ruleset, result.files)}")
    return 0


def _check_config(args: argparse.Namespace) -> int:
    config = _config(args.config)
    if config is None:
        return 1
    if args.paths:
        config = replace(config, rules=tuple(args.paths))
    loaded = load_rules(config, dry_run=args.allow_missing_secrets,
                        allow_missing_secret_files=args.allow_missing_secrets)
    result, errors = loaded.result, loaded.errors
    for message in (*errors, *loaded.warnings):
        print(message, file=sys.stderr)
    if errors or result.ruleset is None:
        print(f"invalid: {plural(len(errors), 'error')}", file=sys.stderr)
        return 1
    print(f"ok: {args.config}; {_totals(result.ruleset, result.files)}")
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    if args.stateless and (args.time_field or args.explain):
        print("alert-engine eval: --stateless only matches: it has no clock (--time-field) and holds nothing "
              "(--explain)", file=sys.stderr)
        return 2
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
    base = args.url.rstrip("/")
    origin = sentry.ORIGIN if args.via == "sentry" else None
    services = result.ruleset.services

    def show(n: Notification, shown: dict) -> None:
        line = {**shown, "rule": n.rule, "service": n.service, "api": n.api, "url": n.url(base),
                "body": n.masked_body(services[n.service].key)}
        print(json.dumps(line, ensure_ascii=False))

    if args.stateless:
        now = datetime.now(UTC)
        for i, event in enumerate(events):
            for n in fan_out(result.ruleset, result.ruleset.match(event), now, origin):
                show(n, {"event": i})
        return 0
    try:
        start, timeline = eval_timeline(events, time_field=args.time_field, origin=origin)
    except EventError as exc:
        print(f"{args.events} (event {exc.index}): {exc.message}", file=sys.stderr)
        return 1
    for played in play(result.ruleset, timeline, start=start):
        shown = {"event": played.event, "at": _instant(start + played.at)}
        hold = played.decision
        if args.explain and isinstance(hold, Hold):
            why = {"until": None if hold.until is None else _instant(hold.until), "by": hold.by}
            print(json.dumps({"decision": "hold", **shown, "rule": hold.rule, "dedup_key": hold.dedup_key,
                              "reason": hold.reason, **{k: v for k, v in why.items() if v is not None}},
                             ensure_ascii=False))
        for n in played.notifications:
            show(n, shown)
    return 0


def _instant(seconds: float) -> str:
    """A simulated time as ISO 8601 UTC, with milliseconds when it has a fraction of a second."""
    moment = datetime.fromtimestamp(seconds, UTC)
    return iso_utc(moment, timespec="milliseconds" if moment.microsecond else "seconds")


def _looks_like_ndjson(body: bytes) -> bool:
    """More than one non-blank line, each starting an object: NDJSON rather than one pretty JSON value."""
    lines = [line.strip() for line in body.splitlines() if line.strip()]
    return len(lines) > 1 and all(line.startswith(b"{") and line.endswith(b"}") for line in lines)


def cmd_test(args: argparse.Namespace) -> int:
    failed = passed = 0
    for file in args.files:
        results = run_test_file(file)
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


def cmd_import_sentry_plugin(args: argparse.Namespace) -> int:
    routes = None
    if args.routes:
        try:
            routes = sys.stdin.read() if args.routes == "-" else FsPath(args.routes).read_text("utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            print(f"{args.routes}: cannot read: {getattr(exc, 'strerror', None) or exc}", file=sys.stderr)
            return 1
    try:
        text, keys = import_plugin(args.project, args.service_key, routes)
    except PluginConfigError as exc:
        routes_file = "<stdin>" if args.routes == "-" else args.routes
        where = f"{routes_file}:{exc.line}" if exc.line is not None else "alert-engine import sentry-plugin"
        print(f"{where}: {exc.message}", file=sys.stderr)
        return 1
    sys.stdout.write(text)
    print("# the rule file reads these variables; set them where the daemon runs, never in the file:",
          file=sys.stderr)
    for variable, key in keys.items():
        print(f"{variable}={key}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
