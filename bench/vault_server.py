"""Benchmark 3: the vault server (`alter-agents vault serve`, alter-sdk wire protocol) against its floors.

Part 1 — signed `/sdk/token` releases through `RemoteVault`, our server against a bare Starlette endpoint
doing the same HMAC verification and JSON work (`bench._bare_vault`), both served by uvicorn the same
way, driven by the same client, in alternating phases of one run (`bench._steady`). Target ≥ 0.80x.
Part 2 — `App.request` through the server (token, upstream call, audit) against the embedded vault.
Target ≥ 0.60x. Each part runs on SQLite and on PostgreSQL (a database of its own, dropped after).
The verdict is the median of the rounds' ratios (a slow spell of the shared machine during one phase
moves it little). Beside throughput it prints each process's CPU time per call, read from /proc around
each timed window, which other load disturbs far less than wall-clock rates, and the ratio those give
when the machine's CPU is what limits: (client + server) per call of the bare side over ours, where
ours includes the PostgreSQL backends' CPU (`pg_stat_activity` for the bench database).
Two replicas under a CPU budget each: `bench.vault_replicas`.

    python -m bench.vault_server [--store sqlite|postgres|both] [--rounds 8] [--window 1.5] [--concurrency 16]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import uuid
from collections.abc import Iterator
from contextlib import contextmanager

import anyio
import httpx

from alter_agents import App
from alter_agents.server.signing import sign
from alter_agents.vault.remote import RemoteVault
from bench._common import ROOT, Bench, bench_vault, cpu_seconds, env_with, ms, pct, verdict
from bench._steady import Call, Load, alternate, median_ratio, round_ratios
from tests.fixtures.vault_server import VaultServerProcess, mint_key

TOKEN_TARGET = 0.80
REQUEST_TARGET = 0.60


@contextmanager
def bare_process(api_key: str, template: dict[str, object]) -> Iterator[tuple[str, int]]:
    """`bench._bare_vault` in its own process; yields (base URL, pid)."""
    with tempfile.NamedTemporaryFile("w", suffix=".json") as file:
        json.dump(template, file)
        file.flush()
        proc = subprocess.Popen([sys.executable, "-m", "bench._bare_vault", file.name], cwd=ROOT,
                                stdout=subprocess.PIPE, text=True, env=env_with({"BENCH_BARE_KEY": api_key}))
        try:
            assert proc.stdout is not None
            url = proc.stdout.readline().strip().rsplit(" ", 1)[-1]
            for _ in range(100):
                try:
                    httpx.get(f"{url}/healthz", timeout=1)
                    break
                except httpx.TransportError:
                    anyio.run(anyio.sleep, 0.05)
            yield url, proc.pid
        finally:
            proc.terminate()
            proc.wait(10)


@contextmanager
def postgres_database() -> Iterator[str]:
    """A database of its own on the machine's PostgreSQL (as the test suite makes one per run)."""
    from sqlalchemy.engine import make_url

    from tests.conftest import PG_SERVER_URL, _pg_admin

    name = f"alter_bench_{os.getpid()}_{uuid.uuid4().hex[:6]}"
    _pg_admin(f'CREATE DATABASE "{name}"')
    try:
        yield make_url(PG_SERVER_URL).set(database=name).render_as_string(hide_password=False)
    finally:
        _pg_admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def token_body(url: str, jwt: str) -> bytes:
    body = {"request": {"method": "GET", "url": url}, "user_token": jwt, "provider_id": "bench"}
    return json.dumps(body, separators=(",", ":")).encode()


def capture_template(server_url: str, key: str, url: str, jwt: str) -> dict[str, object]:
    """One real `/sdk/token` answer of our server, which the bare endpoint then repeats."""
    content = token_body(url, jwt)
    headers = {"x-api-key": key, "Content-Type": "application/json", **sign(key, "POST", "/sdk/token", content)}
    answer = httpx.post(f"{server_url}/sdk/token", content=content, headers=headers, timeout=10)
    answer.raise_for_status()
    data: dict[str, object] = answer.json()
    return data


async def run_pair(base: Load, base_call: Call, ours: Load, ours_call: Call, args: argparse.Namespace) -> None:
    async with anyio.create_task_group() as tg:
        for _ in range(args.concurrency):
            tg.start_soon(base.worker, base_call)
            tg.start_soon(ours.worker, ours_call)
        await alternate(base, ours, args.rounds, args.window)
        tg.cancel_scope.cancel()


def report(title: str, base: Load, ours: Load, target: float, db_per_call: float = 0.0) -> None:
    median = median_ratio(base, ours)
    print(f"  {title}")
    for side in (base, ours):
        cpu = f"{side.server_cpu / side.calls * 1e6:8.0f} µs" if side.pid else "        —"
        client = side.client_cpu / side.calls * 1e6
        print(f"    {side.name:22}{side.rps:9.0f}/s  p50 {ms(pct(side.latencies, 0.5))}  "
              f"server CPU/call {cpu}  client CPU/call {client:6.0f} µs")
    verdict_text = f"  target ≥ {target:.2f}: {verdict(median >= target)}" if target else ""
    print(f"    ratio {ours.rps / base.rps:.3f} overall; rounds {round_ratios(base, ours)}{verdict_text}")
    if base.pid and ours.pid:
        cpu_base = (base.client_cpu + base.server_cpu) / base.calls
        cpu_ours = (ours.client_cpu + ours.server_cpu) / ours.calls + db_per_call
        parts = "client + server" + (" + PostgreSQL" if db_per_call else "")
        print(f"    CPU per call, {parts}: bare {cpu_base * 1e6:.0f} µs, ours {cpu_ours * 1e6:.0f} µs "
              f"→ {cpu_base / cpu_ours:.2f}x when CPU is what limits")


async def database_cpu(store_url: str) -> float:
    """CPU seconds used so far by the PostgreSQL backends serving the bench database."""
    import asyncpg
    from sqlalchemy.engine import make_url

    url = make_url(store_url)
    conn = await asyncpg.connect(user=url.username, password=url.password, host=url.host or "127.0.0.1",
                                 port=url.port or 5432, database=url.database)
    try:
        pids = [r["pid"] for r in await conn.fetch(
            "SELECT pid FROM pg_stat_activity WHERE datname = $1 AND pid <> pg_backend_pid()", url.database)]
    finally:
        await conn.close()
    total = 0.0
    for pid in pids:
        try:
            total += cpu_seconds(pid)
        except OSError:
            continue  # a backend that ended meanwhile
    return total


async def measure(bench: Bench, store: str, args: argparse.Namespace) -> None:
    jwt = bench.user_jwt()
    url = f"{bench.api_url}/v1/items"
    key = await mint_key(bench.settings, "bench")
    with VaultServerProcess(bench.env) as server:
        template = capture_template(server.url, key, url, jwt)
        with bare_process(key, template) as (bare_url, bare_pid):
            print(f"{store}: {args.concurrency}-way, {args.rounds} rounds of {args.window}s per side (ABBA)")
            bare, ours = (RemoteVault(bare_url, key, bench.settings, credential_ttl=0),
                          RemoteVault(server.url, key, bench.settings, credential_ttl=0))
            try:
                base_load, ours_load = Load("bare endpoint", pid=bare_pid), Load("vault server", pid=server.pid)
                postgres = bench.env["ALTER_VAULT_URL"] if store == "PostgreSQL" else None
                db_before = await database_cpu(postgres) if postgres else 0.0
                await run_pair(base_load, lambda: bare.release_for(url=url, provider="bench", user_token=jwt),
                               ours_load, lambda: ours.release_for(url=url, provider="bench", user_token=jwt), args)
                db_per_call = (await database_cpu(postgres) - db_before) / len(ours_load.finished) if postgres else 0.0
                report("/sdk/token via RemoteVault", base_load, ours_load, TOKEN_TARGET, db_per_call)
                if postgres:
                    print(f"    PostgreSQL CPU/call {db_per_call * 1e6:6.0f} µs (two replicas: bench.vault_replicas)")
            finally:
                await bare.aclose()
                await ours.aclose()
        async with bench.app() as embedded, App(api_key=key, base_url=server.url, settings=bench.settings) as remote:
            base_load, ours_load = Load("embedded App.request"), Load("App.request via server", pid=server.pid)
            await run_pair(base_load, lambda: embedded.request("GET", url, provider="bench", user_token=jwt),
                           ours_load, lambda: remote.request("GET", url, provider="bench", user_token=jwt), args)
            report("App.request (token + call + audit)", base_load, ours_load, REQUEST_TARGET)
        # The same without RemoteVault's 0.5 s credential cache: a token call per request, as the official client.
        uncached = RemoteVault(server.url, key, bench.settings, credential_ttl=0)
        async with bench.app() as embedded, App(vault=uncached, settings=bench.settings) as remote:
            base_load, ours_load = Load("embedded App.request"), Load("via server, no cache", pid=server.pid)
            await run_pair(base_load, lambda: embedded.request("GET", url, provider="bench", user_token=jwt),
                           ours_load, lambda: remote.request("GET", url, provider="bench", user_token=jwt), args)
            report("App.request, credential_ttl=0 (no target: what the cache buys)", base_load, ours_load, 0.0)


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--store", choices=("sqlite", "postgres", "both"), default="both")
    parser.add_argument("--rounds", type=int, default=8)
    parser.add_argument("--window", type=float, default=1.5)
    parser.add_argument("--concurrency", type=int, default=16)
    args = parser.parse_args()
    if args.store in ("sqlite", "both"):
        with bench_vault() as bench:
            anyio.run(measure, bench, "SQLite", args)
    if args.store in ("postgres", "both"):
        with postgres_database() as store_url, bench_vault(store_url) as bench:
            anyio.run(measure, bench, "PostgreSQL", args)


if __name__ == "__main__":
    main()
