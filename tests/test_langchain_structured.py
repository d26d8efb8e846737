"""The toolkit's tools behave like any LangChain `StructuredTool`: a pydantic `args_schema` that
LangChain validates with, the `json` argument named as the model sees it, and a clear answer to a sync
`invoke`."""

from __future__ import annotations

import json
from typing import Any

import pytest
from langchain_core.messages import ToolMessage
from langchain_core.tools import StructuredTool
from langchain_core.utils.function_calling import convert_to_openai_tool
from pydantic import BaseModel, ValidationError

from alter_agents import GrantContext, LocalSession, grant_tool
from alter_agents.langchain import AlterToolkit
from tests.conftest import Deployment, connect_as
from tests.fixtures import AsyncBrowser


@grant_tool(provider="github")
async def star_repo(ctx: GrantContext, repo: str, times: int = 1) -> dict[str, Any]:
    """Star a repository (owner/name)."""
    response = await ctx.request("PUT", f"{API}/echo/starred/{repo}", json={"times": times})
    return {"status": response.status_code, "echo": response.json()["json"]}


API = ""


def call(name: str, **args: Any) -> dict[str, Any]:
    return {"type": "tool_call", "id": f"call_{name}", "name": name, "args": args}


@pytest.fixture
async def tools(sqlite_deployment: Deployment, abrowser: AsyncBrowser) -> Any:
    global API
    d = sqlite_deployment.local()
    API = d.upstream.url
    async with d.app() as app:
        await connect_as(app, abrowser, "github", "octocat", None)
        yield d, {t.name: t for t in AlterToolkit(app, LocalSession(), extra_tools=[star_repo]).get_tools()}


def _error(message: ToolMessage) -> dict[str, Any]:
    assert message.status == "error", message
    error: dict[str, Any] = json.loads(str(message.content))["error"]
    return error


async def test_every_tool_has_a_pydantic_args_schema_that_langchain_validates_with(tools: Any) -> None:
    _d, by_name = tools
    assert set(by_name) == {"request", "connect", "accounts", "star_repo"}
    for tool in by_name.values():
        assert isinstance(tool, StructuredTool)
        assert isinstance(tool.args_schema, type) and issubclass(tool.args_schema, BaseModel), tool.name
        with pytest.raises(ValidationError):
            tool.get_input_schema().model_validate({"no_such_argument": 1})
    request = by_name["request"].args_schema
    assert request.model_validate({"url": "https://x.test/", "json": {"a": 1}}).json_body == {"a": 1}


async def test_the_model_sees_json_by_its_name_and_the_body_arrives(tools: Any) -> None:
    d, by_name = tools
    schema = convert_to_openai_tool(by_name["request"])["function"]["parameters"]
    assert "json" in schema["properties"] and "json_body" not in schema["properties"]
    assert set(by_name["request"].args) == set(schema["properties"])
    message = await by_name["request"].ainvoke(call("request", method="post", url=d.upstream.echo_url("items"),
                                                    provider="github", json={"name": "widget"}))
    assert message.status == "success", message.content
    assert message.artifact.body["json"] == {"name": "widget"} and message.artifact.body["method"] == "POST"
    starred = await by_name["star_repo"].ainvoke(call("star_repo", repo="acme/web", times=3))
    assert starred.status == "success" and starred.artifact["echo"] == {"times": 3}


@pytest.mark.parametrize(("name", "args", "field"), [
    ("request", {"url": "ECHO", "method": "FETCH"}, "method"),
    ("request", {"url": "ECHO", "token": "sk_live_x"}, "token"),
    ("request", {"url": "ECHO", "json": {"a": 1}, "body": "b"}, "json"),
    ("connect", {}, "provider"),
    ("star_repo", {"repo": "acme/web", "times": "many"}, "times"),
])
async def test_arguments_the_schema_rejects_come_back_as_invalid_arguments(
    tools: Any, name: str, args: dict[str, Any], field: str
) -> None:
    d, by_name = tools
    args = {k: d.upstream.echo_url("x") if v == "ECHO" else v for k, v in args.items()}
    before = len(d.upstream.requests)
    message = await by_name[name].ainvoke(call(name, **args))
    error = _error(message)
    assert error["code"] == "invalid_arguments" and error["user_action"] == "fix_arguments"
    assert field in json.dumps(error)
    assert message.artifact.error.code == "invalid_arguments"
    assert len(d.upstream.requests) == before  # refused before anything was sent


async def test_sync_invoke_says_to_use_ainvoke(tools: Any) -> None:
    d, by_name = tools
    valid = {"request": {"url": d.upstream.echo_url("x"), "provider": "github"}, "connect": {"provider": "github"},
             "star_repo": {"repo": "acme/web"}}
    before = len(d.upstream.requests)
    for name, args in valid.items():
        with pytest.raises(NotImplementedError, match=rf"The '{name}' tool is async: call `await tool\.ainvoke"):
            by_name[name].invoke(call(name, **args))
    assert len(d.upstream.requests) == before
