"""Benchmark 4: a refresh storm. Many concurrent calls find the access token expired.

Target: exactly one token request (single flight in the process, a lease in the store across
processes), and the storm costs little more than the same calls on a fresh token.

    python -m bench.refresh_storm [--calls 500]
"""

from __future__ import annotations

import argparse
import time

import anyio

from bench._common import OAuthBench, connect_github, expire_access_token, oauth_vault, verdict


async def storm(apps: list, url: str, jwt: str, calls: int) -> float:  # type: ignore[type-arg]
    async def one(i: int) -> None:
        response = await apps[i % len(apps)].request("GET", url, provider="github", user_token=jwt)
        assert response.status == 200, response.status

    started = time.perf_counter()
    async with anyio.create_task_group() as tg:
        for i in range(calls):
            tg.start_soon(one, i)
    return time.perf_counter() - started


async def main(bench: OAuthBench, calls: int) -> bool:
    url = f"{bench.api.url}/echo/storm"
    ok = True
    print(f"refresh storm: {calls} concurrent calls, access token expired")
    print(f"  {'scenario':34}{'token requests':>16}{'storm':>11}{'fresh token':>13}{'ratio':>8}")
    for processes in (1, 2):
        jwt = bench.idp.issue(f"user{processes}", expires_in=3600)
        apps = [bench.app() for _ in range(processes)]
        try:
            grant_id = await connect_github(apps[0], jwt, f"alice-{processes}")
            await storm(apps, url, jwt, 20)  # warm pools and JWKS
            fresh = await storm(apps, url, jwt, calls)
            await expire_access_token(apps[0], grant_id)
            before = bench.oauth.count("refresh_token")
            took = await storm(apps, url, jwt, calls)
            made = bench.oauth.count("refresh_token") - before
        finally:
            for app in apps:
                await app.aclose()
        name = "one vault" if processes == 1 else f"{processes} vaults sharing the store"
        print(f"  {name:34}{made:16d}{took * 1000:9.0f}ms{fresh * 1000:11.0f}ms{took / fresh:8.2f}")
        ok = ok and made == 1
    print(f"  target exactly 1 token request per storm: {verdict(ok)}")
    return ok


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=500)
    args = parser.parse_args()
    with oauth_vault() as b:
        anyio.run(main, b, args.calls)
