"""Streamable HTTP under uvicorn on 127.0.0.1: bearer JWTs per request, both protocol eras."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import anyio
import httpx
import pytest
from mcp_types import ElicitRequestFormParams, ElicitRequestURLParams, ElicitResult

from alter_agents.sessions import GrantSession, LocalSession, UserSession
from alter_agents.settings import Settings
from mcp_server import GRANTS_URI
from mcp_server.auth import session_jwt
from tests.conftest import Deployment, LinkTwoGoogleAccounts
from tests.fixtures import AsyncBrowser
from tests.mcp_support import ERAS, RunningHttp, http_server, link, payload

pytestmark = pytest.mark.timeout(90)
ROOT = Path(__file__).resolve().parent.parent
MCP_HEADERS = {"Accept": "application/json, text/event-stream", "Content-Type": "application/json"}
INITIALIZE = {"jsonrpc": "2.0", "id": 1, "method": "initialize",
              "params": {"protocolVersion": "2025-11-25", "capabilities": {},
                         "clientInfo": {"name": "raw", "version": "1"}}}


def per_user(_settings: Settings) -> UserSession:
    return UserSession(session_jwt)


@pytest.mark.parametrize("mode", ERAS)
async def test_each_request_acts_for_its_bearer_and_ambiguity_goes_to_the_model(
    sqlite_deployment: Deployment, alice_google: LinkTwoGoogleAccounts, mode: str
) -> None:
    d = sqlite_deployment
    alice = d.idp.issue("alice")
    async with http_server(d, per_user) as srv:
        await alice_google(srv.app, alice)
        url = f"{d.upstream.url}/echo/x"
        with anyio.fail_after(30):
            async with srv.client(alice, mode) as client:
                tools = {t.name for t in (await client.list_tools()).tools}
                first = await client.call_tool("request", {"url": url, "provider": "google"})
                retry = await client.call_tool("request", {"url": url, "provider": "google", "account": "work"})
                grants = json.loads((await client.read_resource(GRANTS_URI)).contents[0].text)  # type: ignore[union-attr]
    assert tools == {"request", "connect", "accounts"}
    assert first.is_error and payload(first)["error"]["code"] == "ambiguous_grant"
    assert {a["account"] for a in payload(first)["error"]["accounts"]} == {"alice@gmail.com", "alice@acme.com"}
    assert payload(retry)["body"]["account"] == "alice@acme.com"
    assert sorted(g["account"] for g in grants["grants"]) == ["alice@acme.com", "alice@gmail.com"]


@pytest.mark.parametrize("bad", ["missing", "expired", "forged", "none-alg"])
async def test_missing_expired_or_forged_tokens_get_401_with_protected_resource_metadata(
    sqlite_deployment: Deployment, bad: str
) -> None:
    d = sqlite_deployment
    token = {"missing": None, "expired": d.idp.issue("alice", expires_in=-120),
             "forged": d.idp.forge("alice"), "none-alg": d.idp.none_token("alice")}[bad]
    async with http_server(d, per_user) as srv, httpx.AsyncClient(timeout=10) as http:
        headers = {**MCP_HEADERS, **({"Authorization": f"Bearer {token}"} if token else {})}
        refused = await http.post(f"{srv.url}/mcp", json=INITIALIZE, headers=headers)
        challenge = refused.headers["www-authenticate"]
        metadata_url = challenge.split('resource_metadata="', 1)[1].split('"', 1)[0]
        metadata = (await http.get(metadata_url)).json()
    assert refused.status_code == 401
    assert challenge.startswith("Bearer ")
    assert metadata_url == f"{srv.url}/.well-known/oauth-protected-resource/mcp"
    assert metadata["resource"] == f"{srv.url}/mcp"
    assert metadata["authorization_servers"] == [d.idp.issuer]


async def test_two_users_in_concurrent_sessions_never_see_each_others_accounts(
    sqlite_deployment: Deployment, abrowser: AsyncBrowser
) -> None:
    d = sqlite_deployment
    tokens = {"alice": d.idp.issue("alice"), "bob": d.idp.issue("bob")}
    url = f"{d.upstream.url}/echo/whoami"
    seen: dict[str, set[str]] = {"alice": set(), "bob": set()}
    async with http_server(d, per_user) as srv:
        for user, token in tokens.items():
            await link(srv.app, abrowser, "github", f"{user}-gh", token)

        async def session(user: str, mode: str) -> None:
            async with srv.client(tokens[user], mode) as client:
                for _ in range(8):
                    result = await client.call_tool("request", {"url": url, "provider": "github"})
                    seen[user].add(payload(result)["body"]["account"])

        with anyio.fail_after(60):
            async with anyio.create_task_group() as tg:
                for user in tokens:
                    for mode in ERAS:
                        tg.start_soon(session, user, mode)
    assert seen == {"alice": {"alice-gh"}, "bob": {"bob-gh"}}


async def test_a_session_refuses_a_request_carrying_another_users_token(sqlite_deployment: Deployment) -> None:
    d = sqlite_deployment
    alice, bob = d.idp.issue("alice"), d.idp.issue("bob")
    async with http_server(d, per_user) as srv, httpx.AsyncClient(timeout=10) as http:
        opened = await http.post(f"{srv.url}/mcp", json=INITIALIZE,
                                 headers={**MCP_HEADERS, "Authorization": f"Bearer {alice}"})
        session_id = opened.headers["mcp-session-id"]
        common = {**MCP_HEADERS, "mcp-session-id": session_id, "mcp-protocol-version": "2025-11-25"}
        call = {"jsonrpc": "2.0", "id": 2, "method": "tools/list"}
        as_bob = await http.post(f"{srv.url}/mcp", json=call, headers={**common, "Authorization": f"Bearer {bob}"})
        as_alice = await http.post(f"{srv.url}/mcp", json=call,
                                   headers={**common, "Authorization": f"Bearer {alice}"})
    assert opened.status_code == 200
    assert as_bob.status_code == 404
    assert as_alice.status_code == 200 and "request" in as_alice.text


async def test_an_unknown_host_header_is_refused(sqlite_deployment: Deployment) -> None:
    d = sqlite_deployment
    async with http_server(d, per_user) as srv, httpx.AsyncClient(timeout=10) as http:
        response = await http.post(f"{srv.url}/mcp", json=INITIALIZE, headers={
            **MCP_HEADERS, "Authorization": f"Bearer {d.idp.issue('alice')}", "Host": "rebound.example:80"})
    assert response.status_code == 421


@pytest.mark.parametrize("mode", ERAS)
async def test_connect_over_http_completes_on_the_servers_own_callback(
    sqlite_deployment: Deployment, abrowser: AsyncBrowser, mode: str
) -> None:
    d = sqlite_deployment
    alice = d.idp.issue("alice")
    offered: list[str] = []
    progress: list[float] = []

    async def on_progress(done: float, _total: float | None, _message: str | None) -> None:
        progress.append(done)

    async with http_server(d, per_user) as srv, anyio.create_task_group() as humans:

        async def human(_ctx: Any, params: Any) -> ElicitResult:
            assert isinstance(params, ElicitRequestURLParams)
            offered.append(params.url)

            async def sign_in() -> None:
                await anyio.sleep(0.6)
                await abrowser.aapprove(params.url, "alice-gh")

            humans.start_soon(sign_in)
            return ElicitResult(action="accept")

        with anyio.fail_after(40):
            async with srv.client(alice, mode, elicitation_callback=human) as client:
                result = await client.call_tool("connect", {"provider": "github"}, progress_callback=on_progress)
                call = await client.call_tool("request", {"url": f"{d.upstream.url}/echo/x", "provider": "github"})
    assert not result.is_error, result
    assert payload(result)["status"] == "connected" and payload(result)["grant"]["account"] == "alice-gh"
    assert payload(call)["body"]["account"] == "alice-gh"
    assert offered[0].startswith(f"{srv.url}/oauth/start/")  # a one-time page on the server, then the provider
    assert progress


async def test_a_connect_started_on_one_replica_completes_through_another(
    deployment: Deployment, abrowser: AsyncBrowser
) -> None:
    d = deployment
    alice = d.idp.issue("alice")
    async with (
        http_server(d, per_user, connect_wait=0.3) as first,
        http_server(d, per_user) as second,
        first.client(alice) as client,
    ):
        pending = payload(await client.call_tool("connect", {"provider": "github"}))
        assert pending.get("status") == "pending", pending
        consent = await abrowser.aapprove(pending["connect_url"], "alice-gh", follow_callback=False)
        callback = urlsplit(consent.headers["location"])
        assert callback.netloc == urlsplit(first.url).netloc
        # The load balancer sends the browser's redirect to the other replica.
        other = urlunsplit(callback._replace(netloc=urlsplit(second.url).netloc))
        # (The same browser, so it carries the cookie the connect link set.)
        async with httpx.AsyncClient(timeout=10, cookies=abrowser._client.cookies) as browser:
            landed = await browser.get(other)
        done = payload(await client.call_tool("connect", {"provider": "github"}))
    assert landed.status_code == 200 and "alice-gh" in landed.text
    assert done["status"] == "connected" and done["grant"]["account"] == "alice-gh"


async def test_without_an_identity_provider_http_serves_the_local_user_behind_a_random_token(
    sqlite_deployment: Deployment, abrowser: AsyncBrowser
) -> None:
    d = sqlite_deployment.local()
    async with http_server(d, lambda _s: LocalSession(), local=True) as srv:
        assert srv.http.local_token == "local-test-token"
        await link(srv.app, abrowser, "github", "octo", None)
        async with httpx.AsyncClient(timeout=10) as http:
            anonymous = await http.post(f"{srv.url}/mcp", json=INITIALIZE, headers=MCP_HEADERS)
        async with srv.client("local-test-token") as client:
            result = await client.call_tool("request", {"url": f"{d.upstream.url}/echo/x", "provider": "github"})
    assert anonymous.status_code == 401
    assert payload(result)["body"]["account"] == "octo"


async def test_a_service_can_pin_one_grant_over_http(sqlite_deployment: Deployment, abrowser: AsyncBrowser) -> None:
    d = sqlite_deployment
    alice, mallory = d.idp.issue("alice"), d.idp.issue("mallory")
    async with d.app() as app:
        grant = await link(app, abrowser, "github", "alice-gh", alice)
    async with http_server(d, lambda _s: GrantSession(grant.grant_id)) as srv:
        async with srv.client(alice) as client:
            mine = await client.call_tool("request", {"url": f"{d.upstream.url}/echo/x"})
            my_listing = await client.read_resource("alter://grants")
        async with srv.client(mallory) as client:
            theirs = await client.call_tool("request", {"url": f"{d.upstream.url}/echo/x"})
            their_listing = await client.read_resource("alter://grants")
    assert payload(mine)["body"]["account"] == "alice-gh"
    assert theirs.is_error and payload(theirs)["error"]["code"] == "grant_not_found"
    assert [g["account"] for g in json.loads(my_listing.contents[0].text)["grants"]] == ["alice-gh"]
    assert json.loads(their_listing.contents[0].text)["grants"] == []


async def test_alter_agents_mcp_over_http_prints_its_local_token_once_and_serves_it(
    sqlite_deployment: Deployment, abrowser: AsyncBrowser
) -> None:
    d = sqlite_deployment.local()
    async with d.app() as app:
        await link(app, abrowser, "github", "octo", None)
    command = [sys.executable, "-m", "alter_agents.cli", "mcp", "--transport", "http", "--port", "0"]
    env = {**os.environ, **d.env}
    env.pop("ALTER_PUBLIC_URL", None)
    async with await anyio.open_process(command, env=env, cwd=str(ROOT)) as process:
        try:
            assert process.stderr is not None
            lines: list[str] = []
            with anyio.fail_after(20):
                buffer = b""
                while not any("Bearer" in line for line in lines):
                    buffer += await process.stderr.receive()
                    lines = buffer.decode().splitlines()
            url = next(line.split(" at ", 1)[1] for line in lines if " at http" in line)
            token = next(line.split("Bearer ", 1)[1].split("'", 1)[0] for line in lines if "Bearer" in line)
            running = RunningHttp(url.removesuffix("/mcp"), None, None)  # type: ignore[arg-type]
            with anyio.fail_after(20):
                async with running.client(token) as client:
                    result = await client.call_tool("request", {"url": f"{d.upstream.url}/echo/x",
                                                                "provider": "github"})
                async with httpx.AsyncClient(timeout=10) as http:
                    refused = await http.post(url, json=INITIALIZE,
                                              headers={**MCP_HEADERS, "Authorization": "Bearer not-the-token"})
        finally:
            process.terminate()
    assert payload(result)["body"]["account"] == "octo"
    assert refused.status_code == 401
    assert sum("Bearer" in line for line in lines) == 1



@pytest.mark.parametrize("mode", ERAS)
async def test_over_http_the_human_picks_the_account_in_a_form(
    sqlite_deployment: Deployment, alice_google: LinkTwoGoogleAccounts, mode: str
) -> None:
    d = sqlite_deployment
    alice = d.idp.issue("alice")

    async def human(_ctx: Any, params: Any) -> ElicitResult:
        assert isinstance(params, ElicitRequestFormParams)
        return ElicitResult(action="accept", content={"account": "alice@acme.com"})

    async with http_server(d, per_user) as srv:
        await alice_google(srv.app, alice)
        with anyio.fail_after(30):
            async with srv.client(alice, mode, elicitation_callback=human) as client:
                result = await client.call_tool("request", {"url": f"{d.upstream.url}/echo/x", "provider": "google"})
    assert not result.is_error, result
    assert payload(result)["body"]["account"] == "alice@acme.com"
