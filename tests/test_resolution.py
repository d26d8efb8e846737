"""Which grant backs a call (DESIGN §3): JWT identity, explicit grant id, headless connect, local mode."""

from __future__ import annotations

import asyncio

import pytest

from alter_agents import (
    AmbiguousGrantError,
    GrantNotFoundError,
    InvalidArgumentsError,
    NotConnectedError,
)
from alter_agents.models import APP, ConnectStart, Principal
from tests.conftest import Deployment, LinkTwoGoogleAccounts, connect_as
from tests.fixtures import AsyncBrowser


async def test_the_users_jwt_picks_their_own_grant(sqlite_deployment: Deployment, abrowser: AsyncBrowser) -> None:
    d = sqlite_deployment
    async with d.app() as app:
        alice, bob = d.idp.issue("alice"), d.idp.issue("bob")
        await connect_as(app, abrowser, "google", "alice@gmail.com", alice)
        await connect_as(app, abrowser, "google", "bob@gmail.com", bob)
        for token, expected in ((alice, "alice@gmail.com"), (bob, "bob@gmail.com")):
            response = await app.request("GET", d.upstream.echo_url("me"), provider="google", user_token=token)
            assert response.status == 200
            assert response.json_body()["account"] == expected
            assert response.grant.account == expected


async def test_ambiguous_google_accounts_ask_the_model_to_choose(
    sqlite_deployment: Deployment, alice_google: LinkTwoGoogleAccounts
) -> None:
    d = sqlite_deployment
    async with d.app() as app:
        alice = d.idp.issue("alice")
        await alice_google(app, alice)
        with pytest.raises(AmbiguousGrantError) as info:
            await app.request("GET", d.upstream.echo_url("x"), provider="google", user_token=alice)
    error = info.value
    assert error.provider == "google"
    assert sorted((a.account, a.label, a.display_name) for a in error.accounts) == [
        ("alice@acme.com", "work", "alice@acme.com"), ("alice@gmail.com", None, "alice@gmail.com"),
    ]
    body = error.payload().error
    assert (body.code, body.user_action, body.retryable) == ("ambiguous_grant", "choose_account", False)
    assert "alice@gmail.com" in body.message and "alice@acme.com" in body.message


async def test_account_chooses_by_identifier_or_by_label(
    sqlite_deployment: Deployment, alice_google: LinkTwoGoogleAccounts
) -> None:
    d = sqlite_deployment
    async with d.app() as app:
        alice = d.idp.issue("alice")
        await alice_google(app, alice, personal_label="personal")
        for account, expected in (("work", "alice@acme.com"), ("ALICE@gmail.com", "alice@gmail.com"),
                                  ("personal", "alice@gmail.com"), ("alice@acme.com", "alice@acme.com")):
            response = await app.request("GET", d.upstream.echo_url("x"), provider="google", user_token=alice,
                                         account=account)
            assert response.json_body()["account"] == expected, account
        with pytest.raises(NotConnectedError) as info:
            await app.request("GET", d.upstream.echo_url("x"), provider="google", user_token=alice,
                              account="alice@other.com")
    assert info.value.payload().error.model_dump()["account"] == "alice@other.com"


async def test_a_group_grant_joins_the_users_own_grants(
    sqlite_deployment: Deployment, abrowser: AsyncBrowser
) -> None:
    d = sqlite_deployment
    d.upstream.add_secret("eng-shared-token-0001", "eng-bot@acme.com")
    async with d.app() as app:
        alice = d.idp.issue("alice", groups=["eng"])
        await connect_as(app, abrowser, "google", "alice@gmail.com", alice)
        await app.vault.add_secret("google", "eng-shared-token-0001", owner=Principal("group", "eng"),
                                   account="eng-bot@acme.com", label="eng")
        with pytest.raises(AmbiguousGrantError) as info:
            await app.request("GET", d.upstream.echo_url("x"), provider="google", user_token=alice)
        assert {a.account for a in info.value.accounts} == {"alice@gmail.com", "eng-bot@acme.com"}

        response = await app.request("GET", d.upstream.echo_url("x"), provider="google", user_token=alice,
                                     account="eng")
        assert response.json_body()["account"] == "eng-bot@acme.com"

        carol = d.idp.issue("carol", groups=["eng"])  # only the group's grant
        response = await app.request("GET", d.upstream.echo_url("x"), provider="google", user_token=carol)
        assert response.json_body()["account"] == "eng-bot@acme.com"

        bob = d.idp.issue("bob", groups=["sales"])
        with pytest.raises(NotConnectedError) as nc:
            await app.request("GET", d.upstream.echo_url("x"), provider="google", user_token=bob)
        assert (nc.value.payload().error.code, nc.value.payload().error.user_action) == ("not_connected", "connect")
        assert [g.account for g in await app.grants(user_token=carol)] == ["eng-bot@acme.com"]


async def test_bob_cannot_use_or_see_alices_grant(sqlite_deployment: Deployment, abrowser: AsyncBrowser) -> None:
    d = sqlite_deployment
    async with d.app() as app:
        alice, bob = d.idp.issue("alice"), d.idp.issue("bob")
        grant = await connect_as(app, abrowser, "github", "alice-gh", alice)
        d.upstream.reset_records()
        with pytest.raises(GrantNotFoundError) as stolen:
            await app.request("GET", d.upstream.echo_url("x"), grant_id=grant.grant_id, user_token=bob)
        with pytest.raises(GrantNotFoundError) as missing:
            await app.request("GET", d.upstream.echo_url("x"),
                              grant_id="00000000-0000-4000-8000-000000000000", user_token=bob)
        assert d.upstream.seen_credentials == []
        assert stolen.value.payload().error.code == "grant_not_found"
        assert stolen.value.message.replace(grant.grant_id, "ID") == missing.value.message.replace(
            "00000000-0000-4000-8000-000000000000", "ID")
        assert await app.grants(user_token=bob) == []
        assert [g.grant_id for g in await app.grants(user_token=alice)] == [grant.grant_id]
        with pytest.raises(NotConnectedError):
            await app.request("GET", d.upstream.echo_url("x"), provider="github", user_token=bob)

        response = await app.request("GET", d.upstream.echo_url("x"), grant_id=grant.grant_id, user_token=alice)
        assert response.json_body()["account"] == "alice-gh"


async def test_an_explicit_grant_id_works_without_a_user_token(
    sqlite_deployment: Deployment, abrowser: AsyncBrowser
) -> None:
    d = sqlite_deployment
    async with d.app() as app:
        grant = await connect_as(app, abrowser, "github", "alice-gh", d.idp.issue("alice"))
        response = await app.request("GET", d.upstream.echo_url("x"), grant_id=grant.grant_id.upper())
        assert response.json_body()["account"] == "alice-gh"
        with pytest.raises(InvalidArgumentsError):
            await app.request("GET", d.upstream.echo_url("x"), grant_id=grant.grant_id, provider="google")
        with pytest.raises(GrantNotFoundError):
            await app.request("GET", d.upstream.echo_url("x"), grant_id="not-a-uuid")
        await app.vault.revoke(grant.grant_id)
        with pytest.raises(GrantNotFoundError):
            await app.request("GET", d.upstream.echo_url("x"), grant_id=grant.grant_id)


async def test_headless_connect_returns_an_app_grant_usable_at_once(
    sqlite_deployment: Deployment, abrowser: AsyncBrowser
) -> None:
    d = sqlite_deployment
    browsing: list[asyncio.Task[object]] = []

    def open_in_browser(start: ConnectStart) -> None:
        assert start.connect_url.startswith(d.oauth.authorize_url)
        assert "code_challenge_method=S256" in start.connect_url and "state=" in start.connect_url
        browsing.append(asyncio.create_task(abrowser.aapprove(start.connect_url, "octocat")))

    async with d.app() as app:
        results = await app.connect(["github"], timeout=10, on_url=open_in_browser)
        assert [(r.provider, r.account, r.operation) for r in results] == [("github", "octocat", "creation")]
        assert results[0].scopes == ["read"]
        page = await browsing[0]
        assert page.status_code == 200 and "Connected github account octocat" in page.text
        response = await app.request("GET", d.upstream.echo_url("x"), grant_id=results[0].grant_id)
        assert response.json_body()["account"] == "octocat"
        stored = await app.vault.get_grant(results[0].grant_id)
        assert stored is not None and stored.owner == str(APP)
        # With an identity provider, app-owned grants are reachable by grant id only, never by a JWT.
        with pytest.raises(NotConnectedError):
            await app.request("GET", d.upstream.echo_url("x"), provider="github", user_token=d.idp.issue("alice"))


async def test_local_mode_resolves_over_the_machines_own_grants(
    sqlite_deployment: Deployment, abrowser: AsyncBrowser
) -> None:
    d = sqlite_deployment.local()
    tasks: list[asyncio.Task[object]] = []
    async with d.app() as app:
        with pytest.raises(NotConnectedError):
            await app.request("GET", d.upstream.echo_url("x"), provider="github")
        await app.connect(["github"], timeout=10,
                          on_url=lambda s: tasks.append(asyncio.create_task(abrowser.aapprove(s.connect_url, "me"))))
        response = await app.request("GET", d.upstream.echo_url("x"), provider="github")
        assert response.json_body()["account"] == "me"
        assert [g.account for g in await app.grants()] == ["me"]

        await app.connect(["github"], timeout=10, label="work", on_url=lambda s: tasks.append(
            asyncio.create_task(abrowser.aapprove(s.connect_url, "me-at-work"))))
        with pytest.raises(AmbiguousGrantError):
            await app.request("GET", d.upstream.echo_url("x"), provider="github")
        response = await app.request("GET", d.upstream.echo_url("x"), provider="github", account="work")
        assert response.json_body()["account"] == "me-at-work"
    await asyncio.gather(*tasks)


async def test_reconnecting_the_same_account_updates_the_grant(
    sqlite_deployment: Deployment, abrowser: AsyncBrowser
) -> None:
    d = sqlite_deployment
    async with d.app() as app:
        alice = d.idp.issue("alice")
        first = await connect_as(app, abrowser, "github", "alice-gh", alice)
        again = await connect_as(app, abrowser, "github", "alice-gh", alice)
        assert (again.grant_id, again.operation) == (first.grant_id, "reauth")
        assert len(await app.grants(user_token=alice)) == 1


async def test_the_provider_is_named_or_inferred_from_the_url(sqlite_deployment: Deployment) -> None:
    d = sqlite_deployment
    async with d.app() as app:
        with pytest.raises(InvalidArgumentsError, match="Several providers"):
            await app.request("GET", d.upstream.echo_url("x"), user_token=d.idp.issue("alice"))
        with pytest.raises(InvalidArgumentsError, match="not an absolute URL"):
            await app.request("GET", "/relative", user_token=d.idp.issue("alice"))
        assert app.infer_provider("https://api.notion.com/v1/users/me") == "notion"
        assert app.infer_provider("https://API.Linear.app/graphql") == "linear"
