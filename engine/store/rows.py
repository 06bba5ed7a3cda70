"""Stored rows -> the store's values, for every backend: the rows of the outbox, history and dead letters
share their first columns (id, rule, service, api, action, dedup_key, body), the body as stored JSON."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Sequence
from typing import Any

from engine.render import Notification
from engine.store import OutboxEntry


def display_fields(kind: type, row: tuple[Any, ...]) -> dict[str, Any]:
    """A display row's fields but its body, from (id, rule, service, api, action, dedup_key, body, ...rest)
    in the order `kind` (HistoryEntry, DeadLetter) declares them."""
    names = [f.name for f in dataclasses.fields(kind) if f.name != "body"]
    return dict(zip(names, (*row[:6], *row[7:]), strict=True))


def notification(row: tuple[Any, ...]) -> Notification:
    """The notification in a (id, rule, service, api, action, dedup_key, body, ...) row.

    Summary and severity are read back from the body, where render put them.
    """
    rule, service, api, action, dedup_key, text = row[1:7]
    body = json.loads(text)
    payload = body.get("payload") if api == "v2" else None
    if isinstance(payload, dict):
        summary, severity = payload.get("summary", ""), payload.get("severity")
    else:
        summary, severity = body.get("description", ""), None
    return Notification(rule, service, api, action, dedup_key, body, summary=summary, severity=severity)


def outbox_entry(row: tuple[Any, ...]) -> OutboxEntry:
    """(id, rule, service, api, action, dedup_key, body, created, due, attempts, collapsed) -> entry."""
    id, body, created, attempts, collapsed = row[0], row[6], row[7], row[9], row[10]
    return OutboxEntry(id, notification(row), body.encode(), created, attempts, collapsed)


def stored_body(row: tuple[Any, ...]) -> dict[str, Any]:
    return notification(row).body


def history_filters(rule: str | None, service: str | None, since: float | None, *, time: str, placeholder: str
                    ) -> tuple[str, list[Any]]:
    """The WHERE clause (and its parameters) of a history listing: by rule, service, and `time` column at
    or after `since`; `placeholder` is the driver's (`?` for SQLite, `%s` for psycopg)."""
    filters = (("rule", rule), ("service", service), (time, since))
    kept = [(column, value) for column, value in filters if value is not None]
    clause = " AND ".join(["1 = 1", *(f"{column} {'>=' if column == time else '='} {placeholder}"
                                      for column, _ in kept)])
    return clause, [value for _, value in kept]


Row = tuple[Any, ...]


def collapse_run(rows: Sequence[Row], head: int) -> tuple[Row, list[Row], int] | None:
    """What `collapse` folds, from a chain's rows at and after its head (outbox entry rows, in id order): the
    newest trigger of the run of triggers at the head, the earlier ones of that run, and how many triggers
    the newest then stands for; None when no trigger follows the head. LookupError when `head` is not the
    chain's first row."""
    if not rows or rows[0][0] != head:
        raise LookupError(f"notification {head} is not at the head of its chain")
    run = [rows[0]]
    for row in rows[1:]:
        if row[4] != "trigger":
            break
        run.append(row)
    if len(run) == 1:
        return None
    newest, folded = run[-1], run[:-1]
    return newest, folded, newest[10] + sum(1 + row[10] for row in folded)
