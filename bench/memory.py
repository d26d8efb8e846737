"""Benchmark 6: resident memory of the MCP HTTP server after 1,000 sessions opened and closed vs after 10.

Each session initializes, calls `request` once and closes (the client ends it with DELETE). The
server runs in its own process; its RSS is read from /proc. The bare SDK server is measured the same
way for reference. Target: growth from 10 to 1,000 sessions under 10%.

    python -m bench.memory [--sessions 1000] [--concurrency 8]
"""

from __future__ import annotations

import argparse
import gc

import anyio
import httpx2
from mcp import Client
from mcp.client.streamable_http import streamable_http_client

from bench._common import Bench, bench_vault, mcp_server_process, rss_kib, verdict


async def churn(endpoint: str, token: str | None, api: str, sessions: int, concurrency: int) -> None:
    remaining = sessions

    async def worker() -> None:
        nonlocal remaining
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        while remaining > 0:
            remaining -= 1
            transport = streamable_http_client(endpoint, http_client=httpx2.AsyncClient(headers=headers, timeout=60))
            async with Client(transport, mode="legacy") as client:  # type: ignore[arg-type]
                result = await client.call_tool("request", {"url": f"{api}/v1/items", "provider": "bench"})
                assert not result.is_error, result

    async with anyio.create_task_group() as tg:
        for _ in range(concurrency):
            tg.start_soon(worker)
    gc.collect()
    await anyio.sleep(1.0)  # let the server finish tearing the sessions down


async def main(bench: Bench, sessions: int, concurrency: int) -> bool:
    jwt = bench.user_jwt()
    print(f"MCP HTTP server memory: RSS after 10 sessions vs after {sessions} (opened, one call, closed)")
    print(f"  {'server':16}{'after 10':>12}{f'after {sessions}':>14}{'growth':>9}")
    ok = True
    for kind, token in (("bare", None), ("ours", jwt)):
        with mcp_server_process(kind, bench) as (url, pid):
            await churn(url, token, bench.api_url, 10, 2)
            after_10 = rss_kib(pid)
            await churn(url, token, bench.api_url, sessions - 10, concurrency)
            after_n = rss_kib(pid)
        growth = after_n / after_10 - 1
        print(f"  {kind:16}{after_10 / 1024:9.1f} MiB{after_n / 1024:11.1f} MiB{growth * 100:8.1f}%")
        if kind == "ours":
            ok = growth < 0.10
    print(f"  target growth under 10%: {verdict(ok)}")
    return ok


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sessions", type=int, default=1000)
    parser.add_argument("--concurrency", type=int, default=8)
    args = parser.parse_args()
    with bench_vault() as b:
        anyio.run(main, b, args.sessions, args.concurrency)
