"""engine/intake.py: decisions committed in batches, and undone exactly when their commit fails.

The failures are real: the SQLite file lives on a tmpfs of the test's own that fills up, or the file is
deleted while open."""

from __future__ import annotations

import asyncio
import textwrap
from pathlib import Path
from typing import Any

import pytest

from engine.decisions import HOLD_REASONS
from engine.intake import Intake, RequestTooLarge
from engine.metrics import Registry
from engine.rules import load_ruleset
from engine.rules.ruleset import RuleSet
from engine.state import State
from engine.store import StorageError
from engine.store.sqlite import SQLiteStore

KEY = "0123456789abcdef0123456789abcdef"
NOW = 1_800_000_000.0

RULES = """\
- name: errors
  match: {field: kind, equals: error}
  services: [pay]
  group_by: [host]
  threshold: {count: 2, window: 1h}
- name: deploys
  match: {field: kind, equals: deploy}
  services: [pay, ops]
  group_by: [host]
  throttle: 1h
- name: anything
  match: {field: kind, equals: noise}
  services: [pay]
"""


def load(tmp_path: Path, rules: str = RULES) -> RuleSet:
    path = tmp_path / "rules.yaml"
    path.write_text(f'services:\n  pay: {{service_key: "{KEY}"}}\n  ops: {{service_key: "{KEY}"}}\nrules:\n'
                    + textwrap.indent(rules, "  "))
    result = load_ruleset([str(path)])
    assert result.ruleset is not None, [str(e) for e in result.errors]
    return result.ruleset


class Clock:
    def __init__(self) -> None:
        self.now = NOW

    def __call__(self) -> float:
        return self.now


def snapshot(state: State) -> dict[Any, str]:
    groups = {(r, k): g.dump() for r, by_key in state.groups.items() for k, g in by_key.items()}
    silences = {("silence", i): s.dump() for i, s in state.silences.items()}
    return {**groups, **silences}


@pytest.fixture
async def on_tmpfs(tmpfs):
    store = await SQLiteStore.open(tmpfs.path / "alert-engine.db")
    yield store, tmpfs
    tmpfs.free()
    await store.close()


def make_intake(store: SQLiteStore, clock: Clock, registry: Registry | None = None, **kwargs: Any
                ) -> tuple[Intake, list[int]]:
    woken: list[int] = []
    intake = Intake(store, State(), lambda: woken.append(1), registry or Registry(), clock=clock,
                    guard=lambda: _raise_if_lost(store), **kwargs)
    return intake, woken


def holds(registry: Registry) -> dict[str, float]:
    """alert_engine_holds_total by reason."""
    counter = registry.counter("alert_engine_holds_total", "", ["reason"])
    return {reason: counter.get(reason=reason) for reason in HOLD_REASONS}


def _raise_if_lost(store: SQLiteStore) -> None:
    if lost := store.lost():
        raise StorageError(lost)


async def test_a_failed_commit_puts_the_state_back_exactly_and_the_retry_decides_as_if_it_never_happened(
        tmp_path, on_tmpfs):
    store, tmpfs = on_tmpfs
    rs, clock = load(tmp_path), Clock()
    intake, _ = make_intake(store, clock)
    # stored: one error of two (threshold), one deploy paged (throttle starts)
    first = await intake.accept(rs, [{"kind": "error", "host": "a"}, {"kind": "deploy", "host": "a"}])
    assert first.notifications == 2
    before = snapshot(intake.state)
    tmpfs.fill()
    clock.now += 60
    blob = "x" * 50_000  # more than any page the write-ahead log could still have free
    batch = [{"kind": "error", "host": "a", "blob": blob}, {"kind": "deploy", "host": "b", "blob": blob},
             {"kind": "error", "host": "c", "blob": blob}]
    with pytest.raises(StorageError, match="full"):
        await intake.accept(rs, batch)
    assert snapshot(intake.state) == before  # no count consumed, no throttle set, no group made
    tmpfs.free()
    again = await intake.accept(rs, batch)
    # the second error of host a reaches the threshold; host b's deploy is not throttled (twice: pay, ops)
    assert again.notifications == 3
    stored, _ = await store.load_state()
    assert {(r, k): d for r, k, d in stored} == {k: v for k, v in snapshot(intake.state).items()
                                               if k[0] != "silence"}


async def test_a_full_disk_fails_the_whole_batch_and_undoes_it(tmp_path, on_tmpfs):
    store, tmpfs = on_tmpfs
    rs, clock = load(tmp_path), Clock()
    intake, _ = make_intake(store, clock)
    big = "x" * 20_000
    accepted = failed = 0
    before = snapshot(intake.state)
    for i in range(200):  # bounded: 1 MiB cannot hold 200 pages of 20 KB (and their state, with the event)
        try:
            await intake.accept(rs, [{"kind": "deploy", "host": f"h{i}", "blob": big}])
        except StorageError:
            failed += 1
            assert snapshot(intake.state) == before
            break
        accepted += 1
        before = snapshot(intake.state)
    assert accepted and failed, "the tmpfs never filled up"
    assert store.problem() is not None
    tmpfs.free()
    await store.probe()
    assert store.problem() is None
    result = await intake.accept(rs, [{"kind": "deploy", "host": f"h{accepted}"}])
    assert result.notifications == 2  # the refused host was never throttled


async def test_concurrent_requests_share_one_commit_and_fail_together(tmp_path, on_tmpfs):
    store, tmpfs = on_tmpfs
    rs, clock = load(tmp_path), Clock()
    intake, woken = make_intake(store, clock)
    results = await asyncio.gather(*(intake.accept(rs, [{"kind": "deploy", "host": f"h{i}"}]) for i in range(20)))
    assert sum(r.notifications for r in results) == 40
    assert store.commits < 20 and woken
    before = snapshot(intake.state)
    tmpfs.fill()
    blob = "x" * 50_000
    outcomes = await asyncio.gather(*(intake.accept(rs, [{"kind": "error", "host": f"h{i}", "blob": blob}])
                                      for i in range(5)), return_exceptions=True)
    assert all(isinstance(o, StorageError) for o in outcomes)
    assert snapshot(intake.state) == before


async def test_a_deleted_database_file_refuses_to_acknowledge(tmp_path):
    store = await SQLiteStore.open(tmp_path / "alert-engine.db")
    try:
        rs, clock = load(tmp_path), Clock()
        intake, _ = make_intake(store, clock)
        await intake.accept(rs, [{"kind": "deploy", "host": "a"}])
        (tmp_path / "alert-engine.db").unlink()
        before = snapshot(intake.state)
        with pytest.raises(StorageError, match="is gone"):
            await intake.accept(rs, [{"kind": "deploy", "host": "b"}])
        assert snapshot(intake.state) == before
        assert "is gone" in (store.problem() or "")
    finally:
        await store.close()


async def test_a_step_that_fails_is_undone_alone_and_the_others_in_its_batch_are_decided_again(tmp_path):
    store = await SQLiteStore.open(tmp_path / "alert-engine.db")
    try:
        rs, clock = load(tmp_path), Clock()
        intake, _ = make_intake(store, clock)
        group = intake.state.group("errors", "errors/z")

        def broken(now: float):
            group.hits.append(now)  # changed, then the step fails: must not stay
            intake.state.touch(group)
            yield []
            raise RuntimeError("a bug in deciding")

        good = intake.accept(rs, [{"kind": "deploy", "host": "a"}])
        bad = intake.submit(broken)
        done = await asyncio.gather(good, bad, return_exceptions=True)
        assert done[0].notifications == 2
        assert isinstance(done[1], RuntimeError)
        assert "errors" not in intake.state.groups  # the stored state has no such group: put back as stored
    finally:
        await store.close()


async def test_too_many_pages_for_one_request_is_refused_before_anything_changes(tmp_path):
    store = await SQLiteStore.open(tmp_path / "alert-engine.db")
    try:
        rs, clock = load(tmp_path), Clock()
        intake, _ = make_intake(store, clock, max_notifications=10)
        with pytest.raises(RequestTooLarge, match="would page 12 times"):
            await intake.accept(rs, [{"kind": "deploy", "host": f"h{i}"} for i in range(6)])
        assert intake.state.groups == {}
        assert (await store.counts()).outbox == 0
        assert (await intake.accept(rs, [{"kind": "deploy", "host": "h"}] * 5)).notifications == 2
    finally:
        await store.close()


async def test_a_large_request_gives_the_event_loop_turns_while_it_is_decided(tmp_path):
    store = await SQLiteStore.open(tmp_path / "alert-engine.db")
    try:
        rs, clock = load(tmp_path), Clock()
        intake, _ = make_intake(store, clock, max_notifications=100_000)
        events = [{"kind": "noise", "n": i, "text": "y" * 200} for i in range(20_000)]
        request = asyncio.ensure_future(intake.accept(rs, events))
        turns_while_busy = 0
        while not request.done():
            await asyncio.sleep(0)
            turns_while_busy += 1
        assert (await request).notifications == 20_000
        assert turns_while_busy > 10  # /healthz and other requests are answered meanwhile
    finally:
        await store.close()


async def test_holds_are_counted_by_reason_once_committed_never_for_a_batch_that_failed(tmp_path, on_tmpfs):
    store, tmpfs = on_tmpfs
    rs, clock, registry = load(tmp_path), Clock(), Registry()
    intake, _ = make_intake(store, clock, registry)
    assert 'alert_engine_holds_total{reason="inhibited"} 0.0' in registry.render()  # there from the start
    await intake.accept(rs, [{"kind": "deploy", "host": "a"}])  # paged: the throttle starts
    tmpfs.fill()
    clock.now += 60
    held = [{"kind": "deploy", "host": "a", "blob": "x" * 50_000}]
    with pytest.raises(StorageError, match="full"):
        await intake.accept(rs, held)
    assert holds(registry) == dict.fromkeys(HOLD_REASONS, 0.0)  # undone: it was never held
    tmpfs.free()
    assert (await intake.accept(rs, held)).notifications == 0
    assert holds(registry) == {"throttled": 1.0, "muted": 0.0, "silenced": 0.0, "inhibited": 0.0}


async def test_a_step_decided_again_after_another_failed_counts_its_holds_once(tmp_path):
    store = await SQLiteStore.open(tmp_path / "alert-engine.db")
    try:
        rs, clock, registry = load(tmp_path), Clock(), Registry()
        intake, _ = make_intake(store, clock, registry)
        await intake.accept(rs, [{"kind": "deploy", "host": "a"}])

        def broken(now: float):
            yield []
            raise RuntimeError("a bug in deciding")

        done = await asyncio.gather(intake.accept(rs, [{"kind": "deploy", "host": "a"}]), intake.submit(broken),
                                    return_exceptions=True)
        assert isinstance(done[1], RuntimeError)
        assert holds(registry)["throttled"] == 1
    finally:
        await store.close()


async def test_the_timed_work_counts_its_holds_too(tmp_path):
    store = await SQLiteStore.open(tmp_path / "alert-engine.db")
    try:
        rs = load(tmp_path, """\
- name: beat
  match: {field: kind, equals: beat}
  services: [pay]
  absent: {for: 1m}
  mute: [{start: "2027-01-01T00:00:00Z", end: "2028-01-01T00:00:00Z"}]
""")
        clock, registry = Clock(), Registry()
        intake, _ = make_intake(store, clock, registry)
        await intake.accept(rs, [{"kind": "beat"}])
        clock.now += 60
        assert await intake.tick(rs) == []  # absent, but inside the window
        clock.now += 1
        assert await intake.tick(rs) == []
        assert holds(registry)["muted"] == 1  # once per absence, not every tick
    finally:
        await store.close()
