"""How matching cost grows with the number of rules: `python bench/bench_match.py`.

"indexable" rules each pin `service` to a distinct value (plus a threshold leaf), so the candidate index
hands each event a handful of rules; "not indexable" rules are only regex / `any` leaves, so every rule
is evaluated for every event. Each figure is µs per event through `RuleSet.match`, median of 3 runs.
"""

from __future__ import annotations

import random
import statistics
import time
from typing import Any

from engine.rules.conditions import Definitions, compile_condition
from engine.rules.errors import Problem
from engine.rules.index import CandidateIndex
from engine.rules.ruleset import Rule, RuleSet

SIZES = (10, 1_000, 10_000)
RUNS = 3
RUN_SECONDS = 0.3  # each run matches events until at least this much time has passed


def indexable(i: int) -> dict[str, Any]:
    return {"all": [{"field": "service", "equals": f"svc-{i}"}, {"field": "http.status", "gte": 500}]}


def not_indexable(i: int) -> dict[str, Any]:
    return {"any": [{"field": "message", "regex": f"^job-{i} failed"},
                    {"field": "host", "prefix": f"db-{i}-"}]}


def rule_set(make_node: Any, size: int) -> RuleSet:
    definitions = Definitions()
    problems: list[Problem] = []
    rules = []
    for i in range(size):
        path = ("rules", i, "match")
        condition = compile_condition(make_node(i), file="bench.yaml", path=path,
                                      definitions=definitions, problems=problems, rule=f"r{i}")
        rules.append(Rule(name=f"r{i}", order=i, condition=condition, services=("pd",)))
    if problems:
        raise SystemExit(f"bench rules do not compile: {problems}")
    index = CandidateIndex([r.condition for r in rules])
    return RuleSet(rules=tuple(rules), services={}, files={}, index=index,
                   resolve_index=CandidateIndex([None] * len(rules)), by_name={r.name: r for r in rules},
                   inhibit_fields={})


def events(size: int, rng: random.Random) -> list[dict[str, Any]]:
    return [
        {
            "service": f"svc-{rng.randrange(size)}",
            "http": {"status": rng.choice([200, 404, 500, 503])},
            "message": f"job-{rng.randrange(size)} failed: exit 1",
            "host": f"db-{rng.randrange(size)}-a",
        }
        for _ in range(1000)
    ]


def microseconds_per_event(rule_set: RuleSet, batch: list[dict[str, Any]]) -> float:
    done, matched = 0, 0
    start = time.perf_counter()
    while True:
        for event in batch:
            matched += len(rule_set.match(event))
            done += 1
            if done % 10 == 0 and time.perf_counter() - start >= RUN_SECONDS:
                assert matched > 0, "the bench events should match some rules"
                return (time.perf_counter() - start) / done * 1e6


def main() -> None:
    rng = random.Random(7)
    print(f"{'rules':>7}  {'kind':<14}{'µs/event':>10}  {'min–max':>17}")
    medians: dict[tuple[str, int], float] = {}
    for kind, make_node in (("indexable", indexable), ("not indexable", not_indexable)):
        for size in SIZES:
            rules = rule_set(make_node, size)
            batch = events(size, rng)
            runs = [microseconds_per_event(rules, batch) for _ in range(RUNS)]
            medians[kind, size] = statistics.median(runs)
            spread = f"{min(runs):.2f}–{max(runs):.2f}"
            print(f"{size:>7}  {kind:<14}{medians[kind, size]:>10.2f}  {spread:>17}")
    ratio = medians["indexable", SIZES[-1]] / medians["indexable", SIZES[0]]
    print(f"indexable cost, {SIZES[-1]:,} rules / {SIZES[0]:,} rules: {ratio:.2f}× (target ≤ 3×)")


if __name__ == "__main__":
    main()
