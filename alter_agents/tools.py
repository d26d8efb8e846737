"""The `request` and `connect` tools, framework-neutral (DESIGN §5). Surfaces only render these.

Every failure becomes one `ToolErrorPayload` with a stable `code`; nothing here imports MCP or LangChain.
"""

from __future__ import annotations

import inspect
import json
import logging
import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Any, Literal, TypeVar

import httpx
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from alter_agents.app import App
from alter_agents.errors import (
    AlterError,
    AmbiguousGrantError,
    ConnectDeniedError,
    ConnectError,
    ConnectTimeoutError,
    InvalidArgumentsError,
    NotConnectedError,
)
from alter_agents.models import AccountRef, ApiResponse, ConnectStart, GrantRef, ToolErrorBody, ToolErrorPayload
from alter_agents.sessions import GrantSession, HeadlessSession, LocalSession, Session, UserSession, token_key

log = logging.getLogger("alter_agents.tools")

DEFAULT_MAX_BODY_BYTES = 64 * 1024
DEFAULT_CONNECT_WAIT = 60.0
_REFUSED_HEADERS = frozenset({
    "authorization", "proxy-authorization", "cookie", "x-api-key", "api-key", "x-auth-token",
    "private-token", "x-goog-api-key", "host",
})
_USEFUL_HEADERS = ("content-type", "location", "link", "retry-after", "etag", "last-modified")
_HEADER_NAME = re.compile(r"^[!#$%&'*+\-.^_`|~0-9A-Za-z]+$")
_HEADER_VALUE = re.compile(r"^[\t\x20-\x7e]*$")

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
CONNECT_DESCRIPTION = (
    "Link an account for a provider; the user finishes in the browser. Returns status 'connected' with "
    "the account, or 'pending' with a connect_url to show the user — call connect again with the same "
    "provider to learn whether they finished."
)

_R = TypeVar("_R")
Method = Literal["GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS"]
QueryValue = str | int | float | bool


class GrantRequestArgs(BaseModel):
    """Arguments of `request` in a pinned-grant session: no provider, no account."""

    model_config = ConfigDict(populate_by_name=True, extra="forbid")

    method: Method = Field("GET", description="HTTP method.")
    url: str = Field(description="Absolute https URL of the API endpoint, e.g. https://api.github.com/user/repos")
    query: dict[str, QueryValue] | None = Field(None, description='Query parameters, e.g. {"per_page": 10}.')
    headers: dict[str, str] | None = Field(
        None, description='Extra headers, e.g. {"Accept": "application/json"}. Never credentials.'
    )
    json_body: Any = Field(None, alias="json", description="JSON request body for POST/PUT/PATCH.")
    body: str | None = Field(None, description="Raw text request body, when not JSON.")

    @field_validator("method", mode="before")
    @classmethod
    def _upper_method(cls, value: Any) -> Any:
        return value.strip().upper() if isinstance(value, str) else value

    @field_validator("headers")
    @classmethod
    def _plain_headers(cls, value: dict[str, str] | None) -> dict[str, str] | None:
        for name, text in (value or {}).items():
            if not _HEADER_NAME.match(name):
                raise ValueError(f"{name!r} is not a valid header name")
            if not _HEADER_VALUE.match(text):
                raise ValueError(f"the value of {name} must be printable ASCII on one line")
        return value

    @model_validator(mode="after")
    def _one_body(self) -> GrantRequestArgs:
        if self.json_body is not None and self.body is not None:
            raise ValueError("send either json or body, not both")
        return self


class RequestArgs(GrantRequestArgs):
    """Arguments of `request`."""

    provider: str | None = Field(
        None, description="Provider name, e.g. github or google. Optional: inferred from the URL's host."
    )
    account: str | None = Field(
        None, description="Which connected account to use (identifier or label), when several are connected."
    )


class ConnectArgs(BaseModel):
    model_config = ConfigDict(extra="forbid")

    provider: str = Field(description="Provider to link, e.g. github, google, slack.")
    scopes: list[str] | None = Field(None, description="OAuth scopes to ask for; default: the provider's.")
    label: str | None = Field(None, description="A name for this account, e.g. work or personal.")


class RequestResult(BaseModel):
    status: int = Field(description="HTTP status code from the API.")
    headers: dict[str, str] = Field(description="A few useful response headers.")
    body: Any = Field(description="Parsed JSON, text, or a summary of binary content.")
    truncated: bool = Field(False, description="True when the body was cut to the size limit.")
    grant: GrantRef = Field(description="The account whose credential made the call.")
    note: str | None = Field(None, description="How the account was chosen, when not by the call itself.",
                             exclude_if=lambda v: v is None)


class ConnectResultOut(BaseModel):
    status: Literal["connected", "pending"]
    grant: GrantRef | None = None
    grant_id: str | None = None
    connect_url: str | None = None
    expires_at: datetime | None = None
    message: str


ChooseAccount = Callable[[str, list[AccountRef]], Awaitable[str | None]]
OnConnectUrl = Callable[[ConnectStart], Awaitable[None] | None]
Progress = Callable[[float, float | None, str], Awaitable[None]]


@dataclass(frozen=True)
class CallContext:
    """Per-call inputs a surface supplies: the caller's JWT and the hooks that reach the human."""

    user_token: str | None = None
    choose_account: ChooseAccount | None = None
    on_connect_url: OnConnectUrl | None = None
    progress: Progress | None = None


async def _log_connect_url(start: ConnectStart) -> None:
    log.info("Open this URL to connect %s: %s", start.provider, start.connect_url)


class AlterTools:
    """The two tools bound to one session. Safe to share across concurrent calls and users."""

    def __init__(
        self,
        app: App,
        session: Session,
        *,
        choose_account: ChooseAccount | None = None,
        on_connect_url: OnConnectUrl | None = None,
        connect_wait: float = DEFAULT_CONNECT_WAIT,
        max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
        remember_account: bool = True,
    ) -> None:
        self.app = app
        self.session = session
        self.defaults = CallContext(choose_account=choose_account, on_connect_url=on_connect_url or _log_connect_url)
        self.connect_wait = connect_wait
        self.max_body_bytes = max_body_bytes
        self.remember_account = remember_account

    @property
    def pinned(self) -> bool:
        return isinstance(self.session, GrantSession)

    @property
    def request_args_model(self) -> type[GrantRequestArgs]:
        return GrantRequestArgs if self.pinned else RequestArgs

    @property
    def request_description(self) -> str:
        return GRANT_REQUEST_DESCRIPTION if self.pinned else REQUEST_DESCRIPTION

    def _context(self, call: CallContext | None) -> CallContext:
        if call is None:
            return self.defaults
        return replace(
            call,
            choose_account=call.choose_account or self.defaults.choose_account,
            on_connect_url=call.on_connect_url or self.defaults.on_connect_url,
        )

    async def _user_token(self, call: CallContext) -> str | None:
        if call.user_token:
            return call.user_token
        if isinstance(self.session, UserSession):
            return await self.session.user_token()
        return None

    # -- request ------------------------------------------------------------------------------

    async def run_request(self, args: GrantRequestArgs | dict[str, Any], call: CallContext | None = None
                          ) -> RequestResult | ToolErrorPayload:
        """`request` that never raises: failures come back as the error payload."""
        return await shielded(self.request(args, call))

    async def request(self, args: GrantRequestArgs | dict[str, Any], call: CallContext | None = None) -> RequestResult:
        """Resolve the grant for the call, send it, shape the response. Raises typed `AlterError`s."""
        parsed = validate_args(self.request_args_model, args)
        ctx = self._context(call)
        _refuse_credential_headers(parsed.headers)
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
        return self._shape(response, note)

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

    async def run_connect(self, args: ConnectArgs | dict[str, Any], call: CallContext | None = None
                          ) -> ConnectResultOut | ToolErrorPayload:
        return await shielded(self.connect(args, call))

    async def connect(self, args: ConnectArgs | dict[str, Any], call: CallContext | None = None) -> ConnectResultOut:
        """Start (or check on) a connect flow and wait a while for the user. Raises typed `AlterError`s."""
        parsed = validate_args(ConnectArgs, args)
        ctx = self._context(call)
        if isinstance(self.session, GrantSession):
            raise InvalidArgumentsError("This session is pinned to one grant; connecting accounts is not available.",
                                        retryable=False, user_action="none")
        spec = self.app.providers.get(parsed.provider)
        if spec.kind != "oauth2":
            raise InvalidArgumentsError(
                f"{spec.name} uses an API key that an operator adds (alter-agents secrets add {spec.name} ...), "
                "not a browser sign-in; ask the user to have it added.",
                provider=spec.name, retryable=False, user_action="none",
            )
        token = await self._user_token(ctx)
        key = (token_key(token), spec.name)
        memory = self.session.memory
        start = memory.pending.get(key)
        if start is not None:
            status = await self.app.vault.connect_status(start.session_id)
            if status.status == "expired":
                memory.pending.pop(key, None)
                raise ConnectTimeoutError(
                    f"The user did not finish connecting {spec.name} before the link expired. Call connect "
                    "again for a new link.", provider=spec.name,
                )
        else:
            headless = isinstance(self.session, HeadlessSession | LocalSession)
            start = await self.app.start_connect(spec.name, user_token=token, label=parsed.label,
                                                 scopes=parsed.scopes, headless=headless)
            memory.pending[key] = start
            if ctx.on_connect_url is not None:
                announced = ctx.on_connect_url(start)
                if inspect.isawaitable(announced):
                    await announced
        return await self._await_connect(start, key, ctx)

    async def _await_connect(self, start: ConnectStart, key: tuple[str, str], ctx: CallContext) -> ConnectResultOut:
        wait = self.connect_wait

        async def progress(elapsed: float, message: str) -> None:
            if ctx.progress is not None:
                await ctx.progress(elapsed, wait, message)

        try:
            status = await self.app.vault.wait_connect(start.session_id, wait, progress)
        except ConnectTimeoutError:
            return ConnectResultOut(
                status="pending", connect_url=start.connect_url, expires_at=start.expires_at,
                message=f"Waiting for the user to sign in to {start.provider}. Show them connect_url; call "
                        "connect again with the same provider to learn whether they finished.",
            )
        except ConnectDeniedError:
            self.session.memory.pending.pop(key, None)
            raise ConnectDeniedError(
                f"The user did not grant access to {start.provider}. Call connect again only if they ask to.",
                provider=start.provider,
            ) from None
        except ConnectError as exc:
            self.session.memory.pending.pop(key, None)
            raise ConnectError(f"{exc.message} Call connect again to retry.", provider=start.provider,
                               retryable=True, user_action="connect") from None
        self.session.memory.pending.pop(key, None)
        result = status.results[0]
        if isinstance(self.session, HeadlessSession):
            self.session.pinned[result.provider] = result.grant_id
        grant = GrantRef(provider=result.provider, account=result.account, label=result.label)
        return ConnectResultOut(status="connected", grant=grant, grant_id=result.grant_id,
                                message=f"Connected {result.provider} account {result.account}.")


def validate_args(model: type[Any], args: Any) -> Any:
    if isinstance(args, model):
        return args
    try:
        return model.model_validate(args)
    except ValidationError as exc:
        raise arguments_error(exc) from None


def arguments_error(exc: ValidationError) -> InvalidArgumentsError:
    """A schema rejection as the model sees it: each problem by field, never the rejected value."""
    problems = "; ".join(f"{'.'.join(str(p) for p in e['loc']) or 'arguments'}: {e['msg']}" for e in exc.errors())
    return InvalidArgumentsError(f"Invalid arguments: {problems}. Fix them and call again.")


def internal_payload(reason: str) -> ToolErrorPayload:
    """The error a model gets for a fault of ours: typed, retryable, and without a traceback."""
    body = ToolErrorBody(code="internal", message=f"Internal error ({reason}); try again later.",
                         retryable=True, user_action="retry_later")
    return ToolErrorPayload(error=body)


def _refuse_credential_headers(headers: dict[str, str] | None) -> None:
    refused = sorted(h for h in (headers or {}) if h.lower() in _REFUSED_HEADERS)
    if refused:
        raise InvalidArgumentsError(
            f"Do not send {', '.join(refused)}: credentials are added for you. Remove them and call again.",
            refused_headers=refused,
        )


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


async def shielded(work: Awaitable[_R]) -> _R | ToolErrorPayload:
    try:
        return await work
    except AlterError as exc:
        return exc.payload()
    except Exception as exc:  # a bug must still reach the model as a typed error, never a traceback
        log.exception("tool failed")
        return internal_payload(type(exc).__name__)
