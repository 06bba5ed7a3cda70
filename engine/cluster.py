"""Replicas and the decider: who is alive, who decides, and the heartbeat that keeps both true.

Every replica takes events and delivers; exactly one, the *decider*, decides (engine/decider.py). The
decider holds a lease in the database with an *epoch*, a number that grows with every new decider, and
every transaction that writes alert state checks that epoch first: a deposed decider's writes fail, they
never overwrite its successor's. The database's clock times the leases, never the replicas' clocks.

`Membership` beats every `heartbeat` seconds (`Store.heartbeat`): the replica records itself alive, renews
its delivery leases and the decider's lease when it holds it, and takes the decider's lease when it has
expired or its holder's connection is gone (a process killed: taken over at the next beat, not only once
the lease runs out). The decider trusts itself only while its last renewal is younger than the lease
(minus one heartbeat): cut off from the database, it stops deciding before anybody can take over.

With SQLite there is one replica: its store's heartbeat always makes it the decider.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from engine.metrics import Registry
from engine.units import iso_seconds

if TYPE_CHECKING:
    from engine.store import Store

log = logging.getLogger("alert_engine.cluster")


@dataclass(frozen=True)
class Member:
    """What a replica says of itself at each heartbeat."""

    id: str
    address: str
    ruleset: str  # sha256 of the rule set it serves


@dataclass(frozen=True)
class Replica:
    """A replica as the database saw it at the last heartbeat."""

    id: str
    address: str
    started: float
    heartbeat: float  # the database's clock
    ruleset: str
    alive: bool  # heartbeat within the decider lease
    decider: bool


@dataclass(frozen=True)
class ClusterView:
    """The cluster as one heartbeat saw it."""

    now: float  # the database's clock at the heartbeat
    epoch: int | None  # the decider's epoch; None before the first decider
    decider: str | None  # the decider's replica id, None when there is none (or its lease ran out)
    leading: bool  # this replica is the decider
    replicas: tuple[Replica, ...]

    @property
    def rulesets(self) -> dict[str, list[str]]:
        """sha256 -> the live replicas serving it."""
        found: dict[str, list[str]] = {}
        for r in self.replicas:
            if r.alive:
                found.setdefault(r.ruleset, []).append(r.id)
        return found

    def view(self, me: str) -> dict[str, object]:
        """For /v1/status."""
        return {
            "replica": me,
            "decider": self.decider,
            "epoch": self.epoch,
            "ruleset_mismatch": len(self.rulesets) > 1,
            "replicas": [{"id": r.id, "address": r.address, "role": "decider" if r.decider else "replica",
                          "alive": r.alive, "last_heartbeat": iso_seconds(r.heartbeat),
                          "heartbeat_age": round(max(0.0, self.now - r.heartbeat), 3),
                          "started": iso_seconds(r.started), "ruleset": r.ruleset, "self": r.id == me}
                         for r in self.replicas],
        }


class Membership:
    """Beats until stopped; calls `elected(epoch)` when this replica becomes the decider and `deposed(why)`
    when it stops being one (each awaited before the next beat)."""

    def __init__(self, store: Store, me: Callable[[], Member], *, interval: float, lease: float,
                 elected: Callable[[int], Awaitable[None]], deposed: Callable[[str], Awaitable[None]],
                 metrics: Registry) -> None:
        self._store = store
        self._me = me
        self._interval = interval
        self._lease = lease
        self._elected = elected
        self._deposed = deposed
        self.epoch: int | None = None
        self.view: ClusterView | None = None
        self._renewed = 0.0  # monotonic time the last successful beat started
        self._failing = False
        self._task: asyncio.Task[None] | None = None
        self._decider = metrics.gauge("alert_engine_decider", "1 while this replica is the decider, else 0.")
        self._replicas = metrics.gauge("alert_engine_cluster_replicas", "Replicas alive, as the last heartbeat saw.")
        self._mismatch = metrics.gauge("alert_engine_cluster_ruleset_mismatch",
                                       "1 while the live replicas serve different rule sets, else 0.")
        self._elections = metrics.counter("alert_engine_decider_elections_total",
                                          "Times this replica became the decider.")

    @property
    def leading(self) -> bool:
        return self.epoch is not None

    async def start(self) -> None:
        """The first beat (this replica's role known when it returns), then one every interval."""
        await self.beat()
        self._task = asyncio.create_task(self._run(), name="alert-engine-heartbeat")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        if self.epoch is not None:
            await self._step_down("stopping")

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self._interval)
            try:
                await self.beat()
            except Exception:
                log.exception("heartbeat failed")

    async def beat(self) -> None:
        from engine.store import StorageError

        started = time.monotonic()
        # half the lease: room for a takeover's lock wait; a decider waits no longer than it trusts itself
        timeout = self._lease / 2
        if self.epoch is not None:
            timeout = max(0.0, min(timeout, self._renewed + self._lease - self._interval - started))
        try:
            view = await asyncio.wait_for(self._store.heartbeat(self._me()), timeout)
        except (StorageError, TimeoutError) as exc:
            if not self._failing:
                log.error("heartbeat not recorded: %s", exc or "the database did not answer")
                self._failing = True
            if self.epoch is not None and time.monotonic() - self._renewed > self._lease - self._interval:
                await self._step_down("the decider's lease could not be renewed in time")
            return
        if self._failing:
            log.info("heartbeat recorded again")
            self._failing = False
        self._renewed = started
        self.view = view
        self._replicas.set(sum(r.alive for r in view.replicas))
        self._mismatch.set(int(len(view.rulesets) > 1))
        mine = view.epoch if view.leading else None
        if mine != self.epoch:
            if self.epoch is not None:
                await self._step_down(f"epoch {self.epoch} is over (the decider is now {view.decider or 'nobody'})")
            if mine is not None:
                await self._take_up(mine)

    async def _take_up(self, epoch: int) -> None:
        """Decide from now on; when that cannot start (the state cannot be read yet), let the lease go so
        that the next heartbeat, here or elsewhere, tries again."""
        try:
            await self._elected(epoch)
        except Exception as exc:
            log.error("the decider's lease was taken, but deciding could not start (%s): given up, tried "
                      "again at the next heartbeat", exc)
            await self._deposed("deciding could not start")
            return
        self.epoch = epoch
        self._decider.set(1)
        self._elections.inc()
        log.info("this replica is the decider now (epoch %d)", epoch)

    async def _step_down(self, why: str) -> None:
        log.warning("this replica stops deciding: %s", why)
        self.epoch = None
        self._decider.set(0)
        await self._deposed(why)
