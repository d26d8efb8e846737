"""The routes' endpoints: each reads its wire request, asks the vault, and renders the answer.

Every `/sdk/*` endpoint runs after `SignedKeyBackend` authenticated the caller (`request.user`), and
leaves errors to the app's exception handlers (see `responses`).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from html import escape
from typing import TypeVar, cast

from pydantic import BaseModel, ValidationError
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, RedirectResponse, Response

from alter_agents.errors import AlterError, AmbiguousGrantError, InvalidArgumentsError
from alter_agents.models import Grant
from alter_agents.providers.binding import host_of
from alter_agents.server.auth import ApiKeyUser
from alter_agents.server.hosted import HostedConnect, LinkNotFound
from alter_agents.server.limits import BODY_SCOPE_KEY
from alter_agents.server.render import candidate, grant_item, token_response
from alter_agents.server.responses import InvalidBody, error_response
from alter_agents.server.wire import (
    AuditBatchRequest,
    AuditBatchResponse,
    AuditRequest,
    ConnectSessionRequest,
    GrantListRequest,
    GrantListResponse,
    PollRequest,
    TokenRequest,
)
from alter_agents.vault.audit_ledger import AuditFilter
from alter_agents.vault.local import LocalVault
from alter_agents.vault.loopback import page
from alter_agents.vault.resolve import matches_account

M = TypeVar("M", bound=BaseModel)


@dataclass(frozen=True)
class Context:
    vault: LocalVault
    hosted: HostedConnect


def _context(request: Request) -> Context:
    return cast(Context, request.app.state.context)


def _caller(request: Request) -> ApiKeyUser:
    return cast(ApiKeyUser, request.user)


async def _read(request: Request, model: type[M]) -> M:
    """The JSON object body as `model` (a bad body raises; the handlers answer 400 or 422)."""
    body = request.scope.get(BODY_SCOPE_KEY)
    if body is None:
        body = await request.body()
    try:
        return model.model_validate_json(body or b"{}")
    except ValidationError as exc:
        [first, *_] = exc.errors(include_url=False)
        if first["loc"] == () and first["type"] == "json_invalid":
            raise InvalidBody("The body is not JSON; send a JSON object.") from None
        if first["loc"] == () and first["type"] == "model_type":
            raise InvalidBody("The body must be a JSON object.") from None
        raise


def _json(model: BaseModel, status_code: int = 200) -> Response:
    """The model as JSON, serialised by pydantic in one step (no intermediate dict, no `json.dumps`)."""
    return Response(model.model_dump_json(exclude_none=True), status_code=status_code, media_type="application/json")


async def token(request: Request) -> Response:
    req = await _read(request, TokenRequest)
    vault = _context(request).vault
    if req.request is None:
        raise InvalidArgumentsError("request.url is required: the vault checks where the credential goes.")
    provider = req.provider_id
    if not provider and not req.grant_id:
        provider = vault.providers.for_url(_absolute(req.request.url)).name
    try:
        credential = await vault.release_for(
            url=req.request.url, method=req.request.method, provider=provider, user_token=req.user_token,
            account=req.account, label=req.label, grant_id=req.grant_id,
        )
    except AmbiguousGrantError as exc:
        return error_response(exc, account_was_provided=bool(req.account),
                              account_identifiers=[a.account for a in exc.accounts],
                              candidates=[candidate(a).model_dump() for a in exc.accounts])
    await vault.record_call(credential.grant, method=req.request.method, url=req.request.url, status=None,
                            latency_ms=None, principal=credential.principal, action="release",
                            error=f"key:{_caller(request).key.key_id}")
    return _json(token_response(credential))


async def grants_list(request: Request) -> Response:
    req = await _read(request, GrantListRequest)
    vault = _context(request).vault
    if req.user_token or req.alter_owner_scope == "session":
        found = await vault.list_grants(user_token=req.user_token, provider=req.provider_id)
    else:
        found = await vault.list_grants(provider=req.provider_id, everyone=True)
    found = [g for g in found if _listed(g, req)]
    shown = found[req.offset:req.offset + req.limit]
    return _json(GrantListResponse(
        grants=[grant_item(g, vault.providers) for g in shown], total=len(found), limit=req.limit,
        offset=req.offset, has_more=req.offset + len(shown) < len(found),
    ))


def _listed(grant: Grant, req: GrantListRequest) -> bool:
    return ((not req.status or grant.status == req.status)
            and (not req.account or matches_account(grant, req.account))
            and (not req.label or (grant.label or "").casefold() == req.label.casefold()))


async def connect_session(request: Request) -> Response:
    req = await _read(request, ConnectSessionRequest)
    created = await _context(request).hosted.create(
        key_id=_caller(request).key.key_id, providers=req.allowed_providers, user_token=req.user_token,
        headless=req.alter_headless, label=req.label, scopes=req.required_scopes,
    )
    return _json(created)


async def connect_poll(request: Request) -> Response:
    req = await _read(request, PollRequest)
    return _json(await _context(request).hosted.poll(req.session_token))


async def audit_call(request: Request) -> Response:
    """The official client's per-call audit post: queued, written within the audit log's flush delay."""
    req = await _read(request, AuditRequest)
    recorded = await _record(_context(request).vault, [req], _caller(request))
    return JSONResponse({"status": "recorded" if recorded else "ignored"}, status_code=202)


async def audit_batch(request: Request) -> Response:
    """RemoteVault's batched audit posts: in the store before the answer, so "recorded" means written."""
    req = await _read(request, AuditBatchRequest)
    vault = _context(request).vault
    recorded = await _record(vault, req.calls, _caller(request))
    await vault.audit_log.flush()
    return _json(AuditBatchResponse(recorded=recorded))


async def audit_export(request: Request) -> Response:
    """The audit log for an admin key (`alter-agents keys create --admin`): the CLI's filters, JSON Lines out."""
    caller = _caller(request)
    if caller.key.kind != "ak":
        return JSONResponse({"error": "forbidden", "message": "Exporting the audit log needs an admin key "
                             "(alter-agents keys create --admin)."}, status_code=403)
    body = json.loads(await request.body() or b"{}")
    fields = {k: body.get(k) for k in ("since", "until", "principal", "provider", "grant_id", "outcome")}
    where = AuditFilter(**fields, limit=max(1, min(int(body.get("limit") or 1000), 100_000)))
    rows = await _context(request).vault.audit_query(where)
    lines = (json.dumps({**{k: getattr(e, k) for k in e.__dataclass_fields__}, "at": e.at.timestamp()}) + "\n"
             for e in rows)
    return Response("".join(lines), media_type="application/x-ndjson")


async def _record(vault: LocalVault, calls: list[AuditRequest], caller: ApiKeyUser) -> int:
    grants: dict[str, Grant | None] = {}
    recorded = 0
    for call in calls:
        if call.grant_id not in grants:
            grants[call.grant_id] = await vault.get_grant(call.grant_id)
        grant = grants[call.grant_id]
        if grant is None:
            continue
        await vault.record_call(grant, method=call.method, url=call.url, status=call.response_status or None,
                                latency_ms=call.latency_ms, principal=f"key:{caller.key.key_id}")
        recorded += 1
    return recorded


async def connect_page(request: Request) -> Response:
    hosted = _context(request).hosted
    link_id = request.path_params["link_id"]
    provider = request.path_params.get("provider")
    try:
        names = await hosted.providers_of(link_id)
        if provider is None and len(names) == 1:
            provider = names[0]
        if provider is not None:
            return RedirectResponse(await hosted.begin(link_id, provider), status_code=302)
    except LinkNotFound:
        return HTMLResponse(page("Link expired", "This connect link is unknown or expired; start again."), 404)
    except AlterError as exc:
        return HTMLResponse(page("Cannot connect", exc.message), 400)
    links = "".join(f'<li><a href="/connect/{escape(link_id)}/{escape(n)}">{escape(n)}</a></li>' for n in names)
    return HTMLResponse(page("Connect an account", "Choose a provider:").replace(
        "</body>", f"<ul>{links}</ul></body>"))


async def oauth_callback(request: Request) -> Response:
    finished, message = await _context(request).vault.complete_connect(dict(request.query_params))
    return HTMLResponse(page("alter-agents" if finished else "Sign-in not completed", message),
                        200 if finished else 400)


async def health(_request: Request) -> Response:
    return JSONResponse({"status": "ok"})


def _absolute(url: str) -> str:
    if not host_of(url):
        raise InvalidArgumentsError(f"{url!r} is not an absolute URL.")
    return url


