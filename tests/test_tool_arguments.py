"""Schemas that mean what they say: undeclared arguments are refused on every surface, `json` takes a value
(not a string of JSON) and goes out as UTF-8 JSON, `body` is text with a stated Content-Type."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

import pytest
from langchain_core.messages import ToolMessage
from mcp import Client

from alter_agents import AlterToolkit, App, UserSession
from alter_agents.langchain import user_config
from alter_agents.tools import RequestArgs
from mcp_server import build_server
from tests.conftest import Deployment, connect_as
from tests.fixtures import AsyncBrowser
from tests.mcp_support import payload

pytestmark = pytest.mark.timeout(60)

Call = Callable[[str, dict[str, Any]], Awaitable[tuple[bool, dict[str, Any]]]]


@asynccontextmanager
async def surface(name: str, app: App, token: str) -> AsyncIterator[Call]:
    if name == "langchain":
        tools = {t.name: t for t in AlterToolkit(app).get_tools()}

        async def via_langchain(tool: str, args: dict[str, Any]) -> tuple[bool, dict[str, Any]]:
            message = await tools[tool].ainvoke({"type": "tool_call", "id": "c", "name": tool, "args": args},
                                                user_config(token))
            assert isinstance(message, ToolMessage)
            return message.status == "success", json.loads(str(message.content))

        yield via_langchain
        return
    async with Client(build_server(app, UserSession(token)), mode=name) as client:

        async def via_mcp(tool: str, args: dict[str, Any]) -> tuple[bool, dict[str, Any]]:
            result = await client.call_tool(tool, args)
            return not result.is_error, payload(result)

        yield via_mcp


SURFACES = ["langchain", "legacy", "2026-07-28"]


@pytest.mark.parametrize("name", SURFACES)
async def test_an_undeclared_argument_is_refused_and_nothing_is_sent(
    sqlite_deployment: Deployment, abrowser: AsyncBrowser, name: str
) -> None:
    d = sqlite_deployment
    async with d.app() as app:
        alice = d.idp.issue("alice")
        await connect_as(app, abrowser, "github", "alice-gh", alice)
        d.upstream.reset_records()
        async with surface(name, app, alice) as call:
            url = d.upstream.echo_url("repos/o/r/issues")
            for stray in ({"data": {"title": "x"}}, {"bogus": 1}):
                ok, refused = await call("request", {"url": url, "provider": "github", "method": "POST", **stray})
                assert not ok and refused["error"]["code"] == "invalid_arguments", refused
                assert refused["error"]["sent"] is False and next(iter(stray)) in refused["error"]["message"]
            ok, refused = await call("connect", {"provider": "github", "scope": "repo"})
            assert not ok and refused["error"]["code"] == "invalid_arguments"
    assert d.upstream.requests == []


@pytest.mark.parametrize("name", SURFACES)
async def test_json_is_a_value_sent_as_utf8_json_and_body_stays_text(
    sqlite_deployment: Deployment, abrowser: AsyncBrowser, name: str
) -> None:
    d = sqlite_deployment
    async with d.app() as app:
        alice = d.idp.issue("alice")
        await connect_as(app, abrowser, "github", "alice-gh", alice)
        async with surface(name, app, alice) as call:
            url = d.upstream.echo_url("post")
            base = {"url": url, "provider": "github", "method": "POST"}
            ok, sent = await call("request", {**base, "json": {"title": "café"}})
            assert ok and sent["body"]["json"] == {"title": "café"}
            assert sent["body"]["headers"]["content-type"] == "application/json; charset=utf-8"
            ok, listed = await call("request", {**base, "json": [1, 2]})
            assert ok and listed["body"]["json"] == [1, 2]

            ok, refused = await call("request", {**base, "json": '{"title": "x"}'})  # pre-serialised
            assert not ok and refused["error"]["code"] == "invalid_arguments"

            ok, text = await call("request", {**base, "body": '{"looks": "like json"}'})
            assert ok and text["body"]["body"] == '{"looks": "like json"}'
            assert text["body"]["headers"]["content-type"] == "text/plain; charset=utf-8"
            form = {**base, "body": "a=1&b=2", "headers": {"Content-Type": "application/x-www-form-urlencoded"}}
            ok, posted = await call("request", form)
            assert ok and posted["body"]["headers"]["content-type"] == "application/x-www-form-urlencoded"


def test_the_schema_types_json_and_says_when_body_is_used() -> None:
    schema = RequestArgs.model_json_schema(by_alias=True)
    assert schema["additionalProperties"] is False
    body_json = schema["properties"]["json"]
    assert {alt["type"] for alt in body_json["anyOf"]} == {"object", "array", "null"}
    assert "do not pre-serialise" in body_json["description"]
    assert "application/json; charset=utf-8" in body_json["description"]
    body = schema["properties"]["body"]["description"]
    assert "not JSON" in body and "text/plain; charset=utf-8" in body
