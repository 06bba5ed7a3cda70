"""What the HTTP API (engine/server.py) asks of the running engine, and nothing more.

The daemon (engine/daemon.py) implements it; the server sees only this, never the store, the intake or
the decider behind it, so a route cannot reach around the pipeline (a read of alert state on a replica
that does not decide, say).
"""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import AbstractContextManager
from typing import Any, Protocol

from engine.config import ApiTokens, Config
from engine.decider import Queued
from engine.intake import Accepted
from engine.reload import ReloadResult
from engine.sendtest import SendTestResult
from engine.sources.sentry import SentryEvent
from engine.state import Silence
from engine.store import DeadLetter, HistoryEntry


class Engine(Protocol):
    config: Config
    tokens: ApiTokens | None  # None: no tokens file, the API is open
    sentry_secrets: frozenset[str]
    stopping: bool  # refusing new events: a SIGTERM came

    def tracking_request(self) -> AbstractContextManager[None]:
        """Count an intake request in flight for the duration (shutdown waits for it)."""
        ...

    # -- intake: decided here, or handed to the decider (`wait`: seconds to wait for its decision) --------

    async def accept(self, events: list[dict[str, Any]], *, wait: float = 0.0) -> Accepted | Queued: ...

    async def accept_sentry(self, webhook: SentryEvent, *, wait: float = 0.0) -> dict[str, Any]: ...

    # -- silences --------------------------------------------------------------------------------------

    async def add_silence(self, body: Any) -> Silence | Queued: ...

    async def expire_silence(self, ident: int) -> Silence | Queued | None: ...

    async def silences(self) -> list[Silence]: ...

    # -- the outbox's record ---------------------------------------------------------------------------

    async def history(self, *, rule: str | None, service: str | None, since: float | None, limit: int
                      ) -> list[HistoryEntry]: ...

    async def dead_letters(self) -> list[DeadLetter]: ...

    async def retry_dead_letter(self, ident: int) -> int | None: ...

    async def purge_dead_letters(self, ids: Sequence[int] | None = None) -> int: ...

    # -- operating -------------------------------------------------------------------------------------

    def services(self) -> list[str]:
        """The services of the rule set serving now."""
        ...

    async def send_test(self, service_name: str, resolve_after: float, wait: float) -> SendTestResult: ...

    async def reload(self) -> ReloadResult: ...

    async def readiness_problems(self) -> list[str]: ...

    async def metrics_text(self) -> str: ...

    async def status_view(self) -> dict[str, Any]: ...

    def rules_view(self) -> dict[str, Any]: ...
