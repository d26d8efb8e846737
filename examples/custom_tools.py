"""Two provider-specific tools written once with `@grant_tool`, served to LangChain and over MCP.

    pip install -e '.[examples]'              # once, from the repository root
    python examples/custom_tools.py          # approve each sign-in yourself in the browser
    python examples/custom_tools.py --auto   # a scripted "browser" approves for you

`list_my_issues(repo, state)` and `post_message(channel, text)` call the demo provider's API through
`ctx.request`, so they are scoped exactly like the generic `request` tool: the session's user, the
provider's hosts only, the credential never in the model's view, and an `ambiguous_grant` error (with
an `account` argument to answer it) when the user has several accounts. The same `TOOLS` list can be
served by the MCP server: `alter-agents mcp --tools examples/custom_tools.py:TOOLS` (with
`DEMO_API_URL` pointing at a running demo provider's `/api`). Runs offline against a local demo
provider started by the script, with a throwaway vault in a temporary directory.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import tempfile
from pathlib import Path
from typing import Annotated, Any, Literal

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _demo_provider import DemoProvider, approve, require

require("langchain_core", "mcp")

from pydantic import BaseModel, Field

from alter_agents import AlterError, App, GrantContext, InvalidArgumentsError, LocalSession, Settings, grant_tool
from alter_agents.models import ConnectResult, ConnectStart


def api() -> str:
    """The demo API's base URL; a real tool would simply say https://api.github.com."""
    return os.environ["DEMO_API_URL"]


class Issue(BaseModel):
    number: int
    title: str
    state: str


class MyIssues(BaseModel):
    account: str = Field(description="The account whose assigned issues these are.")
    repo: str
    issues: list[Issue]


class Posted(BaseModel):
    id: int
    channel: str
    author: str


@grant_tool(provider="demo", read_only=True)
async def list_my_issues(
    ctx: GrantContext,
    repo: Annotated[str, Field(description="Repository as owner/name, e.g. acme/web.",
                               pattern=r"^[A-Za-z0-9_.-]+/[A-Za-z0-9_.-]+$")],
    state: Literal["open", "closed", "all"] = "open",
) -> MyIssues:
    """List the issues assigned to me in a repository."""
    response = await ctx.request("GET", f"{api()}/repos/{repo}/issues", query={"state": state})
    if response.status_code != 200:
        raise InvalidArgumentsError(f"The API answered {response.status_code} for {repo}: {response.text}")
    return MyIssues(account=response.grant.account, repo=repo,
                    issues=[Issue.model_validate(item) for item in response.json()])


@grant_tool(provider="demo")
async def post_message(
    ctx: GrantContext,
    channel: Annotated[str, Field(description="Channel name without #, e.g. standup.", pattern=r"^[a-z0-9_-]+$")],
    text: Annotated[str, Field(description="The message to post.", min_length=1, max_length=2000)],
) -> Posted:
    """Post a message to a chat channel as me."""
    response = await ctx.request("POST", f"{api()}/channels/{channel}/messages", json={"text": text})
    if response.status_code != 201:
        raise InvalidArgumentsError(f"The API refused the message ({response.status_code}): {response.text}")
    return Posted.model_validate(response.json())


TOOLS = [list_my_issues, post_message]


def tool_call(name: str, n: int, **args: Any) -> dict[str, Any]:
    """What a chat model emits; a real agent loop passes these straight to the tools."""
    return {"type": "tool_call", "id": f"call_{n}", "name": name, "args": args}


async def with_langchain(app: App, work: str) -> None:
    from alter_agents.langchain import AlterToolkit

    tools = {t.name: t for t in AlterToolkit(app, LocalSession(), extra_tools=TOOLS).get_tools()}
    print("LangChain tools:", sorted(tools))
    print("list_my_issues arguments:", sorted(tools["list_my_issues"].args))
    first = await tools["list_my_issues"].ainvoke(tool_call("list_my_issues", 1, repo="acme/web"))
    if first.status == "error":
        error = json.loads(str(first.content))["error"]
        print(f"  list_my_issues -> [{first.status}] {error['code']}: {error['message']}")
        choice = next((a for a in error.get("accounts", []) if a.get("label") == "work"), None)
        if choice is None:
            raise SystemExit(f"list_my_issues failed: {error['message']}")
        work = choice["account"]
    else:  # the same account was approved twice: one account, nothing to choose
        print(f"  list_my_issues -> [{first.status}] {str(first.content)[:200]}")
    issues = await tools["list_my_issues"].ainvoke(tool_call("list_my_issues", 2, repo="acme/web", account=work))
    print(f"  list_my_issues(account={work}) -> [{issues.status}] {str(issues.content)[:200]}")
    posted = await tools["post_message"].ainvoke(
        tool_call("post_message", 3, channel="standup", text="Looking at the login timeout today.", account=work))
    print(f"  post_message -> [{posted.status}] {posted.content}")
    if issues.status != "success" or posted.status != "success" or posted.artifact.author != work:
        raise SystemExit("the LangChain tools did not succeed")


async def with_mcp(app: App, personal: str) -> None:
    from mcp import Client

    from mcp_server import build_server

    async with Client(build_server(app, LocalSession(), extra_tools=TOOLS)) as client:
        listed = {t.name: t for t in (await client.list_tools()).tools}
        print("MCP tools:", sorted(listed))
        result = await client.call_tool("list_my_issues", {"repo": "acme/web", "state": "all", "account": personal})
        print(f"  list_my_issues -> isError={result.is_error} {json.dumps(result.structured_content)[:200]}")
        refused = await client.call_tool("post_message", {"channel": "Not A Channel", "text": "hi",
                                                          "account": personal})
        print(f"  post_message(bad channel) -> isError={refused.is_error} "
              f"{(refused.structured_content or {}).get('error', {}).get('code')}")
    if result.is_error or not refused.is_error:
        raise SystemExit("the MCP tools did not behave")


async def main_async(demo: DemoProvider, settings: Settings, auto: bool) -> None:
    accounts = iter(["alice@demo.test", "alice@work.test"])

    async def show(start: ConnectStart) -> None:
        print(f"  >> Open this URL to connect {start.provider}: {start.connect_url}", flush=True)
        if auto:
            await approve(start.connect_url, next(accounts))

    async with App(settings=settings) as app:
        connected: list[ConnectResult] = []
        for label in (None, "work"):
            [grant] = await app.connect(["demo"], open_browser=False, on_url=show, label=label,
                                        timeout=30 if auto else 300)
            print(f"connected demo account {grant.account} (label {grant.label})")
            connected.append(grant)
        personal, work = connected[0].account, connected[1].account
        await with_langchain(app, work)
        await with_mcp(app, personal)
    print(f"OK messages posted: {len(demo.messages)}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--auto", action="store_true", help="approve each consent without a human")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp, DemoProvider() as demo:
        os.environ["DEMO_API_URL"] = f"{demo.url}/api"
        try:
            asyncio.run(main_async(demo, Settings.from_env(demo.configure(Path(tmp))), args.auto))
        except AlterError as exc:  # e.g. the sign-in was denied or timed out
            raise SystemExit(f"error: {exc.message}") from None


if __name__ == "__main__":
    main()
