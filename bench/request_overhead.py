"""Benchmark 1: `App.request` (embedded vault, JWT identity, audit on) vs a bare pooled httpx client.

Both sides make the same GETs to the same local API process. Sequential calls alternate one by one
so drift (and other load on the machine) hits both sides alike. At 64-way concurrency, throughput
is measured in steady state, the sides taking turns in ABBA order (`bench/_steady.py`), with at
least `--n` calls timed per side. Targets: p50 ratio <= 1.10 and throughput ratio >= 0.90.

    python -m bench.request_overhead [--n 2000] [--concurrency 64] [--rounds 8] [--store URL]
"""

from __future__ import annotations

import argparse

import anyio
import httpx

from bench._common import Bench, bench_vault, ms, pct, sequential, verdict
from bench._steady import Load, alternate, round_ratios

WINDOW_SECONDS = 1.5


async def main(bench: Bench, n: int, concurrency: int, rounds: int) -> bool:
    url = f"{bench.api_url}/v1/items"
    jwt = bench.user_jwt()
    bare = httpx.AsyncClient(limits=httpx.Limits(max_connections=200, max_keepalive_connections=64))
    headers = {"Authorization": f"Bearer {bench.api_token}"}

    async def bare_call() -> object:
        response = await bare.get(url, headers=headers)
        assert response.status_code == 200, response.status_code
        return response.content

    async with bench.app() as app:
        async def ours() -> object:
            response = await app.request("GET", url, provider="bench", user_token=jwt)
            assert response.status == 200, response.status
            return response.content

        # Sequential first, each side warmed sequentially: a concurrent burst leaves dozens of idle
        # keep-alive connections in a pool, and httpcore checks every idle one on each request, so
        # whichever side burst last would pay for it in the sequential figures.
        for call in (bare_call, ours):  # warm JWKS, store, one connection each
            await sequential(call, 200)
        seq = {"bare": [], "ours": []}  # type: dict[str, list[float]]
        for _ in range(n):
            seq["bare"] += await sequential(bare_call, 1)
            seq["ours"] += await sequential(ours, 1)

        conc = {"bare": Load("bare"), "ours": Load("ours")}
        async with anyio.create_task_group() as tg:
            for name, call in (("bare", bare_call), ("ours", ours)):
                for _ in range(concurrency):
                    tg.start_soon(conc[name].worker, call)
            await alternate(conc["bare"], conc["ours"], rounds, WINDOW_SECONDS)
            while min(side.calls for side in conc.values()) < n:  # slow machine: more rounds, same order
                await alternate(conc["bare"], conc["ours"], 2, WINDOW_SECONDS, warm_up=False)
            tg.cancel_scope.cancel()
        audited = len(await app.vault.audit(limit=100 * n))  # type: ignore[attr-defined]
    await bare.aclose()

    print(f"request overhead: {n} sequential, then {concurrency}-way in steady state, upstream {bench.api_url}")
    print(f"  audit rows written by ours: {audited}")
    print(f"  {'':24}{'bare httpx':>14}{'App.request':>14}{'ratio':>8}")
    p50 = {k: pct(v, 0.5) for k, v in seq.items()}
    p99 = {k: pct(v, 0.99) for k, v in seq.items()}
    print(f"  {'sequential p50':24}{ms(p50['bare']):>14}{ms(p50['ours']):>14}{p50['ours'] / p50['bare']:8.3f}")
    print(f"  {'sequential p99':24}{ms(p99['bare']):>14}{ms(p99['ours']):>14}{p99['ours'] / p99['bare']:8.3f}")
    c50 = {k: pct(v.latencies, 0.5) for k, v in conc.items()}
    c99 = {k: pct(v.latencies, 0.99) for k, v in conc.items()}
    rps = {k: v.rps for k, v in conc.items()}
    seq_rps = {k: len(v) / sum(v) for k, v in seq.items()}
    print(f"  {'sequential req/s':24}{seq_rps['bare']:14.0f}{seq_rps['ours']:14.0f}"
          f"{seq_rps['ours'] / seq_rps['bare']:8.3f}")
    print(f"  {f'{concurrency}-way p50':24}{ms(c50['bare']):>14}{ms(c50['ours']):>14}{c50['ours'] / c50['bare']:8.3f}")
    print(f"  {f'{concurrency}-way p99':24}{ms(c99['bare']):>14}{ms(c99['ours']):>14}{c99['ours'] / c99['bare']:8.3f}")
    print(f"  {f'{concurrency}-way req/s':24}{rps['bare']:14.0f}{rps['ours']:14.0f}{rps['ours'] / rps['bare']:8.3f}")
    print(f"  {concurrency}-way per-round throughput ratios: {round_ratios(conc['bare'], conc['ours'])}; "
          f"{conc['bare'].calls} + {conc['ours'].calls} calls timed")
    p50_ok = p50["ours"] / p50["bare"] <= 1.10
    rps_ok = rps["ours"] / rps["bare"] >= 0.90
    print(f"  target p50 ratio <= 1.10: {verdict(p50_ok)}; throughput ratio >= 0.90: {verdict(rps_ok)}")
    return p50_ok and rps_ok


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=2000)
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=8, help="timed concurrent phases per side")
    parser.add_argument("--store", default=None, help="SQLAlchemy URL (default: a temporary SQLite file)")
    args = parser.parse_args()
    with bench_vault(args.store) as b:
        anyio.run(main, b, args.n, args.concurrency, args.rounds)
