"""Two `vault serve` processes sharing the machine's PostgreSQL behave as one vault."""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Iterator
from pathlib import Path

import alter_sdk
import pytest
from sqlalchemy import update
from sqlalchemy.ext.asyncio import create_async_engine

from alter_agents import App
from alter_agents.vault.schema import grants
from tests.conftest import PG_URL, Deployment, fresh_postgres, make_deployment
from tests.fixtures import AsyncBrowser, IdentityProvider, OAuthServer, UpstreamAPI
from tests.fixtures.vault_server import VaultServerProcess, mint_key

pytestmark = pytest.mark.timeout(120)
STORM = int(os.environ.get("STORM", "200"))


@pytest.fixture
async def pg_deployment(
    tmp_path: Path, idp: IdentityProvider, oauth: OAuthServer, upstream: UpstreamAPI,
    oauth_client: tuple[str, str],
) -> Deployment:
    return make_deployment(tmp_path, await fresh_postgres(), idp, oauth, upstream, oauth_client)


@pytest.fixture
def two_servers(pg_deployment: Deployment) -> Iterator[tuple[VaultServerProcess, VaultServerProcess]]:
    """Replica A, and replica B whose public URL is A's (browsers and OAuth redirects come back via A)."""
    with VaultServerProcess(pg_deployment.env) as a, \
            VaultServerProcess({**pg_deployment.env, "ALTER_PUBLIC_URL": a.url}) as b:
        yield a, b


@pytest.fixture
async def key(pg_deployment: Deployment) -> str:
    return await mint_key(pg_deployment.settings)


async def test_a_connect_started_on_one_replica_completes_through_the_other(
    pg_deployment: Deployment, two_servers: tuple[VaultServerProcess, VaultServerProcess], key: str,
    abrowser: AsyncBrowser,
) -> None:
    a, b = two_servers
    alice = pg_deployment.idp.issue("alice")
    settings = pg_deployment.settings
    async with App(base_url=a.url, api_key=key, settings=settings) as via_a, \
            App(base_url=b.url, api_key=key, settings=settings) as via_b:
        start = await via_a.start_connect("google", user_token=alice)
        assert start.connect_url.startswith(a.url)
        # The load balancer sends the browser to replica B: B starts the OAuth flow, whose redirect
        # comes back to the public URL (replica A), which finishes a flow it never saw start.
        await abrowser.aapprove(start.connect_url.replace(a.url, b.url), "alice@gmail.com")
        status_b = await via_b.vault.wait_connect(start.session_id, 10)
        status_a = await via_a.vault.connect_status(start.session_id)
        assert status_a == status_b and [r.account for r in status_b.results] == ["alice@gmail.com"]

        response = await via_b.request("GET", f"{pg_deployment.upstream.url}/echo/x", provider="google",
                                       user_token=alice)
        assert response.json_body()["account"] == "alice@gmail.com"


async def _expire_access_token(url: str, grant_id: str) -> None:
    engine = create_async_engine(url)
    try:
        async with engine.begin() as conn:
            await conn.execute(update(grants).where(grants.c.grant_id == grant_id).values(expires_at=time.time() - 5))
    finally:
        await engine.dispose()


async def test_a_refresh_storm_across_two_replicas_makes_exactly_one_token_request(
    pg_deployment: Deployment, two_servers: tuple[VaultServerProcess, VaultServerProcess], key: str,
    abrowser: AsyncBrowser, monkeypatch: pytest.MonkeyPatch,
) -> None:
    a, b = two_servers
    oauth, upstream = pg_deployment.oauth, pg_deployment.upstream.url
    alice = pg_deployment.idp.issue("alice")
    async with App(base_url=a.url, api_key=key, settings=pg_deployment.settings) as app:
        async def approve(start: object) -> None:
            await abrowser.aapprove(start.connect_url, "alice@gmail.com")  # type: ignore[attr-defined]

        [grant] = await app.connect(["google"], user_token=alice, on_url=approve, timeout=10)
    await _expire_access_token(PG_URL, grant.grant_id)
    oauth.token_delay = 0.3  # a slow token endpoint widens the race
    refreshes_before = oauth.count("refresh_token")

    clients = []
    for server in (a, b):  # the official client reads its server from the environment
        monkeypatch.setenv("ALTER_BASE_URL", server.url)
        clients.append(alter_sdk.App(api_key=key, timeout=60))
    try:
        started = time.perf_counter()
        responses = await asyncio.gather(*(
            clients[i % 2].request("GET", f"{upstream}/echo/storm", provider="google", user_token=alice)
            for i in range(STORM)
        ))
        elapsed = time.perf_counter() - started
    finally:
        for client in clients:
            await client.close()

    assert oauth.count("refresh_token") - refreshes_before == 1
    assert all(r.status_code == 200 and r.json()["account"] == "alice@gmail.com" for r in responses)
    print(f"{STORM} calls across 2 replicas during a refresh in {elapsed:.2f}s")
