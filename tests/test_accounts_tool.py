"""The `accounts` tool: the session's accounts with their status, and every provider with its id and hosts."""

from __future__ import annotations

import json
from typing import Any

import pytest
from langchain_core.messages import ToolMessage
from mcp import Client

from alter_agents import AlterToolkit, App, HeadlessSession, LocalSession, Principal, UserSession
from alter_agents.langchain import user_config
from alter_agents.tools import AlterTools
from mcp_server import build_server
from tests.conftest import Deployment, connect_as
from tests.fixtures import AsyncBrowser
from tests.mcp_support import ERAS, payload

pytestmark = pytest.mark.timeout(60)


async def accounts(app: App, args: dict[str, Any], token: str) -> tuple[str, dict[str, Any]]:
    tool = next(t for t in AlterToolkit(app).get_tools() if t.name == "accounts")
    message = await tool.ainvoke({"type": "tool_call", "id": "c", "name": "accounts", "args": args},
                                 user_config(token))
    assert isinstance(message, ToolMessage)
    return message.status, json.loads(str(message.content))


async def test_accounts_lists_the_users_accounts_and_every_provider_with_its_hosts(
    sqlite_deployment: Deployment, abrowser: AsyncBrowser
) -> None:
    d = sqlite_deployment
    async with d.app() as app:
        alice = d.idp.issue("alice", groups=["finance"])
        await connect_as(app, abrowser, "google", "alice@gmail.com", alice)
        await connect_as(app, abrowser, "google", "alice@acme.com", alice, label="work")
        await connect_as(app, abrowser, "github", "bob-gh", d.idp.issue("bob"))
        await app.vault.add_secret("stripe", "sk_test_1234567890", owner=Principal("group", "finance"),  # type: ignore[attr-defined]
                                   account="acme-finance")
        status, listed = await accounts(app, {}, alice)

    assert status == "success"
    assert listed["accounts"] == [
        {"provider": "google", "account": "alice@acme.com", "label": "work", "status": "active"},
        {"provider": "google", "account": "alice@gmail.com", "status": "active"},
        {"provider": "stripe", "account": "acme-finance", "status": "active", "shared": True},
    ]  # bob's GitHub account is not hers
    providers = {p["name"]: p for p in listed["providers"]}
    assert {"github", "google", "slack", "stripe", "notion"} <= set(providers)
    bound = [f"127.0.0.1:{d.upstream.port}"]  # the test provider's host entry names its port
    assert providers["google"] == {"name": "google", "display_name": "Google", "hosts": bound,
                                   "kind": "oauth2", "connected": True}
    assert providers["github"]["connected"] is False and providers["stripe"]["kind"] == "secret"
    assert providers["slack"]["hosts"] == ["slack.com"]


async def test_accounts_filters_by_provider_and_refuses_unknown_ones_and_stray_arguments(
    sqlite_deployment: Deployment, abrowser: AsyncBrowser
) -> None:
    d = sqlite_deployment
    async with d.app() as app:
        alice = d.idp.issue("alice")
        await connect_as(app, abrowser, "github", "alice-gh", alice)
        await connect_as(app, abrowser, "google", "alice@gmail.com", alice)
        _, only = await accounts(app, {"provider": "github"}, alice)
        assert [a["account"] for a in only["accounts"]] == ["alice-gh"]
        assert [p["name"] for p in only["providers"]] == ["github"]
        status, unknown = await accounts(app, {"provider": "gmail"}, alice)
        assert status == "error" and unknown["error"]["code"] == "unknown_provider"
        assert "google" in unknown["error"]["known_providers"]
        status, stray = await accounts(app, {"user": "bob"}, alice)
        assert status == "error" and stray["error"]["code"] == "invalid_arguments"
        status, forged = await accounts(app, {}, d.idp.forge("alice"))
        assert status == "error" and forged["error"]["code"] == "unauthenticated"


@pytest.mark.parametrize("mode", ERAS)
async def test_mcp_serves_accounts_with_an_output_schema(
    sqlite_deployment: Deployment, abrowser: AsyncBrowser, mode: str
) -> None:
    d = sqlite_deployment
    async with d.app() as app:
        alice = d.idp.issue("alice")
        await connect_as(app, abrowser, "github", "alice-gh", alice, label="oss")
        async with Client(build_server(app, UserSession(alice)), mode=mode) as client:
            tool = next(t for t in (await client.list_tools()).tools if t.name == "accounts")
            listed = payload(await client.call_tool("accounts", {}))
            wrong = await client.call_tool("accounts", {"bogus": 1})
    assert tool.output_schema is not None and "accounts" in json.dumps(tool.output_schema)
    assert tool.annotations is not None and tool.annotations.read_only_hint is True
    assert listed["accounts"] == [{"provider": "github", "account": "alice-gh", "label": "oss", "status": "active"}]
    assert wrong.is_error and payload(wrong)["error"]["code"] == "invalid_arguments"


async def test_local_and_headless_sessions_list_the_apps_accounts_they_can_use(
    sqlite_deployment: Deployment, abrowser: AsyncBrowser
) -> None:
    d = sqlite_deployment.local()
    async with d.app() as app:
        await connect_as(app, abrowser, "github", "octo", None)
        local = await AlterTools(app, LocalSession()).accounts()
        assert [(a.provider, a.account) for a in local.accounts] == [("github", "octo")]
        headless = HeadlessSession()
        assert (await AlterTools(app, headless).accounts()).accounts == []  # nothing pinned yet
        headless.pinned["github"] = (await app.grants())[0].grant_id
        assert [a.account for a in (await AlterTools(app, headless).accounts()).accounts] == ["octo"]
