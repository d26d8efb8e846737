"""App: the SDK facade for scripts — request(), connect(), grants()."""

from __future__ import annotations

import inspect
import os
import sys
import webbrowser
from collections.abc import Awaitable, Callable, Mapping
from types import TracebackType
from typing import Any, NamedTuple, TypeVar

import anyio
from opentelemetry.trace import Span

from alter_agents import metrics, telemetry
from alter_agents.approval import Approver
from alter_agents.errors import AlterError, ConfigurationError, InsufficientScopeError, InvalidArgumentsError
from alter_agents.models import ApiResponse, ConnectMethod, ConnectResult, ConnectStart, Grant, ReleasedCredential
from alter_agents.providers import Providers
from alter_agents.providers.binding import host_of, refuse_caller_parts
from alter_agents.scopes import detect
from alter_agents.sessions import DEFAULT_SCOPE
from alter_agents.settings import Settings
from alter_agents.telemetry import Correlation
from alter_agents.upstream import Upstream
from alter_agents.vault.base import Vault
from alter_agents.vault.connect import ProgressCallback
from alter_agents.vault.local import LocalVault

TokenGetter = Callable[[], str | None] | Callable[[], Awaitable[str | None]]
UrlCallback = Callable[[ConnectStart], Awaitable[None] | None]
T = TypeVar("T")


class App:
    """Call providers' APIs with stored credentials.

    The vault server is found the way the official `alter-sdk` client finds it: `base_url`, else
    `ALTER_BASE_URL`, with the key from `api_key` or `ALTER_API_KEY`. Without one it uses the embedded
    vault (a SQLite file in the platform data directory, or `ALTER_VAULT_URL`); passing `settings=`
    alone asks for the embedded vault explicitly. An `api_key` with no server to send it to is refused
    rather than ignored.
    """

    def __init__(
        self,
        api_key: str | None = None,
        user_token_getter: TokenGetter | None = None,
        base_url: str | None = None,
        *,
        settings: Settings | None = None,
        vault: Vault | None = None,
        upstream: Upstream | None = None,
        on_approval: Approver | None = None,
    ) -> None:
        if vault is None and base_url is None and (api_key is not None or settings is None):
            base_url = os.environ.get("ALTER_BASE_URL") or None
        if vault is None and base_url is None and api_key:
            raise ConfigurationError(
                "api_key names a vault server, but none is set: set ALTER_BASE_URL (or pass base_url=), "
                "or leave api_key out to use the embedded vault."
            )
        if vault is None and base_url:
            from alter_agents.vault.remote import RemoteVault

            vault = RemoteVault(base_url, api_key, settings=settings)
        self.vault: Vault = vault or LocalVault(settings)
        self.upstream = upstream or Upstream()
        self._user_token_getter = user_token_getter
        self.on_approval = on_approval  # asked when a policy rule needs a human (ALTER_POLICY_FILE)

    @property
    def providers(self) -> Providers:
        return self.vault.providers

    async def __aenter__(self) -> App:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self.upstream.aclose()
        await self.vault.aclose()

    async def close(self) -> None:
        """The official client's name for `aclose()`."""
        await self.aclose()

    async def user_token(self, explicit: str | None = None) -> str | None:
        if explicit:
            return explicit
        if self._user_token_getter is None:
            return None
        value = self._user_token_getter()
        if inspect.isawaitable(value):
            value = await value
        return value

    def infer_provider(self, url: str) -> str:
        if not host_of(url):
            raise InvalidArgumentsError(f"{url!r} is not an absolute URL (e.g. https://api.github.com/user).")
        return str(self.vault.providers.for_url(url).name)

    async def request(
        self,
        method: str,
        url: str,
        *,
        provider: str | None = None,
        grant_id: str | None = None,
        account: str | None = None,
        label: str | None = None,
        user_token: str | None = None,
        query: Mapping[str, Any] | None = None,
        headers: Mapping[str, str] | None = None,
        json: Any = None,
        content: bytes | str | None = None,
        query_params: Mapping[str, Any] | None = None,
        extra_headers: Mapping[str, str] | None = None,
        body: bytes | str | None = None,
        reason: str | None = None,
        on_approval: Approver | None = None,
        scope: str = DEFAULT_SCOPE,
        traceparent: str | None = None,
        correlation: Correlation | None = None,
    ) -> ApiResponse:
        """Call `url` with the credential of the grant the session resolves to.

        Returns an `httpx.Response` (an `ApiResponse`, whose `grant` names the grant that acted).
        `query_params`, `extra_headers` and `body` are the official client's names for `query`,
        `headers` and `content`; `reason` is written to the audit log. Raises `AmbiguousGrantError`
        (see `.accounts`), `NotConnectedError`, `HostNotAllowedError`, ...; an upstream 4xx/5xx is
        returned, not raised (call `raise_for_status()` for that) — except a missing permission, which
        raises `InsufficientScopeError` (connect again with its `required_scopes` to upgrade the grant).
        A policy rule that needs a human asks `on_approval` (or the App's); `PolicyDeniedError` and
        `ApprovalRequiredError` mean nothing was sent. `traceparent` (W3C) makes the call's spans children
        of the caller's trace and puts its trace id on the audit row; surfaces pass a `correlation`.
        """
        query = _one_of("query", query, "query_params", query_params)
        headers = _one_of("headers", headers, "extra_headers", extra_headers)
        if content is not None and body is not None:
            raise InvalidArgumentsError("Pass content or body, not both.")
        content = content if content is not None else body
        if json is not None and content is not None:
            raise InvalidArgumentsError("Pass either json or a body, not both.")
        correlation = correlation or _APP
        if traceparent:
            correlation = correlation.with_(traceparent=traceparent)
        call = _Call(method, url, provider, grant_id, account, label, query, headers, json, content, reason,
                     on_approval or self.on_approval, scope, correlation)
        if not telemetry.tracing():  # the common case: no span to open or annotate
            return await self._request(call, user_token, None)
        with telemetry.span("alter.request", correlation, method=method.upper(), host=host_of(url),
                            provider=provider, surface=correlation.surface, tool=correlation.tool) as current:
            return await self._request(call, user_token, current)

    async def _request(self, call: _Call, user_token: str | None, current: Span | None) -> ApiResponse:
        provider = call.provider
        try:
            token = user_token or await self.user_token(None)
            if not provider and not call.grant_id:
                provider = self.infer_provider(call.url)
            if provider:  # refused before anything is released; `Upstream.send` checks calls by grant id
                refuse_caller_parts(self.providers.get(provider).inject.to_injection(), call.headers, call.query,
                                    call.url)
            with telemetry.span("alter.resolve", provider=provider, grant_id=call.grant_id):
                credential = await self.vault.release_for(
                    url=call.url, method=call.method, provider=provider, user_token=token, account=call.account,
                    label=call.label, grant_id=call.grant_id, approver=call.approver, scope=call.scope,
                )
            grant = credential.grant
            if current is not None:
                telemetry.set_attributes(current, provider=grant.provider, account=grant.account,
                                         grant_id=grant.grant_id)
            response = await self._send(call, credential, current, checked=bool(provider))
        except AlterError as exc:
            metrics.count_call(exc.data.get("provider") or provider, exc.code)
            if current is not None:
                telemetry.set_attributes(current, outcome=exc.code)
            raise
        metrics.count_call(grant.provider, "ok")
        return response

    async def _send(self, call: _Call, credential: ReleasedCredential, current: Span | None, *,
                    checked: bool) -> ApiResponse:
        """The outgoing call, audited whatever happens to it; a missing permission raises after the audit."""
        grant, spec = credential.grant, self.providers.get(credential.grant.provider)
        try:
            with telemetry.span("alter.upstream", method=call.method.upper(), provider=grant.provider) as upstream:
                response, latency = await self.upstream.send(
                    credential, call.method, call.url, query=call.query, headers=call.headers, json=call.json,
                    content=call.content, checked=checked,
                    extra_headers=telemetry.outgoing_trace_headers() if current and spec.propagate_trace else None,
                )
                if current is not None:
                    telemetry.set_attributes(upstream, status=response.status_code)
        except BaseException as exc:  # a released credential is audited whatever happened to the call
            code = exc.code if isinstance(exc, AlterError) else "internal"
            with anyio.CancelScope(shield=True):
                await self.vault.record_call(grant, method=call.method, url=call.url, status=None, latency_ms=None,
                                             principal=credential.principal, error=code,
                                             correlation=call.correlation)
            raise
        note = credential.decision
        if call.reason:
            note = f"{note}; reason: {call.reason}" if note else f"reason: {call.reason}"
        await self.vault.record_call(grant, method=call.method, url=call.url, status=response.status_code,
                                     latency_ms=latency, principal=credential.principal, error=note,
                                     correlation=call.correlation)
        if current is not None:
            telemetry.set_attributes(current, status=response.status_code)
        metrics.observe_latency(grant.provider, latency / 1000)
        found = detect(response.status_code, response.headers, response.content, spec.scope_signals)
        if found is not None:
            granted = found.granted if found.granted is not None else tuple(grant.scopes)
            raise InsufficientScopeError(grant.provider, grant.account, found.status, granted, found.required)
        return response

    async def start_connect(
        self, provider: str, *, user_token: str | None = None, label: str | None = None,
        scopes: list[str] | None = None, headless: bool = False, login_hint: str | None = None,
        method: ConnectMethod = "browser",
    ) -> ConnectStart:
        token = await self.user_token(user_token)
        return await self.vault.start_connect(provider, user_token=token, label=label, scopes=scopes,
                                              headless=headless, login_hint=login_hint, method=method)

    async def connect(
        self,
        providers: list[str],
        *,
        open_browser: bool = True,
        timeout: float = 300.0,
        user_token: str | None = None,
        label: str | None = None,
        on_url: UrlCallback | None = None,
        on_progress: ProgressCallback | None = None,
        method: ConnectMethod = "browser",
    ) -> list[ConnectResult]:
        """Link one account per provider; returns the new grants (usable at once by grant id).

        `method="device"` signs in with a device code (RFC 8628) where no browser can reach this machine:
        `on_url` receives the `ConnectStart` with `verification_uri` and `user_code` to show the person.
        """
        token = await self.user_token(user_token)
        results: list[ConnectResult] = []
        for provider in providers:
            start = await self.vault.start_connect(provider, user_token=token, label=label, headless=token is None,
                                                   method=method)
            await _announce(start, open_browser and method == "browser", on_url)
            status = await self.vault.wait_connect(start.session_id, timeout, on_progress)
            results.extend(status.results)
        return results

    async def grants(self, *, user_token: str | None = None, provider: str | None = None) -> list[Grant]:
        """The session's grants, without secrets."""
        token = await self.user_token(user_token)
        return await self.vault.list_grants(user_token=token, provider=provider)


def _one_of(name: str, value: T | None, alias: str, alias_value: T | None) -> T | None:
    """Our keyword or the official client's; both at once is a mistake worth saying."""
    if value is not None and alias_value is not None:
        raise InvalidArgumentsError(f"Pass {name} or {alias}, not both.")
    return value if value is not None else alias_value


async def _announce(start: ConnectStart, open_browser: bool, on_url: UrlCallback | None) -> None:
    if on_url is not None:
        result = on_url(start)
        if inspect.isawaitable(result):
            await result
        return
    if start.method == "device":
        print(f"To connect {start.provider}, open {start.verification_uri} on any device and enter the code "
              f"{start.user_code}", file=sys.stderr, flush=True)
        return
    opened = open_browser and await anyio.to_thread.run_sync(webbrowser.open, start.connect_url)
    if not opened:
        print(f"Open this URL to connect {start.provider}:\n  {start.connect_url}", file=sys.stderr, flush=True)


_APP = Correlation(surface="app")


class _Call(NamedTuple):
    """One `request()` call's arguments, as checked: handed down whole rather than as fifteen keywords."""

    method: str
    url: str
    provider: str | None
    grant_id: str | None
    account: str | None
    label: str | None
    query: Mapping[str, Any] | None
    headers: Mapping[str, str] | None
    json: Any
    content: bytes | str | None
    reason: str | None
    approver: Approver | None
    scope: str
    correlation: Correlation

