"""The daemon's lifecycle: start, serve, reload on SIGHUP, drain on SIGTERM, and tell systemd each step.

Start: load the config and the rules (every error printed, exit 2 when invalid), open the outbox, resume
delivery of whatever is pending, serve, then `READY=1`. A reload (SIGHUP, `POST /-/reload`, or a changed
rules file with `reload_on_change`) loads and validates the new rule set in full on a worker thread and
swaps one reference; requests in flight finish on the set they started with, and a broken rule set
leaves the old one serving. SIGTERM / SIGINT: refuse new events (503), finish requests in flight, keep
delivering for up to `shutdown_grace`, leave the rest in the outbox, exit 0.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import sys
import time
from collections.abc import Iterator, Sequence
from datetime import UTC, datetime
from typing import Any, TextIO

from aiohttp import web
from apscheduler.schedulers.asyncio import AsyncIOScheduler
from watchfiles import awatch

from engine.cluster import Member, Membership
from engine.config import SQLITE, ApiTokens, Config, read_dsn
from engine.decider import Decider, Inbox, Queued, accepted_view, queued_view
from engine.deliver import Deliverer
from engine.intake import Accepted, Intake
from engine.logs import Redactor
from engine.metrics import Registry
from engine.own_pages import RELOAD_FAILED_KEY, RULESET_MISMATCH_KEY, dead_letter_alert, self_alert, self_resolve
from engine.reload import Loaded, ReloadResult, StartupError, load_rules
from engine.render import Notification
from engine.rules.errors import Problem
from engine.rules.load import fingerprint
from engine.rules.ruleset import RuleSet, Service
from engine.sdnotify import Notifier
from engine.sendtest import SendTest, SendTestResult
from engine.server import make_app
from engine.silences import parse_silence, restore_silence
from engine.sources import sentry
from engine.startup import listen, lock_state_dir, unlock
from engine.state import Silence, State
from engine.store import DeadLetter, HistoryEntry, StorageError, Store
from engine.store.sqlite import SQLiteStore
from engine.units import iso_seconds

log = logging.getLogger("alert_engine.daemon")

HOST = os.uname().nodename
HISTORY_PRUNE_INTERVAL = 3600.0
TICK_INTERVAL = 1.0  # timed work (resolve-after, absent, mute ends) fires within this of its due time
STORAGE_CHECK_INTERVAL = 2.0  # how often the database's health is looked at (and a recovery noticed)
STORAGE_TIMEOUT = 2.0  # seconds the database has to answer a health check
STORAGE_KEY = "alert-engine/storage"
HANDLER_CUTOFF = 1.0  # at the end of a shutdown, requests still running (a stalled body) get this, then cancelled
INBOX_PRUNE_INTERVAL = 60.0
MISMATCH_GRACE = 60.0  # seconds replicas may serve different rule sets (a rolling reload) before the self-alert


class Daemon:
    """One running engine: the current rule set, the outbox, delivery, and the HTTP API."""

    def __init__(self, config: Config, *, redactor: Redactor, dry_run: bool = False,
                 out: TextIO = sys.stdout) -> None:
        self.config = config
        self.dry_run = dry_run
        self.redactor = redactor
        self.out = out
        self.metrics = Registry(process_metrics=True)
        self.notifier = Notifier.from_env()
        self.stopping = False
        self.tokens: ApiTokens | None = None
        self.sentry_secrets: frozenset[str] = frozenset()
        self.ruleset: RuleSet
        self.loaded_at = 0.0
        self.last_reload: ReloadResult
        self.store: Store
        self.storage = config.database if config.storage.backend == SQLITE else "PostgreSQL"  # named in messages
        self._dsn: str | None = None  # PostgreSQL's connection string, read at start
        self._dsn_secrets: list[str] = []  # its password: masked like the keys
        self.deliverer: Deliverer
        self.intake: Intake
        self.decider: Decider
        self.membership: Membership
        self.replica_id = config.cluster.replica_id or f"{HOST}:{config.port}"
        shown_host = HOST if config.host in ("0.0.0.0", "::", "") else config.host
        self.address = config.cluster.advertise or f"http://{shown_host}:{config.port}"
        self._mismatch_since: float | None = None
        self._mismatch_alert_open = False
        self.send_tests = SendTest(lambda pages, at: self.intake.enqueue(pages, at))
        self._stop = asyncio.Event()
        self._in_flight = 0
        self._drained = asyncio.Event()
        self._drained.set()
        self._reload_lock = asyncio.Lock()
        self._reloads_requested = 0
        self._reloads_covered = 0
        self._reload_alert_open = False
        self._storage_problem: str | None = None
        self._tasks: list[asyncio.Task[Any]] = []
        self._runner: web.AppRunner | None = None
        self._lock: int | None = None  # the state dir's lock file, held while running
        self.scheduler = AsyncIOScheduler(timezone=UTC)
        m = self.metrics
        self._reload_success = m.gauge("alert_engine_reload_success", "1 if the last reload succeeded, else 0.")
        self._reload_time = m.gauge("alert_engine_reload_timestamp_seconds", "When the last reload finished.")
        self._reloads = m.counter("alert_engine_reloads_total", "Reloads, by result.", ["result"])
        m.prime("result", ("success", "failure"))
        self._rules_loaded = m.gauge("alert_engine_rules_loaded", "Rules in the rule set serving now.")
        self._rule_files = m.gauge("alert_engine_rule_file_info", "Loaded rule files and their sha256.",
                                   ["file", "sha256"])
        self._outbox = m.gauge("alert_engine_outbox_depth", "Notifications waiting in the outbox.")
        self._oldest = m.gauge("alert_engine_outbox_oldest_age_seconds",
                               "Age of the oldest notification in the outbox; 0 when it is empty.")
        self._dead = m.gauge("alert_engine_dead_letters", "Dead letters kept in the database.")

    # -- start and stop -------------------------------------------------------------------------------

    async def start(self) -> None:
        """Load everything, resume delivery, serve. Raises StartupError when the rules are invalid, the state
        dir (or database) is another daemon's, the port is taken, or the database cannot be opened."""
        if self.config.storage.backend != SQLITE:
            self._read_dsn()
        loaded = await asyncio.to_thread(load_rules, self.config, dry_run=self.dry_run)
        result = loaded.result
        if loaded.errors or result.ruleset is None:
            raise StartupError(loaded.errors)
        for warning in loaded.warnings:
            log.warning("%s", warning)
        self._swap(loaded, time.time())
        self.last_reload = ReloadResult(True, time.time(), warnings=tuple(loaded.warnings),
                                        sha256=result.ruleset.sha256, rules=len(result.ruleset.rules))
        if self._dsn is None:
            assert self.config.state_dir is not None  # the schema requires it with SQLite
            self._lock = lock_state_dir(self.config.state_dir)  # before anything in it is read
        sockets = listen(self.config.host, self.config.port)  # before the database is touched
        try:
            self.store = await open_store(self.config, self._dsn, self.replica_id)
        except StorageError as exc:
            raise StartupError([str(exc)]) from None
        if woken := await self.store.expedite_all(now=time.time()):
            log.info("%d notification(s) waiting for a retry when the daemon stopped: due now", woken)
        pd = self.config.pagerduty
        self.deliverer = Deliverer(
            self.store, service_key=self._service_key, base_url=pd.url, timeout=pd.timeout, concurrency=pd.concurrency,
            give_up_after=pd.give_up_after, rate_per_key=pd.rate_per_key, burst=pd.burst,
            pacer=self.store.pacer(pd.rate_per_key, pd.burst) if pd.rate_per_key > 0 else None,
            metrics=self.metrics, dry_run=self.out if self.dry_run else None,
            on_dead_letter=self._dead_lettered, on_outcome=self.send_tests.outcome,
        )
        self.intake = Intake(self.store, State(started=time.time()), self.deliverer.notify, self.metrics,
                             max_notifications=self.config.ingest.max_notifications, guard=self._writable)
        self.decider = Decider(self.store, self.intake, lambda: self.ruleset, load_state=self._load_state,
                               inbox=self.store if isinstance(self.store, Inbox) else None)
        cluster = self.config.cluster
        self.membership = Membership(self.store, self._member, interval=cluster.heartbeat, lease=cluster.decider_lease,
                                     elected=self.decider.elected, deposed=self.decider.deposed, metrics=self.metrics)
        self.store.listen({"alert_engine_outbox": self.deliverer.notify, "alert_engine_inbox": self.decider.wake_inbox,
                           "alert_engine_decided": self.decider.wake_results})
        try:
            await self.membership.start()
        except StorageError as exc:
            raise StartupError([f"{self.storage}: {exc}"]) from None
        await self.deliverer.start()
        counts = await self.store.counts()
        if counts.outbox:
            log.info("resuming delivery of %d pending notification(s)", counts.outbox)
        self._runner = web.AppRunner(make_app(self, self.config.ingest.max_body), access_log=None,
                                     handle_signals=False, keepalive_timeout=self.config.ingest.idle_timeout,
                                     shutdown_timeout=HANDLER_CUTOFF)
        await self._runner.setup()
        for sock in sockets:
            await web.SockSite(self._runner, sock).start()
        if self.config.self_alert_services:
            await self._resolve_self_alert(RELOAD_FAILED_KEY)  # a restart with good rules ends that alert
        self.scheduler.add_job(self._tick, "interval", seconds=TICK_INTERVAL, id="tick", max_instances=1,
                               coalesce=True, misfire_grace_time=None)
        self.scheduler.add_job(self._watch_storage, "interval", seconds=STORAGE_CHECK_INTERVAL, id="storage",
                               max_instances=1, coalesce=True)
        self.scheduler.add_job(self._watch_cluster, "interval", seconds=self.config.cluster.heartbeat, id="cluster",
                               max_instances=1, coalesce=True)
        self.scheduler.add_job(self.decider.prune, "interval", seconds=INBOX_PRUNE_INTERVAL, id="prune-inbox",
                               max_instances=1, coalesce=True)
        self.scheduler.add_job(self._prune_history, "interval", seconds=HISTORY_PRUNE_INTERVAL, id="prune",
                               next_run_time=datetime.now(UTC), max_instances=1, coalesce=True)
        self.scheduler.start()
        if self.notifier.watchdog_interval:
            self._tasks.append(asyncio.create_task(self._watchdog(), name="watchdog"))
        if self.config.reload_on_change:
            self._tasks.append(asyncio.create_task(self._watch_rules(), name="watch-rules"))
            # awatch registers its inotify watches in its first step, before it first awaits: one turn of
            # the loop and they are in place. An edit made before that is caught by comparing hashes.
            await asyncio.sleep(0)
            now_on_disk = fingerprint(list(self.config.rules))
            if any(now_on_disk.get(file) != sha for file, sha in self.ruleset.files.items()):
                log.info("rules changed while starting; reloading")
                await self.reload()
        log.info("serving on %s:%d with %d rules%s", self.config.host, self.config.port,
                 len(self.ruleset.rules), " (dry run: nothing is sent)" if self.dry_run else "")
        self.notifier.ready()
        self.notifier.status(f"serving {len(self.ruleset.rules)} rules")

    def install_signal_handlers(self) -> None:
        loop = asyncio.get_running_loop()
        loop.add_signal_handler(signal.SIGHUP, lambda: asyncio.ensure_future(self.reload()))
        loop.add_signal_handler(signal.SIGTERM, self._stop.set)
        loop.add_signal_handler(signal.SIGINT, self._stop.set)

    async def wait_stopped(self) -> None:
        await self._stop.wait()

    async def shutdown(self) -> None:
        """Refuse new events, finish requests in flight and deliver, both within one grace; keep the rest.
        The whole stop takes at most `shutdown_grace` plus HANDLER_CUTOFF, well inside the unit's
        TimeoutStopSec (30 s for the default 10 s)."""
        self.stopping = True
        self.notifier.stopping()
        grace = self.config.shutdown_grace
        log.info("stopping: delivering for up to %gs, the rest stays in the outbox", grace)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + grace
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout_at(deadline):
                await self._drained.wait()
        self.scheduler.shutdown(wait=False)
        await self.membership.stop()
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self.deliverer.stop(max(0.0, deadline - loop.time()))
        if self._runner is not None:
            await self._runner.cleanup()
        counts = await self.store.counts()
        await self.store.close()
        if self._lock is not None:
            unlock(self._lock)
        log.info("stopped; %d notification(s) left in the outbox for the next start", counts.outbox)

    # -- events ---------------------------------------------------------------------------------------

    @contextlib.contextmanager
    def tracking_request(self) -> Iterator[None]:
        """Count an intake request in flight, so that shutdown can wait for it."""
        self._in_flight += 1
        self._drained.clear()
        try:
            yield
        finally:
            self._in_flight -= 1
            if not self._in_flight:
                self._drained.set()

    async def accept(self, events: list[dict[str, Any]], *, wait: float = 0.0) -> Accepted | Queued:
        """Decided here (the decider), or handed to the decider through the inbox (waiting up to `wait`)."""
        return await self.decider.accept(events, wait=wait)

    async def accept_sentry(self, webhook: sentry.SentryEvent, *, wait: float = 0.0) -> dict[str, Any]:
        """A verified Sentry webhook: its event goes through the rules (with Sentry's defaults), its resolve
        through the state. A resend has the same effect again: a resolve finds the alert resolved, a
        trigger is a duplicate PagerDuty deduplicates by its dedup key."""
        log.info("%s", webhook.describe())
        if webhook.resolves is not None:
            resolved = await self.decider.resolve(webhook.resolves, wait=wait)
            return queued_view(resolved) if isinstance(resolved, Queued) else {"resolved": resolved}
        if webhook.event is None:
            return {"accepted": 0, "matched": 0, "notifications": 0}
        return accepted_view(await self.decider.accept([webhook.event], origin=sentry.ORIGIN, wait=wait))

    # -- reload ---------------------------------------------------------------------------------------

    async def reload(self) -> ReloadResult:
        """Load and validate the rules in full; swap them in, or keep the old set. Storms coalesce:
        a request made while a load runs is answered by the next load, which starts after it."""
        self._reloads_requested += 1
        wanted = self._reloads_requested
        async with self._reload_lock:
            if self._reloads_covered >= wanted:
                return self.last_reload
            self._reloads_covered = self._reloads_requested
            self.notifier.reloading()
            try:
                return await self._reload()
            finally:
                self.notifier.ready()

    async def _reload(self) -> ReloadResult:
        started = time.monotonic()
        loaded = await asyncio.to_thread(load_rules, self.config, dry_run=self.dry_run)
        result, errors = loaded.result, loaded.errors
        now = time.time()
        if errors or result.ruleset is None:
            for message in errors:
                log.error("reload failed: %s", message)
            self.last_reload = ReloadResult(False, now, tuple(errors), tuple(loaded.warnings),
                                            self.last_reload.sha256, len(self.ruleset.rules))
            self._reload_success.set(0)
            self._reloads.inc(result="failure")
            self._reload_time.set(now)
            await self._raise_self_alert(RELOAD_FAILED_KEY, f"alert-engine: rule reload failed with "
                                         f"{len(errors)} error(s); the previous rules keep serving",
                                         {"errors": errors[:50]})
            self._reload_alert_open = True
            return self.last_reload
        self._swap(loaded, now)
        with contextlib.suppress(StorageError):  # kept in memory; the next commit that works stores it
            await self.decider.retain(result.ruleset, self._report_dropped)
        self.last_reload = ReloadResult(True, now, warnings=tuple(loaded.warnings),
                                        sha256=result.ruleset.sha256, rules=len(result.ruleset.rules))
        self._reloads.inc(result="success")
        log.info("reloaded %d rules in %.3fs (sha256 %s)", len(result.ruleset.rules),
                 time.monotonic() - started, result.ruleset.sha256[:12])
        if self._reload_alert_open:
            await self._resolve_self_alert(RELOAD_FAILED_KEY)
            self._reload_alert_open = False
        return self.last_reload

    def _swap(self, loaded: Loaded, now: float) -> None:
        ruleset = loaded.result.ruleset
        assert ruleset is not None
        old = getattr(self, "ruleset", None)
        self.redactor.set_secrets([*(s.key for s in ruleset.services.values() if s.key), *loaded.sentry_secrets,
                                   *(loaded.tokens.secrets if loaded.tokens else ()), *self._dsn_secrets])
        self.ruleset = ruleset  # the one reference every new request reads
        self.loaded_at = now
        self.tokens = loaded.tokens
        self.sentry_secrets = loaded.sentry_secrets
        self._reload_success.set(1)
        self._reload_time.set(now)
        self._rules_loaded.set(len(ruleset.rules))
        self.metrics.prime("service", ruleset.services)  # rate() over each service's counters from the start
        self._rule_files.clear()
        for file, sha in ruleset.files.items():
            self._rule_files.set(1, file=file, sha256=sha)
        if old is not None:
            gone = sorted({r.name for r in old.rules} - {r.name for r in ruleset.rules})
            if gone:
                log.info("rules removed by this reload: %s", ", ".join(gone))

    async def _watch_rules(self) -> None:
        """Reload when anything under the rules paths changes (inotify via watchfiles, debounced)."""
        try:
            async for changes in awatch(*self.config.rules, debounce=500, recursive=True):
                log.info("rules changed (%d file event(s)); reloading", len(changes))
                await self.reload()
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("watching the rules stopped; reload with SIGHUP or POST /-/reload")

    # -- self-alerts and test pages -------------------------------------------------------------------

    def _writable(self) -> None:
        """Checked before every commit of decisions: nothing is acknowledged into a deleted file."""
        if lost := self.store.lost():
            raise StorageError(lost)

    def _service_key(self, name: str) -> str | None:
        """The integration key of a service in the rule set serving now (None: the service is gone)."""
        service = self.ruleset.services.get(name)
        return service.key if service is not None else None

    def _self_alert_services(self) -> list[Service]:
        return [self.ruleset.services[s] for s in self.config.self_alert_services]

    async def _raise_self_alert(self, dedup_key: str, summary: str, details: dict[str, Any]) -> None:
        now = time.time()
        pages = self_alert(self._self_alert_services(), dedup_key, summary, details, host=HOST, now=now)
        await self.intake.enqueue(pages, now)

    async def _resolve_self_alert(self, dedup_key: str) -> None:
        await self.intake.enqueue(self_resolve(self._self_alert_services(), dedup_key), time.time())

    async def _dead_lettered(self, notification: Notification, reason: str) -> None:
        now = time.time()
        pages = dead_letter_alert(self._self_alert_services(), notification, reason, host=HOST, now=now)
        await self.intake.enqueue(pages, now)

    async def send_test(self, service_name: str, resolve_after: float, wait: float) -> SendTestResult:
        """A test trigger to one service and, once PagerDuty accepted it, its resolve `resolve_after`
        seconds after the request (0: none); waits up to `wait` seconds for PagerDuty's answer."""
        return await self.send_tests.send(self.ruleset.services[service_name], resolve_after=resolve_after,
                                          wait=wait, host=HOST, now=time.time())

    async def silences(self) -> list[Silence]:
        return await self.decider.silences()

    async def history(self, *, rule: str | None, service: str | None, since: float | None, limit: int
                      ) -> list[HistoryEntry]:
        return await self.store.history(rule=rule, service=service, since=since, limit=limit)

    async def dead_letters(self) -> list[DeadLetter]:
        return await self.store.dead_letters()

    async def purge_dead_letters(self, ids: Sequence[int] | None = None) -> int:
        return await self.store.purge_dead_letters(ids)

    def services(self) -> list[str]:
        return list(self.ruleset.services)

    async def retry_dead_letter(self, ident: int) -> int | None:
        new_id = await self.store.retry_dead_letter(ident, now=time.time())
        if new_id is not None:
            self.deliverer.notify()
        return new_id

    # -- views for the API ----------------------------------------------------------------------------

    async def readiness_problems(self) -> list[str]:
        """Why this daemon should not get events now (`/readyz`); empty when it should."""
        problems = ["shutting down"] if self.stopping else []
        return problems + await self._health_problems()

    async def _health_problems(self, *, storage: bool = True) -> list[str]:
        """What keeps events from being stored (`storage`: the database's health too): the watchdog pings only
        while there is none."""
        problems = []
        if self.intake.state.poisoned:
            problems.append(self.intake.state.poisoned)
        if storage:
            problems += await self._storage_problems()
        if self.config.state_dir is not None and self._dsn is None and not os.access(self.config.state_dir, os.W_OK):
            problems.append(f"state_dir {self.config.state_dir} is not writable")
        return problems

    async def _storage_problems(self) -> list[str]:
        if self.store.problem() and not self.store.lost():
            with contextlib.suppress(StorageError, TimeoutError):  # back again? one tiny write says so
                await asyncio.wait_for(self.store.probe(), STORAGE_TIMEOUT)
        if problem := self.store.problem():
            return [f"storage: {problem}"]
        try:
            await asyncio.wait_for(self.store.counts(), STORAGE_TIMEOUT)
        except TimeoutError:
            return [f"storage: the database did not answer within {STORAGE_TIMEOUT:g}s"]
        except StorageError as exc:
            return [f"storage: {exc}"]
        return []

    async def _watch_storage(self) -> None:
        """Notice the database failing or coming back: one log line for each change, the status line,
        and a self-alert when its file is gone (pages still go out from the open file until a restart)."""
        problems = await self._health_problems()
        problem = "; ".join(problems) or None
        if problem == self._storage_problem:
            return
        self._storage_problem = problem
        if problem is None:
            log.info("storage works again: accepting events")
            self.notifier.status(f"serving {len(self.ruleset.rules)} rules")
            await self._resolve_self_alert(STORAGE_KEY)
            return
        log.error("%s: events are refused with 503 until this is fixed", problem)
        self.notifier.status(f"not ready: {problem}")
        with contextlib.suppress(StorageError):  # a page can be queued only while the open file takes writes
            await self._raise_self_alert(STORAGE_KEY, f"alert-engine on {HOST} cannot store events: {problem}",
                                         {"problem": problem, "state_dir": self.config.state_dir}
                                         if self._dsn is None else {"problem": problem, "database": self.storage})

    async def metrics_text(self) -> str:
        counts = await self.store.counts()
        self._outbox.set(counts.outbox)
        oldest = counts.oldest_created
        self._oldest.set(0.0 if oldest is None else max(0.0, time.time() - oldest))
        self._dead.set(counts.dead_letters)
        return self.metrics.render()

    def rules_view(self) -> dict[str, Any]:
        rs = self.ruleset
        return {
            "sha256": rs.sha256,
            "loaded_at": iso_seconds(self.loaded_at),
            "files": dict(rs.files),
            "services": [{"name": s.name, "api": s.api, "key": s.masked_key, "severity": s.severity,
                          "file": s.file, "line": s.line} for s in rs.services.values()],
            "rules": [{"name": r.name, "description": r.description, "enabled": r.enabled,
                       "services": list(r.services), "file": r.file, "line": r.line} for r in rs.rules],
        }

    async def status_view(self) -> dict[str, Any]:
        cluster = await self._cluster_view()  # the inbox before the outbox: a request moves from one to the other
        counts = await self.store.counts()
        return {
            "outbox": counts.outbox,
            "oldest_pending": iso_seconds(counts.oldest_created) if counts.oldest_created else None,
            "dead_letters": counts.dead_letters,
            "history": counts.history,
            "rules": len(self.ruleset.rules),
            "services": len(self.ruleset.services),
            "last_reload": self.last_reload.view(),
            "dry_run": self.dry_run,
            "stopping": self.stopping,
            "cluster": cluster,
        }

    async def _cluster_view(self) -> dict[str, Any]:
        """Who decides, the replicas as the last heartbeat saw them, and the inbox's backlog (PostgreSQL)."""
        view: dict[str, Any] = ({"replica": self.replica_id, "decider": None, "replicas": []}
                                if self.membership.view is None else self.membership.view.view(self.replica_id))
        if isinstance(self.store, Inbox):
            waiting, oldest = await self.store.inbox_backlog()
            view["inbox"] = {"waiting": waiting, "oldest": iso_seconds(oldest) if oldest else None}
        return view

    def _member(self) -> Member:
        return Member(self.replica_id, self.address, self.ruleset.sha256)

    async def _watch_cluster(self) -> None:
        """The decider pages when the live replicas serve different rule sets for longer than a rolling
        reload takes (MISMATCH_GRACE), and resolves that page when they agree again."""
        view = self.membership.view
        rulesets = view.rulesets if view is not None else {}
        if len(rulesets) <= 1:
            self._mismatch_since = None
            if self._mismatch_alert_open and self.decider.leading:
                await self._resolve_self_alert(RULESET_MISMATCH_KEY)
                self._mismatch_alert_open = False
            return
        now = time.monotonic()
        if self._mismatch_since is None:
            self._mismatch_since = now
            log.warning("replicas serve different rule sets: %s", _rulesets_text(rulesets))
        if self.decider.leading and not self._mismatch_alert_open and now - self._mismatch_since >= MISMATCH_GRACE:
            await self._raise_self_alert(
                RULESET_MISMATCH_KEY, f"alert-engine: replicas serve {len(rulesets)} different rule sets; the "
                f"decider ({self.replica_id}) decides with its own", {"rulesets": rulesets})
            self._mismatch_alert_open = True

    # -- timed housekeeping ---------------------------------------------------------------------------

    async def _load_state(self) -> State:
        """The alert state and silences the last run left, with absent clocks restarted now."""
        groups, silences = await self.store.load_state()
        state = State(started=time.time())
        state.restore(groups)
        for ident, text in silences:
            try:
                silence = restore_silence(text)
            except ValueError as exc:
                log.error("stored silence %d cannot be compiled and is ignored: %s", ident, exc)
                continue
            state.silences[silence.id] = silence
        dropped = state.retain({r.name for r in self.ruleset.rules})
        self._report_dropped(dropped)
        open_alerts = sum(g.open for by_key in state.groups.values() for g in by_key.values())
        if groups:
            log.info("restored state: %d alert group(s), %d open; %d silence(s)", len(groups), open_alerts,
                     len(state.silences))
        return state

    def _report_dropped(self, dropped: list[Any]) -> None:
        for g in dropped:
            log.warning("rule %s is gone: its open alert is left behind without a resolve", g.rule,
                        extra={"rule": g.rule, "dedup_key": g.key, "services": g.services})

    async def _tick(self) -> None:
        """Timed work on the current rule set: resolves after silence, absences, mute ends, expiries."""
        try:
            await self.decider.tick()
        except StorageError as exc:
            log.error("timed work not stored, tried again in %gs: %s", TICK_INTERVAL, exc)

    async def _prune_history(self) -> None:
        gone = await self.store.prune_history(now=time.time(), retention=self.config.history_retention)
        if gone:
            log.info("pruned %d history row(s) older than %gs", gone, self.config.history_retention)

    # -- silences -------------------------------------------------------------------------------------

    async def add_silence(self, body: Any) -> Silence | Queued:
        """A new silence from an API body (raises SilenceError); stored before it is answered."""
        silence = await self.decider.add_silence(parse_silence(body, ident=0, now=time.time()))
        if isinstance(silence, Silence):
            log.info("silence %d added until %s by %r: %s", silence.id, iso_seconds(silence.until),
                     silence.created_by, silence.comment)
        return silence

    async def expire_silence(self, ident: int) -> Silence | Queued | None:
        silence = await self.decider.expire_silence(ident)
        if silence is not None:
            log.info("silence %d expired", ident)
        return silence

    def _read_dsn(self) -> None:
        """PostgreSQL's connection string (`storage.dsn`, or the file `dsn_file`), its password kept to mask."""
        from engine.store.postgres_session import describe, dsn_secrets  # psycopg: only for this backend

        dsn = read_dsn(self.config.storage)
        if isinstance(dsn, Problem):
            raise StartupError([f"{dsn.file}: {dsn.message}"])
        try:
            self.storage = describe(dsn)
        except StorageError as exc:
            raise StartupError([str(exc)]) from None
        self._dsn, self._dsn_secrets = dsn, dsn_secrets(dsn)

    async def _watchdog(self) -> None:
        """Ping systemd only while events can be stored: a wedged daemon is restarted by its unit. Not for a
        PostgreSQL server out of reach: a restart could not start before it is back (and failed starts in a
        row hit systemd's start limit), while this daemon takes it back by itself as soon as it is."""
        interval = self.notifier.watchdog_interval
        assert interval
        while True:
            if not await self._health_problems(storage=self._dsn is None):
                self.notifier.watchdog()
            await asyncio.sleep(interval)



async def open_store(config: Config, dsn: str | None, replica: str) -> Store:
    """The configured storage, opened: SQLite in state_dir (which the caller has locked), or PostgreSQL at
    `dsn`, shared with the other replicas (`replica`: this one's id). StorageError when it cannot be."""
    if dsn is None:
        return await SQLiteStore.open(config.database)
    from engine.store.postgres import PostgresStore  # psycopg: only for this backend
    from engine.store.postgres_session import SchemaMismatch

    try:
        return await PostgresStore.open(dsn, replica=replica, delivery_lease=config.cluster.delivery_lease,
                                        decider_lease=config.cluster.decider_lease)
    except SchemaMismatch as exc:
        if exc.older:
            raise StorageError(f"{exc}: run `alert-engine migrate --config {config.file}`") from None
        raise


async def run(config: Config, *, redactor: Redactor, dry_run: bool = False) -> int:
    """Run until SIGTERM / SIGINT; the process exit status."""
    daemon = Daemon(config, redactor=redactor, dry_run=dry_run)
    daemon.install_signal_handlers()
    try:
        try:
            await daemon.start()
        except StorageError as exc:  # opened, but it cannot be read or written
            raise StartupError([f"{daemon.storage}: {exc}"]) from None
    except StartupError as exc:
        if len(exc.messages) == 1:  # one line: a lock held, a port in use, a database that cannot be opened
            print(f"alert-engine: not started: {exc.messages[0]}", file=sys.stderr)
            return 2
        for message in exc.messages:
            print(message, file=sys.stderr)
        print(f"alert-engine: not started: {len(exc.messages)} error(s)", file=sys.stderr)
        return 2
    await daemon.wait_stopped()
    await daemon.shutdown()
    return 0



def _rulesets_text(rulesets: dict[str, list[str]]) -> str:
    return "; ".join(f"{sha[:12]} on {', '.join(ids)}" for sha, ids in sorted(rulesets.items()))

