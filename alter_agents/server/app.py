"""The vault server: the LocalVault over HTTP, in the wire protocol of the official `alter-sdk` client.

Every `/sdk/*` call is a signed POST (see `signing`) made with an API key (see `keys`). Errors are JSON
with the official `error` codes plus our own error payload under `alter_error`, so RemoteVault raises
exactly the error the embedded vault would have raised. No route answers 404 for an unknown path: the
official client reads any 404 as "grant not found".
"""

from __future__ import annotations

import base64
import json
import socket
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import replace
from html import escape
from typing import Any

import anyio
import httpx
import uvicorn
from pydantic import BaseModel, ValidationError
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
from starlette.routing import Route

from alter_agents import errors
from alter_agents.errors import AlterError, AmbiguousGrantError, InvalidArgumentsError
from alter_agents.models import Grant, ReleasedCredential
from alter_agents.server.hosted import HostedConnect, LinkNotFound
from alter_agents.server.keys import ApiKeyInfo, ApiKeys, KeyRejected
from alter_agents.server.signing import NonceLedger, SignatureRejected, verify
from alter_agents.server.wire import (
    AuditRequest,
    Candidate,
    ConnectSessionRequest,
    GrantExtension,
    GrantItem,
    GrantListRequest,
    GrantListResponse,
    PollRequest,
    PrincipalType,
    TokenRequest,
    TokenResponse,
    WireInjection,
    rfc3339,
)
from alter_agents.settings import Settings
from alter_agents.vault.local import LocalVault
from alter_agents.vault.loopback import page
from alter_agents.vault.resolve import matches_account

MAX_BODY_BYTES = 2 * 1024 * 1024
_STATUS = {
    "ambiguous_grant": 409, "not_connected": 404, "grant_not_found": 404, "reauth_required": 403,
    "host_not_allowed": 422, "unknown_provider": 400, "invalid_arguments": 400, "unauthenticated": 401,
    "upstream_timeout": 504, "upstream_unreachable": 503, "connect_timeout": 408, "connect_denied": 400,
    "rate_limited": 429,
}
# The official client keys its typed errors on these codes (403 → credential revoked, and so on).
_WIRE_CODE = {"reauth_required": "credential_revoked", "host_not_allowed": "blocked_destination",
              "unauthenticated": "jwt_validation_error", "rate_limited": "rate_limit_exceeded"}


def error_response(exc: AlterError, **extra: Any) -> JSONResponse:
    status = _STATUS.get(exc.code, 400 if isinstance(exc, errors.ConnectError) else 500)
    body = exc.payload().error.model_dump(exclude_none=True)
    wire = _WIRE_CODE.get(exc.code, exc.code)
    if isinstance(exc, errors.ConnectError) and exc.code == "internal":
        wire = "connect_config_error"
    content = {"error": wire, "message": exc.message, **extra, "alter_error": body,
               "alter_error_type": type(exc).__name__}
    if provider := exc.data.get("provider"):
        content.setdefault("provider_id", provider)
    headers = {"Retry-After": "1"} if status in (429, 503) else None
    return JSONResponse(content, status_code=status, headers=headers)


def _plain_error(status: int, code: str, message: str) -> JSONResponse:
    return JSONResponse({"error": code, "message": message}, status_code=status)


class VaultServer:
    """Routes of the vault server over one LocalVault."""

    def __init__(self, vault: LocalVault, public_url: str) -> None:
        self.vault = vault
        self.keys = ApiKeys(vault.store)
        self.nonces = NonceLedger(vault.store)
        self.hosted = HostedConnect(vault, public_url)

    # -- authentication ------------------------------------------------------------------------

    async def _authenticate(self, request: Request) -> tuple[ApiKeyInfo, dict[str, Any]]:
        """The caller's key, once its signature, timestamp and nonce check out; and the JSON body."""
        headers = {k.lower(): v for k, v in request.headers.items()}
        declared = headers.get("content-length", "0")
        if not declared.isdigit() or int(declared) > MAX_BODY_BYTES:
            raise _Reject(413, "payload_too_large", "The request body is too large.")
        body = await request.body()
        if len(body) > MAX_BODY_BYTES:
            raise _Reject(413, "payload_too_large", "The request body is too large.")
        api_key = headers.get("x-api-key", "")
        try:
            info = await self.keys.authenticate(api_key)
            nonce = verify(api_key, request.method, request.url.path, request.url.query, headers, body)
            await self.nonces.remember(info.key_id, nonce)
        except (KeyRejected, SignatureRejected) as exc:
            raise _Reject(401, exc.code, exc.message) from None
        try:
            data = json.loads(body or b"{}")
        except ValueError:
            raise _Reject(400, "invalid_json", "The body is not JSON.") from None
        if not isinstance(data, dict):
            raise _Reject(400, "invalid_json", "The body must be a JSON object.")
        return info, data

    # -- /sdk routes ---------------------------------------------------------------------------

    async def token(self, key: ApiKeyInfo, data: dict[str, Any]) -> Response:
        req = TokenRequest.model_validate(data)
        if req.request is None:
            raise InvalidArgumentsError("request.url is required: the vault checks where the credential goes.")
        provider = req.provider_id
        if not provider and not req.grant_id:
            provider = self.vault.providers.for_host(_host(req.request.url)).name
        try:
            credential = await self.vault.release_for(
                url=req.request.url, method=req.request.method, provider=provider, user_token=req.user_token,
                account=req.account, label=req.label, grant_id=req.grant_id,
            )
        except AmbiguousGrantError as exc:
            return error_response(exc, account_was_provided=bool(req.account),
                                  account_identifiers=[a.account for a in exc.accounts],
                                  candidates=[c.model_dump() for c in await self._candidates(req, exc)])
        await self.vault.record_call(credential.grant, method=req.request.method, url=req.request.url,
                                     status=None, latency_ms=None, principal=credential.principal,
                                     action="release", error=f"key:{key.key_id}")
        return _json(_token_response(credential))

    async def _candidates(self, req: TokenRequest, exc: AmbiguousGrantError) -> list[Candidate]:
        identity = await self.vault.identify(req.user_token)
        owners = identity.owners() if identity else ["app"]
        stored = await self.vault.store.list_grants(owners, exc.provider, statuses=("active", "needs_reauth"))
        grants = [s.grant for s in stored if not req.account or matches_account(s.grant, req.account)]
        if req.label:
            grants = [g for g in grants if (g.label or "").casefold() == req.label.casefold()]
        return [Candidate(grant_id=g.grant_id, label=g.label, account_identifier=g.account,
                          account_display_name=g.display_name) for g in grants]

    async def grants_list(self, key: ApiKeyInfo, data: dict[str, Any]) -> Response:
        req = GrantListRequest.model_validate(data)
        if req.user_token or req.alter_owner_scope == "session":
            found = await self.vault.list_grants(user_token=req.user_token, provider=req.provider_id)
        else:
            found = await self.vault.list_grants(provider=req.provider_id, everyone=True)
        if req.status:
            found = [g for g in found if g.status == req.status]
        if req.account:
            found = [g for g in found if matches_account(g, req.account)]
        if req.label:
            found = [g for g in found if (g.label or "").casefold() == req.label.casefold()]
        page_ = found[req.offset:req.offset + req.limit]
        return _json(GrantListResponse(
            grants=[self._grant_item(g) for g in page_], total=len(found), limit=req.limit, offset=req.offset,
            has_more=req.offset + len(page_) < len(found),
        ))

    def _grant_item(self, grant: Grant) -> GrantItem:
        spec = self.vault.providers.get(grant.provider)
        oauth = grant.kind == "oauth2"
        return GrantItem(
            grant_kind="oauth" if oauth else "managed_secret", grant_id=grant.grant_id,
            provider_id=grant.provider if oauth else None,
            managed_secret_id=None if oauth else grant.provider, managed_secret_slug=None if oauth else grant.provider,
            managed_secret_name=None if oauth else (spec.display_name or grant.provider),
            status=grant.status, scopes=grant.scopes, account_identifier=grant.account,
            account_display_name=grant.display_name, label=grant.label, expires_at=rfc3339(grant.expires_at),
            created_at=rfc3339(grant.created_at) or "", principal_type=_principal_type(grant.owner, oauth),
            alter_agents=GrantExtension(grant=grant, hosts=list(spec.hosts), allow_http=spec.allow_http,
                                        injection=WireInjection.of(spec.inject.to_injection())),
        )

    async def connect_session(self, key: ApiKeyInfo, data: dict[str, Any]) -> Response:
        req = ConnectSessionRequest.model_validate(data)
        created = await self.hosted.create(
            key_id=key.key_id, providers=req.allowed_providers, user_token=req.user_token,
            headless=req.alter_headless, label=req.label, scopes=req.required_scopes,
        )
        return _json(created)

    async def connect_poll(self, key: ApiKeyInfo, data: dict[str, Any]) -> Response:
        return _json(await self.hosted.poll(PollRequest.model_validate(data).session_token))

    async def audit_call(self, key: ApiKeyInfo, data: dict[str, Any]) -> Response:
        req = AuditRequest.model_validate(data)
        grant = await self.vault.get_grant(req.grant_id)
        if grant is None:
            return JSONResponse({"status": "ignored"}, status_code=202)
        await self.vault.record_call(grant, method=req.method, url=req.url, status=req.response_status or None,
                                     latency_ms=req.latency_ms, principal=f"key:{key.key_id}")
        return JSONResponse({"status": "recorded"}, status_code=202)

    # -- browser routes ------------------------------------------------------------------------

    async def connect_page(self, request: Request) -> Response:
        link_id = request.path_params["link_id"]
        provider = request.path_params.get("provider")
        try:
            names = await self.hosted.providers_of(link_id)
            if provider is None and len(names) == 1:
                provider = names[0]
            if provider is not None:
                return RedirectResponse(await self.hosted.begin(link_id, provider), status_code=302)
        except LinkNotFound:
            return HTMLResponse(page("Link expired", "This connect link is unknown or expired; start again."), 404)
        except AlterError as exc:
            return HTMLResponse(page("Cannot connect", exc.message), 400)
        links = "".join(f'<li><a href="/connect/{escape(link_id)}/{escape(n)}">{escape(n)}</a></li>' for n in names)
        return HTMLResponse(page("Connect an account", "Choose a provider:").replace(
            "</body>", f"<ul>{links}</ul></body>"))

    async def oauth_callback(self, request: Request) -> Response:
        finished, message = await self.vault.complete_connect(dict(request.query_params))
        return HTMLResponse(page("alter-agents" if finished else "Sign-in not completed", message),
                            200 if finished else 400)


class _Reject(Exception):
    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.response = _plain_error(status, code, message)


def _json(model: BaseModel) -> JSONResponse:
    return JSONResponse(model.model_dump(mode="json", exclude_none=True))


def _host(url: str) -> str:
    try:
        return httpx.URL(url).host
    except (httpx.InvalidURL, TypeError):
        raise InvalidArgumentsError(f"{url!r} is not an absolute URL.") from None


def _principal_type(owner: str, oauth: bool) -> PrincipalType:
    if owner == "app":
        return "system"
    if owner.startswith("group:"):
        return "group" if not oauth else "user"  # the official OAuth item has no group principal
    return "user"


def _token_response(credential: ReleasedCredential) -> TokenResponse:
    grant, injection = credential.grant, credential.injection
    access_token, header, fmt = credential.token, injection.header or "Authorization", injection.format
    extra: list[dict[str, str]] | None = None
    if injection.basic:
        access_token = base64.b64encode(f"{credential.token}:".encode()).decode()
        header, fmt = "Authorization", "Basic {token}"
    elif injection.query:
        extra = [{"target": "query_param", "key": injection.query, "value_source": "token"}]
        header, fmt = "Authorization", "Bearer {token}"
    return TokenResponse(
        access_token=access_token, grant_id=grant.grant_id, provider_id=grant.provider,
        expires_at=rfc3339(grant.expires_at), scopes=grant.scopes, injection_header=header, injection_format=fmt,
        additional_injections=extra,
        alter_agents=GrantExtension(grant=grant, hosts=list(credential.hosts), allow_http=credential.allow_http,
                                    injection=WireInjection.of(injection)),
    )


SdkHandler = Callable[[ApiKeyInfo, dict[str, Any]], Awaitable[Response]]


def _sdk(handler: SdkHandler, server: VaultServer) -> Callable[[Request], Awaitable[Response]]:
    async def endpoint(request: Request) -> Response:
        try:
            key, data = await server._authenticate(request)
            return await handler(key, data)
        except _Reject as exc:
            return exc.response
        except ValidationError as exc:
            return _plain_error(422, "validation_error", str(exc.errors(include_url=False)[:5]))
        except AlterError as exc:
            return error_response(exc)

    return endpoint


def create_app(vault: LocalVault | None = None, *, settings: Settings | None = None) -> Starlette:
    """The ASGI app. Its settings' `public_url` is where browsers reach it (connect page, callback)."""
    vault = vault or LocalVault(settings)
    public_url = vault.settings.public_url or "http://127.0.0.1:8780"
    server = VaultServer(vault, public_url)

    @asynccontextmanager
    async def lifespan(_app: Starlette) -> AsyncIterator[None]:
        await vault.open()
        try:
            yield
        finally:
            await vault.aclose()

    async def health(_request: Request) -> Response:
        return JSONResponse({"status": "ok"})

    async def unknown(_request: Request, exc: Exception) -> Response:
        status = exc.status_code if isinstance(exc, HTTPException) and exc.status_code == 405 else 501
        return _plain_error(status, "unknown_route", "This vault server has no such route.")

    async def crashed(_request: Request, exc: Exception) -> Response:
        return _plain_error(500, "internal", f"The vault server failed: {type(exc).__name__}.")

    routes = [
        Route("/sdk/token", _sdk(server.token, server), methods=["POST"]),
        Route("/sdk/grants/list", _sdk(server.grants_list, server), methods=["POST"]),
        Route("/sdk/oauth/connect/session", _sdk(server.connect_session, server), methods=["POST"]),
        Route("/sdk/oauth/connect/session/poll", _sdk(server.connect_poll, server), methods=["POST"]),
        Route("/sdk/oauth/audit/api-call", _sdk(server.audit_call, server), methods=["POST"]),
        Route("/connect/{link_id}", server.connect_page, methods=["GET"]),
        Route("/connect/{link_id}/{provider}", server.connect_page, methods=["GET"]),
        Route("/oauth/callback", server.oauth_callback, methods=["GET"]),
        Route("/healthz", health, methods=["GET"]),
    ]
    app = Starlette(routes=routes, lifespan=lifespan,
                    exception_handlers={404: unknown, 405: unknown, Exception: crashed})
    app.state.vault_server = server
    return app


def serve(host: str = "127.0.0.1", port: int = 8780, settings: Settings | None = None) -> None:
    """Bind, announce the URL on stdout, and serve until interrupted. `port=0` picks a free port."""
    settings = settings or Settings.from_env()
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.listen(2048)
    shown = f"[{host}]" if family == socket.AF_INET6 else host
    base_url = f"http://{shown}:{sock.getsockname()[1]}"
    settings = replace(settings, public_url=settings.public_url or base_url)
    app = create_app(settings=settings)
    config = uvicorn.Config(app, log_level="warning", access_log=False, lifespan="on")
    print(f"alter-agents vault server listening on {base_url}", flush=True)
    anyio.run(uvicorn.Server(config).serve, [sock])
