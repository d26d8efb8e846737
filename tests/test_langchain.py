"""LangChain agents using `AlterToolkit` with a scripted tool-calling model, through the real vault,
OAuth server and provider API."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from langchain_core.language_models.fake_chat_models import GenericFakeChatModel
from langchain_core.messages import AIMessage, BaseMessage, HumanMessage, ToolMessage
from langchain_core.outputs import ChatResult
from langchain_core.runnables import RunnableConfig
from langchain_core.tools import BaseTool, BaseToolkit
from langchain_core.utils.function_calling import convert_to_openai_tool

from alter_agents import GrantSession, LocalSession, UserSession
from alter_agents.langchain import AlterToolkit, user_config
from alter_agents.models import AccountRef, ConnectStart, ToolErrorPayload
from alter_agents.tools import RequestResult
from tests.conftest import Deployment, LinkTwoGoogleAccounts, connect_as
from tests.fixtures import AsyncBrowser

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
Step = Callable[[list[BaseMessage]], AIMessage] | AIMessage


class ScriptedChatModel(GenericFakeChatModel):
    """A tool-calling chat model that plays a script; a step may read the conversation so far."""

    def bind_tools(self, tools: Sequence[Any], **kwargs: Any) -> ScriptedChatModel:  # type: ignore[override]
        return self

    def _generate(self, messages: list[BaseMessage], *args: Any, **kwargs: Any) -> ChatResult:
        step = next(self.messages)
        self.messages = iter([step(messages) if callable(step) else step, *self.messages])
        return super()._generate(messages, *args, **kwargs)


def call(name: str, **args: Any) -> AIMessage:
    return AIMessage("", tool_calls=[{"name": name, "args": args, "id": f"call_{name}_{len(args)}",
                                      "type": "tool_call"}])


def tool_call(name: str, args: Any) -> dict[str, Any]:
    return {"type": "tool_call", "id": "call_1", "name": name, "args": args}


async def run_agent(steps: list[Step], tools: list[BaseTool], config: RunnableConfig | None = None
                    ) -> list[ToolMessage]:
    """Model → tool calls → ToolMessages → model …, until the model answers without tool calls."""
    model = ScriptedChatModel(messages=iter(steps)).bind_tools(tools)
    by_name = {t.name: t for t in tools}
    messages: list[BaseMessage] = [HumanMessage("Check my inbox.")]
    for _ in range(len(steps)):
        reply = await model.ainvoke(messages, config)
        messages.append(reply)
        if not reply.tool_calls:
            break
        for requested in reply.tool_calls:
            messages.append(await by_name[requested["name"]].ainvoke({**requested, "type": "tool_call"}, config))
    return [m for m in messages if isinstance(m, ToolMessage)]


def error_of(message: ToolMessage) -> dict[str, Any]:
    assert message.status == "error"
    assert isinstance(message.artifact, ToolErrorPayload)
    content = json.loads(str(message.content))
    assert content == json.loads(message.artifact.to_json())
    return dict(content["error"])


async def test_ambiguous_google_accounts_ask_the_model_to_choose(
    deployment: Deployment, alice_google: LinkTwoGoogleAccounts
) -> None:
    d = deployment
    app = d.app()
    alice = d.idp.issue("alice")
    await alice_google(app, alice)
    inbox = d.upstream.echo_url("inbox")

    def retry_with_work_account(messages: list[BaseMessage]) -> AIMessage:
        error = error_of(messages[-1])  # type: ignore[arg-type]
        assert error["code"] == "ambiguous_grant"
        work = next(a["account"] for a in error["accounts"] if a.get("label") == "work")
        return call("request", url=inbox, provider="google", account=work)

    tools = AlterToolkit(app, session=UserSession(alice)).get_tools()
    results = await run_agent(
        [call("request", url=inbox, provider="google"), retry_with_work_account, AIMessage("done")], tools)
    assert [m.status for m in results] == ["error", "success"]
    final = results[-1].artifact
    assert isinstance(final, RequestResult) and final.status == 200
    assert final.body["account"] == "alice@acme.com" and final.grant.account == "alice@acme.com"
    assert json.loads(str(results[-1].content))["grant"] == {"provider": "google", "account": "alice@acme.com",
                                                             "label": "work"}
    assert d.upstream.requests[-1] == ("GET", "/echo/inbox", "alice@acme.com")
    await app.aclose()


async def test_not_connected_leads_the_model_to_connect_then_succeed(
    sqlite_deployment: Deployment, abrowser: AsyncBrowser
) -> None:
    d = sqlite_deployment
    app = d.app()
    alice = d.idp.issue("alice")

    async def human_approves(start: ConnectStart) -> None:
        await abrowser.aapprove(start.connect_url, "alice@gmail.com")

    toolkit = AlterToolkit(app, on_connect_url=human_approves, connect_wait=10)
    assert isinstance(toolkit, BaseToolkit)
    inbox = d.upstream.echo_url("inbox")
    results = await run_agent(
        [call("request", url=inbox, provider="google"), call("connect", provider="google"),
         call("request", url=inbox, provider="google"), AIMessage("done")],
        toolkit.get_tools(), user_config(alice),
    )
    assert [(m.name, m.status) for m in results] == [("request", "error"), ("connect", "success"),
                                                     ("request", "success")]
    assert error_of(results[0])["code"] == "not_connected"
    assert results[1].artifact.status == "connected" and results[1].artifact.grant.account == "alice@gmail.com"
    assert results[2].artifact.body["account"] == "alice@gmail.com"
    await app.aclose()


async def test_pinned_grant_hides_provider_and_account_from_the_model(
    sqlite_deployment: Deployment, abrowser: AsyncBrowser
) -> None:
    d = sqlite_deployment
    app = d.app()
    alice, bob = d.idp.issue("alice"), d.idp.issue("bob")
    alices = await connect_as(app, abrowser, "github", "alice-gh", alice)
    await connect_as(app, abrowser, "github", "bob-gh", bob)

    tools = AlterToolkit(app, session=GrantSession(alices.grant_id)).get_tools()
    assert [t.name for t in tools] == ["request"]  # no connect in a pinned session
    schema = convert_to_openai_tool(tools[0])["function"]["parameters"]
    assert set(schema["properties"]) == {"method", "url", "query", "headers", "json", "body"}
    everything = json.dumps([convert_to_openai_tool(t) for t in AlterToolkit(app).get_tools()])
    assert "user_token" not in everything and "config" not in json.dumps(schema)

    ok = await tools[0].ainvoke(tool_call("request", {"url": d.upstream.echo_url()}), user_config(alice))
    assert ok.status == "success" and ok.artifact.body["account"] == "alice-gh"
    sneaky = await tools[0].ainvoke(tool_call("request", {"url": d.upstream.echo_url(), "account": "bob-gh"}))
    assert error_of(sneaky)["code"] == "invalid_arguments"
    as_bob = await tools[0].ainvoke(tool_call("request", {"url": d.upstream.echo_url()}), user_config(bob))
    assert error_of(as_bob) == {"code": "grant_not_found", "grant_id": alices.grant_id, "retryable": False,
                                "sent": False, "user_action": "fix_arguments",
                                "message": f"Grant {alices.grant_id!r} was not found for this session."}
    await app.aclose()


async def test_one_toolkit_serving_two_users_concurrently_never_mixes_their_grants(
    deployment: Deployment, abrowser: AsyncBrowser, alice_google: LinkTwoGoogleAccounts
) -> None:
    d = deployment
    app = d.app()
    tokens = {"alice": d.idp.issue("alice"), "bob": d.idp.issue("bob")}
    await alice_google(app, tokens["alice"])
    await connect_as(app, abrowser, "google", "bob@gmail.com", tokens["bob"])
    request, _connect, _accounts = AlterToolkit(app).get_tools()

    async def invoke(i: int) -> tuple[str, ToolMessage]:
        user = "alice" if i % 2 else "bob"
        args: dict[str, Any] = {"url": d.upstream.echo_url(f"{user}/{i}"), "provider": "google"}
        if user == "alice":
            args["account"] = "alice@gmail.com" if i % 4 == 1 else "work"
        return user, await request.ainvoke(tool_call("request", args), user_config(tokens[user]))

    outcomes = await asyncio.gather(*(invoke(i) for i in range(50)))
    for i, (user, message) in enumerate(outcomes):
        assert message.status == "success", message.content
        account = message.artifact.body["account"]
        assert account.startswith(f"{user}@"), (i, user, account)
        assert message.artifact.body["path"].startswith(f"{user}/")
    assert {m.artifact.body["account"] for u, m in outcomes if u == "alice"} == {"alice@gmail.com", "alice@acme.com"}
    await app.aclose()


async def test_choose_account_callback_through_the_toolkit(
    sqlite_deployment: Deployment, abrowser: AsyncBrowser
) -> None:
    d = sqlite_deployment.local()
    app = d.app()
    await connect_as(app, abrowser, "github", "octo", None)
    await connect_as(app, abrowser, "github", "octo-work", None, label="work")

    async def ask_human(provider: str, accounts: list[AccountRef]) -> str | None:
        return "octo-work"

    request = AlterToolkit(app, session=LocalSession(), choose_account=ask_human).get_tools()[0]
    first = await request.ainvoke(tool_call("request", {"url": d.upstream.echo_url(), "provider": "github"}))
    assert first.status == "success" and first.artifact.body["account"] == "octo-work"
    assert "chosen by the user" in json.loads(str(first.content))["note"]
    await app.aclose()


def test_arbitrary_arguments_always_give_a_tool_message_and_never_a_token(
    sqlite_deployment: Deployment, abrowser: AsyncBrowser
) -> None:
    d = sqlite_deployment
    alice = d.idp.issue("alice")
    with asyncio.Runner() as runner:
        app = d.app()
        runner.run(connect_as(app, abrowser, "google", "alice@gmail.com", alice))
        request, connect, _accounts = AlterToolkit(app, connect_wait=0.05).get_tools()
        secrets = [t.access_token for t in d.oauth.tokens_for("alice@gmail.com")]
        secrets += [t.refresh_token for t in d.oauth.tokens_for("alice@gmail.com") if t.refresh_token]
        secrets.append(alice)
        echo = d.upstream.echo_url()

        scalar = st.none() | st.booleans() | st.integers() | st.floats(allow_nan=True) | st.text(max_size=40)
        value = st.recursive(scalar, lambda inner: st.lists(inner, max_size=3)
                             | st.dictionaries(st.text(max_size=8), inner, max_size=3), max_leaves=8)
        url = st.one_of(st.just(echo), st.just(echo + "?x=1"), st.text(max_size=60),
                        st.builds(lambda p: f"{echo}{p}", st.text(max_size=20)),
                        st.sampled_from(["http://localhost/x", "ftp://127.0.0.1/", "https://slack.com/api/x",
                                         d.upstream.url + "/reflect", d.upstream.url + "/redirect?to=/reflect"]))
        request_args = st.fixed_dictionaries(
            {}, optional={"url": url, "method": st.sampled_from(["GET", "post", "PATCH", "BREW"]) | value,
                          "provider": st.sampled_from(["google", "github", "nope"]) | value,
                          "account": st.sampled_from(["alice@gmail.com", "bob"]) | value,
                          "query": st.dictionaries(st.text(max_size=8), scalar, max_size=3) | value,
                          "headers": st.dictionaries(st.text(max_size=12), st.text(max_size=12), max_size=3) | value,
                          "json": value, "body": st.text(max_size=30) | value, "extra": value})
        well_formed = st.fixed_dictionaries(
            {"url": url}, optional={"method": st.sampled_from(["GET", "POST", "DELETE"]),
                                    "provider": st.sampled_from(["google", "github", "stripe"]),
                                    "account": st.sampled_from(["alice@gmail.com", "work"]),
                                    "headers": st.dictionaries(st.sampled_from(["Accept", "Cookie", "X-Y"]),
                                                               st.text(max_size=12), max_size=2),
                                    "query": st.dictionaries(st.text(max_size=8), scalar, max_size=3),
                                    "json": value})
        request_args = request_args | well_formed
        connect_args = st.fixed_dictionaries(
            {}, optional={"provider": st.sampled_from(["google", "stripe", "nope"]) | value,
                          "scopes": st.lists(st.text(max_size=10), max_size=3) | value,
                          "label": st.text(max_size=12) | value, "bogus": value})
        seen: set[str] = set()

        @settings(max_examples=120, deadline=None, suppress_health_check=list(HealthCheck))
        @example(("request", {"url": "http://localhost/x", "provider": "google"}))
        @example(("request", {"url": d.upstream.url + "/reflect", "provider": "google"}))
        @example(("request", {"url": d.upstream.url + "/redirect?to=/reflect", "provider": "google"}))
        @example(("connect", {"provider": "google"}))
        @given(st.one_of(st.tuples(st.just("request"), request_args), st.tuples(st.just("connect"), connect_args)))
        def the_model_always_gets_a_tool_message(case: tuple[str, dict[str, Any]]) -> None:
            name, args = case
            tool = request if name == "request" else connect
            message = runner.run(tool.ainvoke(tool_call(name, args), user_config(alice)))
            assert isinstance(message, ToolMessage) and message.tool_call_id == "call_1"
            text = str(message.content) + repr(message.artifact)
            assert not any(secret in text for secret in secrets)
            if message.status == "error":
                seen.add(error_of(message)["code"])
            else:
                seen.add("ok")

        the_model_always_gets_a_tool_message()
        runner.run(app.aclose())
    assert {"invalid_arguments", "ok", "host_not_allowed"} <= seen


@pytest.mark.parametrize("example", ["langchain_agent.py", "bootstrap_connect.py"])
def test_examples_run_offline_end_to_end(example: str) -> None:
    done = subprocess.run([sys.executable, str(EXAMPLES / example), "--auto"], capture_output=True, text=True,
                          timeout=90, cwd=EXAMPLES.parent)
    assert done.returncode == 0, done.stdout + done.stderr
    last = done.stdout.strip().splitlines()[-1]
    assert last.startswith("OK ")
    assert ("account=alice@work.test" if example == "langchain_agent.py" else "account=robot@demo.test") in last
