"""`python -m bench [SCENARIO…] [--runs N] [--quick] [--no-profile] [--output FILE] [--keep]`

Runs the scenarios (all of them by default, in the order below) against the real daemon and a fake
PagerDuty, prints one table, and rewrites bench/RESULTS.md when the full suite ran (or writes --output).
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import os
import shutil
import sys
import tempfile
import time
import traceback
from collections.abc import Awaitable, Callable
from pathlib import Path

from bench.cluster import ha
from bench.faults import ha_faults
from bench.harness import Harness, Options
from bench.matching import match
from bench.profile import Sampling
from bench.resilience import memory, outage, reload
from bench.results import RESULTS, Outcome, document, plain_table, previous_notes
from bench.stalls import stall
from bench.throughput import end_to_end, fan_out, intake_batch, intake_single, paced_latency

Scenario = Callable[[Harness], Awaitable[Outcome]]
SCENARIOS: dict[str, Scenario] = {
    "match": match,
    "intake-single": intake_single,
    "intake-batch": intake_batch,
    "end-to-end": end_to_end,
    "paced-latency": paced_latency,
    "fan-out": fan_out,
    "reload": reload,
    "outage": outage,
    "memory": memory,
    "stall": stall,
    "ha": ha,
    "ha-faults": ha_faults,
}

INTRO = """\
Run by hand, never in `make test`: `make bench`, or `python -m bench [SCENARIO…] [--runs N] [--quick]`
for a subset or a smoke run (only a full run rewrites this file; the notes between `<!-- notes -->`
markers are written by hand and kept). Each scenario runs the real daemon (`alert-engine run`, awaited
through sd_notify like systemd does) against a fake PagerDuty (aiohttp, v1 and v2, in its own process),
with per-key pacing off (`rate_per_key: 0`) so that the figures measure the engine, not the pacing.
The load generator is this benchmark's own process (an aiohttp client on keep-alive connections).
The last run of each daemon scenario is sampled by py-spy without stopping the daemon (when py-spy is
installed in the venv: `.venv/bin/pip install py-spy`; it is not a project dependency); the profile is
shown where a target is missed, and for end-to-end, with what the samplers cost (they share the cores
too, so the last run's figures may be a little lower: they stay in the min–max).
**All three processes, the daemon, the fake PagerDuty and the load generator, share the machine's 2
cores**, so every figure includes that contention; timings on a shared box are noisy, hence the median
of the runs with the min–max beside it, and ratios measured in the same run where a target allows."""


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.split("\n\n")[1])
    parser.add_argument("scenarios", nargs="*", metavar="SCENARIO",
                        help=f"scenarios to run (default: all): {', '.join(SCENARIOS)}")
    parser.add_argument("--runs", type=int, default=3, help="runs per scenario (default 3; at least 1)")
    parser.add_argument("--quick", action="store_true", help="smaller sizes and shorter runs: a smoke run")
    parser.add_argument("--no-profile", dest="profile", action="store_false",
                        help="skip the extra py-spy run of scenarios that miss their target")
    parser.add_argument("--output", type=Path, help="write the results document here (any run)")
    parser.add_argument("--keep", action="store_true", help="keep the work directory (logs, databases, stacks)")
    args = parser.parse_args(argv)
    unknown = [s for s in args.scenarios if s not in SCENARIOS]
    if unknown:
        parser.error(f"unknown scenario(s): {', '.join(unknown)}; choose from {', '.join(SCENARIOS)}")
    if args.runs < 1:
        parser.error("--runs must be at least 1")
    return args


async def run(names: list[str], options: Options, workdir: Path) -> list[Outcome]:
    harness = Harness(options, workdir)
    await harness.start()
    outcomes = []
    try:
        for name in names:
            began = time.monotonic()
            print(f"running {name}…", file=sys.stderr, flush=True)
            try:
                outcome = await SCENARIOS[name](harness)
            except Exception as exc:  # one broken scenario must not cost the figures of the others
                traceback.print_exc()
                outcome = Outcome(name, "The scenario failed before it produced figures.", (),
                                  problems=(f"{type(exc).__name__}: {exc}".splitlines()[0],))
            outcome = dataclasses.replace(outcome, elapsed=time.monotonic() - began)
            harness.outcomes[name] = outcome
            outcomes.append(outcome)
            print(f"  {name}: {outcome.elapsed:.0f} s", file=sys.stderr, flush=True)
    finally:
        await harness.close()
    return outcomes


def main(argv: list[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    names = [n for n in SCENARIOS if n in args.scenarios] if args.scenarios else list(SCENARIOS)
    options = Options(runs=args.runs, quick=args.quick, profile=args.profile)
    if args.profile and not Sampling.available():
        print("py-spy is not installed (.venv/bin/pip install py-spy): no profiles this time", file=sys.stderr)
    workdir = Path(tempfile.mkdtemp(prefix="alert-engine-bench-"))
    began, load = time.monotonic(), os.getloadavg()[0]
    try:
        outcomes = asyncio.run(run(names, options, workdir))
    finally:
        if args.keep:
            print(f"work directory kept: {workdir}", file=sys.stderr)
        else:
            shutil.rmtree(workdir, ignore_errors=True)
    print(plain_table(outcomes))
    print(f"\n{len(outcomes)} scenario(s) in {time.monotonic() - began:.0f} s", file=sys.stderr)
    output = args.output or (RESULTS if len(names) == len(SCENARIOS) and not args.quick else None)
    if output is not None:
        output.write_text(document(outcomes, INTRO, previous_notes(), (load, os.getloadavg()[0])))
        print(f"written: {output}", file=sys.stderr)
    else:
        print("bench/RESULTS.md left as it is (only a full run rewrites it; --output FILE writes any run)",
              file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
