"""A LangChain agent loop using the `request` and `connect` tools.

    pip install -e '.[examples]'                 # once, from the repository root
    python examples/langchain_agent.py          # approve each sign-in yourself in the browser
    python examples/langchain_agent.py --auto   # a scripted "browser" approves for you

The chat model is scripted (so the example runs offline, with no API key) but it only sees what a real
model would: the tool schemas and the `ToolMessage`s. The story:
1. it calls `request` → `not_connected` → calls `connect` → the user signs in → `request` succeeds;
2. a second (work) account is linked → `request` → `ambiguous_grant` listing both accounts → the model
   retries with `account` set to the work one → 200 from that account. (Sign in with the same account
   twice and it stays one account, now labelled work: the request succeeds at once.)
Swap `ScriptedChatModel` for `ChatOpenAI(...)`/`ChatAnthropic(...)` and the loop stays the same.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import tempfile
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _demo_provider import DemoProvider, approve, require

require("langchain_core")

from langchain_core.language_models.fake_chat_models import GenericFakeChatModel
from langchain_core.messages import AIMessage, BaseMessage, HumanMessage, ToolMessage
from langchain_core.outputs import ChatResult
from langchain_core.tools import BaseTool

from alter_agents import App, LocalSession, Settings
from alter_agents.langchain import AlterToolkit
from alter_agents.models import ConnectStart

Step = Callable[[list[BaseMessage]], AIMessage]


class ScriptedChatModel(GenericFakeChatModel):
    """Plays one step per turn; a step reads the conversation so far, as a model would."""

    def bind_tools(self, tools: Sequence[Any], **kwargs: Any) -> ScriptedChatModel:  # type: ignore[override]
        return self

    def _generate(self, messages: list[BaseMessage], *args: Any, **kwargs: Any) -> ChatResult:
        step = next(self.messages)
        self.messages = _prepend(step(messages) if callable(step) else step, self.messages)
        return super()._generate(messages, *args, **kwargs)


def _prepend(first: Any, rest: Iterator[Any]) -> Iterator[Any]:
    yield first
    yield from rest


def call(name: str, n: int, **args: Any) -> AIMessage:
    return AIMessage("", tool_calls=[{"name": name, "args": args, "id": f"call_{n}", "type": "tool_call"}])


def last_result(messages: list[BaseMessage]) -> ToolMessage:
    message = messages[-1]
    assert isinstance(message, ToolMessage)
    return message


def script(inbox: str) -> Iterator[Step | AIMessage]:
    yield call("request", 1, url=inbox, provider="demo")
    yield call("connect", 2, provider="demo")  # the request said not_connected
    yield call("request", 3, url=inbox, provider="demo")
    yield call("connect", 4, provider="demo", label="work")
    yield call("request", 5, url=inbox, provider="demo")

    def answer(messages: list[BaseMessage]) -> AIMessage:
        result = last_result(messages)
        if result.status == "error":
            return AIMessage(f"I could not read your inbox: {json.loads(str(result.content))['error']['message']}")
        body = json.loads(str(result.content))
        subjects = ", ".join(m["subject"] for m in body["body"]["messages"])
        which = body["grant"].get("label") or "demo"
        return AIMessage(f"Your {which} inbox ({body['grant']['account']}) has: {subjects}.")

    def choose_work_account(messages: list[BaseMessage]) -> AIMessage:
        result = last_result(messages)
        if result.status == "success":  # one account only (the same one was approved twice)
            return answer(messages)
        error = json.loads(str(result.content))["error"]
        if error["code"] != "ambiguous_grant":
            return AIMessage(f"I could not read your inbox: {error['message']}")
        work = next((a for a in error["accounts"] if a.get("label") == "work"), error["accounts"][-1])
        return call("request", 6, url=inbox, provider="demo", account=work.get("label") or work["account"])

    yield choose_work_account

    yield answer


async def run_agent(model: ScriptedChatModel, tools: list[BaseTool], prompt: str) -> list[BaseMessage]:
    """The classic loop: ask the model, run the tool calls it makes, repeat until it answers."""
    by_name = {tool.name: tool for tool in tools}
    bound = model.bind_tools(tools)
    messages: list[BaseMessage] = [HumanMessage(prompt)]
    for _ in range(12):
        reply = await bound.ainvoke(messages)
        messages.append(reply)
        print(f"AI: {reply.content or json.dumps(reply.tool_calls)}", flush=True)
        if not reply.tool_calls:
            return messages
        for tool_call in reply.tool_calls:
            result = await by_name[tool_call["name"]].ainvoke({**tool_call, "type": "tool_call"})
            print(f"  {tool_call['name']} -> [{result.status}] {str(result.content)[:240]}", flush=True)
            messages.append(result)
    raise RuntimeError("the agent did not finish")


async def main_async(demo: DemoProvider, settings: Settings, auto: bool) -> None:
    accounts = iter(["alice@demo.test", "alice@work.test"])

    async def show(start: ConnectStart) -> None:
        print(f"  >> Open this URL to connect {start.provider}: {start.connect_url}", flush=True)
        if auto:
            await approve(start.connect_url, next(accounts))

    async with App(settings=settings) as app:
        toolkit = AlterToolkit(app, session=LocalSession(), on_connect_url=show, connect_wait=30 if auto else 300)
        model = ScriptedChatModel(messages=script(f"{demo.url}/api/inbox"))
        messages = await run_agent(model, toolkit.get_tools(), "What is in my work inbox?")
        accounts = sorted(g.account for g in await app.grants())
    results = [m for m in messages if isinstance(m, ToolMessage)]
    statuses = [(m.name, m.status, getattr(m.artifact, "error", None) and m.artifact.error.code) for m in results]
    expected = [("request", "error", "not_connected"), ("connect", "success", None), ("request", "success", None),
                ("connect", "success", None)]
    if len(accounts) > 1:
        expected += [("request", "error", "ambiguous_grant"), ("request", "success", None)]
    else:
        print(f"Only one demo account is connected ({accounts[0] if accounts else 'none'}): the same account "
              "was approved twice, so there was no choice to make.")
        expected += [("request", "success", None)]
    if statuses != expected:
        raise SystemExit(f"unexpected tool outcomes: {statuses}")
    final = results[-1].artifact
    print(f"OK status={final.status} account={final.grant.account}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--auto", action="store_true", help="approve each consent without a human")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp, DemoProvider() as demo:
        asyncio.run(main_async(demo, Settings.from_env(demo.configure(Path(tmp))), args.auto))


if __name__ == "__main__":
    main()
