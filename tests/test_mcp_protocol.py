"""Protocol edges a real client meets: logging, serverInfo, malformed messages, the local-mode 401.

Driven by the real `mcp` client over stdio and HTTP in both protocol eras, raw HTTP for malformed
bodies and a raw stdio subprocess for malformed lines.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from importlib.metadata import version
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest
from mcp import Client, StdioServerParameters
from mcp.shared.exceptions import MCPError
from mcp_types import SERVER_INFO_META_KEY, EmptyResult, Implementation, LoggingMessageNotificationParams, Request

from alter_agents.sessions import LocalSession, UserSession
from alter_agents.settings import Settings
from mcp_server.auth import session_jwt
from tests.conftest import Deployment
from tests.fixtures import AsyncBrowser
from tests.mcp_support import http_server, link

pytestmark = [pytest.mark.timeout(120), pytest.mark.filterwarnings("ignore:The logging capability is deprecated")]
ROOT = Path(__file__).resolve().parent.parent
MCP_HEADERS = {"Accept": "application/json, text/event-stream", "Content-Type": "application/json"}
INITIALIZE = {"jsonrpc": "2.0", "id": 1, "method": "initialize",
              "params": {"protocolVersion": "2025-11-25", "capabilities": {},
                         "clientInfo": {"name": "raw", "version": "1"}}}


def per_user(_settings: Settings) -> UserSession:
    return UserSession(session_jwt)


def stdio(env: dict[str, str], *args: str) -> StdioServerParameters:
    return StdioServerParameters(command=sys.executable, args=["-m", "mcp_server", *args], env=env, cwd=str(ROOT))


def raw(method: str, **params: Any) -> Request[dict[str, Any], str]:
    """A request the typed client would not send (a bad level, a method of another era)."""
    return Request[dict[str, Any], str](method=method, params=params)


class Logs:
    """The `notifications/message` entries a client received."""

    def __init__(self) -> None:
        self.entries: list[LoggingMessageNotificationParams] = []

    async def __call__(self, params: LoggingMessageNotificationParams) -> None:
        self.entries.append(params)

    @property
    def levels(self) -> set[str]:
        return {e.level for e in self.entries}


# -- logging and serverInfo ------------------------------------------------------------------


@pytest.mark.parametrize(("mode", "era"), [("legacy", "2025-11-25"), ("auto", "2026-07-28")])
async def test_a_host_sees_the_server_version_and_logging_support_over_stdio(
    sqlite_deployment: Deployment, mode: str, era: str
) -> None:
    d = sqlite_deployment.local()
    with anyio.fail_after(60):
        async with Client(stdio(d.env), mode=mode) as client:  # "auto" discovers, then speaks 2026-07-28
            negotiated, info, capabilities = client.protocol_version, client.server_info, client.server_capabilities
            stamp = ((await client.list_tools()).meta or {}).get(SERVER_INFO_META_KEY)
    assert negotiated == era
    assert stamp is None or Implementation.model_validate(stamp) == info  # 2026-07-28 stamps every result
    assert info is not None and info.name == "alter-agents"
    assert info.version == version("alter-agents")
    assert capabilities.logging is not None


async def test_logging_set_level_is_honoured_on_a_2025_11_25_connection(
    sqlite_deployment: Deployment, abrowser: AsyncBrowser
) -> None:
    d = sqlite_deployment.local()
    async with d.app() as app:
        await link(app, abrowser, "github", "octo", None)
    ok = {"url": f"{d.upstream.url}/echo/x", "provider": "github"}
    failing = {"url": f"{d.upstream.url}/echo/x", "provider": "google"}
    default_logs, warning_logs, debug_logs = Logs(), Logs(), Logs()
    with anyio.fail_after(60):
        async with Client(stdio(d.env), mode="legacy", logging_callback=default_logs) as client:
            await client.call_tool("request", ok)
        async with Client(stdio(d.env), mode="legacy", logging_callback=warning_logs) as client:
            assert await client.set_logging_level("warning") is not None  # the conformance check: `{}` back
            await client.call_tool("request", ok)
            await client.call_tool("request", failing)
        async with Client(stdio(d.env), mode="legacy", logging_callback=debug_logs) as client:
            await client.set_logging_level("debug")
            await client.call_tool("request", ok)
    assert default_logs.levels == {"info"}
    assert default_logs.entries[0].data["grant"]["account"] == "octo"
    assert warning_logs.levels == {"warning"}
    assert warning_logs.entries[0].data["error"] == "not_connected"
    assert debug_logs.levels == {"info", "debug"}
    assert all(e.logger == "alter-agents" for e in default_logs.entries + warning_logs.entries)


async def test_an_invalid_log_level_is_invalid_params(sqlite_deployment: Deployment) -> None:
    d = sqlite_deployment.local()
    with anyio.fail_after(60):
        async with Client(stdio(d.env), mode="legacy") as client:
            with pytest.raises(MCPError) as refused:
                await client.session.send_request(raw("logging/setLevel", level="banana"), EmptyResult)
    assert refused.value.error.code == -32602


async def test_a_2026_07_28_request_gets_log_entries_only_when_it_opts_in(
    sqlite_deployment: Deployment, abrowser: AsyncBrowser
) -> None:
    d = sqlite_deployment
    alice = d.idp.issue("alice")
    opted, silent = Logs(), Logs()
    async with http_server(d, per_user) as srv:
        await link(srv.app, abrowser, "github", "alice-gh", alice)
        arguments = {"url": f"{d.upstream.url}/echo/x", "provider": "github"}
        with anyio.fail_after(30):
            async with srv.client(alice, "2026-07-28", logging_callback=opted, log_level="warning") as client:
                await client.call_tool("request", arguments)
                await client.call_tool("request", {**arguments, "provider": "google"})
            async with srv.client(alice, "2026-07-28", logging_callback=silent) as client:
                await client.call_tool("request", {**arguments, "provider": "google"})
                with pytest.raises(MCPError) as gone:
                    await client.session.send_request(raw("logging/setLevel", level="debug"), EmptyResult)
    assert opted.levels == {"warning"} and opted.entries[0].data["error"] == "not_connected"
    assert silent.entries == []
    assert gone.value.error.code == -32601  # removed in 2026-07-28: "Method not found"


# -- malformed messages ----------------------------------------------------------------------


async def test_every_malformed_http_message_gets_a_json_rpc_error(sqlite_deployment: Deployment) -> None:
    d = sqlite_deployment
    headers = {**MCP_HEADERS, "Authorization": f"Bearer {d.idp.issue('alice')}"}
    huge = b'{"jsonrpc": "2.0", "id": 1, "method": "ping", "params": {"pad": "' + b"x" * (5 * 1024 * 1024) + b'"}}'
    async with http_server(d, per_user) as srv, httpx.AsyncClient(timeout=30) as http:
        url = f"{srv.url}/mcp"
        oversized = await http.post(url, content=huge, headers=headers)
        wrong_type = await http.post(url, content=json.dumps(INITIALIZE),
                                     headers={**headers, "Content-Type": "text/plain"})
        not_json = await http.post(url, content=b"{not json", headers=headers)
        bad_host = await http.post(url, json=INITIALIZE, headers={**headers, "Host": "rebound.example"})
    for response, status in ((oversized, 413), (wrong_type, 400), (not_json, 400), (bad_host, 421)):
        assert response.status_code == status, response.text
        assert response.headers["content-type"].startswith("application/json")
        body = response.json()
        assert body["jsonrpc"] == "2.0" and body["id"] is None
        assert body["error"]["code"] in (-32600, -32700) and body["error"]["message"]


def test_every_malformed_stdio_line_gets_a_json_rpc_error(sqlite_deployment: Deployment) -> None:
    d = sqlite_deployment.local()
    lines = [b"this is not json", b'{"id": 7, "hello": "world"}', b"[]", b'{"jsonrpc": "2.0", "id": "x"}',
             json.dumps(INITIALIZE).encode()]
    with subprocess.Popen([sys.executable, "-m", "mcp_server"], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, env={**os.environ, **d.env}, cwd=str(ROOT)) as server:
        assert server.stdin is not None and server.stdout is not None
        server.stdin.write(b"\n".join(lines) + b"\n")
        server.stdin.flush()
        answers = [json.loads(server.stdout.readline()) for _ in lines]
        server.stdin.close()
        server.wait(timeout=30)
    parse, unknown, batch, no_method, initialized = answers
    assert parse["id"] is None and parse["error"]["code"] == -32700
    assert unknown["id"] == 7 and unknown["error"]["code"] == -32600
    assert batch["id"] is None and batch["error"]["code"] == -32600
    assert no_method["id"] == "x" and no_method["error"]["code"] == -32600
    assert initialized["id"] == 1 and initialized["result"]["serverInfo"]["name"] == "alter-agents"


# -- authentication answers ------------------------------------------------------------------


async def test_local_mode_over_http_names_no_authorization_server(
    sqlite_deployment: Deployment, abrowser: AsyncBrowser
) -> None:
    d = sqlite_deployment.local()
    async with http_server(d, lambda _s: LocalSession(), local=True) as srv, httpx.AsyncClient(timeout=10) as http:
        anonymous = await http.post(f"{srv.url}/mcp", json=INITIALIZE, headers=MCP_HEADERS)
        wrong = await http.post(f"{srv.url}/mcp", json=INITIALIZE,
                                headers={**MCP_HEADERS, "Authorization": "Bearer not-it"})
        metadata = await http.get(f"{srv.url}/.well-known/oauth-protected-resource/mcp")
        right = await http.post(f"{srv.url}/mcp", json=INITIALIZE,
                                headers={**MCP_HEADERS, "Authorization": "Bearer local-test-token"})
    assert anonymous.status_code == 401 and wrong.status_code == 401
    for refused in (anonymous, wrong):
        assert "resource_metadata" not in refused.headers["www-authenticate"]
    assert "printed at start" in wrong.headers["www-authenticate"]
    assert metadata.status_code == 404
    assert right.status_code == 200


@pytest.mark.parametrize("bad", ["expired", "wrong-audience", "forged", "garbage"])
async def test_a_401_says_why_the_token_was_refused(
    sqlite_deployment: Deployment, bad: str, caplog: pytest.LogCaptureFixture
) -> None:
    d = sqlite_deployment
    token = {"expired": d.idp.issue("alice", expires_in=-120),
             "wrong-audience": d.idp.issue("alice", audience="someone-else"),
             "forged": d.idp.forge("alice"), "garbage": "not.a.jwt"}[bad]
    expected = {"expired": "expired", "wrong-audience": "audience", "forged": "signature",
                "garbage": "well-formed"}[bad]
    caplog.set_level(logging.WARNING, "mcp_server.auth")
    async with http_server(d, per_user) as srv, httpx.AsyncClient(timeout=10) as http:
        refused = await http.post(f"{srv.url}/mcp", json=INITIALIZE,
                                  headers={**MCP_HEADERS, "Authorization": f"Bearer {token}"})
    challenge = refused.headers["www-authenticate"]
    description = challenge.split('error_description="', 1)[1].split('"', 1)[0]
    assert refused.status_code == 401
    assert expected in description.lower(), challenge
    assert expected in refused.json()["error_description"].lower()
    assert 'resource_metadata="' in challenge
    logged = [r.getMessage() for r in caplog.records if r.name == "mcp_server.auth"]
    assert any(expected in line.lower() for line in logged), logged
    assert not any(token in line for line in logged)
