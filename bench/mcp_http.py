"""Benchmark 2: MCP over streamable HTTP, our server vs a bare MCP SDK server doing the raw call.

Each server runs in its own process; 32 concurrent client sessions call the `request` tool. Ours
verifies each request's bearer JWT, resolves the user's grant in the embedded vault, audits the
call and shapes the result; the bare server has no auth and sends the GET with a fixed token.
Target: throughput ratio >= 0.85; p50/p99 reported.

    python -m bench.mcp_http [--sessions 32] [--calls 25] [--mode legacy|2026-07-28]
"""

from __future__ import annotations

import argparse
import resource
import time

import anyio
import httpx2
from mcp import Client
from mcp.client.streamable_http import streamable_http_client

from bench._common import Bench, bench_vault, cpu_seconds, mcp_server_process, ms, pct, verdict


async def run_sessions(endpoint: str, token: str | None, api: str, sessions: int, calls: int,
                       mode: str, server_pid: int | None = None) -> tuple[list[float], float, tuple[float, float]]:
    """Open `sessions` clients, then time `calls` tool calls on each, all sessions at once.

    Returns the latencies, the wall time and the CPU seconds (server, this client) used meanwhile.
    """
    latencies: list[float] = []
    ready = anyio.Event()
    opened = 0

    async def session() -> None:
        nonlocal opened
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        transport = streamable_http_client(endpoint, http_client=httpx2.AsyncClient(headers=headers, timeout=60))
        async with Client(transport, mode=mode) as client:  # type: ignore[arg-type]
            # One untimed call per session, as a host makes when it starts: the client lists the tools and
            # compiles the output-schema validator once per session, outside the timed calls on both sides.
            await client.call_tool("request", {"url": f"{api}/v1/items", "provider": "bench"})
            opened += 1
            if opened == sessions:
                ready.set()
            await ready.wait()
            for _ in range(calls):
                started = time.perf_counter()
                result = await client.call_tool("request", {"url": f"{api}/v1/items", "provider": "bench"})
                latencies.append(time.perf_counter() - started)
                assert not result.is_error, result

    async with anyio.create_task_group() as tg:
        for _ in range(sessions):
            tg.start_soon(session)
        await ready.wait()
        started = time.perf_counter()
        cpu_before = (cpu_seconds(server_pid) if server_pid else 0.0), _own_cpu()
    took = time.perf_counter() - started
    cpu = (cpu_seconds(server_pid) if server_pid else 0.0) - cpu_before[0], _own_cpu() - cpu_before[1]
    return latencies, took, cpu


async def main(bench: Bench, sessions: int, calls: int, mode: str) -> bool:
    jwt = bench.user_jwt()
    lat: dict[str, list[float]] = {"bare": [], "ours": []}
    took = {"bare": 0.0, "ours": 0.0}
    server_cpu = {"bare": 0.0, "ours": 0.0}
    client_cpu = {"bare": 0.0, "ours": 0.0}
    with mcp_server_process("bare", bench) as (bare_url, bare_pid), \
            mcp_server_process("ours", bench) as (ours_url, ours_pid):
        targets = {"bare": (bare_url, None, bare_pid), "ours": (ours_url, jwt, ours_pid)}
        for url, token, _ in targets.values():  # warm up
            await run_sessions(url, token, bench.api_url, 4, 5, mode)
        for _ in range(2):
            for name, (url, token, pid) in targets.items():
                values, seconds, cpu = await run_sessions(url, token, bench.api_url, sessions, calls // 2, mode, pid)
                server_cpu[name] += cpu[0]
                client_cpu[name] += cpu[1]
                lat[name] += values
                took[name] += seconds
    total = sessions * (calls // 2) * 2
    rps = {k: total / took[k] for k in took}
    print(f"MCP streamable HTTP ({mode}): {sessions} concurrent sessions x {calls} request calls, "
          "each server in its own process")
    print(f"  {'':16}{'bare SDK server':>17}{'alter-agents':>15}{'ratio':>8}")
    print(f"  {'calls/s':16}{rps['bare']:17.0f}{rps['ours']:15.0f}{rps['ours'] / rps['bare']:8.3f}")
    for q, label in ((0.5, "p50"), (0.99, "p99")):
        b, o = pct(lat["bare"], q), pct(lat["ours"], q)
        print(f"  {label:16}{ms(b):>17}{ms(o):>15}{o / b:8.3f}")
    # CPU per call in the timed window (sessions closing included), to see which process the time goes to.
    for label, cpu in (("server CPU/call", server_cpu), ("client CPU/call", client_cpu)):
        b, o = cpu["bare"] / total, cpu["ours"] / total
        print(f"  {label:16}{ms(b):>17}{ms(o):>15}{o / b if b else 0:8.3f}")
    ok = rps["ours"] / rps["bare"] >= 0.85
    print(f"  target throughput ratio >= 0.85: {verdict(ok)}")
    return ok


def _own_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sessions", type=int, default=32)
    parser.add_argument("--calls", type=int, default=25, help="tool calls per session")
    parser.add_argument("--mode", default="legacy", help="protocol era: legacy (2025-11-25) or 2026-07-28")
    args = parser.parse_args()
    with bench_vault() as b:
        anyio.run(main, b, args.sessions, args.calls, args.mode)
