"""Where the daemon's time goes: py-spy attached to its pid, its folded stacks summed up per function.

`Sampling` runs two `py-spy record --format raw --threads --nonblocking` on the daemon until stopped
(SIGINT makes py-spy write its file): one leaves idle samples out (a thread waiting on a socket, a lock
or the disk is not counted), so its stacks say where the CPU went; the other keeps them, so its stacks
say what each thread spent its wall-clock time on, waiting included. Folded stacks are one line per
distinct stack, `thread (TID): NAME;frame;…;frame N`. Own time is the leaf frame's: time in that
function's own code or in the C function it called (sqlite3, json, the socket).
"""

from __future__ import annotations

import asyncio
import re
import shutil
import signal
import sys
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from bench.processes import ROOT, cpu_seconds

PY_SPY = shutil.which("py-spy", path=str(Path(sys.executable).parent)) or shutil.which("py-spy")
RATE = 50  # samples a second, per sampler
FRAME = re.compile(r"^(?P<function>.*) \((?P<file>[^()]*?)(?::(?P<line>\d+))?\)$")
THREAD = re.compile(r"^thread \((?P<tid>\d+)\)(?:: (?P<name>.*))?$")


@dataclass(frozen=True)
class Cost:
    what: str  # `function (file)`, or `function (file:line)` in the wall-clock view
    share: float  # of the samples counted


@dataclass(frozen=True)
class ThreadTime:
    thread: str
    busy: float  # share of the wall-clock samples that py-spy found the thread running
    leaves: tuple[Cost, ...]  # where its wall-clock samples were, waiting included


@dataclass(frozen=True)
class Profile:
    seconds: float  # how long the samplers ran
    sampler_cpu: float  # CPU seconds the two py-spy processes used meanwhile
    cpu_samples: int
    by_thread: tuple[Cost, ...]  # CPU: the share of each thread (default-executor workers as one)
    own: tuple[Cost, ...]  # CPU: leaf functions, all threads
    inclusive_engine: tuple[Cost, ...]  # CPU: engine/ functions with everything they called
    threads: tuple[ThreadTime, ...]  # wall clock of the event-loop and database threads


def short_file(path: str) -> str:
    """engine/deliver.py, aiohttp/web_protocol.py, asyncio/base_events.py: the last meaningful parts."""
    for marker in ("/site-packages/", f"{ROOT}/", "/lib/python3.11/"):
        if marker in path:
            return path.split(marker, 1)[1]
    return path


def frame_name(frame: str, *, line: bool = False) -> str:
    match = FRAME.match(frame)
    if match is None:
        return frame
    where = short_file(match["file"]) + (f":{match['line']}" if line and match["line"] else "")
    return f"{match['function']} ({where})"


def thread_name(root: str) -> str:
    """`MainThread`, `alert-engine-sqlite_0`, and every default-executor worker as `asyncio_N`."""
    match = THREAD.match(root)
    if match is None:
        return root
    name = match["name"] or match["tid"]
    return "asyncio_N" if re.fullmatch(r"asyncio_\d+", name) else name


def folded(raw: Path) -> list[tuple[str, list[str], int]]:
    """(thread name, frames root first, samples) per line of a py-spy raw file."""
    stacks = []
    for line in raw.read_text(errors="replace").splitlines():
        stack, _, count = line.rpartition(" ")
        if stack and count.isdigit():
            root, *frames = stack.split(";")
            stacks.append((thread_name(root), frames, int(count)))
    return stacks


def cpu_view(raw: Path, top: int = 10) -> tuple[int, tuple[Cost, ...], tuple[Cost, ...], tuple[Cost, ...]]:
    """(samples, CPU by thread, top functions by own time, top engine/ functions by inclusive time)."""
    own: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    threads: Counter[str] = Counter()
    total = 0
    for thread, frames, count in folded(raw):
        total += count
        threads[thread] += count
        if not frames:
            continue
        names = [frame_name(f) for f in frames]
        own[names[-1]] += count
        for name in set(names):
            if "(engine/" in name and "(engine/cli.py)" not in name:  # cli: the root of every stack
                inclusive[name] += count

    def ranked(counter: Counter[str]) -> tuple[Cost, ...]:
        return tuple(Cost(name, n / total) for name, n in counter.most_common(top))

    return total, ranked(threads), ranked(own), ranked(inclusive)


def wall_view(wall: Path, cpu: Path, threads: tuple[str, ...], top: int = 6) -> tuple[ThreadTime, ...]:
    walls: dict[str, Counter[str]] = {t: Counter() for t in threads}
    busy: Counter[str] = Counter()
    for thread, frames, count in folded(wall):
        if thread in walls and frames:
            walls[thread][frame_name(frames[-1], line=True)] += count
    for thread, _, count in folded(cpu):
        busy[thread] += count
    views = []
    for thread, leaves in walls.items():
        total = sum(leaves.values())
        if total:
            views.append(ThreadTime(thread, min(1.0, busy[thread] / total),
                                    tuple(Cost(what, n / total) for what, n in leaves.most_common(top))))
    return tuple(views)


class Sampling:
    """`async with Sampling(pid, stem)`: py-spy samples `pid` while the block runs; then `.profile`."""

    THREADS = ("MainThread", "alert-engine-sqlite_0")

    def __init__(self, pid: int, stem: Path) -> None:
        self.pid = pid
        self.cpu_file = stem.with_suffix(".cpu.folded")
        self.wall_file = stem.with_suffix(".wall.folded")
        self.profile: Profile | None = None
        self._procs: list[asyncio.subprocess.Process] = []
        self._began = 0.0

    @staticmethod
    def available() -> bool:
        return PY_SPY is not None

    async def __aenter__(self) -> Sampling:
        assert PY_SPY is not None, "py-spy is not installed"
        for out, extra in ((self.cpu_file, ()), (self.wall_file, ("--idle",))):
            self._procs.append(await asyncio.create_subprocess_exec(
                PY_SPY, "record", "--pid", str(self.pid), "--rate", str(RATE), "--format", "raw", "--threads",
                "--nonblocking", *extra, "--output", str(out),
                stdout=asyncio.subprocess.DEVNULL, stderr=out.with_suffix(".log").open("wb"),
            ))
        await asyncio.sleep(0.5)  # attaching takes a moment; samples before the load would only be idle
        self._began = time.monotonic()
        return self

    async def __aexit__(self, *exc: object) -> None:
        seconds = time.monotonic() - self._began
        sampler_cpu = 0.0
        for proc in self._procs:
            if proc.returncode is None:
                sampler_cpu += cpu_seconds(proc.pid)
                proc.send_signal(signal.SIGINT)
        await asyncio.gather(*(asyncio.wait_for(p.wait(), 60) for p in self._procs))
        if self.cpu_file.exists() and self.wall_file.exists():
            samples, by_thread, own, inclusive = cpu_view(self.cpu_file)
            threads = wall_view(self.wall_file, self.cpu_file, self.THREADS)
            self.profile = Profile(seconds, sampler_cpu, samples, by_thread, own, inclusive, threads)
