"""Steady-state throughput of two sides measured in alternating phases.

A side's workers call flat out while its phase runs and wait between phases. Only calls that finish
inside the timed window (after a ramp-up, before the drain) count, so no figure includes workers
starting up or a window waiting for its slowest call. Phases alternate in ABBA order, so a slow
spell of a shared machine falls on both sides alike, and every round's ratio is kept to show the
spread. A side may name a process whose CPU time is read around each window.
"""

from __future__ import annotations

import resource
import statistics
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field

import anyio

from bench._common import cpu_seconds

RAMP_SECONDS = 0.3
Call = Callable[[], Awaitable[object]]


@dataclass
class Load:
    """One side: its workers, its phase switch, and what its timed windows saw."""

    name: str
    pid: int | None = None  # a server process whose CPU is measured too
    active: bool = False
    wake: anyio.Event = field(default_factory=anyio.Event)
    idle: anyio.Event = field(default_factory=anyio.Event)
    in_flight: int = 0
    finished: list[float] = field(default_factory=list)  # every call's latency, in completion order
    calls: int = 0
    seconds: float = 0.0
    latencies: list[float] = field(default_factory=list)
    server_cpu: float = 0.0
    client_cpu: float = 0.0
    rounds: list[float] = field(default_factory=list)  # calls/s of each timed phase

    async def worker(self, call: Call) -> None:
        """Call back to back while the side's phase runs; run it as a task and cancel it at the end."""
        while True:
            if not self.active:
                await self.wake.wait()
                continue
            self.in_flight += 1
            started = time.perf_counter()
            try:
                await call()
            finally:
                self.in_flight -= 1
                if not self.active and self.in_flight == 0:
                    self.idle.set()
            self.finished.append(time.perf_counter() - started)

    async def phase(self, window: float, *, timed: bool = True) -> None:
        """Run flat out, count the calls that finish inside `window` seconds (if `timed`), then drain."""
        self.active = True
        wake, self.wake = self.wake, anyio.Event()
        wake.set()
        await anyio.sleep(RAMP_SECONDS)
        first, server_before, client_before = len(self.finished), self._server_cpu(), own_cpu()
        started = time.perf_counter()
        await anyio.sleep(window)
        took = time.perf_counter() - started
        last, server_after, client_after = len(self.finished), self._server_cpu(), own_cpu()
        self.idle = anyio.Event()
        self.active = False
        if self.in_flight:
            await self.idle.wait()
        if timed:
            self.calls += last - first
            self.seconds += took
            self.latencies += self.finished[first:last]
            self.server_cpu += server_after - server_before
            self.client_cpu += client_after - client_before
            self.rounds.append((last - first) / took)

    @property
    def rps(self) -> float:
        return self.calls / self.seconds

    def _server_cpu(self) -> float:
        return cpu_seconds(self.pid) if self.pid else 0.0


async def alternate(base: Load, ours: Load, rounds: int, window: float, *, warm_up: bool = True) -> None:
    """A half-window untimed warm-up phase each, then `rounds` timed phases each in ABBA order."""
    for side in (base, ours) if warm_up else ():
        await side.phase(window / 2, timed=False)
    for i in range(rounds):
        for side in (base, ours) if i % 2 == 0 else (ours, base):
            await side.phase(window)


def median_ratio(base: Load, ours: Load) -> float:
    """The median of the rounds' throughput ratios: one slow spell of a shared machine moves it little."""
    return statistics.median(o / b for o, b in zip(ours.rounds, base.rounds, strict=True))


def round_ratios(base: Load, ours: Load) -> str:
    """Each round's throughput ratio, sorted, and their median."""
    ratios: Sequence[float] = sorted(o / b for o, b in zip(ours.rounds, base.rounds, strict=True))
    return f"{' '.join(f'{r:.2f}' for r in ratios)} (median {statistics.median(ratios):.3f})"


def own_cpu() -> float:
    """User + system CPU time of this process so far."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime
