"""MCP servers for the benchmarks, each in its own process: ours, or a bare SDK server doing the raw call.

    python -m bench._mcp_servers ours|bare API_TOKEN

`ours` reads the vault's ALTER_* environment and verifies each request's bearer JWT. `bare` has no
auth and no vault: its `request` tool sends the GET with the API token it was given. Both print
their port on stdout and serve until stdin closes. `BENCH_TIME_SCALE=k` stretches our time-based
batching (audit flush, grant cache) k times, for a server run k times slower under valgrind.
"""

from __future__ import annotations

import logging
import os
import sys
from dataclasses import replace
from typing import Any

import anyio
import httpx
import uvicorn
from mcp.server import MCPServer
from mcp.server.transport_security import TransportSecuritySettings
from starlette.applications import Starlette

from alter_agents.listen import listening_socket


def _bare(token: str, port: int) -> Starlette:
    server = MCPServer("bare")
    client = httpx.AsyncClient(limits=httpx.Limits(max_connections=200, max_keepalive_connections=64))
    headers = {"Authorization": f"Bearer {token}"}

    @server.tool()
    async def request(url: str, provider: str | None = None) -> dict[str, Any]:
        """GET `url` with the API token."""
        response = await client.get(url, headers=headers)
        return {"status": response.status_code, "headers": {"content-type": response.headers["content-type"]},
                "body": response.json()}

    security = TransportSecuritySettings(allowed_hosts=[f"127.0.0.1:{port}"],
                                         allowed_origins=[f"http://127.0.0.1:{port}"])
    return server.streamable_http_app(transport_security=security, host="127.0.0.1")


def _ours(port: int) -> Starlette:
    from alter_agents import App, Settings
    from alter_agents.vault import audit, cache

    scale = float(os.environ.get("BENCH_TIME_SCALE", "1"))
    audit.FLUSH_DELAY *= scale
    cache.GRANT_CACHE_SECONDS *= scale
    from alter_agents.sessions import UserSession
    from mcp_server.auth import session_jwt
    from mcp_server.http import build_http

    url = f"http://127.0.0.1:{port}"
    app = App(settings=replace(Settings.from_env(), public_url=url))
    return build_http(app, UserSession(session_jwt), host="127.0.0.1", port=port, public_url=url).asgi


async def _serve(kind: str, token: str) -> None:
    sock = listening_socket("127.0.0.1", 0)
    port = sock.getsockname()[1]
    asgi = _ours(port) if kind == "ours" else _bare(token, port)
    server = uvicorn.Server(uvicorn.Config(asgi, log_level="warning", access_log=False))
    async with anyio.create_task_group() as tg:
        tg.start_soon(lambda: server.serve(sockets=[sock]))
        while not server.started:  # noqa: ASYNC110 (uvicorn only exposes a flag)
            await anyio.sleep(0.01)
        print(port, flush=True)
        await anyio.to_thread.run_sync(sys.stdin.read)
        server.should_exit = True


if __name__ == "__main__":
    logging.disable(logging.INFO)  # per-request INFO lines would cost both sides, and flood the terminal
    anyio.run(_serve, sys.argv[1], sys.argv[2])
