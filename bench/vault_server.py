"""Benchmark 3: the vault server (`alter-agents vault serve`, alter-sdk wire protocol) vs the embedded vault.

Measures signed `/sdk/token` releases per second through our `RemoteVault`, and whole `App.request`
calls through the server (token, upstream call, audit post), each next to the same work done by the
embedded vault in-process. The server runs in its own process on the same SQLite store.

    python -m bench.vault_server [--n 1000] [--concurrency 16]
"""

from __future__ import annotations

import argparse
from collections.abc import Awaitable, Callable
from typing import Any

import anyio

from alter_agents import App
from bench._common import Bench, bench_vault, concurrent, ms, pct
from tests.fixtures.vault_server import VaultServerProcess, mint_key


async def measure(call: Callable[[], Awaitable[object]], n: int, concurrency: int) -> tuple[float, float]:
    await concurrent(call, min(100, n), concurrency)
    latencies, took = await concurrent(call, n, concurrency)
    return n / took, pct(latencies, 0.5)


async def main(bench: Bench, n: int, concurrency: int) -> None:
    jwt = bench.user_jwt()
    url = f"{bench.api_url}/v1/items"
    key = await mint_key(bench.settings, "bench")
    with VaultServerProcess(bench.env) as server:
        async with bench.app() as embedded, App(api_key=key, base_url=server.url, settings=bench.settings) as remote:
            rows: list[tuple[str, float, float, float, float]] = []
            cases: tuple[tuple[str, Callable[[App], Callable[[], Awaitable[Any]]]], ...] = (
                ("token release (/sdk/token)",
                 lambda app: lambda: app.vault.release_for(url=url, provider="bench", user_token=jwt)),
                ("App.request (token+call+audit)",
                 lambda app: lambda: app.request("GET", url, provider="bench", user_token=jwt)),
            )
            for label, make in cases:
                results = {}
                for name, app in (("embedded", embedded), ("remote", remote)):
                    results[name] = await measure(make(app), n, concurrency)
                rows.append((label, *results["embedded"], *results["remote"]))
    print(f"vault server vs embedded vault: {n} operations at {concurrency}-way")
    print(f"  {'':32}{'embedded/s':>12}{'p50':>12}{'server/s':>12}{'p50':>12}{'ratio':>8}")
    for label, e_rps, e_p50, r_rps, r_p50 in rows:
        print(f"  {label:32}{e_rps:12.0f}{ms(e_p50):>12}{r_rps:12.0f}{ms(r_p50):>12}{r_rps / e_rps:8.3f}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=1000)
    parser.add_argument("--concurrency", type=int, default=16)
    args = parser.parse_args()
    with bench_vault() as b:
        anyio.run(main, b, args.n, args.concurrency)
