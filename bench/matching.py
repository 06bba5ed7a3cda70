"""The match scenario: `bench_match`'s measurement (µs per event through `RuleSet.match` at 10, 1,000 and
10,000 rules), run in this process with the suite's number of runs."""

from __future__ import annotations

import random

from bench import bench_match
from bench.harness import Harness, figure
from bench.results import Outcome

KINDS = (("indexable", bench_match.indexable), ("not indexable", bench_match.not_indexable))


async def match(h: Harness) -> Outcome:
    rng = random.Random(7)
    runs: dict[tuple[str, int], list[float]] = {}
    for kind, make_node in KINDS:
        for size in bench_match.SIZES:
            rules = bench_match.rule_set(make_node, size)
            batch = bench_match.events(size, rng)
            runs[kind, size] = [bench_match.microseconds_per_event(rules, batch) for _ in range(h.options.runs)]
    small, large = bench_match.SIZES[0], bench_match.SIZES[-1]
    ratios = [b / a for a, b in zip(runs["indexable", small], runs["indexable", large], strict=True)]
    figures = [figure(f"{size:,} rules, {kind}", "µs/event", runs[kind, size], headline=kind == "indexable")
               for kind, _ in KINDS for size in bench_match.SIZES]
    figures.append(figure(f"indexable cost, {large:,} / {small:,} rules", "×", ratios, "≤ 3×", at_most=3.0))
    return Outcome(
        "match",
        "µs per event through `RuleSet.match` (candidate index + condition closures), in the benchmark's own "
        f"process, for rule sets of {', '.join(f'{s:,}' for s in bench_match.SIZES)} rules "
        "(`bench/bench_match.py`). \"indexable\": each rule pins `service` to a distinct value plus a `gte` "
        "leaf; \"not indexable\": each rule is an `any` of a regex and a prefix leaf, so every rule is "
        "evaluated for every event. The ratio is taken run by run.",
        tuple(figures),
    )
