"""Benchmark 2: MCP over streamable HTTP, our server vs a bare MCP SDK server doing the raw call.

Each server runs in its own process; 32 client sessions per server stay open for the whole run and
call the `request` tool back to back. Ours verifies each request's bearer JWT, resolves the user's
grant in the embedded vault, audits the call and shapes the result; the bare server has no auth and
sends the GET with a fixed token. Target: throughput ratio >= 0.85; p50/p99 reported.

Throughput is measured in steady state, the sides taking turns in ABBA order (`bench/_steady.py`);
every round's ratio is printed too, to show the spread.

    python -m bench.mcp_http [--sessions 32] [--rounds 8] [--window 1.5] [--mode legacy|2026-07-28]
"""

from __future__ import annotations

import argparse
from collections.abc import Awaitable, Callable
from contextlib import AsyncExitStack

import anyio
import httpx2
from mcp import Client
from mcp.client.streamable_http import streamable_http_client

from bench._common import Bench, bench_vault, mcp_server_process, ms, pct, verdict
from bench._steady import Load, alternate, round_ratios


async def _open(stack: AsyncExitStack, endpoint: str, token: str | None, mode: str) -> Client:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    transport = streamable_http_client(endpoint, http_client=httpx2.AsyncClient(headers=headers, timeout=60))
    return await stack.enter_async_context(Client(transport, mode=mode))  # type: ignore[arg-type]


async def main(bench: Bench, sessions: int, rounds: int, window: float, mode: str) -> bool:
    jwt = bench.user_jwt()
    arguments = {"url": f"{bench.api_url}/v1/items", "provider": "bench"}
    with mcp_server_process("bare", bench) as (bare_url, bare_pid), \
            mcp_server_process("ours", bench) as (ours_url, ours_pid):
        bare, ours = Load("bare", bare_pid), Load("ours", ours_pid)
        async with AsyncExitStack() as stack:
            workers = []
            for side, url, token in ((bare, bare_url, None), (ours, ours_url, jwt)):
                for _ in range(sessions):
                    client = await _open(stack, url, token, mode)
                    # One untimed call per session, as a host makes when it starts: the client lists the
                    # tools and compiles the output-schema validator once per session.
                    await client.call_tool("request", arguments)
                    workers.append((side, _caller(client, arguments)))
            async with anyio.create_task_group() as tg:
                for side, call in workers:
                    tg.start_soon(side.worker, call)
                await alternate(bare, ours, rounds, window)
                tg.cancel_scope.cancel()
    _report(bare, ours, sessions, mode)
    ok = ours.rps / bare.rps >= 0.85
    print(f"  target throughput ratio >= 0.85: {verdict(ok)}")
    return ok


def _caller(client: Client, arguments: dict[str, str]) -> Callable[[], Awaitable[None]]:
    async def call() -> None:
        result = await client.call_tool("request", arguments)
        assert not result.is_error, result

    return call


def _report(bare: Load, ours: Load, sessions: int, mode: str) -> None:
    print(f"MCP streamable HTTP ({mode}): {sessions} sessions per server calling `request` back to back, "
          f"each server in its own process; {len(ours.rounds)} rounds, {bare.calls} + {ours.calls} calls timed")
    print(f"  {'':16}{'bare SDK server':>17}{'alter-agents':>15}{'ratio':>8}")
    print(f"  {'calls/s':16}{bare.rps:17.0f}{ours.rps:15.0f}{ours.rps / bare.rps:8.3f}")
    for q, label in ((0.5, "p50"), (0.99, "p99")):
        b, o = pct(bare.latencies, q), pct(ours.latencies, q)
        print(f"  {label:16}{ms(b):>17}{ms(o):>15}{o / b:8.3f}")
    # CPU per call inside the windows, to see which process the time goes to.
    for label, b, o in (("server CPU/call", bare.server_cpu, ours.server_cpu),
                        ("client CPU/call", bare.client_cpu, ours.client_cpu)):
        b, o = b / bare.calls, o / ours.calls
        print(f"  {label:16}{ms(b):>17}{ms(o):>15}{o / b if b else 0:8.3f}")
    print(f"  per-round throughput ratios: {round_ratios(bare, ours)}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sessions", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=8, help="timed phases per server")
    parser.add_argument("--window", type=float, default=1.5, help="seconds timed per phase")
    parser.add_argument("--mode", default="legacy", help="protocol era: legacy (2025-11-25) or 2026-07-28")
    args = parser.parse_args()
    with bench_vault() as b:
        anyio.run(main, b, args.sessions, args.rounds, args.window, args.mode)
