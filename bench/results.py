"""Figures, the table, and `bench/RESULTS.md`.

Each scenario yields an `Outcome`: its figures (every run's value; the median and min–max are shown),
the targets some figures carry, and, when profiled, where the daemon's time went. RESULTS.md is
rewritten whole, except the hand-written notes of each section (between `<!-- notes: NAME -->` and
`<!-- end notes -->`), which are carried over from the previous file.
"""

from __future__ import annotations

import datetime as dt
import importlib.metadata
import os
import platform
import re
import sqlite3
import statistics
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from bench.profile import RATE, Profile

RESULTS = Path(__file__).resolve().parent / "RESULTS.md"
NOTES = re.compile(r"<!-- notes: (?P<name>[\w-]+) -->\n(?P<text>.*?)<!-- end notes -->", re.DOTALL)


@dataclass(frozen=True)
class Figure:
    """One measured quantity: its value in each run; `target`/`met` when a target is about it."""

    label: str
    unit: str
    runs: tuple[float, ...]
    target: str = ""
    met: bool | None = None
    headline: bool = True  # shown in the summary table too, not only in the scenario's section

    @property
    def median(self) -> float:
        return statistics.median(self.runs)


@dataclass(frozen=True)
class Outcome:
    scenario: str
    setup: str  # what was run, in a sentence or two of markdown
    figures: tuple[Figure, ...]
    profile: Profile | None = None
    details: str = ""  # more markdown: a breakdown table, what was seen in the runs
    problems: tuple[str, ...] = field(default=())  # things that went wrong in a run (lost pages, errors)
    elapsed: float = 0.0  # seconds the scenario took, all runs and daemon starts included

    @property
    def met(self) -> bool | None:
        verdicts = [f.met for f in self.figures if f.target]
        if not verdicts or any(v is None for v in verdicts):
            return None
        return all(verdicts)


def number(value: float) -> str:
    if value == int(value) or abs(value) >= 1000:
        return f"{value:,.0f}"
    if abs(value) >= 100:
        return f"{value:.0f}"
    if abs(value) >= 10:
        return f"{value:.1f}"
    return f"{value:.2f}"


def verdict(met: bool | None) -> str:
    return {True: "met", False: "**not met**", None: "not judged"}[met]


def figure_cells(f: Figure) -> tuple[str, str, str]:
    spread = f"{number(min(f.runs))}–{number(max(f.runs))}" if len(f.runs) > 1 else ""
    return f"{number(f.median)} {f.unit}".strip(), spread, str(len(f.runs))


def table(outcomes: Sequence[Outcome]) -> str:
    """The summary: one row per figure, the target and its verdict beside the figure it is about."""
    rows = ["| scenario | figure | median | min–max | runs | target | |", "|---|---|---:|---:|---:|---|---|"]
    for outcome in outcomes:
        if not outcome.figures:
            rows.append(f"| {outcome.scenario} | did not run: {'; '.join(outcome.problems)} | | | | | |")
        for i, f in enumerate(f for f in outcome.figures if f.headline):
            median, spread, runs = figure_cells(f)
            name = outcome.scenario if i == 0 else ""
            rows.append(f"| {name} | {f.label} | {median} | {spread} | {runs} | {f.target} | "
                        f"{verdict(f.met) if f.target else ''} |")
    return "\n".join(rows)


def plain_table(outcomes: Sequence[Outcome]) -> str:
    """The summary for a terminal."""
    lines = [f"{'scenario':<14} {'figure':<44} {'median':>16} {'min–max':>21}  target"]
    for outcome in outcomes:
        if not outcome.figures:
            lines.append(f"{outcome.scenario:<14} did not run: {'; '.join(outcome.problems)}")
        for i, f in enumerate(f for f in outcome.figures if f.headline):
            median, spread, _ = figure_cells(f)
            target = f"{f.target} ({verdict(f.met).strip('*')})" if f.target else ""
            lines.append(f"{outcome.scenario if i == 0 else '':<14} {f.label:<44} {median:>16} {spread:>21}  {target}")
    return "\n".join(lines)


def profile_section(profile: Profile) -> str:
    lines = [
        f"Profile of the last run: py-spy sampled the daemon for {profile.seconds:.0f} s without stopping it "
        f"({profile.cpu_samples:,} CPU samples at {RATE} Hz over all threads; the two samplers used "
        f"{profile.sampler_cpu / max(profile.seconds, 1e-9):.0%} of a core meanwhile; raw folded stacks kept "
        "with `--keep`). CPU samples by thread: "
        + ", ".join(f"`{c.what}` {c.share:.0%}" for c in profile.by_thread) + ".",
        "",
        "| top functions by own CPU time | share |",
        "|---|---:|",
    ]
    lines += [f"| `{c.what}` | {c.share:.1%} |" for c in profile.own]
    lines += ["", "| engine/ functions by inclusive CPU time | share |", "|---|---:|"]
    lines += [f"| `{c.what}` | {c.share:.1%} |" for c in profile.inclusive_engine]
    for view in profile.threads:
        lines += ["", f"Wall clock of thread `{view.thread}` (running {view.busy:.0%} of the time; "
                      "the rest waiting, on the loop's select, a queue, the GIL or the disk):", "",
                  "| leaf frame, waiting included | share |", "|---|---:|"]
        lines += [f"| `{c.what}` | {c.share:.1%} |" for c in view.leaves]
    return "\n".join(lines)


def section(outcome: Outcome, notes: str) -> str:
    parts = [f"## {outcome.scenario}", "", outcome.setup]
    if outcome.figures:
        parts += ["", "| figure | median | min–max | runs | target | |", "|---|---:|---:|---:|---|---|"]
    for f in outcome.figures:
        median, spread, runs = figure_cells(f)
        parts.append(f"| {f.label} | {median} | {spread} | {runs} | {f.target} | "
                     f"{verdict(f.met) if f.target else ''} |")
    judged = {True: "**Target met.**", False: "**Target not met.**", None: "**Not judged.**"}
    parts += ["", f"{judged[outcome.met]} (The scenario took {outcome.elapsed:.0f} s.)"]
    if outcome.problems:
        parts += ["", "Problems seen: " + "; ".join(outcome.problems) + "."]
    if outcome.details:
        parts += ["", outcome.details]
    if outcome.profile is not None:
        parts += ["", profile_section(outcome.profile)]
    parts += ["", f"<!-- notes: {outcome.scenario} -->", notes.strip("\n"), "<!-- end notes -->", ""]
    return "\n".join(parts)


def machine(load: tuple[float, float]) -> str:
    model = "unknown CPU"
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            model = line.split(":", 1)[1].strip()
            break
    versions = ", ".join(f"{name} {importlib.metadata.version(name)}" for name in ("aiohttp", "google-re2"))
    return (f"`nproc` = {len(os.sched_getaffinity(0))} ({model}), Linux {platform.release()}, "
            f"Python {platform.python_version()}, {versions}, SQLite {sqlite3.sqlite_version}; "
            f"{dt.date.today().isoformat()}; 1-minute load average {load[0]:.1f} when the run began, "
            f"{load[1]:.1f} when it ended")


def previous_notes(path: Path = RESULTS) -> dict[str, str]:
    if not path.exists():
        return {}
    return {m["name"]: m["text"] for m in NOTES.finditer(path.read_text())}


def document(outcomes: Sequence[Outcome], intro: str, notes: dict[str, str], load: tuple[float, float]) -> str:
    """The whole of RESULTS.md; `load` is the 1-minute load average at the start and the end of the run."""
    parts = ["# Benchmark results", "", intro, "", f"Machine: {machine(load)}.", "", "## Summary", "",
             table(outcomes), "", "<!-- notes: summary -->", notes.get("summary", "").strip("\n"),
             "<!-- end notes -->", ""]
    parts += [section(o, notes.get(o.scenario, "")) for o in outcomes]
    return "\n".join(parts)
