"""The `request` tool: resolve the grant, send the call, shape the response for the model."""

from __future__ import annotations

import json
import logging
from collections.abc import Awaitable
from contextlib import AbstractContextManager
from typing import Any, TypeVar

from alter_agents import telemetry
from alter_agents.approval import is_pass_through
from alter_agents.errors import AlterError, AmbiguousGrantError, NotConnectedError
from alter_agents.models import AccountRef, ApiResponse, ToolErrorPayload
from alter_agents.redact import cut, redact_headers, redact_text, redact_value
from alter_agents.sessions import GrantSession, HeadlessSession
from alter_agents.telemetry import Correlation
from alter_agents.tools.args import GrantRequestArgs, RequestArgs, refuse_credential_headers, validate_args
from alter_agents.tools.context import CallContext, ToolsBase
from alter_agents.tools.results import RequestResult, shielded

DEFAULT_MAX_BODY_BYTES = 64 * 1024
REMEMBER_SECONDS = 30 * 24 * 3600.0  # an account choice is remembered this long after its last use
TEXT_CONTENT_TYPE = "text/plain; charset=utf-8"
log = logging.getLogger("alter_agents.tools")
_T = TypeVar("_T")
_USEFUL_HEADERS = ("content-type", "location", "link", "retry-after", "etag", "last-modified")

REQUEST_DESCRIPTION = (
    "Call a connected provider's HTTP API as the current user. Credentials are added for you and are only "
    "ever sent to that provider's own API hosts (the `accounts` tool lists each provider's hosts); a URL on "
    "any other host is refused with host_not_allowed and nothing is sent — `provider` cannot change that. "
    "Never put tokens or Authorization headers in the call. An HTTP error status from the API is returned "
    "as a result to read, not as a tool error. If several accounts are connected for the provider you get "
    "an ambiguous_grant error listing them: call again with `account` set to one of them. Every error says "
    "whether the request was sent (`sent`) and whether the same call may succeed later (`retryable`)."
)
GRANT_REQUEST_DESCRIPTION = (
    "Call this session's connected API over HTTP. Credentials are added for you and are only ever sent to "
    "the provider's own API hosts; a URL on any other host is refused with host_not_allowed and nothing is "
    "sent. Never put tokens or Authorization headers in the call. An HTTP error status from the API is "
    "returned as a result to read."
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
        """Resolve the grant for the call, send it, shape the response. Raises typed `AlterError`s with `sent`."""
        with _tool_span(self._context(call)):
            return await _with_sent(self._shaped(args, call))

    async def respond(self, args: GrantRequestArgs | dict[str, Any], call: CallContext | None = None
                      ) -> tuple[ApiResponse, str | None]:
        """`request` before shaping: the httpx response (as `App.request` returns it) and a note for the model."""
        with _tool_span(self._context(call)):
            return await _with_sent(self._respond(args, call))

    async def _shaped(self, args: GrantRequestArgs | dict[str, Any], call: CallContext | None) -> RequestResult:
        return self._shape(*await self._respond(args, call))

    async def _respond(self, args: GrantRequestArgs | dict[str, Any], call: CallContext | None
                       ) -> tuple[ApiResponse, str | None]:
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
        note, chosen_here = None, account is not None
        try:
            response = await self._send(parsed, provider, account, grant_id, token, ctx)
        except AmbiguousGrantError as exc:
            response, account, note, chosen_here = await self._disambiguate(exc, parsed, provider, token, ctx)
        if account and chosen_here and grant_id is None and self.remember_account and provider:
            await self._remember_account(token, provider, account)
        return response, note

    async def _remember_account(self, token: str | None, provider: str, account: str) -> None:
        """Remember the account for later ambiguous calls; a read first, so repeating a choice writes nothing."""
        key = await self._memory_key(token, "account", provider)
        memory = self.app.vault.memory
        if await memory.recall(key) != account:
            await memory.remember(key, account, REMEMBER_SECONDS)

    async def _disambiguate(self, exc: AmbiguousGrantError, parsed: GrantRequestArgs, provider: str | None,
                            token: str | None, ctx: CallContext) -> tuple[ApiResponse, str, str, bool]:
        """Several accounts fit: the one chosen earlier by this verified user, else the human's choice."""
        if self.remember_account and provider:
            key = await self._memory_key(token, "account", provider)
            remembered = await self.app.vault.memory.recall(key)
            if remembered and any(_names(ref, remembered) for ref in exc.accounts):
                note = f"Used {remembered}, the {provider} account chosen earlier in this session; pass account " \
                       "to change."
                try:
                    return await self._send(parsed, provider, remembered, None, token, ctx), remembered, note, False
                except NotConnectedError:
                    pass  # the remembered account is gone: ask afresh
            if remembered:
                await self.app.vault.memory.forget(key)
        chosen = await ctx.choose_account(exc.provider, exc.accounts) if ctx.choose_account else None
        if not chosen or not any(_names(ref, chosen) for ref in exc.accounts):
            raise exc
        response = await self._send(parsed, provider, chosen, None, token, ctx)
        return response, chosen, f"Used {chosen}, chosen by the user.", True

    def _pinned_provider(self, url: str) -> str:
        """In a headless session, the one pinned provider whose hosts include the URL's."""
        assert isinstance(self.session, HeadlessSession)
        claimants = [name for name in self.session.pinned if self.app.providers.get(name).claims(url)]
        return claimants[0] if len(claimants) == 1 else self.app.infer_provider(url)

    async def _send(self, args: GrantRequestArgs, provider: str | None, account: str | None,
                    grant_id: str | None, token: str | None, ctx: CallContext) -> ApiResponse:
        content = args.body.encode() if args.body is not None else None
        headers = args.headers
        if content is not None and not any(name.lower() == "content-type" for name in headers or {}):
            headers = {**(headers or {}), "Content-Type": TEXT_CONTENT_TYPE}
        return await self.app.request(
            args.method, args.url, provider=None if grant_id else provider, grant_id=grant_id, account=account,
            user_token=token, query=args.query, headers=headers, json=args.json_body, content=content,
            on_approval=ctx.approve, scope=self.session.scope,
            correlation=(ctx.correlation or Correlation(surface="tools")).with_(tool=_tool_name(ctx)),
        )

    def _shape(self, response: ApiResponse, note: str | None) -> RequestResult:
        headers = {k: v for k, v in redact_headers(response.headers.items()).items()
                   if k in _USEFUL_HEADERS or k.startswith("x-ratelimit")}
        body, truncated = _body(response, self.max_body_bytes)
        return RequestResult(status=response.status, headers=headers, body=body,
                             truncated=truncated or response.truncated, grant=response.grant, note=note)

    # -- connect ------------------------------------------------------------------------------


async def _with_sent(work: Awaitable[_T]) -> _T:
    """Every error of `request` says whether the call left the process (`sent`)."""
    try:
        return await work
    except AlterError as exc:
        if exc.sent is None:
            exc.sent = False  # raised before the credential left the vault: nothing was sent
        raise
    except Exception as exc:  # a fault of ours: we cannot tell whether the call went out, so say it may have
        if is_pass_through(exc):
            raise
        log.exception("request failed")
        fault = AlterError(f"Internal error ({type(exc).__name__}); the request may have been sent, so check "
                           "before repeating a write.", retryable=False, user_action="none")
        fault.sent = True
        raise fault from None


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
            return redact_value(json.loads(raw)), False
        except ValueError:
            pass
    kept = cut(raw, limit) if truncated else raw
    return redact_text(kept.decode("utf-8", errors="replace")), truncated


def _looks_binary(sample: bytes) -> bool:
    return sample.find(b"\x00") >= 0  # not `in`: on bytes it first tries the operand as an int


def _names(ref: AccountRef, chosen: str) -> bool:
    wanted = chosen.strip().casefold()
    return ref.account.casefold() == wanted or (ref.label or "").casefold() == wanted


def _tool_name(ctx: CallContext) -> str:
    """The tool that made the call: `request`, unless a custom tool named itself in the correlation."""
    return ctx.correlation.tool if ctx.correlation and ctx.correlation.tool else "request"


def _tool_span(ctx: CallContext) -> AbstractContextManager[Any]:
    """The tool call's span: the parent of resolve, refresh and the upstream call (OpenTelemetry)."""
    correlation = ctx.correlation or Correlation(surface="tools")
    return telemetry.span("alter.tool", correlation, tool=_tool_name(ctx), surface=correlation.surface,
                          session_id=correlation.session_id, run_id=correlation.run_id)
