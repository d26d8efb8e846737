"""Many users on one MCP HTTP server: each is verified, and none can crowd the others out."""

from __future__ import annotations

import os
import signal
import sys
from pathlib import Path

import anyio
import httpx
import pytest

from alter_agents.sessions import UserSession
from alter_agents.settings import Settings
from mcp_server.auth import session_jwt
from tests.conftest import Deployment
from tests.fixtures import AsyncBrowser
from tests.fixtures.vault_server import VaultServerProcess, mint_key
from tests.mcp_support import RunningHttp, http_server, link, payload

pytestmark = pytest.mark.timeout(120)
ROOT = Path(__file__).resolve().parent.parent
MCP_HEADERS = {"Accept": "application/json, text/event-stream", "Content-Type": "application/json"}
INITIALIZE = {"jsonrpc": "2.0", "id": 1, "method": "initialize",
              "params": {"protocolVersion": "2025-11-25", "capabilities": {},
                         "clientInfo": {"name": "raw", "version": "1"}}}
LIST = {"jsonrpc": "2.0", "id": 2, "method": "tools/list"}


def per_user(_settings: Settings) -> UserSession:
    return UserSession(session_jwt)


async def test_one_user_opening_sessions_ends_only_their_own_oldest(sqlite_deployment: Deployment) -> None:
    d = sqlite_deployment
    alice, bob = d.idp.issue("alice"), d.idp.issue("bob")
    async with http_server(d, per_user, sessions_per_user=2) as srv, httpx.AsyncClient(timeout=20) as http:

        async def open_session(token: str) -> str:
            opened = await http.post(f"{srv.url}/mcp", json=INITIALIZE,
                                     headers={**MCP_HEADERS, "Authorization": f"Bearer {token}"})
            assert opened.status_code == 200, opened.text
            return opened.headers["mcp-session-id"]

        async def usable(token: str, session_id: str) -> bool:
            answer = await http.post(f"{srv.url}/mcp", json=LIST, headers={
                **MCP_HEADERS, "Authorization": f"Bearer {token}", "mcp-session-id": session_id,
                "mcp-protocol-version": "2025-11-25"})
            return answer.status_code == 200

        bobs = await open_session(bob)
        alices = [await open_session(alice) for _ in range(6)]
        await anyio.sleep(0.2)
        alive = [await usable(alice, sid) for sid in alices]
        bob_alive = await usable(bob, bobs)
    assert alive == [False, False, False, False, True, True]
    assert bob_alive


async def test_with_a_vault_server_the_http_server_verifies_each_users_jwt(
    sqlite_deployment: Deployment, abrowser: AsyncBrowser
) -> None:
    d = sqlite_deployment
    alice, bob = d.idp.issue("alice", expires_in=600), d.idp.issue("bob", expires_in=600)
    key = await mint_key(d.settings)
    with VaultServerProcess(d.env) as vault:
        async with d.app() as app:
            await link(app, abrowser, "github", "alice-gh", alice)
            await link(app, abrowser, "github", "bob-gh", bob)
        # The MCP process has no store of its own: the vault server's URL and key, and the identity provider.
        env = {k: v for k, v in os.environ.items() if not k.startswith("ALTER_")}
        env |= {k: v for k, v in d.env.items() if k not in ("ALTER_VAULT_URL", "ALTER_VAULT_KEY")}
        env |= {"ALTER_BASE_URL": vault.url, "ALTER_API_KEY": key}
        command = [sys.executable, "-m", "mcp_server", "--transport", "http", "--port", "0"]
        async with await anyio.open_process(command, env=env, cwd=str(ROOT)) as process:
            assert process.stderr is not None
            seen = b""
            try:
                with anyio.fail_after(60):
                    while b" at http" not in seen:
                        seen += await process.stderr.receive()
                url = seen.decode().split(" at ", 1)[1].split()[0].removesuffix("/mcp")
                running = RunningHttp(url, None, None)  # type: ignore[arg-type]
                accounts = {}
                with anyio.fail_after(60):
                    for user, token in (("alice", alice), ("bob", bob)):
                        async with running.client(token) as client:
                            result = await client.call_tool(
                                "request", {"url": f"{d.upstream.url}/echo/x", "provider": "github"})
                            accounts[user] = payload(result)["body"]["account"]
                    async with httpx.AsyncClient(timeout=10) as http:
                        anonymous = await http.post(f"{url}/mcp", json=INITIALIZE, headers=MCP_HEADERS)
                        forged = await http.post(f"{url}/mcp", json=INITIALIZE, headers={
                            **MCP_HEADERS, "Authorization": f"Bearer {d.idp.forge('alice')}"})
            finally:
                process.send_signal(signal.SIGINT)
                with anyio.fail_after(30):
                    await process.wait()
    assert b"Local mode" not in seen  # no random local bearer in front of a multi-user deployment
    assert accounts == {"alice": "alice-gh", "bob": "bob-gh"}
    assert anonymous.status_code == 401 and forged.status_code == 401
    assert f'resource_metadata="{url}/.well-known/oauth-protected-resource/mcp"' in anonymous.headers[
        "www-authenticate"]
