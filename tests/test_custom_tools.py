"""`@grant_tool` functions served to LangChain and over MCP, scoped exactly like `request`.

The tools here call the real provider API fixture; each surface is driven by its real client
(LangChain tool-call dicts → `ToolMessage`s, the `mcp` Client in memory, over stdio and over HTTP).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import replace
from datetime import date
from pathlib import Path
from typing import Annotated, Any

import anyio
import pytest
import uvicorn
from langchain_core.messages import ToolMessage
from langchain_core.runnables import RunnableConfig
from langchain_core.tools import BaseTool
from langchain_core.utils.function_calling import convert_to_openai_tool
from mcp import Client, StdioServerParameters
from mcp_types import ElicitRequestFormParams, ElicitResult
from pydantic import BaseModel, Field

from alter_agents import App, GrantContext, GrantSession, GrantTool, LocalSession, UserSession, grant_tool
from alter_agents.grant_tools import load_grant_tools
from alter_agents.langchain import AlterToolkit, user_config
from alter_agents.listen import listening_socket
from alter_agents.models import ToolErrorPayload
from alter_agents.sessions import Session
from mcp_server import build_server
from mcp_server.auth import session_jwt
from mcp_server.http import build_http
from tests.conftest import Deployment, LinkTwoGoogleAccounts, connect_as, with_coverage
from tests.fixtures import AsyncBrowser, UpstreamAPI
from tests.mcp_support import ERAS, payload

pytestmark = pytest.mark.timeout(90)
ROOT = Path(__file__).resolve().parent.parent
OWN_ARGUMENTS = {"day", "limit"}


def make_tools(api: Callable[[], str], elsewhere: Callable[[], str]) -> list[GrantTool]:
    """Three google tools: a plain one, one pinned to the `work` label, and one that strays off-host."""

    @grant_tool(provider="google", read_only=True)
    async def calendar_events(
        ctx: GrantContext,
        day: Annotated[str, Field(description="ISO date, e.g. 2026-11-03.", pattern=r"^\d{4}-\d{2}-\d{2}$")],
        limit: int = 10,
    ) -> dict[str, Any]:
        """List my calendar events for a day."""
        response = await ctx.request("GET", f"{api()}/echo/calendar/{day}", query={"limit": limit})
        body = response.json()
        return {"account": body["account"], "resolved": ctx.account, "limit": body["query"]["limit"]}

    @grant_tool(provider="google", label="work")
    async def work_calendar(ctx: GrantContext, day: str) -> dict[str, Any]:
        """List my work calendar for a day."""
        response = await ctx.request("GET", f"{api()}/echo/work/{day}")
        return {"account": response.json()["account"]}

    @grant_tool(provider="google")
    async def share_notes(ctx: GrantContext, note: str) -> dict[str, Any]:
        """Share a note (this one posts to a host google does not own)."""
        response = await ctx.request("POST", elsewhere(), json={"note": note})
        return {"status": response.status}

    return [calendar_events, work_calendar, share_notes]


# `python -m mcp_server --tools tests.test_custom_tools:STDIO_TOOLS` loads these in a subprocess.
STDIO_TOOLS = make_tools(lambda: os.environ["CUSTOM_TOOLS_API"], lambda: "http://localhost:9/notes")


@pytest.fixture
def tools(sqlite_deployment: Deployment, foreign: UpstreamAPI) -> list[GrantTool]:
    return make_tools(lambda: sqlite_deployment.upstream.url, lambda: foreign.echo_url("notes", host="localhost"))


@pytest.fixture
async def app(sqlite_deployment: Deployment) -> AsyncIterator[App]:
    async with sqlite_deployment.app() as a:
        yield a


def langchain_tools(app: App, session: Session, tools: list[GrantTool]) -> dict[str, BaseTool]:
    return {t.name: t for t in AlterToolkit(app, session, extra_tools=tools).get_tools()}


async def invoke(tool: BaseTool, args: dict[str, Any], config: RunnableConfig | None = None) -> ToolMessage:
    """Run a tool the way an agent loop does: with the model's tool-call dict."""
    message = await tool.ainvoke({"type": "tool_call", "id": "call_1", "name": tool.name, "args": args}, config)
    assert isinstance(message, ToolMessage)
    return message


def error_of(message: ToolMessage) -> dict[str, Any]:
    assert message.status == "error", message
    assert isinstance(message.artifact, ToolErrorPayload)
    assert json.loads(str(message.content)) == json.loads(message.artifact.to_json())
    return dict(json.loads(str(message.content))["error"])


# -- schema -------------------------------------------------------------------------------------


async def test_the_schema_has_the_tools_own_arguments_and_account_but_no_context(
    app: App, sqlite_deployment: Deployment, tools: list[GrantTool]
) -> None:
    lc = langchain_tools(app, UserSession(), tools)
    assert set(lc) == {"request", "connect", "accounts", "calendar_events", "work_calendar", "share_notes"}
    lc_schema = convert_to_openai_tool(lc["calendar_events"])["function"]
    assert lc_schema["description"] == "List my calendar events for a day."
    assert set(lc_schema["parameters"]["properties"]) == OWN_ARGUMENTS | {"account"}
    assert lc_schema["parameters"]["required"] == ["day"]
    assert "account" not in convert_to_openai_tool(lc["work_calendar"])["function"]["parameters"]["properties"]

    async with Client(build_server(app, UserSession(sqlite_deployment.idp.issue("alice")), extra_tools=tools)) as c:
        listed = {t.name: t for t in (await c.list_tools()).tools}
    events = listed["calendar_events"]
    assert set(events.input_schema["properties"]) == OWN_ARGUMENTS | {"account"}
    assert events.input_schema["required"] == ["day"]
    assert events.input_schema["properties"]["day"]["pattern"] == r"^\d{4}-\d{2}-\d{2}$"
    assert "Which connected account" in events.input_schema["properties"]["account"]["description"]
    assert events.annotations is not None and events.annotations.read_only_hint is True
    assert events.output_schema is not None and events.output_schema["type"] == "object"
    assert any(branch["title"] == "ToolErrorPayload" for branch in events.output_schema["anyOf"])
    assert set(listed["work_calendar"].input_schema["properties"]) == {"day"}
    assert "ctx" not in json.dumps({name: t.input_schema for name, t in listed.items()})


def test_a_tool_name_that_clashes_with_request_is_refused(app: App) -> None:
    @grant_tool(provider="google", name="request")
    async def impostor(ctx: GrantContext) -> dict[str, Any]:
        return {}

    with pytest.raises(ValueError, match="unique"):
        build_server(app, LocalSession(), extra_tools=[impostor])


# -- ambiguity ----------------------------------------------------------------------------------


async def test_langchain_ambiguity_is_a_structured_error_and_the_retry_with_account_succeeds(
    app: App, sqlite_deployment: Deployment, alice_google: LinkTwoGoogleAccounts, tools: list[GrantTool]
) -> None:
    d = sqlite_deployment
    alice = d.idp.issue("alice")
    await alice_google(app, alice)
    events = langchain_tools(app, UserSession(), tools)["calendar_events"]
    first = await invoke(events, {"day": "2026-11-03"}, user_config(alice))
    error = error_of(first)
    assert error["code"] == "ambiguous_grant" and error["user_action"] == "choose_account"
    assert {a["account"] for a in error["accounts"]} == {"alice@gmail.com", "alice@acme.com"}
    assert "call calendar_events again with account" in error["message"]
    retry = await invoke(events, {"day": "2026-11-03", "account": "work", "limit": 3}, user_config(alice))
    assert retry.status == "success"
    assert retry.artifact == {"account": "alice@acme.com", "resolved": "alice@acme.com", "limit": "3"}
    assert d.upstream.requests[-1] == ("GET", "/echo/calendar/2026-11-03", "alice@acme.com")


@pytest.mark.parametrize("mode", ERAS)
async def test_mcp_ambiguity_is_a_structured_error_and_the_retry_with_account_succeeds(
    app: App, sqlite_deployment: Deployment, alice_google: LinkTwoGoogleAccounts, tools: list[GrantTool], mode: str
) -> None:
    alice = sqlite_deployment.idp.issue("alice")
    await alice_google(app, alice)
    async with Client(build_server(app, UserSession(alice), extra_tools=tools), mode=mode) as client:
        first = await client.call_tool("calendar_events", {"day": "2026-11-03"})
        retry = await client.call_tool("calendar_events", {"day": "2026-11-03", "account": "alice@gmail.com"})
    assert first.is_error
    error = payload(first)["error"]
    assert error["code"] == "ambiguous_grant"
    assert {a["account"] for a in error["accounts"]} == {"alice@gmail.com", "alice@acme.com"}
    assert not retry.is_error
    assert payload(retry) == {"account": "alice@gmail.com", "resolved": "alice@gmail.com", "limit": "10"}


@pytest.mark.parametrize("mode", ERAS)
async def test_a_client_that_can_ask_lets_the_human_choose_for_a_custom_tool(
    app: App, sqlite_deployment: Deployment, alice_google: LinkTwoGoogleAccounts, tools: list[GrantTool], mode: str
) -> None:
    alice = sqlite_deployment.idp.issue("alice")
    await alice_google(app, alice)
    asked: list[ElicitRequestFormParams] = []

    async def human(_ctx: Any, params: Any) -> ElicitResult:
        assert isinstance(params, ElicitRequestFormParams)
        asked.append(params)
        return ElicitResult(action="accept", content={"account": "alice@acme.com"})

    server = build_server(app, UserSession(alice), extra_tools=tools)
    async with Client(server, mode=mode, elicitation_callback=human) as client:
        result = await client.call_tool("calendar_events", {"day": "2026-11-03"})
    assert not result.is_error, result
    assert payload(result)["account"] == "alice@acme.com"
    assert len(asked) == 1 and "google" in asked[0].message


# -- not connected, pinned, labelled, foreign host ------------------------------------------------


async def test_not_connected_tells_the_model_how_to_connect_on_both_surfaces(
    app: App, sqlite_deployment: Deployment, tools: list[GrantTool]
) -> None:
    bob = sqlite_deployment.idp.issue("bob")
    lc = langchain_tools(app, UserSession(), tools)
    lc_error = error_of(await invoke(lc["calendar_events"], {"day": "2026-11-03"}, user_config(bob)))
    labelled = error_of(await invoke(lc["work_calendar"], {"day": "2026-11-03"}, user_config(bob)))
    async with Client(build_server(app, UserSession(bob), extra_tools=tools)) as client:
        result = await client.call_tool("calendar_events", {"day": "2026-11-03"})
    assert result.is_error
    mcp_error = payload(result)["error"]
    for error in (lc_error, mcp_error):
        assert error["code"] == "not_connected" and error["user_action"] == "connect"
        assert error["provider"] == "google"
        assert "Call connect with provider='google'" in error["message"]
        assert "call calendar_events again" in error["message"]
    assert labelled["code"] == "not_connected" and "label='work'" in labelled["message"]


async def test_a_pinned_grant_session_has_no_account_argument_and_reaches_only_that_grant(
    app: App, sqlite_deployment: Deployment, abrowser: AsyncBrowser, tools: list[GrantTool]
) -> None:
    d = sqlite_deployment
    pinned = await connect_as(app, abrowser, "google", "robot@acme.com", None)
    await connect_as(app, abrowser, "google", "other@acme.com", None)
    session = GrantSession(pinned.grant_id)
    lc = langchain_tools(app, session, tools)
    assert "connect" not in lc
    assert set(convert_to_openai_tool(lc["calendar_events"])["function"]["parameters"]["properties"]) == OWN_ARGUMENTS
    lc_result = await invoke(lc["calendar_events"], {"day": "2026-11-03"})
    refused = await invoke(lc["calendar_events"], {"day": "2026-11-03", "account": "other@acme.com"})
    async with Client(build_server(app, session, extra_tools=tools)) as client:
        listed = {t.name: t for t in (await client.list_tools()).tools}
        result = await client.call_tool("calendar_events", {"day": "2026-11-03"})
    assert set(listed["calendar_events"].input_schema["properties"]) == OWN_ARGUMENTS and "connect" not in listed
    assert lc_result.artifact["account"] == "robot@acme.com"
    assert error_of(refused)["code"] == "invalid_arguments"
    assert payload(result)["account"] == "robot@acme.com"
    assert {who for (_method, path, who) in d.upstream.requests if path.startswith("/echo/")} == {"robot@acme.com"}


async def test_a_labelled_tool_uses_that_account_and_leaves_the_sessions_choice_alone(
    app: App, sqlite_deployment: Deployment, alice_google: LinkTwoGoogleAccounts, tools: list[GrantTool]
) -> None:
    d = sqlite_deployment
    alice = d.idp.issue("alice")
    await alice_google(app, alice)
    lc = langchain_tools(app, UserSession(alice), tools)
    work = await invoke(lc["work_calendar"], {"day": "2026-11-03"})
    generic = await invoke(lc["request"], {"url": d.upstream.echo_url("x"), "provider": "google"})
    assert work.artifact == {"account": "alice@acme.com"}
    assert error_of(generic)["code"] == "ambiguous_grant"  # the label did not become a remembered choice


@pytest.mark.parametrize("surface", ["langchain", "mcp"])
async def test_a_tool_whose_body_strays_to_a_foreign_host_gets_host_not_allowed(
    app: App, sqlite_deployment: Deployment, abrowser: AsyncBrowser, tools: list[GrantTool], foreign: UpstreamAPI,
    surface: str,
) -> None:
    alice = sqlite_deployment.idp.issue("alice")
    await connect_as(app, abrowser, "google", "alice@gmail.com", alice)
    if surface == "langchain":
        tool = langchain_tools(app, UserSession(alice), tools)["share_notes"]
        error = error_of(await invoke(tool, {"note": "quarterly numbers"}))
    else:
        async with Client(build_server(app, UserSession(alice), extra_tools=tools)) as client:
            result = await client.call_tool("share_notes", {"note": "quarterly numbers"})
        assert result.is_error
        error = payload(result)["error"]
    assert error["code"] == "host_not_allowed"
    assert foreign.requests == [] and foreign.seen_credentials == []


class Event(BaseModel):
    title: str
    day: date


async def test_results_of_any_shape_reach_both_surfaces_as_json(
    app: App, sqlite_deployment: Deployment, abrowser: AsyncBrowser
) -> None:
    d = sqlite_deployment
    alice = d.idp.issue("alice")
    await connect_as(app, abrowser, "google", "alice@gmail.com", alice)

    @grant_tool(provider="google", read_only=True)
    async def agenda(ctx: GrantContext, day: date) -> list[Event]:
        """My agenda."""
        response = await ctx.request("GET", d.upstream.echo_url(f"agenda/{day}"))
        return [Event(title=f"Standup with {response.json()['account']}", day=day)]

    @grant_tool(provider="google")
    async def untyped(ctx: GrantContext):  # type: ignore[no-untyped-def]
        return ["no", "annotation"]

    lc = langchain_tools(app, UserSession(alice), [agenda, untyped])
    lc_agenda = await invoke(lc["agenda"], {"day": "2026-11-03"})
    lc_untyped = await invoke(lc["untyped"], {})
    async with Client(build_server(app, UserSession(alice), extra_tools=[agenda, untyped])) as client:
        listed = {t.name: t for t in (await client.list_tools()).tools}
        mcp_agenda = await client.call_tool("agenda", {"day": "2026-11-03"})
        mcp_untyped = await client.call_tool("untyped", {})
    expected = [{"title": "Standup with alice@gmail.com", "day": "2026-11-03"}]
    assert json.loads(str(lc_agenda.content)) == expected and lc_agenda.artifact[0].day == date(2026, 11, 3)
    assert json.loads(str(lc_untyped.content)) == ["no", "annotation"]
    assert payload(mcp_agenda) == {"result": expected}
    assert payload(mcp_untyped) == {"result": ["no", "annotation"]}
    assert listed["agenda"].input_schema["properties"]["day"]["format"] == "date"
    result_schema = json.dumps(listed["agenda"].output_schema)
    assert '"result"' in result_schema and "ToolErrorPayload" in result_schema


# -- many users ---------------------------------------------------------------------------------


async def test_two_users_calling_one_toolkit_concurrently_never_cross(
    app: App, sqlite_deployment: Deployment, abrowser: AsyncBrowser, tools: list[GrantTool]
) -> None:
    d = sqlite_deployment
    users = {"alice": d.idp.issue("alice"), "bob": d.idp.issue("bob")}
    for name, token in users.items():
        await connect_as(app, abrowser, "google", f"{name}@gmail.com", token)
    events = langchain_tools(app, UserSession(), tools)["calendar_events"]
    seen: list[tuple[str, Any]] = []

    async def call(name: str, n: int) -> None:
        message = await invoke(events, {"day": "2026-11-03", "limit": n}, user_config(users[name]))
        seen.append((name, message.artifact["account"] if message.status == "success" else message.content))

    with anyio.fail_after(60):
        async with anyio.create_task_group() as tg:
            for n in range(15):
                for name in users:
                    tg.start_soon(call, name, n)
    assert len(seen) == 30
    assert all(account == f"{name}@gmail.com" for name, account in seen), seen


@asynccontextmanager
async def http_with_tools(d: Deployment, tools: list[GrantTool]) -> AsyncIterator[tuple[str, App]]:
    """The real streamable HTTP app (bearer JWT per request) with custom tools, under uvicorn."""
    sock = listening_socket("127.0.0.1", 0)
    url = f"http://127.0.0.1:{sock.getsockname()[1]}"
    app = App(settings=replace(d.settings, public_url=url))
    http = build_http(app, UserSession(session_jwt), host="127.0.0.1", port=sock.getsockname()[1], public_url=url,
                      extra_tools=tools)
    server = uvicorn.Server(uvicorn.Config(http.asgi, log_level="warning", access_log=False))
    async with anyio.create_task_group() as tg:
        tg.start_soon(lambda: server.serve(sockets=[sock]))
        with anyio.fail_after(10):
            while not server.started:
                await anyio.sleep(0.02)
        try:
            yield url, app
        finally:
            server.should_exit = True
    sock.close()
    await app.aclose()


@pytest.mark.parametrize("mode", ERAS)
async def test_two_users_over_streamable_http_concurrently_never_cross(
    sqlite_deployment: Deployment, abrowser: AsyncBrowser, tools: list[GrantTool], mode: str
) -> None:
    import httpx2
    from mcp.client.streamable_http import streamable_http_client

    d = sqlite_deployment
    users = {"alice": d.idp.issue("alice"), "bob": d.idp.issue("bob")}
    seen: list[tuple[str, Any]] = []
    async with http_with_tools(d, tools) as (url, app):
        for name, token in users.items():
            await connect_as(app, abrowser, "google", f"{name}@gmail.com", token)

        async def session(name: str) -> None:
            headers = {"Authorization": f"Bearer {users[name]}"}
            transport = streamable_http_client(f"{url}/mcp", http_client=httpx2.AsyncClient(headers=headers,
                                                                                            timeout=30))
            async with Client(transport, mode=mode) as client:  # type: ignore[arg-type]
                for n in range(8):
                    result = await client.call_tool("calendar_events", {"day": "2026-11-03", "limit": n})
                    seen.append((name, payload(result).get("account")))

        with anyio.fail_after(60):
            async with anyio.create_task_group() as tg:
                for name in users:
                    tg.start_soon(session, name)
    assert len(seen) == 16
    assert all(account == f"{name}@gmail.com" for name, account in seen), seen


# -- loading tools into the server command, and the example -------------------------------------


def test_tools_are_named_by_module_or_file_and_attribute() -> None:
    assert [t.name for t in load_grant_tools("tests.test_custom_tools:STDIO_TOOLS")] == [
        "calendar_events", "work_calendar", "share_notes"]
    from_file = load_grant_tools(f"{ROOT / 'examples' / 'custom_tools.py'}:TOOLS")
    assert [t.name for t in from_file] == ["list_my_issues", "post_message"]
    for bad in ("tests.test_custom_tools", "tests.test_custom_tools:nothing", "tests.test_custom_tools:ROOT"):
        with pytest.raises(ValueError):
            load_grant_tools(bad)


async def test_the_mcp_command_serves_tools_named_with_dash_dash_tools(
    sqlite_deployment: Deployment, abrowser: AsyncBrowser
) -> None:
    d = sqlite_deployment.local()
    async with d.app() as app:
        await connect_as(app, abrowser, "google", "me@gmail.com", None)
    env = {**d.env, "CUSTOM_TOOLS_API": d.upstream.url}
    server = StdioServerParameters(command=sys.executable, env=with_coverage(env), cwd=str(ROOT),
                                   args=["-m", "mcp_server", "--tools", "tests.test_custom_tools:STDIO_TOOLS"])
    with anyio.fail_after(60):
        async with Client(server) as client:
            names = {t.name for t in (await client.list_tools()).tools}
            result = await client.call_tool("calendar_events", {"day": "2026-11-03"})
            stray = await client.call_tool("share_notes", {"note": "x"})
    assert names == {"request", "connect", "accounts", "calendar_events", "work_calendar", "share_notes"}
    assert payload(result)["account"] == "me@gmail.com"
    assert payload(stray)["error"]["code"] == "host_not_allowed"


def test_the_custom_tools_example_runs_offline() -> None:
    done = subprocess.run([sys.executable, str(ROOT / "examples" / "custom_tools.py"), "--auto"], cwd=ROOT,
                          capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "ambiguous_grant" in done.stdout
    assert "post_message(bad channel) -> isError=True invalid_arguments" in done.stdout
    assert "OK messages posted: 1" in done.stdout
    assert "access_token" not in done.stdout + done.stderr
