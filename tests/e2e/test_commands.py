"""The operator's commands end to end (`check --config`, `history`, `dead-letters`, `send-test`, `silence
list`) as real
subprocesses against a real daemon, and the daemon's remaining lifecycle: the watchdog, reload on a
changed file, 503 while shutting down, self-alerts on dead letters. No key in anything they print."""

from __future__ import annotations

import asyncio
import json
import re
import signal
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import V1_PATH, V2_PATH, FakePagerDuty, Reply, service_key
from tests.e2e.conftest import KEY_ENV, CliRun, Daemon, free_port, run_cli

RULES = """\
services:
  pay: {service_key: "${PD_PAY}"}
  sre: {service_key: "${PD_SRE}"}
  ops: {service_key: "${PD_OPS}", api: v1}
rules:
  - name: pay-5xx
    match: {all: [{field: service, equals: payments}, {field: status, gte: 500}]}
    services: [pay, ops]
    severity: critical
    summary: "payments {{ event.status }} on {{ event.host }}"
    group_by: [host]
  - name: disk
    match: {field: type, equals: disk}
    services: [sre]
    group_by: [host]
"""

KEYS = list(KEY_ENV.values())
TOKEN = "ingest-token-0123"
READER = "read-token-4567"
ADMIN = "admin-token-89ab"
MASKED = "****0000"  # every test key ends in 0000


class Subprocesses:
    """Starts daemons and CLI commands for one test, and keeps what they printed for the key check."""

    def __init__(self, start_daemon: Any) -> None:
        self._start_daemon = start_daemon
        self.daemons: list[Daemon] = []
        self.runs: list[CliRun] = []

    async def daemon(self, rules: str, *args: str, **kwargs: Any) -> Daemon:
        daemon = await self._start_daemon(rules, *args, **kwargs)
        self.daemons.append(daemon)
        return daemon

    async def cli(self, *args: str, env: dict[str, str] | None = None) -> CliRun:
        run = await run_cli(*args, env=env)
        self.runs.append(run)
        return run

    async def api(self, daemon: Daemon, command: str, *args: str, env: dict[str, str] | None = None) -> CliRun:
        run = await daemon.cli(command, *args, env=env)
        self.runs.append(run)
        return run

    def outputs(self) -> list[str]:
        texts = [d.output() for d in self.daemons]
        texts += [f"{r.stdout}\n{r.stderr}" for r in self.runs]
        return texts


@pytest.fixture
async def procs(start_daemon: Any) -> AsyncIterator[Subprocesses]:
    """Every test's subprocesses; at its end, no service key in any stdout or stderr of theirs."""
    subprocesses = Subprocesses(start_daemon)
    yield subprocesses
    texts = subprocesses.outputs()  # empty only when the first daemon did not start: that failure says why
    assert not texts or any(text.strip() for text in texts), "nothing captured: the key check would prove nothing"
    for text in texts:
        for key in KEYS:
            assert key not in text, f"service key {key} in the output of a subprocess:\n{text[-2000:]}"


def by_dedup_key(fake: FakePagerDuty) -> dict[str, list[Any]]:
    out: dict[str, list[Any]] = {}
    for r in fake.requests:
        out.setdefault(r.body.get("dedup_key") or r.body.get("incident_key"), []).append(r)
    return out


def table_rows(stdout: str) -> list[dict[str, str]]:
    """A table the CLI printed, as one dict a row by its headers (columns start where their header does)."""
    header, *lines = stdout.splitlines()
    names = re.findall(r"\S+(?: \S+)*", header)
    starts = [header.index(name) for name in names]
    bounds = list(zip(starts, [*starts[1:], None], strict=True))
    return [{name: line[a:b].strip() for name, (a, b) in zip(names, bounds, strict=True)} for line in lines]


WHEN = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ$")  # UTC, to the second
INVALID = "Event object is invalid: 'payload.summary' is missing or blank"  # what the fake's 400 says


async def dead_letter_for(daemon: Daemon, dedup_key: str, token: str | None = None) -> dict[str, Any]:
    answer = await daemon.poll(
        "/v1/dead-letters", lambda a: any(d["dedup_key"] == dedup_key for d in a["dead_letters"]), token=token)
    return next(d for d in answer["dead_letters"] if d["dedup_key"] == dedup_key)


# -- check --config ------------------------------------------------------------------------------------

async def test_check_config_validates_the_config_its_rules_tokens_and_self_alerts(procs, tmp_path: Path):
    rules = tmp_path / "rules"
    rules.mkdir()
    (rules / "rules.yaml").write_text(RULES)
    broken = tmp_path / "broken"
    broken.mkdir()
    broken_rules = broken / "rules.yaml"
    broken_rules.write_text(RULES.replace("    severity: critical\n", "    sevrity: critical\n"))
    (tmp_path / "tokens").write_text(f"# token scopes name\n{TOKEN} events relay\n")

    def config(name: str, text: str) -> Path:
        path = tmp_path / name
        path.write_text(text)
        return path

    good = config("good.yaml", "rules: [rules]\nstate_dir: state\ningest: {tokens_file: tokens}\n"
                               "self_alerts: {services: [sre]}\n")
    invalid = config("invalid.yaml", "rules: [rules]\nstate_dir: state\npagerduty:\n  timeout: 10 seconds\n"
                                     "shutdown_grase: 5s\n")
    bad_rules = config("bad-rules.yaml", "rules: [broken]\nstate_dir: state\n")
    unknown_self = config("unknown-self.yaml", "rules: [rules]\nstate_dir: state\nself_alerts: {services: [nobody]}\n")
    no_tokens = config("no-tokens.yaml", "rules: [rules]\nstate_dir: state\ningest: {tokens_file: missing}\n")
    runs = await asyncio.gather(*(procs.cli("check", "--config", str(c), env=KEY_ENV)
                                  for c in (good, invalid, bad_rules, unknown_self, no_tokens)))
    ok, inv, bad, unknown, missing = runs

    assert (ok.returncode, ok.stdout) == (0, f"ok: {good}; 2 rules, 3 services in 1 file\n")
    assert inv.returncode == 1 and inv.stdout == ""
    errors = inv.stderr.splitlines()
    assert f"{invalid}:5:1: unknown key 'shutdown_grase' (did you mean 'shutdown_grace'?)" in errors
    [timeout] = [e for e in errors if e.startswith(f"{invalid}:4:3: ")]
    assert "'timeout' is not valid: '10 seconds'" in timeout and "30s, 5m" in timeout
    assert bad.returncode == 1
    assert f"{broken_rules}:9:5: rule 'pay-5xx': unknown key 'sevrity' (did you mean 'severity'?)" \
        in bad.stderr.splitlines()
    assert bad.stderr.splitlines()[-1] == "invalid: 1 error"
    assert unknown.returncode == 1
    assert f"{unknown_self}: self_alerts: unknown service 'nobody' (not in any rule file)" in unknown.stderr
    assert missing.returncode == 1
    assert f"{tmp_path / 'missing'}: cannot read tokens file" in missing.stderr
    assert all(r.stdout == "" for r in (bad, unknown, missing))


# -- history -------------------------------------------------------------------------------------------

async def test_history_lists_deliveries_and_dead_letters_in_a_table_filtered_by_rule_service_and_time(
        procs, fake_pagerduty):
    daemon = await procs.daemon(RULES)
    fake_pagerduty.fail_next(1, 400, dedup_key="disk/db-1")
    await daemon.post_events([{"service": "payments", "status": 503, "host": "web-1"},
                              {"type": "disk", "host": "db-1"}])
    await fake_pagerduty.wait_for(3)
    await daemon.poll("/v1/notifications", lambda a: len(a["notifications"]) == 3)
    future = str(time.time() + 3600)
    table, by_rule, by_service, as_json, none_since, unreachable = await asyncio.gather(
        procs.api(daemon, "history"),
        procs.api(daemon, "history", "--rule", "disk"),
        procs.api(daemon, "history", "--service", "ops"),
        procs.api(daemon, "history", "--since", "1h", "--json"),
        procs.api(daemon, "history", "--since", future),
        procs.cli("history", "--api", f"http://127.0.0.1:{free_port()}"),
    )
    assert table.returncode == 0
    assert table.stdout.splitlines()[0].split("  ")[0] == "TIME"
    rows = table_rows(table.stdout)
    assert list(rows[0]) == ["TIME", "RULE", "SERVICE", "ACTION", "DEDUP KEY", "OUTCOME", "STATUS", "ATTEMPTS",
                             "REASON"]
    assert all(WHEN.match(r["TIME"]) for r in rows)
    by_service_name = {r["SERVICE"]: r for r in rows}
    shown = ("RULE", "ACTION", "DEDUP KEY", "OUTCOME", "STATUS", "ATTEMPTS", "REASON")
    assert {name: tuple(r[k] for k in shown) for name, r in by_service_name.items()} == {
        "pay": ("pay-5xx", "trigger", "pay-5xx/web-1", "delivered", "202", "1", ""),
        "ops": ("pay-5xx", "trigger", "pay-5xx/web-1", "delivered", "200", "1", ""),
        "sre": ("disk", "trigger", "disk/db-1", "dead-lettered", "400", "1",
                f"PagerDuty rejected it: HTTP 400; PagerDuty said: {INVALID}"),
    }
    [disk] = table_rows(by_rule.stdout)
    assert (disk["SERVICE"], disk["OUTCOME"]) == ("sre", "dead-lettered")
    [ops] = table_rows(by_service.stdout)
    assert (ops["RULE"], ops["DEDUP KEY"], ops["STATUS"]) == ("pay-5xx", "pay-5xx/web-1", "200")
    rows = [json.loads(line) for line in as_json.stdout.splitlines()]
    assert sorted((r["service"], r["rule"], r["api"], r["status"], r["outcome"]) for r in rows) == [
        ("ops", "pay-5xx", "v1", 200, "delivered"), ("pay", "pay-5xx", "v2", 202, "delivered"),
        ("sre", "disk", "v2", 400, "dead-lettered")]
    assert [r["reason"] for r in rows if r["service"] == "sre"] == ["PagerDuty rejected it: HTTP 400"]
    assert all("routing_key" not in r["body"] and "service_key" not in r["body"] for r in rows)  # kept keyless
    assert (none_since.returncode, none_since.stdout) == (0, "")
    assert "no notifications" in none_since.stderr
    assert unreachable.returncode == 1 and "cannot reach the daemon" in unreachable.stderr
    assert await daemon.stop() == 0


# -- dead-letters --------------------------------------------------------------------------------------

async def test_dead_letters_list_with_read_and_retry_purge_with_admin(procs, fake_pagerduty, tmp_path):
    tokens = tmp_path / "tokens"
    tokens.write_text(f"{TOKEN} events relay\n{READER} read dashboards\n{ADMIN} admin oncall\n")
    daemon = await procs.daemon(RULES, ingest={"tokens_file": str(tokens)})
    fake_pagerduty.fail_next(1, 400, dedup_key="disk/a")
    status, _ = await daemon.post_events({"type": "disk", "host": "a"}, token=TOKEN)
    assert status == 202
    letter = await dead_letter_for(daemon, "disk/a", token=READER)
    ident = str(letter["id"])

    listed, as_json, list_anon, retry_anon, retry_read, purge_one_events, purge_all_read = await asyncio.gather(
        procs.api(daemon, "dead-letters", "list", "--token", READER),
        procs.api(daemon, "dead-letters", "list", "--json", env={"ALERT_ENGINE_TOKEN": ADMIN}),
        procs.api(daemon, "dead-letters", "list"),
        procs.api(daemon, "dead-letters", "retry", ident),
        procs.api(daemon, "dead-letters", "retry", ident, "--token", READER),
        procs.api(daemon, "dead-letters", "purge", ident, "--token", TOKEN),
        procs.api(daemon, "dead-letters", "purge", env={"ALERT_ENGINE_TOKEN": READER}),
    )
    [row] = table_rows(listed.stdout)
    assert listed.returncode == 0
    assert list(row) == ["ID", "FAILED", "SERVICE", "RULE", "DEDUP KEY", "ATTEMPTS", "STATUS", "REASON"]
    assert (row["ID"], row["SERVICE"], row["RULE"], row["DEDUP KEY"], row["ATTEMPTS"], row["STATUS"]) == (
        ident, "sre", "disk", "disk/a", "1", "400")
    assert WHEN.match(row["FAILED"])
    assert row["REASON"] == f"PagerDuty rejected it: HTTP 400; PagerDuty said: {INVALID}"  # PagerDuty's reason
    [row] = [json.loads(x) for x in as_json.stdout.splitlines()]  # admin includes read
    assert "routing_key" not in row["body"] and row["status"] == 400
    assert row["reason"] == "PagerDuty rejected it: HTTP 400"
    assert list_anon.returncode == 1 and list_anon.stdout == ""
    assert ("HTTP 401: missing or invalid bearer token: this needs a token with the 'read' scope; give a token "
            "with --token or $ALERT_ENGINE_TOKEN") in list_anon.stderr
    assert retry_anon.returncode == 1
    assert "HTTP 401: missing or invalid bearer token: this needs a token with the 'admin' scope" in retry_anon.stderr
    for refused, name in ((retry_read, "dashboards"), (purge_one_events, "relay"), (purge_all_read, "dashboards")):
        assert refused.returncode == 1, refused
        assert f"HTTP 403: token '{name}' lacks the 'admin' scope this needs" in refused.stderr
    _, answer = await daemon.request("GET", "/v1/dead-letters", token=READER)
    assert [d["id"] for d in answer["dead_letters"]] == [letter["id"]]

    retried = await procs.api(daemon, "dead-letters", "retry", ident, "--token", ADMIN)
    assert retried.returncode == 0 and f"dead letter {ident} is back in the outbox" in retried.stdout
    [first, again] = (await fake_pagerduty.wait_for(2))[:2]
    assert again.body["dedup_key"] == first.body["dedup_key"] == "disk/a"
    delivered = await daemon.poll("/v1/notifications?rule=disk", lambda a: len(a["notifications"]) == 1,
                                  token=READER)
    assert delivered["notifications"][0]["status"] == 202

    fake_pagerduty.fail_next(1, 400, dedup_key="disk/b")
    await daemon.post_events({"type": "disk", "host": "b"}, token=TOKEN)
    second = await dead_letter_for(daemon, "disk/b", token=ADMIN)
    purged = await procs.api(daemon, "dead-letters", "purge", str(second["id"]),
                             env={"ALERT_ENGINE_TOKEN": ADMIN})
    assert (purged.returncode, purged.stdout) == (0, "purged 1 dead letter\n")
    empty = await procs.api(daemon, "dead-letters", "list", "--token", READER)
    assert (empty.returncode, empty.stdout) == (0, "") and "no dead letters" in empty.stderr
    assert await daemon.stop() == 0
    log = daemon.output()
    assert f"POST /v1/dead-letters/{ident}/retry by token 'oncall': HTTP 200" in log
    assert f"DELETE /v1/dead-letters/{second['id']} by token 'oncall': HTTP 200" in log
    assert "lacks the 'admin' scope" in log
    assert not any(secret in log for secret in (TOKEN, READER, ADMIN))


# -- send-test -----------------------------------------------------------------------------------------

async def test_send_test_prints_pagerdutys_answer_then_resolves_on_v2_and_v1_and_refuses_unknown_services(
        procs, fake_pagerduty):
    daemon = await procs.daemon(RULES)
    asked = time.monotonic()
    sre, ops, unknown = await asyncio.gather(
        procs.api(daemon, "send-test", "sre", "--resolve-after", "1s"),
        procs.api(daemon, "send-test", "ops", "--resolve-after", "1s"),
        procs.api(daemon, "send-test", "nope"),
    )
    assert sre.returncode == 0 and ops.returncode == 0
    assert sre.stdout.startswith('PagerDuty accepted the test page for service sre: HTTP 202 {"status": "success", '
                                 '"message": "Event processed", "dedup_key": "alert-engine/send-test/sre/')
    assert ops.stdout.startswith("PagerDuty accepted the test page for service ops: HTTP 200 ")
    assert "its resolve: queued: due 1s after the request" in sre.stdout
    assert unknown.returncode == 1 and "HTTP 404: unknown service 'nope'" in unknown.stderr
    assert unknown.stdout == "" and MASKED not in unknown.stderr
    await fake_pagerduty.wait_for(4, timeout=10)
    pages = by_dedup_key(fake_pagerduty)
    assert len(pages) == 2
    for name, path, action, key in (("sre", V2_PATH, "event_action", "routing_key"),
                                    ("ops", V1_PATH, "event_type", "service_key")):
        [(dedup_key, (trigger, resolve))] = [(k, v) for k, v in pages.items() if f"/send-test/{name}/" in k]
        assert dedup_key in (sre if name == "sre" else ops).stdout
        assert {trigger.path, resolve.path} == {path}
        assert trigger.body[key] == resolve.body[key] == service_key(name)
        assert (trigger.body[action], resolve.body[action]) == ("trigger", "resolve")
        assert resolve.at > trigger.at
        assert resolve.at - asked >= 1.0  # due 1 s after the request, however late the trigger went
    assert await daemon.stop() == 0


async def test_send_test_of_a_refused_key_exits_1_with_pagerdutys_reason_no_resolve_and_a_self_alert(
        procs, fake_pagerduty):
    daemon = await procs.daemon(RULES, self_alerts={"services": ["sre"]})
    await fake_pagerduty.wait_for(1)  # start-up resolves any reload-failed alert
    fake_pagerduty.fail_next(1, 400)  # the next request: the test page
    refused = await procs.api(daemon, "send-test", "ops", "--resolve-after", "1s")
    assert refused.returncode == 1 and refused.stdout == ""
    assert (f"HTTP 502: PagerDuty refused the test page: HTTP 400: {INVALID}; its resolve: not queued: PagerDuty "
            "did not take the trigger") in refused.stderr
    # the dead letter pages the self-alert services like any other (and no resolve follows the refused trigger)
    await fake_pagerduty.wait_for(3)
    [test_key] = [k for k in by_dedup_key(fake_pagerduty) if "/send-test/ops/" in k]
    [alert] = by_dedup_key(fake_pagerduty)["alert-engine/dead-letter/ops"]
    assert alert.body["routing_key"] == service_key("sre")
    details = alert.body["payload"]["custom_details"]
    assert (details["rule"], details["dedup_key"]) == ("alert-engine:send-test", test_key)
    history, letters = await asyncio.gather(procs.api(daemon, "history", "--rule", "alert-engine:send-test"),
                                            procs.api(daemon, "dead-letters", "list"))
    [row] = table_rows(history.stdout)
    assert (row["DEDUP KEY"], row["OUTCOME"], row["STATUS"]) == (test_key, "dead-lettered", "400")
    [letter] = table_rows(letters.stdout)
    assert letter["REASON"].endswith(INVALID)
    assert await daemon.stop() == 0  # a clean stop sends whatever is due: no resolve was queued
    assert [r.body["event_type"] for r in by_dedup_key(fake_pagerduty)[test_key]] == ["trigger"]


async def test_send_test_not_answered_within_wait_exits_1_and_resolves_once_delivered(procs, fake_pagerduty):
    daemon = await procs.daemon(RULES)
    fake_pagerduty.fail_next(1, 500)
    fake_pagerduty.reply_next(Reply(202, {"status": "success"}, delay=1.5))  # the retry, answered late
    late = await procs.api(daemon, "send-test", "sre", "--wait", "1s", "--resolve-after", "0.1s")
    assert late.returncode == 1 and late.stdout == ""
    assert ("HTTP 504: PagerDuty has not accepted the test page within 1s (the last attempt got HTTP 500: HTTP "
            "500): it is still queued and will be retried") in late.stderr
    assert "; its resolve: queued once PagerDuty accepts the trigger, due 0.1s after the request" in late.stderr
    received = await fake_pagerduty.wait_for(3, timeout=10)
    assert [(r.body["event_action"], r.status) for r in received] == [
        ("trigger", 500), ("trigger", 202), ("resolve", 202)]
    too_long = await procs.api(daemon, "send-test", "sre", "--wait", "1h")
    assert too_long.returncode == 1 and "HTTP 400" in too_long.stderr and "'wait' must be from 0 to 120s" in \
        too_long.stderr
    queued = await procs.api(daemon, "send-test", "sre", "--wait", "0", "--resolve-after", "0")
    assert queued.returncode == 0 and queued.stdout.startswith("test page queued for service sre (dedup key ")
    assert "its resolve: none asked for" in queued.stdout
    [page] = (await fake_pagerduty.wait_for(4))[3:]
    assert page.body["dedup_key"] in queued.stdout
    assert await daemon.stop() == 0


# -- silence list --------------------------------------------------------------------------------------

async def test_silence_list_says_what_covered_counts_and_counts_it(procs):
    rules = RULES + """\
  - name: flapping
    match: {field: type, equals: flap}
    services: [sre, pay]
    threshold: {count: 3, window: 1m}
"""
    daemon = await procs.daemon(rules)
    for match in ({"field": "event.host", "equals": "web-1"}, {"field": "rule", "equals": "flapping"}):
        status, _ = await daemon.request("POST", "/v1/silences", json={"match": match, "until": "1h",
                                                                       "comment": "maintenance", "created_by": "ana"})
        assert status == 201
    # two matches of a rule paging two services: 2 covered, not 4
    await daemon.post_events([{"service": "payments", "status": 503, "host": "web-1"}] * 2)
    # four matches of a threshold of 3 to two services: one trigger held back, 1 covered
    await daemon.post_events([{"type": "flap"}] * 4)
    listed = await procs.cli("silence", "list", "--api", daemon.url)
    assert listed.returncode == 0
    *table, legend = listed.stdout.splitlines()
    rows = table_rows("\n".join(table))
    assert list(rows[0]) == ["ID", "STATE", "UNTIL", "COVERED", "BY", "COMMENT", "MATCH"]
    assert [(r["ID"], r["STATE"], r["COVERED"], r["BY"], r["COMMENT"]) for r in rows] == [
        ("1", "active", "2", "ana", "maintenance"), ("2", "active", "1", "ana", "maintenance")]
    assert json.loads(rows[1]["MATCH"]) == {"field": "rule", "equals": "flapping"}
    assert legend.startswith("COVERED: the matches a silence held back from paging, one per match whatever the "
                             "number of services; on a stateful rule, a match counts when it would have triggered")
    assert await daemon.stop() == 0


# -- the daemon's lifecycle ------------------------------------------------------------------------------

async def test_watchdog_pings_at_half_the_interval_systemd_gives(procs):
    daemon = await procs.daemon(RULES, env={"WATCHDOG_USEC": "200000"})
    first = await daemon.wait_message("WATCHDOG=1", timeout=5)
    second = await daemon.wait_message("WATCHDOG=1", timeout=5)
    assert first == second == "WATCHDOG=1"
    assert await daemon.stop() == 0


async def test_reload_on_change_swaps_valid_rules_and_keeps_the_old_ones_when_broken(procs, fake_pagerduty,
                                                                                       tmp_path):
    daemon = await procs.daemon(RULES, reload_on_change=True)
    # one answered request after READY=1: the watcher task, scheduled before READY=1, has armed its watch
    await daemon.request("GET", "/v1/status")
    rules_file = tmp_path / "rules" / "rules.yaml"
    rules_file.write_text(RULES.replace("equals: disk", "equals: disk2"))
    await daemon.wait_message("RELOADING=1")
    await daemon.wait_message("READY=1")
    _, answer = await daemon.post_events([{"type": "disk", "host": "x"}, {"type": "disk2", "host": "y"}])
    assert answer == {"accepted": 2, "matched": 1, "notifications": 1}
    [page] = await fake_pagerduty.wait_for(1)
    assert page.body["dedup_key"] == "disk/y"

    rules_file.write_text(RULES.replace("equals: disk", "equals: disk2").replace("[sre]", "[sre, nobody]"))
    for _ in range(3):  # a stray second file event may reload the good rules once more first
        await daemon.wait_message("RELOADING=1")
        await daemon.wait_message("READY=1")
        _, st = await daemon.request("GET", "/v1/status")
        if not st["last_reload"]["ok"]:
            break
    assert st["last_reload"]["ok"] is False
    assert any("unknown service 'nobody'" in e for e in st["last_reload"]["errors"])
    _, answer = await daemon.post_events([{"type": "disk2", "host": "z"}, {"type": "disk", "host": "w"}])
    assert answer == {"accepted": 2, "matched": 1, "notifications": 1}
    assert await daemon.stop() == 0
    assert "unknown service 'nobody'" in daemon.output()


async def test_events_during_shutdown_get_503_and_a_cut_delivery_is_sent_after_restart(procs, fake_pagerduty):
    fake_pagerduty.delay = 3
    daemon = await procs.daemon(RULES, shutdown_grace="1s")
    await daemon.post_events({"type": "disk", "host": "slow"})
    await fake_pagerduty.wait_for(1)
    signalled = time.monotonic()
    daemon.send_signal(signal.SIGTERM)
    await daemon.wait_message("STOPPING=1")
    status, answer = await daemon.post_events({"type": "disk", "host": "refused"})
    assert status == 503 and "shutting down" in answer["error"]
    assert await asyncio.wait_for(daemon.proc.wait(), 1 + 4) == 0
    assert time.monotonic() - signalled < 1 + 4

    fake_pagerduty.delay = 0
    await daemon.start()
    received = await fake_pagerduty.wait_for(2)
    assert [r.body["dedup_key"] for r in received] == ["disk/slow", "disk/slow"]  # and never disk/refused
    history = await daemon.poll("/v1/notifications", lambda a: len(a["notifications"]) == 1)
    assert history["notifications"][0]["dedup_key"] == "disk/slow"
    assert history["notifications"][0]["status"] == 202
    assert await daemon.stop() == 0


async def test_a_dead_letter_pages_the_self_alert_services_but_a_dead_self_alert_does_not(procs, fake_pagerduty):
    # pay-5xx pages pay alone here: the fake scripts its 400s by dedup key, which ops would share
    daemon = await procs.daemon(RULES.replace("[pay, ops]", "[pay]"), self_alerts={"services": ["sre"]})
    [resolve] = await fake_pagerduty.wait_for(1)  # start-up resolves any reload-failed alert
    assert resolve.body["dedup_key"] == "alert-engine/reload-failed"
    fake_pagerduty.fail_next(1, 400, dedup_key="pay-5xx/web-1")
    await daemon.post_events({"service": "payments", "status": 502, "host": "web-1"})
    await fake_pagerduty.wait_for(3)  # pay (400) and the self-alert
    [page] = by_dedup_key(fake_pagerduty)["alert-engine/dead-letter/pay"]
    assert page.path == V2_PATH and page.body["routing_key"] == service_key("sre")
    payload = page.body["payload"]
    assert payload["severity"] == "critical"
    assert "service pay" in payload["summary"] and "rule pay-5xx" in payload["summary"]
    details = payload["custom_details"]
    assert (details["rule"], details["service"], details["dedup_key"]) == ("pay-5xx", "pay", "pay-5xx/web-1")
    assert details["reason"] == "PagerDuty rejected it: HTTP 400"

    # the self-alert itself is refused: it becomes a dead letter, and nothing pages about that
    fake_pagerduty.fail_next(1, 400, dedup_key="pay-5xx/web-2")
    fake_pagerduty.fail_next(1, 400, dedup_key="alert-engine/dead-letter/pay")
    await daemon.post_events({"service": "payments", "status": 502, "host": "web-2"})
    await fake_pagerduty.wait_for(5)
    letter = await dead_letter_for(daemon, "alert-engine/dead-letter/pay")
    assert (letter["rule"], letter["service"]) == ("alert-engine:self", "sre")
    # a clean stop delivers everything due before it exits: a page about that dead letter would be sent now
    assert await daemon.stop() == 0
    assert len(fake_pagerduty.requests) == 5
    assert [r.status for r in by_dedup_key(fake_pagerduty)["alert-engine/dead-letter/pay"]] == [202, 400]
    assert "stopped; 0 notification(s) left in the outbox" in daemon.output()
