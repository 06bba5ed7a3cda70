"""The scenarios about the daemon's behaviour under change and failure: reload, outage, memory."""

from __future__ import annotations

import asyncio
import gc
import multiprocessing
import time
import tracemalloc
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from bench.daemon import EngineProcess
from bench.harness import Harness, figure, percentile
from bench.load import closed_loop, paced
from bench.profile import Profile, short_file
from bench.results import Outcome
from bench.workload import batches, endless, event, seq_of
from engine.rules import load_ruleset

RULES = 100  # for the outage; memory and reload use 10,000 (1,000 with --quick)
SAMPLE_RULES = 1_000  # loaded under tracemalloc when the memory target is missed
DELIVERY_TIMEOUT = 300.0
MATCH_EVERY = 10  # in the reload's stream, 1 event in 10 matches a rule

# -- reload -------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Reload:
    seconds: float  # SIGHUP -> READY=1
    acknowledged: int  # events answered 202 in the whole run
    expected: int  # of those, events that match a rule
    lost: int  # of those, events whose page never arrived
    others: int  # answers other than 202
    stall_ms: float  # the longest POST -> 202 of the requests due during the reload
    p99_ms: float  # p99 POST -> 202 of those
    due: int  # events due during the reload
    profile: Profile | None = None


async def stream_through_reload(h: Harness, engine: EngineProcess, rules: int, first_seq: int,
                                profile_as: str = "") -> Reload:
    """1,000 events/s (10 a request, 100 requests/s) before, during and after one SIGHUP reload."""
    await h.fake.reset()
    stop = asyncio.Event()
    posts = endless(first_seq, 10, rules, MATCH_EVERY)
    stream = asyncio.create_task(paced(engine.url, posts, 100, connections=64, stop=stop))
    await asyncio.sleep(h.options.seconds(2.0, 1.0))  # the stream runs steadily before the signal
    async with h.sampling(engine.pid, profile_as) as sampling:
        signalled = time.monotonic()
        seconds = await engine.reload()
    reloaded = (await engine.status())["last_reload"]
    if not reloaded["ok"] or reloaded["rules"] != rules:
        raise RuntimeError(f"the reload did not load {rules} rules: {reloaded}")
    await asyncio.sleep(1.0)  # and after the reload
    stop.set()
    sent = await stream
    acknowledged = {seq for s in sent if s.status == 202 for seq in s.post.seqs}
    expected = {seq for seq in acknowledged if seq % MATCH_EVERY == 0}
    await h.fake.wait_delivered(len(expected), DELIVERY_TIMEOUT)
    arrived = {seq_of(dedup) for _, dedup in (await h.fake.arrivals()).times}
    during = [s for s in sent if signalled <= s.at <= signalled + seconds] or sent
    return Reload(
        seconds=seconds,
        acknowledged=len(acknowledged),
        expected=len(expected),
        lost=len(expected - arrived),
        others=sum(1 for s in sent if s.status != 202),
        stall_ms=max(s.seconds for s in during) * 1000,
        p99_ms=percentile([s.seconds for s in during], 99) * 1000,
        due=sum(len(s.post.seqs) for s in during),
        profile=sampling.profile if sampling is not None else None,
    )


async def reload(h: Harness) -> Outcome:
    count = h.options.size(10_000, 1_000)
    rules = h.rules(count, files=10)
    engine = h.new_engine(rules)
    await h.fake.reset()
    started = time.monotonic()
    await engine.start()
    start_seconds = time.monotonic() - started
    try:
        runs = [await stream_through_reload(h, engine, count, (r + 1) * 10**7, h.profile_as("reload", r))
                for r in range(h.options.runs)]
        figures = [
            figure("SIGHUP → READY=1", "s", [r.seconds for r in runs], "≤ 1 s", at_most=1.0),
            figure("acknowledged events lost", "", [r.lost for r in runs], "0", at_most=0),
            figure("longest POST → 202 during the reload", "ms", [r.stall_ms for r in runs]),
            figure("POST → 202 p99 during the reload", "ms", [r.p99_ms for r in runs], headline=False),
            figure("events acknowledged per run", "", [r.acknowledged for r in runs], headline=False),
            figure("of those, matching (a page each)", "", [r.expected for r in runs], headline=False),
            figure("answers other than 202", "", [r.others for r in runs], headline=False),
        ]
    finally:
        await engine.stop()
    return Outcome(
        "reload",
        f"A daemon on {count:,} rules in 10 files (it took {start_seconds:.1f} s from exec to READY=1) gets "
        "SIGHUP while a stream of 1,000 events/s flows (100 POSTs/s of 10 events, open loop; 1 event in "
        f"{MATCH_EVERY} matches a rule and is paged, the others are candidates that fail the status "
        "condition); the reload is timed from the signal to the READY=1 that follows RELOADING=1. Lost = "
        "matching events answered 202 whose page never reached the fake PagerDuty. Each run reloads the same "
        "daemon.",
        tuple(figures), h.shown(runs[-1].profile, figures),
    )


# -- outage -------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Outage:
    delivered_share: float
    drain_seconds: float  # from recovery to the last page's arrival (the timeout when some never came)
    first_seconds: float  # from recovery to the first page's arrival
    failed_attempts: int  # 500s answered during the outage
    outage_cpu: float  # daemon CPU seconds during the outage
    profile: Profile | None = None


async def outage_run(h: Harness, rules: Path, count: int, seconds: float, profile_as: str = "") -> Outage:
    posts = batches([event(seq, seq % RULES) for seq in range(count)], 100)
    async with h.engine(rules) as engine, h.sampling(engine.pid, profile_as) as sampling:
        await h.fake.fail(500)  # no Retry-After: the daemon's own backoff decides
        failing = time.monotonic()
        cpu = engine.cpu_seconds()
        sent = await closed_loop(engine.url, posts, 4)
        if any(s.status != 202 for s in sent):
            raise RuntimeError("the daemon refused events during the outage")
        await asyncio.sleep(max(0.0, failing + seconds - time.monotonic()))
        cpu = engine.cpu_seconds() - cpu
        failed = (await h.fake.arrivals()).failed
        recovered = time.monotonic()  # taken before the fake switches, so no arrival can precede it
        await h.fake.recover()
        delivered = await h.fake.wait_delivered(count, DELIVERY_TIMEOUT)
        arrivals = await h.fake.arrivals()
    times = arrivals.times.values()
    if not times:
        raise RuntimeError(f"no page arrived within {DELIVERY_TIMEOUT:g}s of the recovery")
    drain = max(times) - recovered if delivered == count else DELIVERY_TIMEOUT
    return Outage(delivered / count, drain, min(times) - recovered, failed, cpu,
                  sampling.profile if sampling is not None else None)


async def outage(h: Harness) -> Outcome:
    rules = h.rules(RULES)
    count = h.options.size(5_000, 1_000)
    seconds = h.options.seconds(30.0, 5.0)
    runs = [await outage_run(h, rules, count, seconds, h.profile_as("outage", i)) for i in range(h.options.runs)]
    figures = [
        figure("delivered", "%", [r.delivered_share * 100 for r in runs], "100%", at_least=100),
        figure("backlog drained, after recovery", "s", [r.drain_seconds for r in runs], "≤ 10 s", at_most=10),
        figure("first page, after recovery", "s", [r.first_seconds for r in runs], headline=False),
        figure("attempts answered 500 during the outage", "", [r.failed_attempts for r in runs], headline=False),
        figure("daemon CPU during the outage", "s", [r.outage_cpu for r in runs], headline=False),
    ]
    return Outcome(
        "outage",
        f"The fake PagerDuty answers 500 (no Retry-After) to everything; {count:,} events, each matching one "
        f"of {RULES} rules (one page, its own dedup key), are POSTed at once; {seconds:g} s after the outage began the "
        "fake recovers, and the run ends when every page has arrived. The daemon retries with full-jitter "
        "exponential backoff, `uniform(0, min(300 s, 1 s × 2^attempt))`.",
        tuple(figures), h.shown(runs[-1].profile, figures),
    )


# -- memory -------------------------------------------------------------------------------------------


async def idle_memory(h: Harness, rules: Path, copies: int) -> list[tuple[float, float]]:
    """(idle VmRSS, VmHWM) in MB of `copies` daemons started side by side on `rules`, 2 s after READY=1."""
    engines = [h.new_engine(rules) for _ in range(copies)]
    try:
        await asyncio.gather(*(e.start() for e in engines))
        await asyncio.sleep(2.0)  # idle: no request, nothing to deliver
        return [(e.rss() / 2**20, e.peak_rss() / 2**20) for e in engines]
    finally:
        await asyncio.gather(*(e.stop() for e in engines))


def retained_by_line(rules: Path, top: int = 10) -> tuple[float, list[tuple[str, float]]]:
    """Load `rules` under tracemalloc (in a fresh process: see `memory`): MB kept alive by the rule set,
    and the top lines (file:line, MB) that allocated what is kept."""
    gc.collect()
    tracemalloc.start()
    try:
        result = load_ruleset([str(rules)])
        gc.collect()
        snapshot = tracemalloc.take_snapshot()
    finally:
        tracemalloc.stop()
    assert result.ruleset is not None, result.errors
    stats = snapshot.statistics("lineno")
    total = sum(s.size for s in stats) / 2**20
    lines = [(f"{short_file(s.traceback[0].filename)}:{s.traceback[0].lineno}", s.size / 2**20) for s in stats[:top]]
    return total, lines


async def memory(h: Harness) -> Outcome:
    count = h.options.size(10_000, 1_000)
    big = await idle_memory(h, h.rules(count, files=10), h.options.runs)
    small = await idle_memory(h, h.rules(10), h.options.runs)
    per_rule = [(b[0] - s[0]) * 1024 / (count - 10) for b, s in zip(big, small, strict=True)]
    figures = [
        figure(f"idle RSS, {count:,} rules", "MB", [b[0] for b in big], "≤ 150 MB", at_most=150),
        figure(f"peak RSS while starting, {count:,} rules", "MB", [b[1] for b in big], headline=False),
        figure("idle RSS, 10 rules", "MB", [s[0] for s in small], headline=False),
        figure("RSS per rule", "KB", per_rule, headline=False),
    ]
    details = ""
    if any(f.met is False for f in figures):
        sample = h.rules(SAMPLE_RULES)
        # a fresh interpreter: the engine as it is on disk now, and nothing of this process in the figures
        with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as pool:
            total, lines = await asyncio.get_running_loop().run_in_executor(pool, retained_by_line, sample)
        rows = "\n".join(f"| `{where}` | {mb:.1f} |" for where, mb in lines)
        details = (f"Where it goes: {SAMPLE_RULES:,} of the same rules loaded in a fresh Python process under "
                   f"tracemalloc keep {total:.1f} MB of Python objects alive; the lines that allocated "
                   f"most of it:\n\n| allocated at | MB kept |\n|---|---:|\n{rows}")
    return Outcome(
        "memory",
        f"{h.options.runs} daemons started side by side on {count:,} rules (and as many on 10 rules, for the "
        "base), each read from /proc 2 s after its READY=1, with no request made. A CPU profile says nothing "
        "about memory: the breakdown below, when the target is missed, comes from tracemalloc.",
        tuple(figures), details=details,
    )
