"""Connect flows and user identity: typed outcomes, bounded flows, allowed scopes, strict JWT claims."""

from __future__ import annotations

import contextlib
import logging
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import httpx
import pytest
from sqlalchemy import func, select, update
from sqlalchemy.ext.asyncio import create_async_engine

from alter_agents import (
    App,
    ConfigurationError,
    ConnectError,
    ConnectTimeoutError,
    InvalidArgumentsError,
    NotConnectedError,
    RateLimitedError,
)
from alter_agents.errors import AlterError
from alter_agents.models import Principal
from alter_agents.sessions import UserSession
from alter_agents.vault import schema
from mcp_server.auth import session_jwt
from tests.conftest import Deployment
from tests.fixtures import AsyncBrowser
from tests.mcp_support import http_server, payload

CLI = str(Path(sys.executable).with_name("alter-agents"))


async def _scalar(url: str, statement: object) -> object:
    engine = create_async_engine(url)
    try:
        async with engine.begin() as conn:
            result = await conn.execute(statement)  # type: ignore[call-overload]
            return result.scalar() if result.returns_rows else None
    finally:
        await engine.dispose()


# -- connect flows ----------------------------------------------------------------------------


async def test_a_code_exchange_failing_unexpectedly_finishes_the_flow_with_a_typed_error(
    sqlite_deployment: Deployment, abrowser: AsyncBrowser
) -> None:
    d = sqlite_deployment
    d.oauth.access_token_ttl = "soon"  # type: ignore[assignment]  # a token response our parser cannot read
    async with d.app() as app:
        alice = d.idp.issue("alice")
        start = await app.start_connect("github", user_token=alice)
        with contextlib.suppress(httpx.HTTPError):
            await abrowser.aapprove(start.connect_url, "alice-gh")
        started = time.monotonic()
        with pytest.raises(ConnectError) as info:
            await app.vault.wait_connect(start.session_id, 5)
        assert not isinstance(info.value, ConnectTimeoutError)  # not left "exchanging" until it expires
        assert time.monotonic() - started < 4  # (an open flow would wait the full 5 s)
        assert info.value.code == "internal" and "start connect again" in info.value.message
        status = await app.vault.connect_status(start.session_id)
        assert status.status == "error"


async def test_a_refused_oauth_client_is_provider_not_configured(
    sqlite_deployment: Deployment, abrowser: AsyncBrowser, tmp_path: Path
) -> None:
    d = sqlite_deployment
    text = Path(d.env["ALTER_PROVIDERS_FILE"]).read_text()
    secret = text.split('client_secret = "')[1].split('"')[0]
    bad = tmp_path / "bad-client.toml"
    bad.write_text(text.replace(secret, "not-the-secret"))
    settings = replace(d.settings, providers_file=str(bad))
    async with App(settings=settings) as app:
        alice = d.idp.issue("alice")
        start = await app.start_connect("github", user_token=alice)
        await abrowser.aapprove(start.connect_url, "alice-gh")
        with pytest.raises(AlterError) as info:
            await app.vault.wait_connect(start.session_id, 5)
    body = info.value.payload().error
    assert body.code == "provider_not_configured" and "invalid_client" in body.message
    assert "not-the-secret" not in body.message


async def test_model_chosen_scopes_are_limited_to_the_providers_allowed_set(sqlite_deployment: Deployment) -> None:
    d = sqlite_deployment
    async with d.app() as app:
        alice = d.idp.issue("alice")
        with pytest.raises(InvalidArgumentsError) as info:
            await app.start_connect("github", user_token=alice, scopes=["read", "admin:org", "delete_repo"])
        body = info.value.payload().error.model_dump()
        assert body["code"] == "invalid_arguments" and body["allowed_scopes"] == ["read"]
        assert "admin:org" in body["message"] and "delete_repo" in body["message"]
        start = await app.start_connect("github", user_token=alice, scopes=["read"])
        assert "admin" not in start.connect_url

    providers = Path(d.env["ALTER_PROVIDERS_FILE"])
    providers.write_text(providers.read_text().replace(
        'scopes = ["read"]\n', 'scopes = ["read"]\nallowed_scopes = ["read", "write"]\n', 1))
    async with App(settings=d.settings) as app:
        start = await app.start_connect("github", user_token=alice, scopes=["write"])
        assert "scope=write" in start.connect_url
        with pytest.raises(InvalidArgumentsError):
            await app.start_connect("github", user_token=alice, scopes=["admin:org"])


async def test_one_user_cannot_open_unbounded_connect_flows(deployment: Deployment) -> None:
    d = deployment
    async with d.app() as app:
        alice, bob = d.idp.issue("alice"), d.idp.issue("bob")
        for _ in range(20):
            await app.start_connect("github", user_token=alice)
        with pytest.raises(RateLimitedError) as info:
            await app.start_connect("github", user_token=alice)
        assert info.value.payload().error.code == "rate_limited"
        await app.start_connect("github", user_token=bob)  # bob is not locked out by alice

        sessions = schema.connect_sessions
        long_ago = time.time() - 3 * 3600
        await _scalar(d.settings.vault_url, update(sessions).where(sessions.c.owner == "user:alice")
                      .values(expires_at=long_ago))
        await app.start_connect("github", user_token=alice)  # expired flows no longer count ...
        left = await _scalar(d.settings.vault_url, select(func.count()).select_from(sessions)
                             .where(sessions.c.owner == "user:alice"))
        assert left == 1  # ... and are cleaned from the store


# -- identity ---------------------------------------------------------------------------------


async def test_an_identity_provider_without_an_audience_refuses_to_start(
    sqlite_deployment: Deployment, tmp_path: Path
) -> None:
    d = sqlite_deployment
    with pytest.raises(ConfigurationError) as info:
        App(settings=replace(d.settings, idp_audience=None))
    assert "ALTER_IDP_AUDIENCE" in info.value.message

    env = {k: v for k, v in d.env.items() if k != "ALTER_IDP_AUDIENCE"}
    result = subprocess.run([CLI, "grants", "list"], env={"PATH": "/usr/bin:/bin", **env},
                            capture_output=True, text=True, timeout=60)
    assert result.returncode != 0 and "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1 and "ALTER_IDP_AUDIENCE" in result.stderr


async def test_without_an_explicit_audience_the_public_url_is_the_audience(sqlite_deployment: Deployment) -> None:
    d = sqlite_deployment
    public = "https://agents.example.test"
    settings = replace(d.settings, idp_audience=None, public_url=public)
    d.upstream.add_secret("sk-alice-aud", "alice@acme.com")
    async with App(settings=settings) as app:
        await app.vault.add_secret("keyed", "sk-alice-aud", owner=Principal("user", "alice"),  # type: ignore[attr-defined]
                                   account="alice@acme.com")
        ours = d.idp.issue("alice", audience=public)
        response = await app.request("GET", d.upstream.echo_url("x"), provider="keyed", user_token=ours)
        assert response.json_body()["account"] == "alice@acme.com"
        for other in (d.idp.issue("alice"), d.idp.issue("alice", extra={"aud": None})):
            with pytest.raises(AlterError) as info:
                await app.request("GET", d.upstream.echo_url("x"), provider="keyed", user_token=other)
            assert info.value.code == "unauthenticated"


async def test_a_string_groups_claim_grants_no_group(
    sqlite_deployment: Deployment, caplog: pytest.LogCaptureFixture
) -> None:
    d = sqlite_deployment
    d.upstream.add_secret("sk-admins-shared", "admins@acme.com")
    async with d.app() as app:
        await app.vault.add_secret("keyed", "sk-admins-shared", owner=Principal("group", "Admins"),  # type: ignore[attr-defined]
                                   account="admins@acme.com")
        listed = d.idp.issue("carol", groups=["Admins"])
        response = await app.request("GET", d.upstream.echo_url("x"), provider="keyed", user_token=listed)
        assert response.json_body()["account"] == "admins@acme.com"
        d.upstream.reset_records()
        with caplog.at_level(logging.WARNING):
            for i, value in enumerate(("IT Admins", "IT,Admins", "Admins")):
                token = d.idp.issue(f"mallory-{i}", extra={"groups": value})
                with pytest.raises(NotConnectedError):
                    await app.request("GET", d.upstream.echo_url("x"), provider="keyed", user_token=token)
    warnings = [r for r in caplog.records if "'groups'" in r.getMessage()]
    assert len(warnings) == 1  # logged once, not per token
    assert not d.upstream.received_anywhere("sk-admins-shared")


# -- the connect link is used once, in one browser ------------------------------------------------


async def test_a_servers_connect_link_works_once_and_only_in_the_browser_that_opened_it(
    sqlite_deployment: Deployment,
) -> None:
    d = sqlite_deployment
    alice = d.idp.issue("alice")
    first, second = AsyncBrowser(), AsyncBrowser()
    async with (
        http_server(d, lambda _s: UserSession(session_jwt), connect_wait=0.2) as srv,
        srv.client(alice) as client,
        contextlib.AsyncExitStack() as browsers,
    ):
        browsers.push_async_callback(first.aclose)
        browsers.push_async_callback(second.aclose)
        pending = payload(await client.call_tool("connect", {"provider": "github"}))
        link = pending["connect_url"]
        assert link.startswith(f"{srv.url}/oauth/start/")
        async with httpx.AsyncClient(timeout=10) as preview:  # a link preview changes nothing
            page = await preview.get(link)
        assert page.status_code == 200 and "user:alice" in page.text and "works once" in page.text

        consent = await first.aapprove(link, "alice-gh", follow_callback=False)
        callback = consent.headers["location"]
        # The code reaches the callback from another browser (a stolen or forwarded redirect): refused.
        async with httpx.AsyncClient(timeout=10) as stranger:
            refused = await stranger.get(callback)
        assert refused.status_code == 400 and "not started in this browser" in refused.text
        # The link cannot be opened a second time, by anyone.
        with pytest.raises(AssertionError):
            await second.aapprove(link, "mallory-gh")
        async with httpx.AsyncClient(timeout=10) as again:
            assert (await again.get(link)).status_code == 409
            assert (await again.post(link, data={"alter_confirm": "yes"})).status_code == 410
        # The browser that opened it finishes the sign-in.
        async with httpx.AsyncClient(timeout=10, cookies=first._client.cookies) as same:
            landed = await same.get(callback)
        assert landed.status_code == 200 and "alice-gh" in landed.text
        done = payload(await client.call_tool("connect", {"provider": "github"}))
    assert done["status"] == "connected" and done["grant"]["account"] == "alice-gh"
