"""Group commit's bookkeeping, the same on both backends: the writes queued while one transaction was
committing go into the next one, and each caller awaits the future of its own write."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Sequence
from typing import Any, Protocol

Outcome = tuple[bool, Any]  # (True, the write's value) or (False, its exception)


class Queued(Protocol):
    future: asyncio.Future[Any]


async def settle(batch: Sequence[Queued], commit: Awaitable[list[Outcome]]) -> None:
    """Await the transaction of `batch` and give each write's caller its own outcome (a caller cancelled
    meanwhile gets nothing: its write stands). When the commit itself fails (the database thread is gone,
    a cancellation, a bug) every caller gets that exception, and it is raised."""
    try:
        outcomes = await commit
    except BaseException as exc:
        for write in batch:
            if not write.future.done():
                write.future.set_exception(exc if isinstance(exc, Exception) else RuntimeError(exc))
        raise
    for write, (ok, value) in zip(batch, outcomes, strict=True):
        if write.future.done():
            continue
        if ok:
            write.future.set_result(value)
        else:
            write.future.set_exception(value)
