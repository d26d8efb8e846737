"""OAuth connect and refresh: single-flight, refresh-token rotation, invalid_grant, transient failures."""

from __future__ import annotations

import asyncio

import pytest

from alter_agents import ConnectDeniedError, ConnectTimeoutError, ReauthRequiredError, UpstreamUnreachableError
from tests.conftest import Deployment, connect_as
from tests.fixtures import AsyncBrowser

DUE_TTL = 30  # shorter than the vault's refresh skew: the token is due at once


async def _connect_due(d: Deployment, app: object, abrowser: AsyncBrowser, user: str, token: str) -> str:
    d.oauth.access_token_ttl = DUE_TTL
    result = await connect_as(app, abrowser, "github", user, token)  # type: ignore[arg-type]
    assert d.oauth.count("refresh_token") == 0
    return result.grant_id


async def test_a_hundred_concurrent_calls_refresh_the_token_once(
    sqlite_deployment: Deployment, abrowser: AsyncBrowser
) -> None:
    d = sqlite_deployment
    async with d.app() as app:
        alice = d.idp.issue("alice")
        await _connect_due(d, app, abrowser, "alice-gh", alice)
        d.oauth.access_token_ttl, d.oauth.token_delay = 3600, 0.5  # the refreshed token is not due
        responses = await asyncio.gather(*(
            app.request("GET", d.upstream.echo_url(f"n/{i}"), provider="github", user_token=alice)
            for i in range(100)
        ))
    assert [r.status for r in responses] == [200] * 100
    assert {r.json_body()["account"] for r in responses} == {"alice-gh"}
    assert d.oauth.count("refresh_token") == 1


async def test_two_vault_processes_sharing_a_store_refresh_once(
    deployment: Deployment, abrowser: AsyncBrowser
) -> None:
    d = deployment
    async with d.app() as first, d.app() as second:
        alice = d.idp.issue("alice")
        await _connect_due(d, first, abrowser, "alice-gh", alice)
        d.oauth.access_token_ttl, d.oauth.token_delay = 3600, 0.3
        responses = await asyncio.gather(*(
            app.request("GET", d.upstream.echo_url("x"), provider="github", user_token=alice)
            for _ in range(25) for app in (first, second)
        ))
    assert {r.status for r in responses} == {200}
    assert d.oauth.count("refresh_token") == 1


async def test_refresh_tokens_rotate_and_the_new_one_is_kept(
    sqlite_deployment: Deployment, abrowser: AsyncBrowser
) -> None:
    d = sqlite_deployment
    async with d.app() as app:
        alice = d.idp.issue("alice")
        grant_id = await _connect_due(d, app, abrowser, "alice-gh", alice)
        sealed = (await app.vault.store.get_grant(grant_id)).secret  # type: ignore[union-attr]
        for _ in range(3):
            # Each refreshed token is due again at once (ttl < skew), so every call refreshes.
            response = await app.request("GET", d.upstream.echo_url("x"), provider="github", user_token=alice)
            assert response.json_body()["account"] == "alice-gh"
            stored = await app.vault.store.get_grant(grant_id)
            assert stored is not None and stored.secret != sealed and stored.grant.status == "active"
            sealed = stored.secret
    tokens = d.oauth.tokens_for("alice-gh")
    assert len(tokens) == 4
    assert [t.refresh_revoked for t in tokens] == [True, True, True, False]  # only the newest still works
    assert d.oauth.count("refresh_token") == 3
    assert {r.status for r in d.oauth.token_requests} == {200}


async def test_a_revoked_refresh_token_asks_the_user_to_reconnect(
    sqlite_deployment: Deployment, abrowser: AsyncBrowser
) -> None:
    d = sqlite_deployment
    async with d.app() as app:
        alice = d.idp.issue("alice")
        grant_id = await _connect_due(d, app, abrowser, "alice-gh", alice)
        d.oauth.invalidate_refresh_tokens()
        with pytest.raises(ReauthRequiredError) as info:
            await app.request("GET", d.upstream.echo_url("x"), provider="github", user_token=alice)
        body = info.value.payload().error
        assert (body.code, body.user_action, body.provider) == ("reauth_required", "reauthorize", "github")
        assert "connect" in body.message
        assert [g.status for g in await app.grants(user_token=alice)] == ["needs_reauth"]
        requests_before = d.oauth.count("refresh_token")
        with pytest.raises(ReauthRequiredError):
            await app.request("GET", d.upstream.echo_url("x"), grant_id=grant_id)
        assert d.oauth.count("refresh_token") == requests_before  # no token request for a dead grant

        d.oauth.access_token_ttl = 3600
        again = await connect_as(app, abrowser, "github", "alice-gh", alice)
        assert (again.grant_id, again.operation) == (grant_id, "reauth")
        response = await app.request("GET", d.upstream.echo_url("x"), provider="github", user_token=alice)
        assert response.json_body()["account"] == "alice-gh"
        assert [g.status for g in await app.grants(user_token=alice)] == ["active"]


async def test_transient_token_endpoint_failures_are_retried(
    sqlite_deployment: Deployment, abrowser: AsyncBrowser
) -> None:
    d = sqlite_deployment
    async with d.app() as app:
        alice = d.idp.issue("alice")
        await _connect_due(d, app, abrowser, "alice-gh", alice)
        d.oauth.access_token_ttl = 3600
        d.oauth.fail_next_token_requests(2, status=503)
        response = await app.request("GET", d.upstream.echo_url("x"), provider="github", user_token=alice)
        assert response.json_body()["account"] == "alice-gh"
        assert [r.status for r in d.oauth.token_requests if r.grant_type == "refresh_token"] == [503, 503, 200]
        assert [g.status for g in await app.grants(user_token=alice)] == ["active"]


async def test_a_long_outage_fails_the_call_but_keeps_the_grant(
    sqlite_deployment: Deployment, abrowser: AsyncBrowser
) -> None:
    d = sqlite_deployment
    async with d.app() as app:
        alice = d.idp.issue("alice")
        await _connect_due(d, app, abrowser, "alice-gh", alice)
        d.oauth.fail_next_token_requests(100)
        with pytest.raises(UpstreamUnreachableError) as info:
            await app.request("GET", d.upstream.echo_url("x"), provider="github", user_token=alice)
        assert info.value.retryable and info.value.payload().error.user_action == "retry_later"
        assert [g.status for g in await app.grants(user_token=alice)] == ["active"]
        d.oauth.fail_next_token_requests(0)
        response = await app.request("GET", d.upstream.echo_url("x"), provider="github", user_token=alice)
        assert response.json_body()["account"] == "alice-gh"  # the old refresh token was never lost


async def test_a_user_who_denies_access_gets_connect_denied(
    sqlite_deployment: Deployment, abrowser: AsyncBrowser
) -> None:
    d = sqlite_deployment
    async with d.app() as app:
        start = await app.start_connect("github", user_token=d.idp.issue("alice"))
        page = await abrowser.adeny(start.connect_url)
        assert page.status_code == 200
        with pytest.raises(ConnectDeniedError):
            await app.vault.wait_connect(start.session_id, 5)
        assert await app.grants(user_token=d.idp.issue("alice")) == []


async def test_connect_times_out_when_nobody_finishes(sqlite_deployment: Deployment) -> None:
    d = sqlite_deployment
    async with d.app() as app:
        start = await app.start_connect("github", user_token=d.idp.issue("alice"))
        with pytest.raises(ConnectTimeoutError) as info:
            await app.vault.wait_connect(start.session_id, 0.3)
        assert info.value.payload().error.code == "connect_timeout"
        assert (await app.vault.connect_status(start.session_id)).status == "pending"
