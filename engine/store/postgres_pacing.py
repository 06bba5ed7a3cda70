"""The pace of each integration key, shared by every replica: GCRA (engine/pacing.py) on one row per key
of table `pacing`, one statement per send, timed by the database's clock.

The row's key is a digest of the integration key, never the key. When the database cannot be asked, a
send is paced by this process's own `Gcra` instead (logged once per outage): pages keep going out at
`rate_per_key` from each replica, rather than stalling or going out unpaced. The database is asked
again a second later (`RETRY`), not at every send.
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

from engine.pacing import Gcra
from engine.store import StorageError

log = logging.getLogger("alert_engine.deliver")

_NOW = "extract(epoch FROM now())"  # one instant for the whole statement
_RESERVE = f"""
INSERT INTO pacing AS p (key, tat) VALUES (%(key)s, {_NOW} + %(interval)s)
ON CONFLICT (key) DO UPDATE SET tat = greatest(p.tat, {_NOW}) + %(interval)s
RETURNING greatest(0, p.tat - %(interval)s - %(tolerance)s - {_NOW})
"""
_PAUSE = f"""
INSERT INTO pacing AS p (key, tat) VALUES (%(key)s, {_NOW} + %(seconds)s + %(tolerance)s)
ON CONFLICT (key) DO UPDATE SET tat = greatest(p.tat, excluded.tat)
"""

RETRY = 1.0  # seconds between asking the database again while it fails

Run = Callable[[str, dict[str, Any]], Awaitable[Any]]


class SharedPacer:
    """GCRA per key in the database; `run(sql, params)` runs one statement (the store's read pool) and
    returns its first row."""

    def __init__(self, run: Run, rate: float, burst: int) -> None:
        self._run = run
        self._local = Gcra(rate, burst)
        self._interval = self._local.interval
        self._tolerance = self._local.tolerance
        self._failing = False
        self._retry_at = 0.0  # monotonic: while failing, the local pace until then

    async def reserve(self, key: str) -> float:
        if self._failing and time.monotonic() < self._retry_at:
            return await self._local.reserve(key)
        try:
            row = await self._run(_RESERVE, {"key": digest(key), "interval": self._interval,
                                             "tolerance": self._tolerance})
        except StorageError as exc:
            self._fell_back(exc)
            return await self._local.reserve(key)
        self._back()
        return float(row[0])

    async def pause(self, key: str, seconds: float) -> None:
        await self._local.pause(key, seconds)
        try:
            await self._run(_PAUSE, {"key": digest(key), "seconds": seconds, "tolerance": self._tolerance})
        except StorageError as exc:
            self._fell_back(exc)

    def _fell_back(self, exc: StorageError) -> None:
        if not self._failing:
            log.warning("pacing: the database cannot be asked (%s): each replica paces on its own meanwhile", exc)
        self._failing = True
        self._retry_at = time.monotonic() + RETRY

    def _back(self) -> None:
        if self._failing:
            log.info("pacing: shared by the replicas again")
        self._failing = False


def digest(key: str) -> str:
    """What the database keeps instead of an integration key."""
    return hashlib.sha256(key.encode()).hexdigest()
