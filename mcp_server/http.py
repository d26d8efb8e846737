"""The streamable HTTP transport: bearer auth, DNS-rebinding protection and the OAuth callback route.

Sessions of 2025-11-25 clients live in the replica that opened them: behind several replicas, route by
`Mcp-Session-Id` (docs/mcp.md, examples/haproxy-mcp.cfg). 2026-07-28 clients need no affinity.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import sys
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import anyio
import uvicorn
from mcp.server.mcpserver import MCPServer
from mcp.server.transport_security import TransportSecuritySettings
from starlette.requests import Request
from starlette.responses import HTMLResponse, RedirectResponse, Response
from starlette.types import ASGIApp

from alter_agents import metrics
from alter_agents.app import App
from alter_agents.errors import ConnectError
from alter_agents.grant_tools import GrantTool
from alter_agents.sessions import Session
from alter_agents.settings import Settings
from alter_agents.tools import DEFAULT_CONNECT_WAIT
from alter_agents.upstream import is_loopback
from alter_agents.vault.connect import CONNECT_TTL_SECONDS, START_PATH, ConnectFlows
from alter_agents.vault.identity import JWTVerifier
from alter_agents.vault.local import LocalVault
from mcp_server.auth import JWTTokenVerifier, StaticTokenVerifier, auth_settings, new_bearer_token
from mcp_server.edges import (
    DEFAULT_SESSIONS_PER_USER,
    JsonRpcErrors,
    LocalBearer,
    ReplicaSessionIds,
    SessionQuota,
)
from mcp_server.server import build_server

CALLBACK_PATH = "/oauth/callback"
_LOOPBACK = ("127.0.0.1", "localhost", "::1")


@dataclass
class HttpServer:
    """The ASGI app, and the bearer token to print when no identity provider is configured."""

    asgi: ASGIApp
    mcp: MCPServer
    public_url: str
    local_token: str | None


def build_http(app: App, session: Session, *, host: str, port: int, public_url: str,
               allowed_hosts: tuple[str, ...] = (), connect_wait: float = DEFAULT_CONNECT_WAIT,
               local_token: str | None = None, state_keys: tuple[str, ...] = (),
               extra_tools: Sequence[GrantTool] = (),
               sessions_per_user: int = DEFAULT_SESSIONS_PER_USER, replica_id: str | None = None) -> HttpServer:
    """`app`'s vault must be configured with `public_url` so connect redirects come back here.

    With an identity provider (in the environment, whether the vault is embedded or a vault server)
    every request's JWT is verified; without one, the local user is served behind a random token.
    `replica_id` names this replica in its session ids, for a balancer to route 2025-11-25 sessions by.
    """
    settings: Settings = app.vault.settings  # type: ignore[attr-defined]
    jwt = _jwt_verifier(app, settings)
    token = None if jwt else (local_token or new_bearer_token())
    auth = auth_settings(public_url, settings.idp_issuer or "") if jwt else None
    server = build_server(app, session, connect_wait=connect_wait, auth=auth, token_verifier=jwt,
                          state_keys=state_keys, extra_tools=extra_tools)
    if isinstance(app.vault, LocalVault):
        _add_callback_route(server, app.vault)
    _add_metrics_route(server, app, host, token)
    asgi: ASGIApp = server.streamable_http_app(
        transport_security=_transport_security(host, public_url, allowed_hosts), host=host)
    asgi = SessionQuota(asgi, server.session_manager, sessions_per_user)
    if token is not None:
        asgi = LocalBearer(asgi, StaticTokenVerifier(token))
    if replica_id:
        asgi = ReplicaSessionIds(asgi, replica_id)
    return HttpServer(JsonRpcErrors(asgi), server, public_url, token)


async def serve_http(http: HttpServer, app: App, sock: socket.socket) -> None:
    """Serve until SIGINT or SIGTERM; the local token is printed once, to stderr."""
    # Open SSE streams would hold a graceful shutdown forever: a signal gives them a second, then closes them.
    config = uvicorn.Config(http.asgi, log_level="warning", access_log=False, timeout_graceful_shutdown=1)
    server = uvicorn.Server(config)
    # The signals are ours from the first instant (uvicorn would take them only once started, and re-raise).
    server.capture_signals = contextlib.nullcontext  # type: ignore[method-assign,assignment]
    try:
        async with _stop_on_signal(server):
            host, port = sock.getsockname()[:2]
            print(f"alter-agents MCP server at {http.public_url}/mcp", file=sys.stderr, flush=True)
            print(f"Listening on {host}:{port}; press Ctrl-C to stop.", file=sys.stderr, flush=True)
            if http.local_token:
                print(f"Local mode: send 'Authorization: Bearer {http.local_token}' (printed once).",
                      file=sys.stderr, flush=True)
            await server.serve(sockets=[sock])
    finally:
        with anyio.CancelScope(shield=True), anyio.move_on_after(5):
            await app.aclose()
    print("alter-agents MCP server stopped.", file=sys.stderr, flush=True)


@contextlib.asynccontextmanager
async def _stop_on_signal(server: uvicorn.Server) -> AsyncIterator[None]:
    with anyio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async with anyio.create_task_group() as tg:

            async def wait() -> None:
                async for _ in signals:
                    server.should_exit = True

            tg.start_soon(wait)
            try:
                yield
            finally:
                tg.cancel_scope.cancel()


def _add_metrics_route(server: Any, app: App, host: str, local_token: str | None) -> None:
    """`/metrics` for Prometheus: on by default on loopback only; a public one needs ALTER_METRICS_TOKEN.
    In local mode the printed bearer token guards it like everything else this server serves."""
    if not metrics.metrics_enabled(os.environ.get("ALTER_METRICS"), host):
        return
    vault = app.vault

    async def before() -> None:
        sessions = getattr(server.session_manager, "_server_instances", None)  # the SDK keeps no public count
        metrics.SESSIONS.labels("mcp").set(len(sessions) if sessions is not None else 0)
        if isinstance(vault, LocalVault):
            metrics.REAUTH_GRANTS.set(await vault.store.count_grants("needs_reauth"))

    endpoint = metrics.metrics_endpoint(os.environ.get("ALTER_METRICS_TOKEN") or local_token,
                                        public=not is_loopback(host), before=before)
    server.custom_route("/metrics", methods=["GET"])(endpoint)


def _jwt_verifier(app: App, settings: Settings) -> JWTTokenVerifier | None:
    if not settings.identity_provider_configured:
        return None
    vault = app.vault
    jwt = vault.verifier if isinstance(vault, LocalVault) else None
    return JWTTokenVerifier(jwt or JWTVerifier(settings.idp_issuer or "", settings.idp_audience,
                                               settings.idp_jwks_url, settings.idp_groups_claim))


def _add_callback_route(server: MCPServer, vault: LocalVault) -> None:
    """The provider redirects the user's browser here; flow state is in the store, so any replica can finish."""

    @server.custom_route(CALLBACK_PATH, methods=["GET"])  # type: ignore[untyped-decorator]
    async def oauth_callback(request: Request) -> Response:
        state = request.query_params.get("state", "")
        browser = request.cookies.get(ConnectFlows.browser_cookie(state))
        finished, message = await vault.complete_connect(dict(request.query_params), browser)
        page = f"<!doctype html><title>alter-agents</title><p>{_escape(message)}</p>"
        return HTMLResponse(page, status_code=200 if finished else 400)

    # The connect link handed out: a confirm page naming who started the flow, usable in one browser.
    @server.custom_route(START_PATH + "/{state}", methods=["GET"])  # type: ignore[untyped-decorator]
    async def connect_confirm(request: Request) -> Response:
        status, page = await vault.connect_confirm_page(request.path_params["state"])
        return HTMLResponse(page, status_code=status, headers=_NO_STORE)

    @server.custom_route(START_PATH + "/{state}", methods=["POST"])  # type: ignore[untyped-decorator]
    async def connect_open(request: Request) -> Response:
        state = request.path_params["state"]
        try:
            authorize_url, secret = await vault.open_connect_link(state)
        except ConnectError as exc:
            return HTMLResponse(f"<!doctype html><title>alter-agents</title><p>{_escape(exc.message)}</p>",
                                status_code=410, headers=_NO_STORE)
        response = RedirectResponse(authorize_url, status_code=303, headers=_NO_STORE)
        response.set_cookie(ConnectFlows.browser_cookie(state), secret, max_age=int(CONNECT_TTL_SECONDS),
                            path=CALLBACK_PATH, httponly=True, samesite="lax",
                            secure=request.url.scheme == "https")
        return response


_NO_STORE = {"cache-control": "no-store", "referrer-policy": "no-referrer"}


def _transport_security(host: str, public_url: str, extra: tuple[str, ...]) -> TransportSecuritySettings:
    public = urlsplit(public_url)
    hosts = [public.netloc, *extra]
    origins = [f"{public.scheme}://{public.netloc}"]
    if host in _LOOPBACK or public.hostname in _LOOPBACK:
        hosts += ["127.0.0.1:*", "localhost:*", "[::1]:*"]
        origins += ["http://127.0.0.1:*", "http://localhost:*", "http://[::1]:*"]
    return TransportSecuritySettings(enable_dns_rebinding_protection=True, allowed_hosts=hosts,
                                     allowed_origins=origins)


def _escape(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
