"""`connect` as a model and a host meet it: the link at once, the same link again, the account after, on any
replica; and nobody reaches another user's flow or remembered choice without that user's verified token."""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

import anyio
import httpx
import pytest
from langchain_core.messages import ToolMessage
from mcp import Client

from alter_agents import AlterToolkit, App, UserSession
from alter_agents.langchain import user_config
from mcp_server import build_server
from tests.conftest import Deployment, connect_as
from tests.fixtures import AsyncBrowser
from tests.mcp_support import ERAS, payload

pytestmark = pytest.mark.timeout(90)


async def invoke(app: App, name: str, args: dict[str, Any], token: str, **options: Any) -> tuple[str, dict[str, Any]]:
    tools = {t.name: t for t in AlterToolkit(app, **options).get_tools()}
    message = await tools[name].ainvoke({"type": "tool_call", "id": "c", "name": name, "args": args},
                                        user_config(token))
    assert isinstance(message, ToolMessage)
    return message.status, json.loads(str(message.content))


@pytest.mark.parametrize("forgery", ["alg_none", "other_key"])
async def test_a_forged_token_reaches_neither_the_users_pending_link_nor_her_finished_account(
    sqlite_deployment: Deployment, abrowser: AsyncBrowser, forgery: str
) -> None:
    d = sqlite_deployment
    forge = d.idp.none_token if forgery == "alg_none" else d.idp.forge
    async with d.app() as app:
        toolkit = AlterToolkit(app)  # one toolkit serving every user, as a LangChain deployment does
        tools = {t.name: t for t in toolkit.get_tools()}

        async def call(name: str, args: dict[str, Any], token: str) -> tuple[str, dict[str, Any]]:
            message = await tools[name].ainvoke({"type": "tool_call", "id": "c", "name": name, "args": args},
                                                user_config(token))
            return message.status, json.loads(str(message.content))

        status, alices = await call("connect", {"provider": "github"}, d.idp.issue("alice"))
        assert status == "success" and alices["status"] == "pending"
        status, stolen = await call("connect", {"provider": "github"}, forge("alice"))
        assert status == "error" and stolen["error"]["code"] == "unauthenticated"
        assert alices["connect_url"] not in json.dumps(stolen)

        carol = d.idp.issue("carol")
        _, pending = await call("connect", {"provider": "github"}, carol)
        await abrowser.aapprove(pending["connect_url"], "carol-gh")
        status, finished = await call("connect", {"provider": "github"}, forge("carol"))
        assert status == "error" and finished["error"]["code"] == "unauthenticated"
        assert "carol-gh" not in json.dumps(finished)
        status, hers = await call("connect", {"provider": "github"}, carol)
        assert status == "success" and hers["grant"]["account"] == "carol-gh"  # her own token still reaches it

        # Her remembered account choice is no more reachable than her flows.
        await connect_as(app, abrowser, "github", "carol-oss", carol, label="oss")
        status, _ = await call("request", {"url": d.upstream.echo_url(), "provider": "github", "account": "oss"}, carol)
        assert status == "success"
        status, used = await call("request", {"url": d.upstream.echo_url(), "provider": "github"}, forge("carol"))
        assert status == "error" and used["error"]["code"] == "unauthenticated" and used["error"]["sent"] is False
        assert "carol-oss" not in json.dumps(used)


async def test_without_a_way_to_reach_the_human_connect_answers_pending_at_once_with_the_same_link(
    sqlite_deployment: Deployment, abrowser: AsyncBrowser
) -> None:
    d = sqlite_deployment
    async with d.app() as app:
        alice = d.idp.issue("alice")
        started = time.monotonic()
        status, first = await invoke(app, "connect", {"provider": "github"}, alice, connect_wait=60)
        assert status == "success" and first["status"] == "pending" and time.monotonic() - started < 5
        assert first["provider"] == "github" and first["expires_at"]
        _, again = await invoke(app, "connect", {"provider": "github"}, alice, connect_wait=60)
        assert again["status"] == "pending" and again["connect_url"] == first["connect_url"]

        await abrowser.aapprove(first["connect_url"], "alice-gh")
        _, done = await invoke(app, "connect", {"provider": "github"}, alice)
        _, still = await invoke(app, "connect", {"provider": "github"}, alice)
        assert done["status"] == still["status"] == "connected"
        assert done["grant"] == still["grant"] == {"provider": "github", "account": "alice-gh"}
        assert done["grant_id"] == still["grant_id"]
        assert len(await app.grants(user_token=alice, provider="github")) == 1

        # Another account of the same provider: a new label starts a new flow.
        _, another = await invoke(app, "connect", {"provider": "github", "label": "work"}, alice)
        assert another["status"] == "pending" and another["connect_url"] != first["connect_url"]


@pytest.mark.parametrize("mode", ERAS)
async def test_an_mcp_client_without_url_elicitation_gets_the_link_well_before_its_time_out(
    sqlite_deployment: Deployment, abrowser: AsyncBrowser, mode: str
) -> None:
    d = sqlite_deployment
    async with d.app() as app:
        server = build_server(app, UserSession(d.idp.issue("alice")), connect_wait=60)
        async with Client(server, mode=mode) as client:
            started = time.monotonic()
            first = payload(await client.call_tool("connect", {"provider": "github"}))
            assert first["status"] == "pending" and time.monotonic() - started < 5
            again = payload(await client.call_tool("connect", {"provider": "github"}))
            assert again["connect_url"] == first["connect_url"]
            await abrowser.aapprove(first["connect_url"], "alice-gh")
            done = payload(await client.call_tool("connect", {"provider": "github"}))
            assert done["status"] == "connected" and done["grant"]["account"] == "alice-gh"


async def test_reauthorising_renews_the_same_grant_with_a_login_hint(
    sqlite_deployment: Deployment, abrowser: AsyncBrowser
) -> None:
    d = sqlite_deployment
    async with d.app() as app:
        alice = d.idp.issue("alice")
        d.oauth.access_token_ttl = 61
        stale = await connect_as(app, abrowser, "google", "alice@acme.com", alice, label="work")
        await connect_as(app, abrowser, "google", "alice@gmail.com", alice)
        await anyio.sleep(1.1)
        d.oauth.invalidate_refresh_tokens()
        d.oauth.access_token_ttl = 3600
        status, error = await invoke(app, "request", {"url": d.upstream.echo_url(), "provider": "google",
                                                      "account": "work"}, alice)
        assert status == "error" and error["error"]["code"] == "reauth_required"
        assert error["error"]["retryable"] is False and error["error"]["user_action"] == "reauthorize"
        _, listed = await invoke(app, "accounts", {"provider": "google"}, alice)
        assert {a["account"]: a["status"] for a in listed["accounts"]} == {
            "alice@acme.com": "needs_reauth", "alice@gmail.com": "active"}  # its refresh failed: not active

        _, pending = await invoke(app, "connect", {"provider": "google", "account": "work"}, alice)
        assert httpx.URL(pending["connect_url"]).params["login_hint"] == "alice@acme.com"
        await abrowser.aapprove(pending["connect_url"], "alice@acme.com")
        _, renewed = await invoke(app, "connect", {"provider": "google", "account": "work"}, alice)
        assert renewed["status"] == "connected" and renewed["grant_id"] == stale.grant_id
        assert "Re-authorised" in renewed["message"]
        status, ok = await invoke(app, "request", {"url": d.upstream.echo_url(), "provider": "google",
                                                   "account": "work"}, alice)
        assert status == "success" and ok["body"]["account"] == "alice@acme.com"


async def test_a_provider_without_an_oauth_client_tells_what_the_operator_must_set(
    sqlite_deployment: Deployment,
) -> None:
    d = sqlite_deployment
    async with d.app() as app:
        status, error = await invoke(app, "connect", {"provider": "notion"}, d.idp.issue("alice"))
    assert status == "error" and error["error"]["code"] == "provider_not_configured"
    assert error["error"]["user_action"] == "ask_operator" and error["error"]["retryable"] is False
    assert "ALTER_NOTION_CLIENT_ID" in error["error"]["message"]
    assert "ALTER_NOTION_CLIENT_SECRET" in error["error"]["message"]


@pytest.mark.parametrize("store_url", ["postgres"], indirect=True)  # replicas share a PostgreSQL store
async def test_two_replicas_on_one_postgres_store_share_pending_links_and_account_choices(
    deployment: Deployment, abrowser: AsyncBrowser
) -> None:
    d = deployment
    assert d.settings.vault_url.startswith("postgresql")
    alice = d.idp.issue("alice")
    async with d.app() as one, d.app() as two:
        _, first = await invoke(one, "connect", {"provider": "github"}, alice)
        _, second = await invoke(two, "connect", {"provider": "github"}, alice)
        assert first["status"] == second["status"] == "pending"
        assert second["connect_url"] == first["connect_url"]
        await abrowser.aapprove(first["connect_url"], "alice-gh")
        _, done = await invoke(two, "connect", {"provider": "github"}, alice)
        assert done["status"] == "connected" and done["grant"]["account"] == "alice-gh"

        await connect_as(one, abrowser, "github", "alice-oss", alice, label="oss")
        url = d.upstream.echo_url()
        status, _ = await invoke(one, "request", {"url": url, "provider": "github", "account": "oss"}, alice)
        assert status == "success"
        status, used = await invoke(two, "request", {"url": url, "provider": "github"}, alice)
        assert status == "success" and used["grant"]["account"] == "alice-oss" and "chosen earlier" in used["note"]


async def test_connects_started_at_the_same_moment_settle_on_one_link(
    deployment: Deployment, abrowser: AsyncBrowser
) -> None:
    d = deployment
    alice = d.idp.issue("alice")
    async with d.app() as one, d.app() as two:
        for app in (one, two):  # open each replica's vault first: only the connects race here
            await invoke(app, "accounts", {}, alice)
        results = await asyncio.gather(*(invoke(app, "connect", {"provider": "github"}, alice)
                                         for app in (one, two, one, two)))
        links = {body["connect_url"] for _status, body in results}
        assert len(links) == 1, links
        await abrowser.aapprove(links.pop(), "alice-gh")
        _, done = await invoke(one, "connect", {"provider": "github"}, alice)
        assert done["status"] == "connected" and done["grant"]["account"] == "alice-gh"
