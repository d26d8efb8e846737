"""Shared benchmark scaffolding: a local upstream process, a JWT-mode embedded vault, statistics."""

from __future__ import annotations

import os
import secrets
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio

from alter_agents import App, Settings
from alter_agents.models import Principal
from alter_agents.vault.crypto import generate_key
from tests.fixtures import AsyncBrowser, IdentityProvider, OAuthServer, UpstreamAPI

ROOT = Path(__file__).resolve().parent.parent

Call = Callable[[], Awaitable[object]]


@contextmanager
def upstream_process(token: str, delay: float = 0.0) -> Iterator[str]:
    """Start `bench._upstream` in its own process; yields its base URL."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "bench._upstream", token, str(delay)],
        cwd=ROOT, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
    )
    try:
        assert proc.stdout is not None
        port = int(proc.stdout.readline())
        yield f"http://127.0.0.1:{port}"
    finally:
        if proc.stdin:
            proc.stdin.close()
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@dataclass
class Bench:
    """One configured vault: settings, env (for subprocesses), the user's JWT and the API's token."""

    settings: Settings
    env: dict[str, str]
    idp: IdentityProvider
    api_token: str
    api_url: str

    def app(self) -> App:
        return App(settings=self.settings)

    def user_jwt(self, sub: str = "alice", expires_in: int = 3600) -> str:
        return self.idp.issue(sub, expires_in=expires_in)


@contextmanager
def bench_vault(store_url: str | None = None, upstream_delay: float = 0.0) -> Iterator[Bench]:
    """An IdP, an upstream process, and a vault (SQLite by default) whose `bench` provider points at it."""
    api_token = "bench_" + secrets.token_urlsafe(24)
    with tempfile.TemporaryDirectory(prefix="alter-bench-") as tmp, IdentityProvider() as idp, \
            upstream_process(api_token, upstream_delay) as api_url:
        providers = Path(tmp) / "providers.toml"
        providers.write_text(
            f'[providers.bench]\nkind = "secret"\nhosts = ["{api_url.removeprefix("http://")}"]\nallow_http = true\n',
            "utf-8"
        )
        env = {
            "ALTER_VAULT_URL": store_url or f"sqlite+aiosqlite:///{tmp}/vault.db",
            "ALTER_VAULT_KEY": generate_key(),
            "ALTER_PROVIDERS_FILE": str(providers),
            "ALTER_IDP_ISSUER": idp.issuer,
            "ALTER_IDP_AUDIENCE": idp.audience,
            "ALTER_IDP_JWKS_URL": idp.jwks_url,
            "ALTER_DATA_DIR": str(Path(tmp) / "data"),
        }
        bench = Bench(Settings.from_env(env), env, idp, api_token, api_url)
        anyio.run(_add_grant, bench)
        yield bench


async def _add_grant(bench: Bench) -> None:
    async with bench.app() as app:
        vault: Any = app.vault
        await vault.add_secret("bench", bench.api_token, owner=Principal("user", "alice"), account="alice")


# -- measuring --------------------------------------------------------------------------------


async def sequential(call: Call, n: int) -> list[float]:
    """Latencies (seconds) of `n` calls made one after another."""
    latencies = []
    for _ in range(n):
        started = time.perf_counter()
        await call()
        latencies.append(time.perf_counter() - started)
    return latencies


async def concurrent(call: Call, n: int, concurrency: int) -> tuple[list[float], float]:
    """`n` calls by `concurrency` workers; returns latencies and the wall time."""
    latencies: list[float] = []
    remaining = n

    async def worker() -> None:
        nonlocal remaining
        while remaining > 0:
            remaining -= 1
            started = time.perf_counter()
            await call()
            latencies.append(time.perf_counter() - started)

    started = time.perf_counter()
    async with anyio.create_task_group() as tg:
        for _ in range(concurrency):
            tg.start_soon(worker)
    return latencies, time.perf_counter() - started


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def ms(seconds: float) -> str:
    return f"{seconds * 1000:8.3f} ms"


def run_counted(doc: str, main: Callable[[Bench, int], object], calls: int) -> None:
    """The command line of a callgrind benchmark: `--calls`, and valgrind checked for first."""
    import argparse
    import shutil

    parser = argparse.ArgumentParser(description=doc.splitlines()[0])
    parser.add_argument("--calls", type=int, default=calls)
    args = parser.parse_args()
    if shutil.which("valgrind") is None or shutil.which("callgrind_control") is None:
        sys.exit("valgrind (with callgrind_control) is needed: apt-get install valgrind")
    with bench_vault() as bench:
        main(bench, args.calls)


def verdict(ok: bool) -> str:
    return "MET" if ok else "MISSED"


def env_with(extra: dict[str, str]) -> dict[str, str]:
    return {**os.environ, **extra}


@dataclass
class OAuthBench:
    """A JWT-mode vault whose `github` provider points at the local OAuth server and API fixtures."""

    settings: Settings
    idp: IdentityProvider
    oauth: OAuthServer
    api: UpstreamAPI

    def app(self) -> App:
        return App(settings=self.settings)


@contextmanager
def oauth_vault() -> Iterator[OAuthBench]:
    from tests.conftest import write_providers_file

    with tempfile.TemporaryDirectory(prefix="alter-bench-") as tmp, IdentityProvider() as idp, \
            OAuthServer() as oauth, UpstreamAPI(oauth) as api:
        providers = write_providers_file(Path(tmp) / "providers.toml", oauth, api, oauth.register_client())
        env = {
            "ALTER_VAULT_URL": f"sqlite+aiosqlite:///{tmp}/vault.db",
            "ALTER_VAULT_KEY": generate_key(),
            "ALTER_PROVIDERS_FILE": str(providers),
            "ALTER_IDP_ISSUER": idp.issuer,
            "ALTER_IDP_AUDIENCE": idp.audience,
            "ALTER_IDP_JWKS_URL": idp.jwks_url,
            "ALTER_DATA_DIR": str(Path(tmp) / "data"),
        }
        yield OAuthBench(Settings.from_env(env), idp, oauth, api)


async def connect_github(app: App, user_jwt: str, account: str) -> str:
    """Link `account` on the local OAuth server for the JWT's user; returns the grant id."""
    browser = AsyncBrowser()
    try:
        start = await app.start_connect("github", user_token=user_jwt)
        await browser.aapprove(start.connect_url, account)
        status = await app.vault.wait_connect(start.session_id, 10)
    finally:
        await browser.aclose()
    return status.results[0].grant_id


async def expire_access_token(app: App, grant_id: str) -> None:
    """Make the stored access token look expired, as it would be an hour later."""
    from sqlalchemy import update

    from alter_agents.vault.schema import grants

    store = app.vault.store  # type: ignore[attr-defined]
    async with store.engine.begin() as conn:
        await conn.execute(update(grants).where(grants.c.grant_id == grant_id).values(expires_at=time.time() - 5))
    await anyio.sleep(0.6)  # a write from outside the vault is seen once its grant cache entry lapses


@contextmanager
def mcp_server_process(kind: str, bench: Bench, prefix: Sequence[str] = (),
                       env: dict[str, str] | None = None) -> Iterator[tuple[str, int]]:
    """Start `bench._mcp_servers` (`ours` or `bare`), run by `prefix` if given; yields (MCP endpoint URL, pid)."""
    command = [*prefix, sys.executable, "-m", "bench._mcp_servers", kind, bench.api_token]
    profile = os.environ.get("BENCH_PROFILE_MCP")  # e.g. `ours:/tmp/ours.txt`: py-spy, collapsed stacks
    if profile and profile.split(":", 1)[0] == kind:
        command = ["py-spy", "record", "--format", "raw", "--rate", "200", "-o", profile.split(":", 1)[1],
                   "--", *command]
    proc = subprocess.Popen(
        command,
        cwd=ROOT, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env_with({**bench.env, **(env or {})}),
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        while line and not line.strip().isdigit():  # py-spy, when profiling, prints its own lines first
            line = proc.stdout.readline()
        yield f"http://127.0.0.1:{int(line)}/mcp", proc.pid
    finally:
        if proc.stdin:
            proc.stdin.close()
        try:
            proc.wait(timeout=10 if not prefix else 120)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def cpu_seconds(pid: int) -> float:
    """User + system CPU time a process has used so far, from /proc (Linux)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def rss_kib(pid: int) -> int:
    """Resident memory of a process, from /proc (Linux)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError(f"no VmRSS for {pid}")
