"""What every scenario shares: the options, the fake PagerDuty, generated rule sets, fresh daemons,
profiling, and the arithmetic of latencies."""

from __future__ import annotations

import contextlib
import math
import statistics
from collections.abc import AsyncIterator, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from bench.daemon import EngineProcess
from bench.fake_pagerduty import Arrivals, FakePagerDuty
from bench.load import Sent
from bench.profile import Profile, Sampling
from bench.results import Figure, Outcome
from bench.workload import seq_of, write_rules


@dataclass(frozen=True)
class Options:
    runs: int = 3
    quick: bool = False  # smaller sizes and shorter runs: a smoke run, not figures to keep
    profile: bool = True  # sample the last run of each daemon scenario with py-spy

    def size(self, full: int, quick: int) -> int:
        return quick if self.quick else full

    def seconds(self, full: float, quick: float) -> float:
        return quick if self.quick else full


class Harness:
    """Shared by the scenarios of one invocation; `outcomes` holds those already run, by name."""

    def __init__(self, options: Options, workdir: Path) -> None:
        self.options = options
        self.workdir = workdir
        self.fake = FakePagerDuty(workdir / "fake-pagerduty.log")
        self.outcomes: dict[str, Outcome] = {}
        self._rule_dirs: dict[tuple[int, int, bool], Path] = {}
        self._engines = 0

    async def start(self) -> None:
        await self.fake.start()

    async def close(self) -> None:
        await self.fake.close()

    def rules(self, count: int, *, files: int = 1, fanout: bool = False) -> Path:
        """A directory of `count` generated rules (see bench.workload), written once per invocation."""
        key = (count, files, fanout)
        if key not in self._rule_dirs:
            name = f"rules-{count}-{files}{'-fanout' if fanout else ''}"
            self._rule_dirs[key] = write_rules(self.workdir / name, count, files=files, fanout=fanout)
        return self._rule_dirs[key]

    def new_engine(self, rules: Path) -> EngineProcess:
        """A daemon (not started) with a state directory of its own."""
        self._engines += 1
        return EngineProcess(self.workdir / f"engine-{self._engines}", rules, self.fake.url)

    @contextlib.asynccontextmanager
    async def engine(self, rules: Path) -> AsyncIterator[EngineProcess]:
        """A fresh daemon on `rules`, started, with the fake's records cleared; stopped afterwards."""
        engine = self.new_engine(rules)
        await self.fake.reset()
        try:
            await engine.start()
            yield engine
        finally:
            await engine.stop()

    def profile_as(self, scenario: str, run: int) -> str:
        """The profile name for run number `run` (from 0) of a scenario: the last run is sampled, when
        profiling is on and py-spy is installed; '' for the others."""
        wanted = self.options.profile and Sampling.available() and run == self.options.runs - 1
        return scenario if wanted else ""

    @staticmethod
    def shown(profile: Profile | None, figures: Iterable[Figure], *, always: bool = False) -> Profile | None:
        """The profile worth reporting: where a target was missed (or `always`)."""
        missed = any(f.target and f.met is False for f in figures)
        return profile if always or missed else None

    def sampling(self, pid: int, scenario: str) -> contextlib.AbstractAsyncContextManager[Sampling | None]:
        """py-spy on `pid` while the block runs when `scenario` names the profile; nothing when it is ''."""
        if not scenario:
            return contextlib.nullcontext()
        return Sampling(pid, self.workdir / scenario)


def figure(label: str, unit: str, runs: Sequence[float], target: str = "", *, at_most: float | None = None,
           at_least: float | None = None, headline: bool = True) -> Figure:
    """A figure; with `at_most` / `at_least`, its median is judged against that bound."""
    met = None
    if at_most is not None or at_least is not None:
        median = statistics.median(runs)
        met = (at_most is None or median <= at_most) and (at_least is None or median >= at_least)
    return Figure(label, unit, tuple(runs), target, met, headline)


def percentile(values: Sequence[float], q: float) -> float:
    """The nearest-rank q-th percentile (0 < q <= 100)."""
    if not values:
        raise ValueError("no values to take a percentile of")
    ordered = sorted(values)
    return ordered[max(0, math.ceil(q / 100 * len(ordered)) - 1)]


def sent_times(sent: Iterable[Sent]) -> dict[int, float]:
    """Event sequence number -> when the request carrying it was sent (or due)."""
    return {seq: s.at for s in sent for seq in s.post.seqs}


def latencies(sent: Iterable[Sent], arrivals: Arrivals) -> list[float]:
    """Seconds from the POST of each event to the arrival of each of its pages at the fake PagerDuty."""
    times = sent_times(sent)
    return [at - times[seq_of(dedup)] for (_, dedup), at in arrivals.times.items() if seq_of(dedup) in times]
