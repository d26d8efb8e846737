"""Shared helpers for the MCP server tests: link accounts as a human would, run the HTTP server."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, replace
from typing import Any

import anyio
import httpx2
import uvicorn
from mcp import Client
from mcp.client.streamable_http import streamable_http_client
from mcp_types import CallToolResult

from alter_agents import App
from alter_agents.listen import listening_socket
from alter_agents.models import ConnectResult
from alter_agents.sessions import Session
from mcp_server.http import HttpServer, build_http
from tests.conftest import Deployment
from tests.fixtures import AsyncBrowser

ERAS = ["legacy", "2026-07-28"]


async def link(app: App, browser: AsyncBrowser, provider: str, account: str, token: str | None,
               label: str | None = None) -> ConnectResult:
    """Connect `account` the way a user does: start, approve in the browser, wait for the grant."""
    start = await app.start_connect(provider, user_token=token, label=label, headless=token is None)
    await browser.aapprove(start.connect_url, account)
    status = await app.vault.wait_connect(start.session_id, 10)
    return status.results[0]


def payload(result: CallToolResult) -> dict[str, Any]:
    """The structured content, checked to equal the JSON text block (clients that read only text)."""
    assert result.structured_content is not None
    text = result.content[0]
    assert json.loads(text.text) == result.structured_content  # type: ignore[union-attr]
    return result.structured_content


@dataclass
class RunningHttp:
    url: str
    http: HttpServer
    app: App

    def client(self, token: str | None, mode: str = "legacy", **kwargs: Any) -> Client:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        transport = streamable_http_client(f"{self.url}/mcp", http_client=httpx2.AsyncClient(headers=headers,
                                                                                            timeout=30))
        return Client(transport, mode=mode, **kwargs)  # type: ignore[arg-type]


@asynccontextmanager
async def http_server(deployment: Deployment, session_for: Any, *, connect_wait: float = 10.0,
                      local: bool = False, **build: Any) -> AsyncIterator[RunningHttp]:
    """The real HTTP app under uvicorn on 127.0.0.1, on this test's event loop."""
    sock = listening_socket("127.0.0.1", 0)
    port = sock.getsockname()[1]
    url = f"http://127.0.0.1:{port}"
    settings = replace(deployment.settings, public_url=url)
    app = App(settings=settings)
    session: Session = session_for(settings)
    http = build_http(app, session, host="127.0.0.1", port=port, public_url=url, connect_wait=connect_wait,
                      local_token="local-test-token" if local else None, **build)
    server = uvicorn.Server(uvicorn.Config(http.asgi, log_level="warning", access_log=False))
    async with anyio.create_task_group() as tg:
        tg.start_soon(lambda: server.serve(sockets=[sock]))
        with anyio.fail_after(10):
            while not server.started:
                await anyio.sleep(0.02)
        try:
            yield RunningHttp(url, http, app)
        finally:
            server.should_exit = True
    sock.close()
    await app.aclose()
