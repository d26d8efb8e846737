"""The `request` tool: resolve the grant, send the call, shape the response for the model."""

from __future__ import annotations

import json
from typing import Any

import httpx

from alter_agents.errors import AmbiguousGrantError, NotConnectedError
from alter_agents.models import AccountRef, ApiResponse, ToolErrorPayload
from alter_agents.sessions import GrantSession, HeadlessSession, token_key
from alter_agents.tools.args import GrantRequestArgs, RequestArgs, refuse_credential_headers, validate_args
from alter_agents.tools.context import CallContext, ToolsBase
from alter_agents.tools.results import RequestResult, shielded

DEFAULT_MAX_BODY_BYTES = 64 * 1024
_USEFUL_HEADERS = ("content-type", "location", "link", "retry-after", "etag", "last-modified")

REQUEST_DESCRIPTION = (
    "Call a connected provider's HTTP API as the current user. Credentials are added for you: never put "
    "tokens or Authorization headers in the call. An HTTP error status from the API is returned as a "
    "result to read, not as a tool error. If several accounts are connected for the provider you get an "
    "ambiguous_grant error listing them: call again with `account` set to one of them."
)
GRANT_REQUEST_DESCRIPTION = (
    "Call this session's connected API over HTTP. Credentials are added for you: never put tokens or "
    "Authorization headers in the call. An HTTP error status from the API is returned as a result to read."
)


class RequestTool(ToolsBase):
    """`request`, as a mixin of `AlterTools`."""

    @property
    def request_args_model(self) -> type[GrantRequestArgs]:
        return GrantRequestArgs if self.pinned else RequestArgs

    @property
    def request_description(self) -> str:
        return GRANT_REQUEST_DESCRIPTION if self.pinned else REQUEST_DESCRIPTION

    async def run_request(self, args: GrantRequestArgs | dict[str, Any], call: CallContext | None = None
                          ) -> RequestResult | ToolErrorPayload:
        """`request` that never raises: failures come back as the error payload."""
        return await shielded(self.request(args, call))

    async def request(self, args: GrantRequestArgs | dict[str, Any], call: CallContext | None = None) -> RequestResult:
        """Resolve the grant for the call, send it, shape the response. Raises typed `AlterError`s."""
        return self._shape(*await self.respond(args, call))

    async def respond(self, args: GrantRequestArgs | dict[str, Any], call: CallContext | None = None
                      ) -> tuple[ApiResponse, str | None]:
        """`request` before shaping: the httpx response (as `App.request` returns it) and a note for the model."""
        parsed = validate_args(self.request_args_model, args)
        ctx = self._context(call)
        refuse_credential_headers(parsed.headers)
        token = await self._user_token(ctx)
        provider: str | None = getattr(parsed, "provider", None)
        account: str | None = getattr(parsed, "account", None)
        grant_id: str | None = None
        if isinstance(self.session, GrantSession):
            grant_id = self.session.grant_id
        elif isinstance(self.session, HeadlessSession):
            provider = provider or self._pinned_provider(parsed.url)
            grant_id = self.session.pinned.get(provider)
            if grant_id is None:
                raise NotConnectedError(provider)
        else:
            provider = provider or self.app.infer_provider(parsed.url)
        memory, key = self.session.memory, (token_key(token), provider or "")
        note = None
        if grant_id is None and account is None and self.remember_account and key in memory.chosen:
            account = memory.chosen[key]
            note = f"Used {account}, the {provider} account chosen earlier in this session; pass account to change."
        try:
            response = await self._send(parsed, provider, account, grant_id, token)
        except NotConnectedError:
            if note is None:
                raise
            memory.chosen.pop(key, None)  # the remembered account is gone: resolve afresh
            account, note = None, None
            response = await self._send(parsed, provider, None, grant_id, token)
        except AmbiguousGrantError as exc:
            chosen = await ctx.choose_account(exc.provider, exc.accounts) if ctx.choose_account else None
            if not chosen or not any(_names(ref, chosen) for ref in exc.accounts):
                raise
            account = chosen
            note = f"Used {chosen}, chosen by the user."
            response = await self._send(parsed, provider, chosen, None, token)
        if account and grant_id is None and self.remember_account:
            memory.chosen[key] = account
        return response, note

    def _pinned_provider(self, url: str) -> str:
        """In a headless session, the one pinned provider whose hosts include the URL's."""
        assert isinstance(self.session, HeadlessSession)
        host = _host(url)
        claimants = [name for name in self.session.pinned if self.app.providers.get(name).claims_host(host)]
        return claimants[0] if len(claimants) == 1 else self.app.infer_provider(url)

    async def _send(self, args: GrantRequestArgs, provider: str | None, account: str | None,
                    grant_id: str | None, token: str | None) -> ApiResponse:
        content = args.body.encode() if args.body is not None else None
        return await self.app.request(
            args.method, args.url, provider=None if grant_id else provider, grant_id=grant_id, account=account,
            user_token=token, query=args.query, headers=args.headers, json=args.json_body, content=content,
        )

    def _shape(self, response: ApiResponse, note: str | None) -> RequestResult:
        headers = {k: v for k, v in response.headers.items()
                   if k in _USEFUL_HEADERS or k.startswith("x-ratelimit")}
        body, truncated = _body(response, self.max_body_bytes)
        return RequestResult(status=response.status, headers=headers, body=body,
                             truncated=truncated or response.truncated, grant=response.grant, note=note)

    # -- connect ------------------------------------------------------------------------------


def _body(response: ApiResponse, limit: int) -> tuple[Any, bool]:
    content_type = response.content_type.split(";")[0].strip().lower()
    raw = response.content
    truncated = len(raw) > limit
    textual = (content_type.startswith("text/") or "json" in content_type or "xml" in content_type
               or "javascript" in content_type or content_type in ("", "application/x-www-form-urlencoded"))
    if not textual or _looks_binary(raw[:1024]):
        return {"binary": True, "content_type": content_type or None, "size": len(raw)}, False
    if not truncated and "json" in content_type:
        try:
            return json.loads(raw), False
        except ValueError:
            pass
    text = raw[:limit].decode("utf-8", errors="replace")
    return text, truncated


def _looks_binary(sample: bytes) -> bool:
    return b"\x00" in sample


def _names(ref: AccountRef, chosen: str) -> bool:
    wanted = chosen.strip().casefold()
    return ref.account.casefold() == wanted or (ref.label or "").casefold() == wanted


def _host(url: str) -> str:
    try:
        return str(httpx.URL(url).host)
    except (httpx.InvalidURL, TypeError):
        return ""

