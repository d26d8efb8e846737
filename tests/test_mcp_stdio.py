"""`python -m mcp_server` as a real stdio subprocess, driven by the real `mcp` client in both eras."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import anyio
import pytest
from mcp import Client, StdioServerParameters
from mcp_types import ElicitRequestFormParams, ElicitResult

from tests.conftest import Deployment, LinkTwoGoogleAccounts, with_coverage
from tests.fixtures import AsyncBrowser
from tests.fixtures.accounts import ALICE_PERSONAL, ALICE_WORK
from tests.mcp_support import ERAS, link, payload

pytestmark = pytest.mark.timeout(90)
ROOT = Path(__file__).resolve().parent.parent


def stdio(env: dict[str, str], *args: str) -> StdioServerParameters:
    return StdioServerParameters(command=sys.executable, args=["-m", "mcp_server", *args], env=with_coverage(env),
                                 cwd=str(ROOT))


@pytest.mark.parametrize("mode", ERAS)
async def test_claude_desktop_style_local_server_resolves_and_asks_the_model_to_choose(
    sqlite_deployment: Deployment, alice_google: LinkTwoGoogleAccounts, mode: str
) -> None:
    d = sqlite_deployment.local()
    async with d.app() as app:
        await alice_google(app, None)
    url = f"{d.upstream.url}/echo/inbox"
    with anyio.fail_after(60):
        async with Client(stdio(d.env), mode=mode) as client:
            names = {t.name for t in (await client.list_tools()).tools}
            ambiguous = await client.call_tool("request", {"url": url, "provider": "google"})
            chosen = await client.call_tool("request", {"url": url, "provider": "google", "account": ALICE_WORK})
    assert names == {"request", "connect", "accounts"}
    assert ambiguous.is_error and payload(ambiguous)["error"]["code"] == "ambiguous_grant"
    assert payload(chosen)["body"]["account"] == ALICE_WORK


@pytest.mark.parametrize("mode", ERAS)
async def test_over_stdio_the_human_can_pick_the_account(
    sqlite_deployment: Deployment, alice_google: LinkTwoGoogleAccounts, mode: str
) -> None:
    d = sqlite_deployment.local()
    async with d.app() as app:
        await alice_google(app, None)

    async def human(_ctx: Any, params: Any) -> ElicitResult:
        assert isinstance(params, ElicitRequestFormParams)
        return ElicitResult(action="accept", content={"account": ALICE_PERSONAL})

    with anyio.fail_after(60):
        async with Client(stdio(d.env), mode=mode, elicitation_callback=human) as client:
            result = await client.call_tool("request", {"url": f"{d.upstream.url}/echo/x", "provider": "google"})
    assert not result.is_error, result
    assert payload(result)["body"]["account"] == ALICE_PERSONAL


async def test_the_user_token_file_is_read_again_when_it_changes(
    sqlite_deployment: Deployment, abrowser: AsyncBrowser, tmp_path: Path
) -> None:
    d = sqlite_deployment
    alice, bob = d.idp.issue("alice"), d.idp.issue("bob")
    async with d.app() as app:
        await link(app, abrowser, "github", "alice-gh", alice)
        await link(app, abrowser, "github", "bob-gh", bob)
    token_file = tmp_path / "token"
    token_file.write_text(alice)
    url = f"{d.upstream.url}/echo/me"
    with anyio.fail_after(60):
        async with Client(stdio(d.env, "--user-token-file", str(token_file))) as client:
            first = payload(await client.call_tool("request", {"url": url, "provider": "github"}))
            token_file.write_text(bob + "\n")
            second = payload(await client.call_tool("request", {"url": url, "provider": "github"}))
    assert first["body"]["account"] == "alice-gh"
    assert second["body"]["account"] == "bob-gh"


async def test_a_pinned_grant_over_stdio_reaches_only_that_grant(
    sqlite_deployment: Deployment, alice_google: LinkTwoGoogleAccounts
) -> None:
    d = sqlite_deployment.local()
    async with d.app() as app:
        pinned = (await alice_google(app, None)).work
    with anyio.fail_after(60):
        async with Client(stdio(d.env, "--grant-id", pinned.grant_id)) as client:
            tools = {t.name: t for t in (await client.list_tools()).tools}
            result = await client.call_tool("request", {"url": f"{d.upstream.url}/echo/x"})
    assert set(tools) == {"request"} and "account" not in tools["request"].input_schema["properties"]
    assert payload(result)["body"]["account"] == ALICE_WORK
