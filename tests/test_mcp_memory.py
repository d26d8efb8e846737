"""The MCP server with the real `mcp` client in memory, in both protocol eras."""

from __future__ import annotations

import json
from typing import Any

import anyio
import pytest
from mcp import Client
from mcp_types import ElicitRequestFormParams, ElicitRequestURLParams, ElicitResult

from alter_agents import App
from alter_agents.sessions import GrantSession, LocalSession, UserSession
from alter_agents.tools import CONNECT_DESCRIPTION, REQUEST_DESCRIPTION
from alter_agents.upstream import REDACTED
from mcp_server import GRANTS_URI, build_server
from tests.conftest import Deployment, LinkTwoGoogleAccounts
from tests.fixtures import AsyncBrowser
from tests.mcp_support import ERAS, link, payload

pytestmark = pytest.mark.timeout(60)


@pytest.fixture
async def app(sqlite_deployment: Deployment) -> Any:
    async with sqlite_deployment.app() as a:
        yield a


@pytest.mark.parametrize("mode", ERAS)
async def test_tools_list_shows_flat_schemas_and_an_output_schema_that_admits_errors(
    app: App, sqlite_deployment: Deployment, mode: str
) -> None:
    server = build_server(app, UserSession(sqlite_deployment.idp.issue("alice")))
    async with Client(server, mode=mode) as client:
        tools = {t.name: t for t in (await client.list_tools()).tools}
    assert set(tools) == {"request", "connect", "accounts"}
    request = tools["request"]
    assert request.description == REQUEST_DESCRIPTION
    assert set(request.input_schema["properties"]) == {"method", "url", "provider", "account", "query", "headers",
                                                       "json", "body"}
    assert request.input_schema["required"] == ["url"]
    assert "Which connected account" in request.input_schema["properties"]["account"]["description"]
    assert request.annotations is not None and request.annotations.open_world_hint is True
    assert request.output_schema is not None and request.output_schema["type"] == "object"
    shapes = {branch["title"] for branch in request.output_schema["anyOf"]}
    assert shapes == {"RequestResult", "ToolErrorPayload"}
    connect = tools["connect"]
    assert connect.description == CONNECT_DESCRIPTION
    assert connect.input_schema["required"] == ["provider"]
    assert {branch["title"] for branch in connect.output_schema["anyOf"]} == {  # type: ignore[index]
        "ConnectResultOut", "ToolErrorPayload"}


async def test_a_pinned_grant_session_offers_no_provider_account_or_connect(
    app: App, sqlite_deployment: Deployment, abrowser: AsyncBrowser
) -> None:
    d = sqlite_deployment
    grant = await link(app, abrowser, "github", "octo", None)
    async with Client(build_server(app, GrantSession(grant.grant_id))) as client:
        tools = {t.name: t for t in (await client.list_tools()).tools}
        assert set(tools) == {"request"}
        assert "provider" not in tools["request"].input_schema["properties"]
        result = await client.call_tool("request", {"url": f"{d.upstream.url}/echo/pinned"})
    assert not result.is_error
    assert payload(result)["grant"] == {"provider": "github", "account": "octo"}


@pytest.mark.parametrize("mode", ERAS)
async def test_ambiguous_google_accounts_ask_the_model_to_choose(
    app: App, sqlite_deployment: Deployment, alice_google: LinkTwoGoogleAccounts, mode: str
) -> None:
    d = sqlite_deployment
    alice = d.idp.issue("alice")
    await alice_google(app, alice)
    url = f"{d.upstream.url}/echo/calendar"
    async with Client(build_server(app, UserSession(alice)), mode=mode) as client:
        first = await client.call_tool("request", {"url": url, "provider": "google"})
        assert first.is_error
        error = payload(first)["error"]
        assert error["code"] == "ambiguous_grant"
        assert {a["account"] for a in error["accounts"]} == {"alice@gmail.com", "alice@acme.com"}
        retry = await client.call_tool("request", {"url": url, "provider": "google", "account": "work"})
    assert not retry.is_error
    body = payload(retry)
    assert body["status"] == 200 and body["body"]["account"] == "alice@acme.com"


@pytest.mark.parametrize("mode", ERAS)
async def test_a_client_that_can_ask_lets_the_human_choose_the_account(
    app: App, sqlite_deployment: Deployment, alice_google: LinkTwoGoogleAccounts, mode: str
) -> None:
    d = sqlite_deployment
    alice = d.idp.issue("alice")
    await alice_google(app, alice)
    asked: list[ElicitRequestFormParams] = []

    async def human(_ctx: Any, params: Any) -> ElicitResult:
        assert isinstance(params, ElicitRequestFormParams)
        asked.append(params)
        return ElicitResult(action="accept", content={"account": "alice@gmail.com"})

    async with Client(build_server(app, UserSession(alice)), mode=mode, elicitation_callback=human) as client:
        result = await client.call_tool("request", {"url": f"{d.upstream.url}/echo/x", "provider": "google"})
    assert not result.is_error, result
    assert payload(result)["body"]["account"] == "alice@gmail.com"
    assert len(asked) == 1
    assert asked[0].requested_schema["properties"]["account"]["enum"] == ["alice@gmail.com", "alice@acme.com"]


@pytest.mark.parametrize("mode", ERAS)
async def test_when_the_human_declines_the_model_gets_the_choice(
    app: App, sqlite_deployment: Deployment, alice_google: LinkTwoGoogleAccounts, mode: str
) -> None:
    d = sqlite_deployment
    alice = d.idp.issue("alice")
    await alice_google(app, alice, work_label=None)

    async def human(_ctx: Any, _params: Any) -> ElicitResult:
        return ElicitResult(action="decline")

    async with Client(build_server(app, UserSession(alice)), mode=mode, elicitation_callback=human) as client:
        result = await client.call_tool("request", {"url": f"{d.upstream.url}/echo/x", "provider": "google"})
    assert result.is_error
    assert payload(result)["error"]["code"] == "ambiguous_grant"


@pytest.mark.parametrize("mode", ERAS)
async def test_connect_offers_its_url_to_the_human_and_reports_progress(
    sqlite_deployment: Deployment, abrowser: AsyncBrowser, mode: str
) -> None:
    d = sqlite_deployment.local()
    offered: list[str] = []
    progress: list[float] = []

    async def on_progress(done: float, _total: float | None, _message: str | None) -> None:
        progress.append(done)

    async with d.app() as app, anyio.create_task_group() as humans:

        async def human(_ctx: Any, params: Any) -> ElicitResult:
            """Accepts, then signs in a moment later in the browser while connect waits."""
            assert isinstance(params, ElicitRequestURLParams)
            offered.append(params.url)

            async def sign_in() -> None:
                await anyio.sleep(0.6)
                await abrowser.aapprove(params.url, "octo")

            humans.start_soon(sign_in)
            return ElicitResult(action="accept")

        server = build_server(app, LocalSession(), connect_wait=10)
        async with Client(server, mode=mode, elicitation_callback=human) as client:
            with anyio.fail_after(30):
                result = await client.call_tool("connect", {"provider": "github"}, progress_callback=on_progress)
            assert not result.is_error, result
            body = payload(result)
            assert body["status"] == "connected"
            assert body["grant"]["account"] == "octo"
            call = await client.call_tool("request", {"url": f"{d.upstream.url}/reflect", "provider": "github"})
            assert payload(call)["body"]["account"] == "octo"
            listed = await client.read_resource(GRANTS_URI)
    assert offered and offered[0].startswith(d.oauth.url)
    assert progress, "no progress notification arrived while connect waited"
    grants = json.loads(listed.contents[0].text)["grants"]  # type: ignore[union-attr]
    assert [(g["provider"], g["account"], g["status"]) for g in grants] == [("github", "octo", "active")]
    # Everything the client was shown: no access or refresh token the OAuth server issued appears in it.
    (issued,) = d.oauth.tokens_for("octo")
    assert payload(call)["body"]["token_seen"] == REDACTED  # the API echoed the token; the model got it redacted
    seen = json.dumps([result.model_dump(mode="json"), call.model_dump(mode="json"),
                       listed.model_dump(mode="json"), offered])
    for secret in (issued.access_token, issued.refresh_token):
        assert secret and len(secret) >= 20 and secret not in seen


async def test_connect_without_elicitation_returns_the_pending_link_to_the_model(
    sqlite_deployment: Deployment, abrowser: AsyncBrowser
) -> None:
    d = sqlite_deployment.local()
    async with d.app() as app:
        server = build_server(app, LocalSession(), connect_wait=0.5)
        async with Client(server) as client:
            pending = payload(await client.call_tool("connect", {"provider": "github"}))
            assert pending["status"] == "pending" and pending["connect_url"].startswith(d.oauth.url)
            await abrowser.aapprove(pending["connect_url"], "octo")
            done = payload(await client.call_tool("connect", {"provider": "github"}))
    assert done["status"] == "connected" and done["grant"]["account"] == "octo"


@pytest.mark.parametrize("mode", ERAS)
@pytest.mark.parametrize(
    ("arguments", "field"),
    [
        ({}, "url"),
        ({"url": 123}, "url"),
        ({"url": "https://api.github.com/user", "method": "FETCH"}, "method"),
        ({"url": "https://api.github.com/user", "query": "per_page=5"}, "query"),
    ],
)
async def test_bad_arguments_get_the_structured_error_not_a_plain_text_one(
    app: App, sqlite_deployment: Deployment, mode: str, arguments: dict[str, Any], field: str
) -> None:
    server = build_server(app, UserSession(sqlite_deployment.idp.issue("alice")))
    async with Client(server, mode=mode) as client:
        result = await client.call_tool("request", arguments)
    assert result.is_error
    error = payload(result)["error"]
    assert error["code"] == "invalid_arguments" and error["user_action"] == "fix_arguments"
    assert field in error["message"]
