"""Benchmark 2: MCP over streamable HTTP, our server vs a bare MCP SDK server doing the raw call.

Each server runs in its own process; 32 client sessions per server stay open for the whole run and
call the `request` tool back to back. Ours verifies each request's bearer JWT, resolves the user's
grant in the embedded vault, audits the call and shapes the result; the bare server has no auth and
sends the GET with a fixed token. Target: throughput ratio >= 0.85; p50/p99 reported.

Throughput is measured in steady state: a side's 32 sessions run flat out, and only the calls that
finish inside a timed window (after a ramp-up, before the drain) count, so no window ends waiting
for the slowest session. The sides take turns in short phases, ABBA order, so slow spells of a
shared machine fall on both alike; every round's ratio is printed too, to show the spread.

    python -m bench.mcp_http [--sessions 32] [--rounds 6] [--window 1.5] [--mode legacy|2026-07-28]
"""

from __future__ import annotations

import argparse
import resource
import statistics
import time
from contextlib import AsyncExitStack
from dataclasses import dataclass, field

import anyio
import httpx2
from mcp import Client
from mcp.client.streamable_http import streamable_http_client

from bench._common import Bench, bench_vault, cpu_seconds, mcp_server_process, ms, pct, verdict

RAMP_SECONDS = 0.3


@dataclass
class _Side:
    """One server under load: its sessions' call loop is switched on for a phase and off between phases."""

    name: str
    pid: int
    active: bool = False
    wake: anyio.Event = field(default_factory=anyio.Event)
    idle: anyio.Event = field(default_factory=anyio.Event)
    in_flight: int = 0
    finished: list[float] = field(default_factory=list)  # latency of every call, in completion order
    window_calls: int = 0
    window_seconds: float = 0.0
    window_latencies: list[float] = field(default_factory=list)
    server_cpu: float = 0.0
    client_cpu: float = 0.0
    rounds: list[float] = field(default_factory=list)  # calls/s of each phase

    async def loop(self, client: Client, arguments: dict[str, str]) -> None:
        while True:
            if not self.active:
                await self.wake.wait()
                continue
            self.in_flight += 1
            started = time.perf_counter()
            try:
                result = await client.call_tool("request", arguments)
            finally:
                self.in_flight -= 1
                if not self.active and self.in_flight == 0:
                    self.idle.set()
            assert not result.is_error, result
            self.finished.append(time.perf_counter() - started)

    async def phase(self, window: float, *, timed: bool = True) -> None:
        """Run flat out, count the calls that finish inside `window` seconds (if `timed`), then drain."""
        self.active = True
        wake, self.wake = self.wake, anyio.Event()
        wake.set()
        await anyio.sleep(RAMP_SECONDS)
        first, server_before, client_before = len(self.finished), cpu_seconds(self.pid), _own_cpu()
        started = time.perf_counter()
        await anyio.sleep(window)
        took = time.perf_counter() - started
        last, server_after, client_after = len(self.finished), cpu_seconds(self.pid), _own_cpu()
        self.idle = anyio.Event()
        self.active = False
        if self.in_flight:
            await self.idle.wait()
        if not timed:
            return
        self.window_calls += last - first
        self.window_seconds += took
        self.window_latencies += self.finished[first:last]
        self.server_cpu += server_after - server_before
        self.client_cpu += client_after - client_before
        self.rounds.append((last - first) / took)

    @property
    def rps(self) -> float:
        return self.window_calls / self.window_seconds


async def _open(stack: AsyncExitStack, endpoint: str, token: str | None, mode: str) -> Client:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    transport = streamable_http_client(endpoint, http_client=httpx2.AsyncClient(headers=headers, timeout=60))
    return await stack.enter_async_context(Client(transport, mode=mode))  # type: ignore[arg-type]


async def main(bench: Bench, sessions: int, rounds: int, window: float, mode: str) -> bool:
    jwt = bench.user_jwt()
    arguments = {"url": f"{bench.api_url}/v1/items", "provider": "bench"}
    with mcp_server_process("bare", bench) as (bare_url, bare_pid), \
            mcp_server_process("ours", bench) as (ours_url, ours_pid):
        bare, ours = _Side("bare", bare_pid), _Side("ours", ours_pid)
        async with AsyncExitStack() as stack:
            clients: list[tuple[_Side, Client]] = []
            for side, url, token in ((bare, bare_url, None), (ours, ours_url, jwt)):
                for _ in range(sessions):
                    client = await _open(stack, url, token, mode)
                    # One untimed call per session, as a host makes when it starts: the client lists the
                    # tools and compiles the output-schema validator once per session.
                    await client.call_tool("request", arguments)
                    clients.append((side, client))
            async with anyio.create_task_group() as tg:
                for side, client in clients:
                    tg.start_soon(side.loop, client, arguments)
                for side in (bare, ours):  # warm up: pools, caches, JWKS
                    await side.phase(window / 2, timed=False)
                for i in range(rounds):
                    for side in ((bare, ours) if i % 2 == 0 else (ours, bare)):
                        await side.phase(window)
                tg.cancel_scope.cancel()
    _report(bare, ours, sessions, mode)
    ok = ours.rps / bare.rps >= 0.85
    print(f"  target throughput ratio >= 0.85: {verdict(ok)}")
    return ok


def _report(bare: _Side, ours: _Side, sessions: int, mode: str) -> None:
    print(f"MCP streamable HTTP ({mode}): {sessions} sessions per server calling `request` back to back, "
          f"each server in its own process; {len(ours.rounds)} rounds, {bare.window_calls} + {ours.window_calls} "
          "calls timed in steady state")
    print(f"  {'':16}{'bare SDK server':>17}{'alter-agents':>15}{'ratio':>8}")
    print(f"  {'calls/s':16}{bare.rps:17.0f}{ours.rps:15.0f}{ours.rps / bare.rps:8.3f}")
    for q, label in ((0.5, "p50"), (0.99, "p99")):
        b, o = pct(bare.window_latencies, q), pct(ours.window_latencies, q)
        print(f"  {label:16}{ms(b):>17}{ms(o):>15}{o / b:8.3f}")
    # CPU per call inside the windows, to see which process the time goes to.
    for label, b, o in (("server CPU/call", bare.server_cpu, ours.server_cpu),
                        ("client CPU/call", bare.client_cpu, ours.client_cpu)):
        b, o = b / bare.window_calls, o / ours.window_calls
        print(f"  {label:16}{ms(b):>17}{ms(o):>15}{o / b if b else 0:8.3f}")
    ratios = sorted(o / b for o, b in zip(ours.rounds, bare.rounds, strict=True))
    print(f"  per-round throughput ratios: {' '.join(f'{r:.2f}' for r in ratios)} "
          f"(median {statistics.median(ratios):.3f})")


def _own_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sessions", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=6, help="timed phases per server")
    parser.add_argument("--window", type=float, default=1.5, help="seconds timed per phase")
    parser.add_argument("--mode", default="legacy", help="protocol era: legacy (2025-11-25) or 2026-07-28")
    args = parser.parse_args()
    with bench_vault() as b:
        anyio.run(main, b, args.sessions, args.rounds, args.window, args.mode)
