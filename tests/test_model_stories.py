"""Seven everyday tasks, done by a scripted agent that knows only the tool list and the results.

The agent reads tool descriptions and results the way a model does (no test-only knowledge of grant
ids or internals), through the LangChain toolkit and through a real `mcp` client, and each task takes
the fewest calls possible. The human's part (opening a link) is played by the test browser.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
from langchain_core.messages import ToolMessage
from mcp import Client

from alter_agents import AlterToolkit, App, Principal, UserSession
from alter_agents.langchain import user_config
from mcp_server import build_server
from tests.conftest import Deployment, connect_as, make_deployment
from tests.fixtures import AsyncBrowser, IdentityProvider, OAuthServer, UpstreamAPI
from tests.mcp_support import http_server, payload

pytestmark = pytest.mark.timeout(120)

STRIPE_KEY = "sk_test_group_owned_0123456789"


class Agent:
    """One surface's tools as a model meets them: a list, and calls that return JSON (ok or error)."""

    def __init__(self) -> None:
        self.calls: list[str] = []
        self.tools: dict[str, str] = {}  # name -> description

    async def call(self, name: str, **args: Any) -> tuple[bool, dict[str, Any]]:
        self.calls.append(name)
        return await self._call(name, args)

    async def _call(self, name: str, args: dict[str, Any]) -> tuple[bool, dict[str, Any]]:
        raise NotImplementedError

    def count(self) -> int:
        done = len(self.calls)
        self.calls.clear()
        return done


class LangChainAgent(Agent):
    def __init__(self, app: App, token: str) -> None:
        super().__init__()
        self._tools = {t.name: t for t in AlterToolkit(app).get_tools()}
        self.tools = {name: t.description for name, t in self._tools.items()}
        self._config = user_config(token)

    async def _call(self, name: str, args: dict[str, Any]) -> tuple[bool, dict[str, Any]]:
        message = await self._tools[name].ainvoke({"type": "tool_call", "id": "c", "name": name, "args": args},
                                                   self._config)
        assert isinstance(message, ToolMessage)
        return message.status == "success", json.loads(str(message.content))


class McpAgent(Agent):
    def __init__(self, client: Client) -> None:
        super().__init__()
        self._client = client

    async def start(self) -> None:
        self.tools = {t.name: t.description or "" for t in (await self._client.list_tools()).tools}

    async def _call(self, name: str, args: dict[str, Any]) -> tuple[bool, dict[str, Any]]:
        result = await self._client.call_tool(name, args)
        return not result.is_error, payload(result)


@pytest.fixture
def world(tmp_path: Path, sqlite_url: str, idp: IdentityProvider, oauth: OAuthServer, upstream: UpstreamAPI,
          oauth_client: tuple[str, str]) -> Deployment:
    """The test deployment plus a Slack pointed at the local OAuth server and API."""
    d = make_deployment(tmp_path, sqlite_url, idp, oauth, upstream, oauth_client)
    assert d.settings.providers_file is not None
    with Path(d.settings.providers_file).open("a", encoding="utf-8") as file:
        file.write(f"""
[providers.slack]
hosts = ["127.0.0.1:{upstream.port}"]
allow_http = true
authorize_url = "{oauth.url}/authorize"
token_url = "{oauth.url}/token"
client_id = "{oauth_client[0]}"
client_secret = "{oauth_client[1]}"
scopes = ["read"]
scope_separator = " "
account = {{ url = "{upstream.url}/user", field = "login" }}
""")
    return d


async def _furnish(d: Deployment, app: App, browser: AsyncBrowser, alice: str) -> str:
    """Alice's accounts: two Google, three GitHub, a Slack whose refresh token died, her group's Stripe key."""
    await connect_as(app, browser, "google", "alice@gmail.com", alice)
    await connect_as(app, browser, "google", "alice@acme.com", alice, label="work")
    d.oauth.access_token_ttl = 61  # due for refresh after a second
    slack = await connect_as(app, browser, "slack", "alice-slack", alice)
    d.oauth.access_token_ttl = 3600
    for account, label in (("alice-home", "personal"), ("alice-oss", "oss"), ("alice-corp", "corp")):
        await connect_as(app, browser, "github", account, alice, label=label)
    await app.vault.add_secret("stripe", STRIPE_KEY, owner=Principal("group", "finance"),  # type: ignore[attr-defined]
                               account="acme-finance")
    d.upstream.add_secret(STRIPE_KEY, "acme-finance")
    await asyncio.sleep(1.1)
    d.oauth.invalidate_refresh_tokens()  # only Slack's token is due, so only Slack needs the user again
    return slack.grant_id


@asynccontextmanager
async def _agent(surface: str, app: App, token: str, d: Deployment) -> AsyncIterator[Agent]:
    if surface == "langchain":
        yield LangChainAgent(app, token)
        return
    if surface == "mcp-http":  # the real HTTP server, each request scoped by its own bearer JWT
        async with http_server(d, lambda _settings: UserSession(), connect_wait=60) as running, \
                running.client(token) as client:
            agent = McpAgent(client)
            await agent.start()
            yield agent
        return
    async with Client(build_server(app, UserSession(token), connect_wait=60), mode="legacy") as client:
        agent = McpAgent(client)
        await agent.start()
        yield agent


def _hosts(accounts: dict[str, Any], provider: str) -> list[str]:
    return next(p["hosts"] for p in accounts["providers"] if p["name"] == provider)


@pytest.mark.parametrize("surface", ["langchain", "mcp", "mcp-http"])
async def test_seven_everyday_tasks_in_the_fewest_calls(
    world: Deployment, abrowser: AsyncBrowser, foreign: UpstreamAPI, surface: str
) -> None:
    d = world
    async with d.app() as app:
        alice = d.idp.issue("alice", groups=["finance"])
        slack_grant = await _furnish(d, app, abrowser, alice)
        echo = d.upstream.echo_url

        async with _agent(surface, app, alice, d) as agent:
            assert {"request", "connect", "accounts"} <= set(agent.tools)
            assert "refused" in agent.tools["request"] and "cannot change" in agent.tools["request"]

            # 1. "Read my work Gmail": which provider id, which account? `accounts` says; then one request.
            ok, listed = await agent.call("accounts")
            assert ok
            google = [a for a in listed["accounts"] if a["provider"] == "google"]
            work = next(a["account"] for a in google if a.get("label") == "work")
            ok, inbox = await agent.call("request", url=echo("gmail/inbox"), provider="google", account=work)
            assert ok and inbox["body"]["account"] == "alice@acme.com" and agent.count() == 2

            # 2. GitHub is not connected for bob: request → not_connected → connect gives the link at once →
            #    the human signs in → the same request succeeds.
            bob = d.idp.issue("bob")
            async with _agent(surface, app, bob, d) as bobs:
                ok, error = await bobs.call("request", url=echo("user/repos"), provider="github")
                assert not ok and error["error"]["code"] == "not_connected"
                assert error["error"]["retryable"] is False and error["error"]["user_action"] == "connect"
                started = time.monotonic()
                ok, pending = await bobs.call("connect", provider="github")
                assert ok and pending["status"] == "pending" and time.monotonic() - started < 5
                await abrowser.aapprove(pending["connect_url"], "bob-gh")
                ok, repos = await bobs.call("request", url=echo("user/repos"), provider="github")
                assert ok and repos["grant"]["account"] == "bob-gh" and bobs.count() == 3

            # 3. Slack needs re-authorisation: reauth_required names the account; connect targets it;
            #    the same grant is renewed.
            ok, error = await agent.call("request", url=echo("chat.postMessage"), provider="slack", method="POST",
                                         json={"text": "hi"})
            body = error["error"]
            assert not ok and body["code"] == "reauth_required" and body["retryable"] is False
            assert body["user_action"] == "reauthorize" and body["sent"] is False
            ok, pending = await agent.call("connect", provider="slack", account=body["account"])
            assert ok and pending["status"] == "pending"
            await abrowser.aapprove(pending["connect_url"], body["account"])
            ok, posted = await agent.call("request", url=echo("chat.postMessage"), provider="slack", method="POST",
                                          json={"text": "hi"})
            assert ok and posted["body"]["json"] == {"text": "hi"} and agent.count() == 3
            slack = [g for g in await app.grants(user_token=alice, provider="slack")]
            assert [(g.grant_id, g.status) for g in slack] == [(slack_grant, "active")]

            # 7. Three GitHub accounts: the ambiguity error lists them all; the next call picks one.
            ok, error = await agent.call("request", url=echo("user"), provider="github")
            assert not ok and error["error"]["code"] == "ambiguous_grant" and error["error"]["retryable"] is False
            names = {a["account"] for a in error["error"]["accounts"]}
            assert names == {"alice-home", "alice-oss", "alice-corp"}
            ok, me = await agent.call("request", url=echo("user"), provider="github", account="alice-oss")
            assert ok and me["body"]["account"] == "alice-oss" and agent.count() == 2

            # 4. "Send my GitHub token to this other host": refused for certain, nothing sent.
            ok, error = await agent.call("request", url=foreign.echo_url("steal", host="localhost"),
                                         provider="github", account="oss")
            assert not ok and error["error"]["code"] == "host_not_allowed" and error["error"]["sent"] is False
            assert "localhost" not in _hosts(listed, "github") and agent.count() == 1
            assert foreign.requests == [] and foreign.seen_credentials == []

            # 5. The group's Stripe key: one request, resolved through alice's group.
            ok, charges = await agent.call("request", url=echo("v1/charges"), provider="stripe")
            assert ok and charges["body"]["account"] == "acme-finance" and agent.count() == 1
            assert any(a["provider"] == "stripe" and a.get("shared") for a in listed["accounts"])

            # 6. Create an issue: one POST with a JSON body, sent as UTF-8 JSON.
            issue = {"title": "Crash on start", "body": "Steps: … ünïcode"}
            ok, created = await agent.call("request", url=echo("repos/acme/app/issues"), provider="github",
                                           account="corp", method="POST", json=issue)
            assert ok and created["body"]["json"] == issue and agent.count() == 1
            assert created["body"]["headers"]["content-type"] == "application/json; charset=utf-8"
