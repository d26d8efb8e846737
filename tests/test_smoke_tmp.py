from __future__ import annotations

import asyncio

from alter_agents import AmbiguousGrantError
from tests.conftest import Deployment
from tests.fixtures import AsyncBrowser


async def connect_as(app, browser: AsyncBrowser, provider: str, user: str, token: str | None, label=None):
    start = await app.start_connect(provider, user_token=token, label=label, headless=token is None)
    await browser.aapprove(start.connect_url, user)
    status = await app.vault.wait_connect(start.session_id, 10)
    return status.results[0]


async def test_smoke(sqlite_deployment: Deployment, abrowser: AsyncBrowser) -> None:
    d = sqlite_deployment
    app = d.app()
    alice = d.idp.issue("alice")
    r1 = await connect_as(app, abrowser, "google", "alice@gmail.com", alice)
    resp = await app.request("GET", f"{d.upstream.url}/echo/x", provider="google", user_token=alice)
    assert resp.json_body()["account"] == "alice@gmail.com"
    await connect_as(app, abrowser, "google", "alice@acme.com", alice, label="work")
    try:
        await app.request("GET", f"{d.upstream.url}/echo/x", provider="google", user_token=alice)
    except AmbiguousGrantError as e:
        print(e.payload().to_json())
    resp = await app.request("GET", f"{d.upstream.url}/echo/x", provider="google", user_token=alice, account="work")
    assert resp.json_body()["account"] == "alice@acme.com"
    print(r1)
    await app.aclose()
