"""Benchmark 3b: two vault-server replicas on one PostgreSQL store against one, each with its own CPU budget.

Each replica (`alter-agents vault serve`) runs in a cgroup of its own limited to `--budget` cores
(`bench._cgroup`), so one replica and two replicas are compared at a fixed CPU per replica while the
client and PostgreSQL use the rest of the machine. The client is lean on purpose, so it is not what
limits: plain HTTP/1.1 keep-alive connections (asyncio streams), each signed `/sdk/token` request
built with the same `sign` as RemoteVault, a fresh nonce each, spread round-robin over the replicas.
The two configurations alternate in ABBA rounds; the verdict is the median of the rounds' ratios.
Beside throughput it prints each replica's CPU use (cores, against its budget), the client's, and the
database backends' CPU per call. Target: two replicas ≥ 1.6x one.

Without a writable cgroup cpu controller (not root, or no cgroup fs) it says so in one line and falls
back to the projection from a profile: one unconstrained replica's CPU per call against the database's.

    python -m bench.vault_replicas [--budget 0.4] [--rounds 4] [--window 3] [--concurrency 32]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time
from contextlib import ExitStack
from dataclasses import dataclass, field
from urllib.parse import urlsplit

import anyio

from alter_agents.server.signing import sign
from bench._cgroup import CgroupUnavailable, CpuBudget
from bench._common import Bench, bench_vault, cpu_seconds, verdict
from bench._steady import RAMP_SECONDS, own_cpu
from bench.vault_server import database_cpu, postgres_database, token_body
from tests.fixtures.vault_server import VaultServerProcess, mint_key

TARGET = 1.6
PATH = "/sdk/token"


@dataclass
class Target:
    host: str
    port: int
    pid: int


@dataclass
class Phase:
    """What one timed window of one configuration saw."""

    calls: int
    seconds: float
    errors: int
    replica_cpu: list[float]
    client_cpu: float
    db_cpu: float

    @property
    def rps(self) -> float:
        return self.calls / self.seconds


@dataclass
class Config:
    name: str
    targets: list[Target]
    phases: list[Phase] = field(default_factory=list)

    @property
    def rps(self) -> float:
        return sum(p.calls for p in self.phases) / sum(p.seconds for p in self.phases)


def _request(key: str, host: str, body: bytes) -> bytes:
    headers = {"Host": host, "Content-Type": "application/json", "Content-Length": str(len(body)), "x-api-key": key,
               **sign(key, "POST", PATH, body)}
    head = "".join(f"{name}: {value}\r\n" for name, value in headers.items())
    return f"POST {PATH} HTTP/1.1\r\n{head}\r\n".encode() + body


async def _one_call(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, request: bytes) -> int:
    writer.write(request)
    head = await reader.readuntil(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1])
    length = 0
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value)
    await reader.readexactly(length)
    return status


async def _worker(target: Target, key: str, body: bytes, until: list[float], done: list[float],
                  errors: list[int]) -> None:
    """Call back to back on one keep-alive connection until `until[0]`; record each finish time."""
    host = f"{target.host}:{target.port}"
    reader, writer = await asyncio.open_connection(target.host, target.port)
    try:
        while time.perf_counter() < until[0]:
            status = await _one_call(reader, writer, _request(key, host, body))
            if status == 200:
                done.append(time.perf_counter())
            else:
                errors.append(status)
    finally:
        writer.close()


async def run_phase(config: Config, key: str, body: bytes, concurrency: int, window: float,
                    store_url: str, *, timed: bool = True) -> None:
    until = [float("inf")]
    done: list[float] = []
    errors: list[int] = []
    async with anyio.create_task_group() as tg:
        for i in range(concurrency):
            tg.start_soon(_worker, config.targets[i % len(config.targets)], key, body, until, done, errors)
        await anyio.sleep(RAMP_SECONDS)
        db0, client0 = await database_cpu(store_url), own_cpu()
        cpu0 = [cpu_seconds(t.pid) for t in config.targets]
        start = time.perf_counter()
        await anyio.sleep(window)
        end = time.perf_counter()
        cpu1 = [cpu_seconds(t.pid) for t in config.targets]
        client1, db1 = own_cpu(), await database_cpu(store_url)
        until[0] = 0.0
    if timed:
        calls = sum(1 for t in done if start <= t < end)
        took = end - start
        config.phases.append(Phase(calls, took, len(errors), [(b - a) / took for a, b in zip(cpu0, cpu1, strict=True)],
                                   (client1 - client0) / took, (db1 - db0) / took))


def report(config: Config, budget: float | None) -> None:
    phases = config.phases
    seconds = sum(p.seconds for p in phases)
    calls = sum(p.calls for p in phases)
    cores = [statistics.mean(p.replica_cpu[i] for p in phases) for i in range(len(config.targets))]
    per_call = sum(c * seconds for c in cores) / max(calls, 1) * 1e6
    client = statistics.mean(p.client_cpu for p in phases)
    db = statistics.mean(p.db_cpu for p in phases)
    shown = " + ".join(f"{c:.2f}" for c in cores) + (f" cores (budget {budget:.2f} each)" if budget else " cores")
    print(f"  {config.name:13}{config.rps:7.0f}/s  rounds {' '.join(f'{p.rps:.0f}' for p in phases)}  "
          f"errors {sum(p.errors for p in phases)}")
    each = seconds / max(calls, 1) * 1e6  # µs per call for a process busy one core
    print(f"  {'':13}replica CPU {shown}, {per_call:.0f} µs/call; client {client:.2f} cores "
          f"({client * each:.0f} µs/call); PostgreSQL {db * each:.0f} µs/call")


async def measure(bench: Bench, store_url: str, budget: float | None, args: argparse.Namespace) -> None:
    key = await mint_key(bench.settings, "bench")
    body = token_body(f"{bench.api_url}/v1/items", bench.user_jwt())
    with ExitStack() as stack:
        budgets = [stack.enter_context(CpuBudget(f"replica{i}", budget)) for i in range(2)] if budget else []
        replicas = [stack.enter_context(VaultServerProcess(bench.env)) for _ in range(2 if budget else 1)]
        targets = []
        for i, replica in enumerate(replicas):
            if budgets:
                budgets[i].add(replica.pid)
            url = urlsplit(replica.url)
            targets.append(Target(url.hostname or "127.0.0.1", url.port or 80, replica.pid))
        if not budgets:
            print("  (fallback) one replica, no budget: its CPU per call against the database's")
            single = Config("one replica", targets[:1])
            await run_phase(single, key, body, args.concurrency, args.window, store_url, timed=False)
            for _ in range(args.rounds):
                await run_phase(single, key, body, args.concurrency, args.window, store_url)
            report(single, None)
            server = sum(p.replica_cpu[0] * p.seconds for p in single.phases)
            db = sum(p.db_cpu * p.seconds for p in single.phases)
            print(f"  projection: with a core each, two replicas give ~min(2, {server / max(db, 1e-9):.1f}) = "
                  f"{min(2.0, server / max(db, 1e-9)):.2f}x one (target ≥ {TARGET})")
            return
        one, two = Config("one replica", targets[:1]), Config("two replicas", targets)
        for config in (one, two):  # warm-up: connections, caches, prepared statements
            await run_phase(config, key, body, args.concurrency, args.window / 2, store_url, timed=False)
        for i in range(args.rounds):
            for config in (one, two) if i % 2 == 0 else (two, one):
                await run_phase(config, key, body, args.concurrency, args.window, store_url)
        for config in (one, two):
            report(config, budget)
        ratios = sorted(b.rps / a.rps for a, b in zip(one.phases, two.phases, strict=True))
        median = statistics.median(ratios)
        print(f"  two / one: {two.rps / one.rps:.2f}x overall; rounds {' '.join(f'{r:.2f}' for r in ratios)} "
              f"(median {median:.2f})  target ≥ {TARGET}: {verdict(median >= TARGET)}")


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--budget", type=float, default=0.4, help="cores per replica")
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--window", type=float, default=3.0)
    parser.add_argument("--concurrency", type=int, default=32, help="connections in all, spread over the replicas")
    args = parser.parse_args()
    budget: float | None = args.budget
    try:
        with CpuBudget("probe", args.budget):
            pass
    except (CgroupUnavailable, PermissionError) as exc:
        print(f"no CPU budget per replica here ({exc}): falling back to the profile projection")
        budget = None
    with postgres_database() as store_url, bench_vault(store_url) as bench:
        if budget:
            print(f"vault replicas on one PostgreSQL store, {budget:.2f} core each ({CpuBudget('x', budget).kind}), "
                  f"{args.concurrency} connections, {args.rounds} rounds of {args.window}s (ABBA)")
        anyio.run(measure, bench, bench.env["ALTER_VAULT_URL"], budget, args)


if __name__ == "__main__":
    main()
