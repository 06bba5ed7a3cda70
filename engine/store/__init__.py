"""The storage interface: the durable outbox, the notification log (history) and the dead letters.

Matching never sees it; delivery sees only `Store`. `engine/store/sqlite.py` implements it on one
SQLite file, `engine/store/postgres.py` on a PostgreSQL database; tests/test_store.py runs on both.

The contract every backend keeps:
- `enqueue` returns only once the notifications are durable (committed).
- A read or write the database refuses raises `StorageError` and changed nothing.
- Notifications with the same (service, dedup key) form a chain ordered by creation; `claim` hands out
  only the head of a chain, and only once the head is due and its chain is not already claimed. A
  claim is a lease on the chain held by this process (in its memory, or in the database with a token),
  ended by `complete`, `retry_later`, `dead_letter` or `release`; closing or crashing gives everything
  back (at-least-once).
- `complete`, `retry_later` and `dead_letter` end the lease only when their write succeeded. When one
  raises `StorageError` the caller still holds the chain (nobody else can claim it, so a page that was
  sent is not sent again by this process) and tries the same write again later. A failed `collapse`
  leaves the claimed entry as it was.
- A notification leaves the outbox only in the same transaction that writes it to history or to the
  dead letters.
- `history` is what left the outbox, whichever way: the history rows (delivered, collapsed) and the dead
  letters kept (outcome DEAD_LETTERED, time `failed`, with their reason), in one list, newest first. A
  dead letter retried or purged is no longer in it.
- No row holds a service key: bodies are stored as render makes them, without one (delivery adds the
  current key at send time), and opening a database of an older version strips the keys it kept.

Collapse: while a chain is backlogged, `collapse` folds its head trigger and the triggers queued right
behind it (up to, never across, a resolve) into the newest of them. `collapsed` (and
`collapsed_count` in the body's details: v2 `payload.custom_details`, v1 `details`) is the number of
earlier triggers folded into a notification, counting the ones they had folded in turn.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from engine.cluster import ClusterView, Member
from engine.pacing import Pacer
from engine.render import Notification, with_details
from engine.state import StateChanges

DEFAULT_HISTORY_RETENTION = 7 * 24 * 3600.0  # seconds

# History outcomes.
DELIVERED = "delivered"
DELIVERED_DRY_RUN = "delivered-dry-run"
COLLAPSED = "collapsed"
DEAD_LETTERED = "dead-lettered"  # in `history`: a dead letter still kept


class StorageError(Exception):
    """The database could not be read or written (disk full, read-only, gone). The operation had no
    effect; the caller answers 503 (intake) or tries again later (delivery)."""


class LeaseLost(LookupError):
    """The write that ends a delivery found its chain claimed by another process: this one's lease ran out
    (it was frozen or cut off for longer than the lease). Nothing was written; the other one delivers it."""


@dataclass(frozen=True)
class OutboxEntry:
    """A claimed notification. `payload` is the stored JSON (no key), sent through `render.with_key`."""

    id: int
    notification: Notification
    payload: bytes = field(repr=False)
    created: float  # seconds since the epoch
    attempts: int  # failed attempts so far
    collapsed: int  # earlier triggers folded into this one


@dataclass(frozen=True)
class HistoryEntry:
    """One notification that left the outbox: delivered, folded into one that was, or dead-lettered."""

    id: int
    rule: str
    service: str
    api: str
    action: str
    dedup_key: str
    outcome: str  # DELIVERED, DELIVERED_DRY_RUN, COLLAPSED or DEAD_LETTERED
    attempts: int
    collapsed: int
    created: float
    sent: float  # when it left the outbox (a dead letter: when it failed)
    status: int | None  # PagerDuty's HTTP status; None for dry runs and collapsed ones, or without an answer
    response: str  # PagerDuty's response body, or what it was collapsed into
    body: dict[str, Any]  # as stored: without the service key
    reason: str = ""  # why a dead letter is one (DeadLetter.reason); empty for the others


@dataclass(frozen=True)
class DeadLetter:
    """A notification that will not be delivered unless an operator retries it."""

    id: int
    rule: str
    service: str
    api: str
    action: str
    dedup_key: str
    reason: str
    attempts: int
    collapsed: int
    created: float
    failed: float
    status: int | None  # the last HTTP status, None when there was no answer
    response: str  # the last response body (or the connection error)
    body: dict[str, Any]  # as stored: without the service key


@dataclass(frozen=True)
class StoreCounts:
    outbox: int  # notifications waiting, including claimed ones
    dead_letters: int
    history: int
    oldest_created: float | None  # creation time of the oldest notification in the outbox


class Store(Protocol):
    """What delivery, the daemon and the CLI need from storage. Times are seconds since the epoch."""

    async def enqueue(
        self, notifications: Sequence[Notification], *, now: float, state: StateChanges | None = None,
        decided: Sequence[tuple[int, str]] = (),
    ) -> list[int]:
        """Add the notifications (created and due `now`) durably, in one transaction with the state
        changes that caused them and the inbox rows (id, result as JSON) they decided; their ids, in
        order. With state changes or inbox rows, only while this replica decides (`lead`): else (and when
        another replica decides now) StorageError, nothing written."""
        ...

    async def heartbeat(self, me: Member) -> ClusterView:
        """Record this replica alive and renew its leases; keep, take or leave the decider's lease
        (engine/cluster.py). SQLite: one replica, always the decider."""
        ...

    async def lead(self, epoch: int | None) -> None:
        """Decide, fenced by `epoch`, from now on (the alert state read afresh), or stop deciding (None)."""
        ...

    def pacer(self, rate_per_minute: float, burst: int) -> Pacer:
        """The pace of each integration key (engine/pacing.py): shared by every replica on PostgreSQL."""
        ...

    def listen(self, wake: Mapping[str, Callable[[], None]]) -> None:
        """Call `wake[channel]()` when another replica committed work for `channel` (outbox, inbox,
        decided); SQLite has no other replica."""
        ...

    async def load_state(
        self, *, groups: Sequence[tuple[str, str]] | None = None, silences: Sequence[int] | None = None
    ) -> tuple[list[tuple[str, str, str]], list[tuple[int, str]]]:
        """The stored alert groups (rule, key, json) and silences (id, json): all of them, or those of the
        given (rule, key)s and ids that exist."""
        ...

    def lost(self) -> str | None:
        """Why what is written now would not be found again (the database file was deleted or replaced
        while open), or None. Nothing may be acknowledged as stored while this holds. Cheap: a stat."""
        ...

    def problem(self) -> str | None:
        """Why the store cannot take writes now (`lost`, or the last write failed), or None. Cheap."""
        ...

    async def probe(self) -> None:
        """A write transaction of a typical batch's size: StorageError unless the database takes writes
        now. Run only while `problem()` says the last write failed, to notice the recovery."""
        ...

    async def claim(self, *, now: float, limit: int) -> list[OutboxEntry]:
        """Lease up to `limit` chain heads that are due and not leased, earliest due first."""
        ...

    async def next_due(self) -> float | None:
        """When the earliest unleased chain head is due; None when there is none."""
        ...

    async def collapse(self, entry: OutboxEntry, *, now: float) -> OutboxEntry:
        """Fold the claimed trigger `entry` and the triggers queued behind it into the newest.

        Returns the newest, claimed in its place, carrying `entry`'s attempts; `entry` itself when
        nothing follows it (or it is a resolve). The folded ones go to history as COLLAPSED.
        """
        ...

    async def complete(
        self, entry: OutboxEntry, *, now: float, status: int | None, response: str, outcome: str = DELIVERED
    ) -> None:
        """Move the claimed entry to history and release it (kept claimed when this raises)."""
        ...

    async def expedite(self, service: str, *, now: float) -> int:
        """Make the notifications of `service` that wait for a retry due `now`; how many."""
        ...

    async def expedite_all(self, *, now: float) -> int:
        """Make every notification that waits for a retry due `now`; how many. For a start: the backoffs
        were the previous process's, and PagerDuty is asked again at once."""
        ...

    async def retry_later(self, entry: OutboxEntry, *, due: float, status: int | None, response: str) -> None:
        """Count a failed attempt, make the entry due at `due`, release it (kept claimed when this raises).
        Its chain waits behind it."""
        ...

    async def dead_letter(
        self, entry: OutboxEntry, *, now: float, reason: str, status: int | None, response: str
    ) -> None:
        """Move the claimed entry to the dead letters (counting this final attempt) and release it (kept
        claimed when this raises)."""
        ...

    async def release(self, entries: Sequence[OutboxEntry] | None = None) -> None:
        """Give claimed entries back untouched (all of them when None)."""
        ...

    async def history(
        self,
        *,
        rule: str | None = None,
        service: str | None = None,
        since: float | None = None,
        limit: int = 100,
    ) -> list[HistoryEntry]:
        """The notification log, dead letters included (module docstring), newest first; `since` and
        `limit` apply to the whole list."""
        ...

    async def prune_history(self, *, now: float, retention: float = DEFAULT_HISTORY_RETENTION) -> int:
        """Forget history older than `retention` seconds; how many rows went."""
        ...

    async def dead_letters(self, *, limit: int | None = None) -> list[DeadLetter]:
        """The dead letters, oldest first."""
        ...

    async def retry_dead_letter(self, id: int, *, now: float) -> int | None:
        """Put a dead letter back in the outbox as new (due now, attempts 0); its new id, None if unknown."""
        ...

    async def purge_dead_letters(self, ids: Sequence[int] | None = None) -> int:
        """Delete the given dead letters (all when None); how many went."""
        ...

    async def counts(self) -> StoreCounts: ...

    async def close(self) -> None:
        """Finish pending writes and close. Leases are forgotten: unsent notifications stay pending."""
        ...


def fold_collapsed_count(api: str, body: dict[str, Any], collapsed: int) -> dict[str, Any]:
    """A copy of a trigger body whose details carry `collapsed_count` (see the module docstring)."""
    return with_details(api, body, {"collapsed_count": collapsed})
