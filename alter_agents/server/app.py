"""The vault server's Starlette app, and `serve` for `alter-agents vault serve`.

A signed `/sdk/*` request passes `SignedBodyLimit` (cheap header checks, then a counted body read),
then `SignedKeyBackend` (key, signature, nonce), then its endpoint; errors become responses in the
exception handlers. The browser routes (connect page, OAuth callback) and `/healthz` carry no key.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import replace

import anyio
import uvicorn
from pydantic import ValidationError
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.middleware.authentication import AuthenticationMiddleware
from starlette.routing import Route

from alter_agents import metrics
from alter_agents.errors import AlterError
from alter_agents.listen import listening_socket
from alter_agents.server import endpoints, responses
from alter_agents.server.auth import SignedKeyBackend, on_refused
from alter_agents.server.hosted import HostedConnect
from alter_agents.server.keys import ApiKeys
from alter_agents.server.limits import SignedBodyLimit
from alter_agents.server.nonces import NonceLedger
from alter_agents.settings import Settings
from alter_agents.upstream import is_loopback
from alter_agents.vault.local import LocalVault

ROUTES = [
    Route("/sdk/token", endpoints.token, methods=["POST"]),
    Route("/sdk/grants/list", endpoints.grants_list, methods=["POST"]),
    Route("/sdk/oauth/connect/session", endpoints.connect_session, methods=["POST"]),
    Route("/sdk/oauth/connect/session/poll", endpoints.connect_poll, methods=["POST"]),
    Route("/sdk/oauth/audit/api-call", endpoints.audit_call, methods=["POST"]),
    Route("/sdk/alter/audit/batch", endpoints.audit_batch, methods=["POST"]),
    Route("/sdk/alter/audit/export", endpoints.audit_export, methods=["POST"]),
    Route("/connect/{link_id}", endpoints.connect_page, methods=["GET"]),
    Route("/connect/{link_id}/{provider}", endpoints.connect_page, methods=["GET"]),
    Route("/oauth/callback", endpoints.oauth_callback, methods=["GET"]),
    Route("/healthz", endpoints.health, methods=["GET"]),
]


def create_app(vault: LocalVault | None = None, *, settings: Settings | None = None,
               host: str = "127.0.0.1") -> Starlette:
    """The ASGI app. Its settings' `public_url` is where browsers reach it (connect page, callback).

    `/metrics` (Prometheus) is served when `ALTER_METRICS` allows it for `host` (by default only on a
    loopback interface); on a public one it needs `ALTER_METRICS_TOKEN` as a bearer token.
    """
    vault = vault or LocalVault(settings)
    public_url = vault.settings.public_url or "http://127.0.0.1:8780"
    nonces = NonceLedger(vault.store)

    @asynccontextmanager
    async def lifespan(_app: Starlette) -> AsyncIterator[None]:
        await vault.open()
        try:
            yield
        finally:
            await nonces.aclose()
            await vault.aclose()

    routes = list(ROUTES)
    if metrics.metrics_enabled(os.environ.get("ALTER_METRICS"), host):
        store = vault.store
        endpoint = metrics.metrics_endpoint(os.environ.get("ALTER_METRICS_TOKEN"), public=not is_loopback(host),
                                            before=metrics.reauth_gauge(lambda: store.count_grants("needs_reauth")))
        routes.append(Route("/metrics", endpoint, methods=["GET"]))
    app = Starlette(
        routes=routes, lifespan=lifespan,
        middleware=[
            Middleware(SignedBodyLimit),
            Middleware(AuthenticationMiddleware, backend=SignedKeyBackend(ApiKeys(vault.store), nonces),
                       on_error=on_refused),
        ],
        exception_handlers={
            AlterError: responses.alter_error, ValidationError: responses.invalid_body,
            responses.InvalidBody: responses.invalid_body, 404: responses.unknown_route,
            405: responses.unknown_route, Exception: responses.crashed,
        },
    )
    app.state.context = endpoints.Context(vault=vault, hosted=HostedConnect(vault, public_url))
    return app


def serve(host: str = "127.0.0.1", port: int = 8780, settings: Settings | None = None) -> None:
    """Bind, announce the URL on stdout, and serve until interrupted. `port=0` picks a free port."""
    settings = settings or Settings.from_env()
    sock = listening_socket(host, port)
    shown = f"[{host}]" if sock.family == socket.AF_INET6 else host
    base_url = f"http://{shown}:{sock.getsockname()[1]}"
    settings = replace(settings, public_url=settings.public_url or base_url)
    app = create_app(settings=settings, host=host)
    config = uvicorn.Config(app, log_level="warning", access_log=False, lifespan="on")
    server = uvicorn.Server(config)

    def stop(_signum: int, _frame: object) -> None:
        server.should_exit = True

    # Ctrl-C and SIGTERM are ours before the announcement: a signal landing before uvicorn would take them
    # (or inside some callback, where a KeyboardInterrupt is only printed and ignored) must still stop it.
    signal.signal(signal.SIGINT, stop)
    signal.signal(signal.SIGTERM, stop)
    server.capture_signals = contextlib.nullcontext  # type: ignore[method-assign,assignment]
    print(f"alter-agents vault server listening on {base_url}", flush=True)
    anyio.run(server.serve, [sock])
