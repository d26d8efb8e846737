"""Benchmark 1: `App.request` (embedded vault, JWT identity, audit on) vs a bare pooled httpx client.

Both sides make the same GETs to the same local API process. Sequential calls alternate one by one
so drift (and other load on the machine) hits both sides alike; the 64-way runs alternate quarters.
Targets: p50 ratio <= 1.10 and throughput ratio >= 0.90.

    python -m bench.request_overhead [--n 2000] [--concurrency 64] [--store URL]
"""

from __future__ import annotations

import argparse

import anyio
import httpx

from bench._common import Bench, bench_vault, concurrent, ms, pct, sequential, verdict

ROUNDS = 4


async def main(bench: Bench, n: int, concurrency: int) -> bool:
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

        for call in (bare_call, ours):  # both pools grown to the same size before the concurrent runs
            await concurrent(call, 200, concurrency)

        conc_lat = {"bare": [], "ours": []}  # type: dict[str, list[float]]
        conc_time = {"bare": 0.0, "ours": 0.0}
        for _ in range(ROUNDS):
            for name, call in (("bare", bare_call), ("ours", ours)):
                lat, took = await concurrent(call, n // ROUNDS, concurrency)
                conc_lat[name] += lat
                conc_time[name] += took
        audited = len(await app.vault.audit(limit=10 * n))  # type: ignore[attr-defined]
    await bare.aclose()

    print(f"request overhead: {n} sequential + {n} at {concurrency}-way, upstream {bench.api_url}")
    print(f"  audit rows written by ours: {audited}")
    print(f"  {'':24}{'bare httpx':>14}{'App.request':>14}{'ratio':>8}")
    p50 = {k: pct(v, 0.5) for k, v in seq.items()}
    p99 = {k: pct(v, 0.99) for k, v in seq.items()}
    print(f"  {'sequential p50':24}{ms(p50['bare']):>14}{ms(p50['ours']):>14}{p50['ours'] / p50['bare']:8.3f}")
    print(f"  {'sequential p99':24}{ms(p99['bare']):>14}{ms(p99['ours']):>14}{p99['ours'] / p99['bare']:8.3f}")
    c50 = {k: pct(v, 0.5) for k, v in conc_lat.items()}
    c99 = {k: pct(v, 0.99) for k, v in conc_lat.items()}
    rps = {k: n / conc_time[k] for k in conc_time}
    seq_rps = {k: len(v) / sum(v) for k, v in seq.items()}
    print(f"  {'sequential req/s':24}{seq_rps['bare']:14.0f}{seq_rps['ours']:14.0f}"
          f"{seq_rps['ours'] / seq_rps['bare']:8.3f}")
    print(f"  {f'{concurrency}-way p50':24}{ms(c50['bare']):>14}{ms(c50['ours']):>14}{c50['ours'] / c50['bare']:8.3f}")
    print(f"  {f'{concurrency}-way p99':24}{ms(c99['bare']):>14}{ms(c99['ours']):>14}{c99['ours'] / c99['bare']:8.3f}")
    print(f"  {f'{concurrency}-way req/s':24}{rps['bare']:14.0f}{rps['ours']:14.0f}{rps['ours'] / rps['bare']:8.3f}")
    p50_ok = p50["ours"] / p50["bare"] <= 1.10
    rps_ok = rps["ours"] / rps["bare"] >= 0.90
    print(f"  target p50 ratio <= 1.10: {verdict(p50_ok)}; throughput ratio >= 0.90: {verdict(rps_ok)}")
    return p50_ok and rps_ok


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=2000)
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--store", default=None, help="SQLAlchemy URL (default: a temporary SQLite file)")
    args = parser.parse_args()
    with bench_vault(args.store) as b:
        anyio.run(main, b, args.n, args.concurrency)
