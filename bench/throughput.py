"""The throughput and latency scenarios: intake-single, intake-batch, end-to-end, paced latency, fan-out.

Each run starts a fresh daemon (its own empty database) on generated rules (see bench.workload);
the last run of each is sampled by py-spy (see bench.profile), and its profile is reported where a target
is missed.
"""

from __future__ import annotations

import itertools
import statistics
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from bench.daemon import EngineProcess
from bench.harness import Harness, figure, latencies, percentile
from bench.load import Sent, closed_loop, paced, timed
from bench.processes import ServerProcess, cpu_seconds
from bench.profile import Profile
from bench.results import Outcome
from bench.workload import Post, batches, event, fanout_event, json_post

RULES = 1_000  # for intake-single and intake-batch
DELIVERY_RULES = 100  # for end-to-end, fan-out and paced latency: there, delivery is what is measured
BATCH = 100  # events per request in end-to-end and fan-out
IN_FLIGHT = 4  # requests in flight in end-to-end, fan-out and intake-batch
DELIVERY_TIMEOUT = 300.0


# -- intake-single ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Served:
    """One timed closed-loop measurement of a server."""

    per_second: float
    others: int  # answers other than 202
    server_cpu: float  # CPU seconds of the server process in the measured window
    client_cpu: float  # CPU seconds of the load generator (this process) in that window
    seconds: float


async def serve_timed(url: str, pid: int, posts: Sequence[Post], seconds: float) -> Served:
    bodies = itertools.cycle(posts)
    await timed(url, bodies, 16, 0.5)  # warm-up: connections open, code paths hot
    cpu, client = cpu_seconds(pid), time.process_time()
    rate = await timed(url, bodies, 16, seconds)
    return Served(rate.per_second, rate.others, cpu_seconds(pid) - cpu, time.process_time() - client, seconds)


async def intake_single(h: Harness) -> Outcome:
    rules = h.rules(RULES)
    posts = [json_post([event(seq, (seq // 10) % RULES, matching=seq % 10 == 0)]) for seq in range(30_000)]
    seconds = h.options.seconds(3.0, 1.0)
    bare = ServerProcess("bench.bare_intake", log=h.workdir / "bare-intake.log")
    await bare.start()
    daemon_runs: list[Served] = []
    bare_runs: list[Served] = []
    try:
        for i in range(h.options.runs):
            async with h.engine(rules) as engine, h.sampling(engine.pid, h.profile_as("intake-single", i)) as sampling:
                daemon_runs.append(await serve_timed(engine.url, engine.pid, posts, seconds))
            bare_runs.append(await serve_timed(bare.url, bare.pid, posts, seconds))
    finally:
        await bare.stop()
    ratios = [d.per_second / b.per_second for d, b in zip(daemon_runs, bare_runs, strict=True)]
    figures = [
        figure("daemon, requests/s", "/s", [d.per_second for d in daemon_runs]),
        figure("bare aiohttp handler, requests/s", "/s", [b.per_second for b in bare_runs]),
        figure("daemon / bare handler", "×", ratios, "≥ 0.5", at_least=0.5),
        figure("bare handler CPU / daemon CPU, per request", "×",
               [b.server_cpu / b.per_second / (d.server_cpu / d.per_second)
                for d, b in zip(daemon_runs, bare_runs, strict=True)]),
        figure("daemon CPU per request", "µs", [d.server_cpu / (d.per_second * d.seconds) * 1e6
                                               for d in daemon_runs], headline=False),
        figure("bare handler CPU per request", "µs", [b.server_cpu / (b.per_second * b.seconds) * 1e6
                                                      for b in bare_runs], headline=False),
        figure("daemon CPU, share of one core", "%", [d.server_cpu / d.seconds * 100 for d in daemon_runs],
               headline=False),
        figure("bare handler CPU, share of one core", "%", [b.server_cpu / b.seconds * 100 for b in bare_runs],
               headline=False),
        figure("load generator CPU (daemon runs)", "%", [d.client_cpu / d.seconds * 100 for d in daemon_runs],
               headline=False),
        figure("load generator CPU (bare runs)", "%", [b.client_cpu / b.seconds * 100 for b in bare_runs],
               headline=False),
    ]
    profile = h.shown(sampling.profile if sampling is not None else None, figures)
    others = sum(d.others for d in daemon_runs)
    return Outcome(
        "intake-single",
        f"Single-event JSON POSTs on 16 keep-alive connections (closed loop) for {seconds:g} s after a 0.5 s "
        f"warm-up, against the daemon ({RULES:,} rules; 1 event in 10 matches one rule and is paged to the "
        "fake PagerDuty meanwhile) and against a bare aiohttp handler in its own process that only parses the "
        "JSON and answers 202, alternately in each run. CPU figures are from /proc over the measured window.",
        tuple(figures), profile, problems=(f"{others} answers other than 202",) if others else (),
    )


# -- intake-batch -------------------------------------------------------------------------------------


async def intake_batch(h: Harness) -> Outcome:
    rules = h.rules(RULES)
    count = h.options.size(20, 6)
    posts = batches([event(seq, seq % RULES) for seq in range(count * 1000)], 1000, ndjson=True)
    warmup = batches([event(seq, seq % RULES) for seq in range(10**6, 10**6 + 1000)], 1000, ndjson=True)
    runs: list[tuple[float, float, float, int]] = []
    others = 0

    async def run(engine: EngineProcess) -> tuple[float, float, float, int]:
        nonlocal others
        await closed_loop(engine.url, warmup, 1)
        cpu = engine.cpu_seconds()
        sent = await closed_loop(engine.url, posts, IN_FLIGHT)
        cpu = engine.cpu_seconds() - cpu
        accepted = sum(len(s.post.seqs) for s in sent if s.status == 202)
        others += sum(1 for s in sent if s.status != 202)
        elapsed = max(s.at + s.seconds for s in sent) - min(s.at for s in sent)
        request_ms = statistics.median(s.seconds for s in sent) * 1000
        return accepted / elapsed, cpu / accepted * 1e6, request_ms, await h.fake.delivered()

    for i in range(h.options.runs):
        async with h.engine(rules) as engine, h.sampling(engine.pid, h.profile_as("intake-batch", i)) as sampling:
            runs.append(await run(engine))
    figures = [
        figure("events/s into the outbox", "/s", [r[0] for r in runs], "≥ 50,000/s", at_least=50_000),
        figure("daemon CPU per event", "µs", [r[1] for r in runs], headline=False),
        figure("request time (1,000 events), median", "ms", [r[2] for r in runs], headline=False),
        figure("pages delivered meanwhile", "", [r[3] for r in runs], headline=False),
    ]
    profile = h.shown(sampling.profile if sampling is not None else None, figures)
    return Outcome(
        "intake-batch",
        f"{count} NDJSON requests of 1,000 events each, {IN_FLIGHT} in flight, into a daemon on {RULES:,} rules; "
        "every event matches one rule, so each request commits 1,000 notifications to the outbox before its "
        "202. Rate = events acknowledged / (last answer − first send), after a one-request warm-up. Delivery "
        "to the fake PagerDuty runs at the same time, in the same process, as it would in production.",
        tuple(figures), profile, problems=(f"{others} answers other than 202",) if others else (),
    )


# -- end-to-end and fan-out ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Delivery:
    """One run of posting events and waiting for every page at the fake PagerDuty."""

    delivered: int
    per_second: float  # pages delivered / (last arrival − first POST)
    accepted_per_second: float  # events acknowledged / (last answer − first POST)
    p50_ms: float
    p99_ms: float
    cpu_ms_per_page: float  # daemon CPU from the first POST to the last arrival, per page delivered
    peak_rss_mb: float
    problems: tuple[str, ...]
    profile: Profile | None = None


async def deliver_all(h: Harness, rules: Path, posts: Sequence[Post], pages: int, profile_as: str = "") -> Delivery:
    async with h.engine(rules) as engine:
        async with h.sampling(engine.pid, profile_as) as sampling:
            cpu = engine.cpu_seconds()
            sent = await closed_loop(engine.url, posts, IN_FLIGHT)
            delivered = await h.fake.wait_delivered(pages, DELIVERY_TIMEOUT)
            cpu = engine.cpu_seconds() - cpu
        peak = engine.peak_rss()
    arrivals = await h.fake.arrivals()
    if not arrivals.times:
        raise RuntimeError(f"no page arrived within {DELIVERY_TIMEOUT:g}s; the daemon said:\n{engine.log_tail()}")
    waits = latencies(sent, arrivals)
    start = min(s.at for s in sent)
    problems = _problems(sent, pages - delivered, arrivals.invalid, arrivals.duplicates)
    return Delivery(
        delivered=delivered,
        per_second=delivered / (max(arrivals.times.values()) - start),
        accepted_per_second=sum(len(s.post.seqs) for s in sent if s.status == 202)
        / (max(s.at + s.seconds for s in sent) - start),
        p50_ms=percentile(waits, 50) * 1000,
        p99_ms=percentile(waits, 99) * 1000,
        cpu_ms_per_page=cpu / max(delivered, 1) * 1000,
        peak_rss_mb=peak / 2**20,
        problems=problems,
        profile=sampling.profile if sampling is not None else None,
    )


def _problems(sent: Sequence[Sent], missing: int, invalid: int, duplicates: int) -> tuple[str, ...]:
    others = sum(1 for s in sent if s.status != 202)
    found = [(others, "answers other than 202"), (missing, "pages never arrived"),
             (invalid, "bodies the fake refused"), (duplicates, "pages delivered twice")]
    return tuple(f"{n} {what}" for n, what in found if n)


async def end_to_end(h: Harness) -> Outcome:
    rules = h.rules(DELIVERY_RULES)
    events = h.options.size(10_000, 2_000)
    posts = batches([event(seq, seq % DELIVERY_RULES) for seq in range(events)], BATCH)
    runs = [await deliver_all(h, rules, posts, events, h.profile_as("end-to-end", i)) for i in range(h.options.runs)]
    figures = [
        figure("delivered events/s", "/s", [r.per_second for r in runs], "≥ 3,000/s", at_least=3000),
        figure("POST → arrival, p50", "ms", [r.p50_ms for r in runs]),
        figure("POST → arrival, p99", "ms", [r.p99_ms for r in runs]),
        figure("daemon CPU per delivered event", "ms", [r.cpu_ms_per_page for r in runs], "≤ 0.3 ms",
               at_most=0.3),
        figure("peak RSS (VmHWM)", "MB", [r.peak_rss_mb for r in runs]),
        figure("acknowledged events/s (intake side)", "/s", [r.accepted_per_second for r in runs],
               headline=False),
    ]
    profile = h.shown(runs[-1].profile, figures, always=True)
    return Outcome(
        "end-to-end",
        f"{events:,} distinct events, each matching one of {DELIVERY_RULES:,} rules (dedup key per event), "
        f"routed to 10 services (8 on Events API v2, 2 on v1), POSTed as JSON arrays of {BATCH} with {IN_FLIGHT} "
        "requests in flight; the run ends when the fake PagerDuty has accepted every page. Delivered/s = pages / (last "
        "arrival − first POST); latency per event from the POST of its batch to its arrival; CPU is the "
        "daemon's (all threads) over the same span.",
        tuple(figures), profile, problems=tuple(p for r in runs for p in r.problems),
    )


async def fan_out(h: Harness) -> Outcome:
    rules = h.rules(DELIVERY_RULES, fanout=True)
    events = h.options.size(2_000, 500)
    pages = events * 10
    posts = batches([fanout_event(seq) for seq in range(events)], BATCH)
    runs = [await deliver_all(h, rules, posts, pages, h.profile_as("fan-out", i)) for i in range(h.options.runs)]
    figures = [
        figure(f"pages arrived, % of {pages:,}", "%", [r.delivered / pages * 100 for r in runs], "100%",
               at_least=100),
        figure("delivered pages/s", "/s", [r.per_second for r in runs]),
    ]
    baseline = h.outcomes.get("end-to-end")
    if baseline is not None and baseline.figures:
        e2e = baseline.figures[0].median
        figures.append(figure("rate / end-to-end rate", "×", [r.per_second / e2e for r in runs], "0.8–1.2×",
                              at_least=0.8, at_most=1.2))
    figures += [
        figure("POST → arrival, p50", "ms", [r.p50_ms for r in runs], headline=False),
        figure("POST → arrival, p99", "ms", [r.p99_ms for r in runs], headline=False),
        figure("daemon CPU per delivered page", "ms", [r.cpu_ms_per_page for r in runs], headline=False),
    ]
    profile = h.shown(runs[-1].profile, figures)
    return Outcome(
        "fan-out",
        f"{events:,} events, each matching one rule that lists all 10 services: {pages:,} pages, POSTed as "
        f"JSON arrays of {BATCH} with {IN_FLIGHT} in flight, as in end-to-end. The rate is compared with "
        "end-to-end's median from the same invocation"
        + ("." if baseline is not None and baseline.figures
           else "; end-to-end did not run in this one, so the rate is not judged."),
        tuple(figures), profile, problems=tuple(p for r in runs for p in r.problems),
    )


# -- paced latency ------------------------------------------------------------------------------------


async def paced_latency(h: Harness) -> Outcome:
    rules = h.rules(DELIVERY_RULES)
    rate = 100
    seconds = h.options.seconds(20.0, 5.0)
    posts = [json_post([event(seq, seq % DELIVERY_RULES)]) for seq in range(int(rate * seconds))]

    async def run(profile_as: str = "") -> tuple[list[float], list[Sent], float, Profile | None]:
        async with h.engine(rules) as engine, h.sampling(engine.pid, profile_as) as sampling:
            cpu = engine.cpu_seconds()
            sent = await paced(engine.url, posts, rate, connections=16, seconds=seconds)
            await h.fake.wait_delivered(len(posts), DELIVERY_TIMEOUT)
            cpu = engine.cpu_seconds() - cpu
        waits = latencies(sent, await h.fake.arrivals())
        return waits, sent, cpu / seconds * 100, sampling.profile if sampling is not None else None

    runs = [await run(h.profile_as("paced-latency", i)) for i in range(h.options.runs)]
    figures = [
        figure("POST → arrival, p50", "ms", [percentile(w, 50) * 1000 for w, *_ in runs]),
        figure("POST → arrival, p99", "ms", [percentile(w, 99) * 1000 for w, *_ in runs], "≤ 10 ms", at_most=10),
        figure("POST → arrival, max", "ms", [max(w) * 1000 for w, *_ in runs], headline=False),
        figure("POST → 202, p50", "ms", [percentile([s.seconds for s in sent], 50) * 1000 for _, sent, *_ in runs],
               headline=False),
        figure("POST → 202, p99", "ms", [percentile([s.seconds for s in sent], 99) * 1000 for _, sent, *_ in runs],
               headline=False),
        figure("daemon CPU, share of one core", "%", [r[2] for r in runs], headline=False),
    ]
    missing = [len(posts) - len(w) for w, *_ in runs]
    profile = h.shown(runs[-1][3], figures)
    return Outcome(
        "paced-latency",
        f"An open loop of {rate} single-event POSTs a second for {seconds:g} s to a daemon on "
        f"{DELIVERY_RULES} rules (each event matches one rule, "
        "one page), on up to 16 connections. Each request is timed from the moment it was due, so a stall is "
        "charged to every request it delayed; POST → arrival is from then to the page's arrival at the fake.",
        tuple(figures), profile, problems=tuple(f"{m} pages never arrived" for m in missing if m),
    )
