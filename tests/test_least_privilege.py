"""Least privilege, through real clients: scope step-up, per-call policy, and human approval of writes."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import anyio
import pytest
from mcp import Client
from mcp_types import ElicitRequestFormParams, ElicitResult

from alter_agents import (
    AlterTools,
    App,
    ApprovalRequiredError,
    InsufficientScopeError,
    LocalSession,
    PolicyDeniedError,
    UserSession,
)
from alter_agents.approval import ApprovalRequest
from alter_agents.langchain import AlterToolkit, user_config
from mcp_server import build_server
from tests.conftest import Deployment
from tests.fixtures import AsyncBrowser
from tests.mcp_support import ERAS, link, payload

pytestmark = pytest.mark.timeout(90)

POLICY = """
[[policy]]
provider = "github"
methods = ["DELETE"]
paths = ["/echo/repos/*/*/hooks*"]
effect = "deny"
name = "no-hook-deletes"

[[policy]]
provider = "github"
methods = ["POST", "PUT", "PATCH"]
paths = ["/echo/repos/*"]
effect = "approve"
name = "repo-writes"
"""


def _with_policy(d: Deployment, tmp_path: Path, text: str = POLICY, **changes: Any) -> Deployment:
    path = tmp_path / "policy.toml"
    path.write_text(text, "utf-8")
    settings = dataclasses.replace(d.settings, policy_file=str(path), **changes)
    return dataclasses.replace(d, settings=settings, env={**d.env, "ALTER_POLICY_FILE": str(path)})


def _calls(d: Deployment, method: str) -> list[str]:
    return [path for m, path, _account in d.upstream.requests if m == method]


# -- 1. scope step-up ------------------------------------------------------------------------------


async def test_insufficient_scope_then_connect_upgrades_the_same_grant_and_the_call_succeeds(
    sqlite_deployment: Deployment, abrowser: AsyncBrowser
) -> None:
    """403 insufficient_scope → the error → connect with the scope → same grant id, union of scopes → success."""
    d = sqlite_deployment
    providers = Path(d.env["ALTER_PROVIDERS_FILE"])  # the operator allows `write` to be asked for
    providers.write_text(providers.read_text().replace(
        'scopes = ["read"]\n', 'scopes = ["read"]\nallowed_scopes = ["read", "write"]\n', 1))
    alice = d.idp.issue("alice")
    async with d.app() as app:
        first = await link(app, abrowser, "github", "alice-gh", alice)
        assert first.scopes == ["read"]
        toolkit = AlterToolkit(app, UserSession())
        request, connect = toolkit.get_tools()[:2]
        config = user_config(alice)
        url = f"{d.upstream.url}/scoped/write"

        refused = await request.ainvoke(
            {
                "type": "tool_call",
                "id": "1",
                "name": "request",
                "args": {"url": url, "method": "POST", "json": {"x": 1}, "provider": "github"},
            },
            config=config,
        )
        error = refused.artifact.error
        assert error.code != "invalid_arguments", error.message
        assert refused.status == "error" and error.code == "insufficient_scope"
        assert error.sent is True and error.user_action == "reauthorize" and error.retryable is False
        extra = error.model_extra or {}
        assert extra["status"] == 403 and extra["granted_scopes"] == ["read"] and extra["required_scopes"] == ["write"]

        pending = await connect.ainvoke(
            {
                "type": "tool_call",
                "id": "2",
                "name": "connect",
                "args": {"provider": "github", "scopes": ["write"], "account": "alice-gh"},
            },
            config=config,
        )
        link_url = pending.artifact.connect_url
        assert pending.artifact.status == "pending" and "scope=read+write" in link_url.replace("%20", "+")
        await abrowser.aapprove(link_url, "alice-gh")
        with anyio.fail_after(15):
            while (
                done := await connect.ainvoke(
                    {
                        "type": "tool_call",
                        "id": "3",
                        "name": "connect",
                        "args": {"provider": "github", "scopes": ["write"], "account": "alice-gh"},
                    },
                    config=config,
                )
            ).artifact.status == "pending":
                await anyio.sleep(0.1)
        assert done.artifact.grant_id == first.grant_id  # upgraded in place: same grant, same account
        [grant] = await app.grants(user_token=alice, provider="github")
        assert grant.grant_id == first.grant_id and sorted(grant.scopes) == ["read", "write"]

        ok = await request.ainvoke(
            {
                "type": "tool_call",
                "id": "4",
                "name": "request",
                "args": {"url": url, "method": "POST", "json": {"x": 1}, "provider": "github"},
            },
            config=config,
        )
        assert ok.status == "success" and ok.artifact.status == 200 and ok.artifact.body["scope"] == "write"


async def test_app_raises_a_typed_insufficient_scope_error(
    sqlite_deployment: Deployment, abrowser: AsyncBrowser
) -> None:
    d = sqlite_deployment.local()
    async with d.app() as app:
        grant = await link(app, abrowser, "github", "octo", None)
        with pytest.raises(InsufficientScopeError) as caught:
            await app.request("GET", f"{d.upstream.url}/scoped/admin", grant_id=grant.grant_id)
    assert caught.value.required_scopes == ["admin"] and caught.value.granted_scopes == ["read"]
    assert caught.value.sent is True and caught.value.status == 403


# -- 2. per-call policy ----------------------------------------------------------------------------


@pytest.mark.parametrize("mode", ERAS)
async def test_a_denied_delete_never_reaches_the_upstream(
    sqlite_deployment: Deployment, abrowser: AsyncBrowser, tmp_path: Path, mode: str
) -> None:
    d = _with_policy(sqlite_deployment.local(), tmp_path)
    async with d.app() as app:
        await link(app, abrowser, "github", "octo", None)
        async with Client(build_server(app, LocalSession()), mode=mode) as client:
            result = await client.call_tool(
                "request", {"provider": "github", "url": f"{d.upstream.url}/echo/repos/o/r/hooks/1", "method": "DELETE"}
            )
            allowed = await client.call_tool(
                "request",
                {"provider": "github", "url": f"{d.upstream.url}/echo/repos/o/r/issues/1", "method": "DELETE"},
            )
        entries = await app.vault.audit(limit=20)  # type: ignore[attr-defined]
    error = payload(result)["error"]
    assert result.is_error and error["code"] == "policy_denied" and error["sent"] is False
    assert error["rule"] == "no-hook-deletes" and "no-hook-deletes" in error["message"]
    assert _calls(d, "DELETE") == ["/echo/repos/o/r/issues/1"]  # the denied one never left
    assert not allowed.is_error
    assert any(e.action == "policy" and e.detail == "denied:no-hook-deletes" for e in entries)


async def test_the_vault_server_enforces_the_same_policy_for_remote_clients(
    sqlite_deployment: Deployment, abrowser: AsyncBrowser, tmp_path: Path
) -> None:
    from tests.fixtures.vault_server import VaultServerProcess, mint_key

    d = _with_policy(sqlite_deployment.local(), tmp_path)
    async with d.app() as local:
        grant = await link(local, abrowser, "github", "octo", None)
    key = await mint_key(d.settings)
    with VaultServerProcess(d.env) as server:
        async with App(base_url=server.url, api_key=key, settings=d.settings) as remote:
            with pytest.raises(PolicyDeniedError) as denied:
                await remote.request("DELETE", f"{d.upstream.url}/echo/repos/o/r/hooks/9", grant_id=grant.grant_id)
            with pytest.raises(ApprovalRequiredError):
                await remote.request(
                    "POST", f"{d.upstream.url}/echo/repos/o/r/issues", grant_id=grant.grant_id, json={"title": "x"}
                )
    assert denied.value.code == "policy_denied" and denied.value.data["rule"] == "no-hook-deletes"
    assert _calls(d, "DELETE") == [] and _calls(d, "POST") == []


def test_a_bad_policy_file_is_one_line_at_start(sqlite_deployment: Deployment, tmp_path: Path) -> None:
    import subprocess
    import sys

    bad = tmp_path / "bad.toml"
    bad.write_text('[[policy]]\nprovider = "github"\nmethods = ["YEET"]\neffect = "deny"\n', "utf-8")
    env = {**d_env(sqlite_deployment), "ALTER_POLICY_FILE": str(bad)}
    cli = str(Path(sys.executable).with_name("alter-agents"))
    done = subprocess.run([cli, "grants", "list"], env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode != 0 and "unknown method 'YEET'" in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1 and "Traceback" not in done.stderr


def d_env(d: Deployment) -> dict[str, str]:
    import os

    return {**{k: v for k, v in os.environ.items() if not k.startswith("ALTER_")}, **d.local().env}


# -- 3. human approval ------------------------------------------------------------------------------


@pytest.mark.parametrize("mode", ERAS)
async def test_approval_allow_once_deny_and_for_this_session_through_a_real_mcp_client(
    sqlite_deployment: Deployment, abrowser: AsyncBrowser, tmp_path: Path, mode: str
) -> None:
    d = _with_policy(sqlite_deployment.local(), tmp_path)
    answers = ["allow_once", "deny", "allow_session"]
    asked: list[str] = []

    async def human(_ctx: Any, params: Any) -> ElicitResult:
        assert isinstance(params, ElicitRequestFormParams)
        asked.append(params.message)
        return ElicitResult(action="accept", content={"decision": answers[len(asked) - 1]})

    url = f"{d.upstream.url}/echo/repos/o/r/issues"
    async with d.app() as app:
        await link(app, abrowser, "github", "octo", None)
        async with Client(build_server(app, LocalSession()), mode=mode, elicitation_callback=human) as client:
            once = await client.call_tool(
                "request", {"provider": "github", "url": url, "method": "POST", "json": {"n": 1}}
            )
            denied = await client.call_tool(
                "request", {"provider": "github", "url": url, "method": "POST", "json": {"n": 2}}
            )
            session = await client.call_tool(
                "request", {"provider": "github", "url": url, "method": "POST", "json": {"n": 3}}
            )
            again = await client.call_tool(
                "request", {"provider": "github", "url": url, "method": "POST", "json": {"n": 4}}
            )
        entries = await app.vault.audit(limit=50)  # type: ignore[attr-defined]
    assert asked[0] == f"Allow POST {url} as octo (github)?" and len(asked) == 3  # the 4th was remembered
    assert payload(once)["status"] == 200 and payload(session)["status"] == 200 and payload(again)["status"] == 200
    error = payload(denied)["error"]
    assert denied.is_error and error["code"] == "policy_denied" and error["decided_by"] == "user"
    assert error["sent"] is False
    bodies = [b for m, p, _a in d.upstream.requests if m == "POST" for b in [p]]
    assert len(bodies) == 3  # calls 1, 3 and 4 went out; the denied one did not
    details = [e.detail for e in entries if e.detail]
    assert any(x.startswith("approved:allow_once:repo-writes") for x in details)
    assert any(x.startswith("denied_by_user:repo-writes") for x in details)
    assert any(x == "approved:session:repo-writes" for x in details)


@pytest.mark.parametrize("mode", ERAS)
async def test_a_client_without_elicitation_gets_approval_required_and_nothing_is_sent(
    sqlite_deployment: Deployment, abrowser: AsyncBrowser, tmp_path: Path, mode: str
) -> None:
    d = _with_policy(sqlite_deployment.local(), tmp_path)
    async with d.app() as app:
        await link(app, abrowser, "github", "octo", None)
        async with Client(build_server(app, LocalSession()), mode=mode) as client:
            result = await client.call_tool(
                "request",
                {
                    "provider": "github",
                    "url": f"{d.upstream.url}/echo/repos/o/r/pulls",
                    "method": "PATCH",
                    "json": {"state": "closed"},
                },
            )
    error = payload(result)["error"]
    assert result.is_error and error["code"] == "approval_required" and error["user_action"] == "approve"
    assert error["sent"] is False and "Ask the user in the chat" in error["message"]
    assert _calls(d, "PATCH") == []


async def test_a_langgraph_interrupt_pauses_the_call_until_the_human_answers(
    sqlite_deployment: Deployment, abrowser: AsyncBrowser, tmp_path: Path
) -> None:
    from langchain_core.messages import AIMessage
    from langgraph.checkpoint.memory import InMemorySaver
    from langgraph.graph import START, MessagesState, StateGraph
    from langgraph.prebuilt import ToolNode
    from langgraph.types import Command

    from alter_agents.langchain import interrupt_approver

    d = _with_policy(sqlite_deployment.local(), tmp_path)
    url = f"{d.upstream.url}/echo/repos/o/r/issues"
    async with d.app() as app:
        await link(app, abrowser, "github", "octo", None)
        tools = AlterToolkit(app, LocalSession(), approve=interrupt_approver).get_tools()
        graph = StateGraph(MessagesState)
        graph.add_node("tools", ToolNode(tools))
        graph.add_edge(START, "tools")
        compiled = graph.compile(checkpointer=InMemorySaver())
        call = AIMessage(
            "",
            tool_calls=[
                {
                    "id": "c1",
                    "name": "request",
                    "args": {"provider": "github", "url": url, "method": "POST", "json": {"t": 1}},
                }
            ],
        )
        config: Any = {"configurable": {"thread_id": "t-1"}}

        paused = await compiled.ainvoke({"messages": [call]}, config)
        [question] = paused["__interrupt__"]
        assert question.value["prompt"] == f"Allow POST {url} as octo (github)?"
        assert _calls(d, "POST") == []  # nothing left while the run waits for the human

        resumed = await compiled.ainvoke(Command(resume="allow_once"), config)
        answer = resumed["messages"][-1]
        assert answer.status == "success" and answer.artifact.status == 200
        assert _calls(d, "POST") == ["/echo/repos/o/r/issues"]

        denied_call = AIMessage(
            "",
            tool_calls=[
                {
                    "id": "c2",
                    "name": "request",
                    "args": {"provider": "github", "url": url, "method": "POST", "json": {"t": 2}},
                }
            ],
        )
        config2: Any = {"configurable": {"thread_id": "t-2"}}
        await compiled.ainvoke({"messages": [denied_call]}, config2)
        refused = (await compiled.ainvoke(Command(resume="deny"), config2))["messages"][-1]
        assert refused.status == "error" and refused.artifact.error.code == "policy_denied"
        assert _calls(d, "POST") == ["/echo/repos/o/r/issues"]


async def test_app_on_approval_callback_and_server_read_only(
    sqlite_deployment: Deployment, abrowser: AsyncBrowser, tmp_path: Path
) -> None:
    d = sqlite_deployment.local()
    d = dataclasses.replace(d, settings=dataclasses.replace(d.settings, read_only="approve"))
    seen: list[ApprovalRequest] = []

    async def approve(request: ApprovalRequest) -> Any:
        seen.append(request)
        return "allow_once"

    async with App(settings=d.settings, on_approval=approve) as app:
        grant = await link(app, abrowser, "github", "octo", None)
        read = await app.request("GET", f"{d.upstream.url}/echo/a", grant_id=grant.grant_id)
        wrote = await app.request("PUT", f"{d.upstream.url}/echo/b?x=secret", grant_id=grant.grant_id, json={"v": 1})
    assert read.status_code == 200 and wrote.status_code == 200
    assert [(r.method, r.url, r.rule) for r in seen] == [("PUT", f"{d.upstream.url}/echo/b", "read_only")]
    d2 = dataclasses.replace(d, settings=dataclasses.replace(d.settings, read_only="deny"))
    async with App(settings=d2.settings, on_approval=approve) as app:
        with pytest.raises(PolicyDeniedError):
            await app.request("POST", f"{d.upstream.url}/echo/c", grant_id=grant.grant_id, json={})
    assert len(seen) == 1


async def test_approvals_remembered_for_the_session_hold_on_every_replica_and_can_be_turned_off(
    sqlite_deployment: Deployment, abrowser: AsyncBrowser, tmp_path: Path
) -> None:
    d = _with_policy(sqlite_deployment.local(), tmp_path)
    url = f"{d.upstream.url}/echo/repos/o/r/issues"
    asked: list[ApprovalRequest] = []

    async def once_for_session(request: ApprovalRequest) -> Any:
        asked.append(request)
        return "allow_session"

    async with d.app() as one, d.app() as two:  # two processes' worth of vaults on one store
        await link(one, abrowser, "github", "octo", None)
        first = AlterTools(one, LocalSession(), approve=once_for_session)
        second = AlterTools(two, LocalSession(), approve=once_for_session)
        assert (await first.request({"provider": "github", "url": url, "method": "POST", "json": {}})).status == 200
        assert (await second.request({"provider": "github", "url": url, "method": "POST", "json": {}})).status == 200
        assert len(asked) == 1
        two.vault.gate.remember = False  # type: ignore[attr-defined]
        assert (await second.request({"provider": "github", "url": url, "method": "POST", "json": {}})).status == 200
        assert len(asked) == 2
