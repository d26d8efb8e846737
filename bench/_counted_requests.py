"""Run under callgrind by `bench.request_instructions`: N bare httpx calls, then N `App.request` calls.

Counting is switched on (`callgrind_control -i on`) only around each side's calls, and each side's
count is dumped on its own, so both share one interpreter, its imports and its warm-up. Time-based
caches are stretched by valgrind's slowdown so they hold per call as in real time; the audit queue
is flushed by hand, inside the counted window or after it.

    python -m bench._counted_requests CONFIG_JSON CALLS flush|no-flush
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Awaitable, Callable

import anyio
import httpx

from alter_agents import App, Settings
from alter_agents.vault import audit, cache

VALGRIND_SLOWDOWN = 50


def _count(*args: str) -> None:
    subprocess.run(["callgrind_control", *args, str(os.getpid())], check=True, capture_output=True)


async def main(config: dict[str, str], calls: int, flush: bool) -> None:
    audit.FLUSH_DELAY = 1e9  # flushed by hand below, once per side
    cache.GRANT_CACHE_SECONDS *= VALGRIND_SLOWDOWN
    url, jwt = config["url"], config["jwt"]
    headers = {"Authorization": f"Bearer {config['token']}"}
    async with httpx.AsyncClient() as bare, App(settings=Settings.from_env(json.loads(config["env"]))) as app:
        vault = app.vault

        async def bare_call() -> object:
            return (await bare.get(url, headers=headers)).content

        async def ours() -> object:
            return (await app.request("GET", url, provider="bench", user_token=jwt)).content

        sides: list[tuple[str, Callable[[], Awaitable[object]]]] = [("bare", bare_call), ("ours", ours)]
        for _, call in sides:
            for _ in range(30):
                await call()
        await vault.audit_log.flush()  # type: ignore[attr-defined]
        for name, call in sides:
            _count("-i", "on")
            for _ in range(calls):
                await call()
            if flush:
                await vault.audit_log.flush()  # type: ignore[attr-defined]
            _count("-i", "off")
            _count("-d", name)
            await vault.audit_log.flush()  # type: ignore[attr-defined]


if __name__ == "__main__":
    anyio.run(main, json.loads(sys.argv[1]), int(sys.argv[2]), sys.argv[3] == "flush")
