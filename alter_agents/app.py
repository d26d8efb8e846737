"""App: the SDK facade for scripts — request(), connect(), grants()."""

from __future__ import annotations

import inspect
import sys
import webbrowser
from collections.abc import Awaitable, Callable, Mapping
from types import TracebackType
from typing import Any

import anyio
import httpx

from alter_agents.errors import AlterError, InvalidArgumentsError
from alter_agents.models import ApiResponse, ConnectResult, ConnectStart, Grant
from alter_agents.providers import Providers
from alter_agents.settings import Settings
from alter_agents.upstream import Upstream
from alter_agents.vault.base import Vault
from alter_agents.vault.connect import ProgressCallback
from alter_agents.vault.local import LocalVault

TokenGetter = Callable[[], str | None] | Callable[[], Awaitable[str | None]]
UrlCallback = Callable[[ConnectStart], Awaitable[None] | None]


class App:
    """Call providers' APIs with stored credentials.

    With no arguments it uses the embedded vault (a SQLite file in the platform data directory, or
    `ALTER_VAULT_URL`). With `base_url` (and `api_key`) it talks to a vault server instead.
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
    ) -> None:
        if vault is None and base_url:
            from alter_agents.vault.remote import RemoteVault

            vault = RemoteVault(base_url, api_key, settings=settings)
        self.vault: Vault = vault or LocalVault(settings)
        self.upstream = upstream or Upstream()
        self._user_token_getter = user_token_getter

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
        try:
            host = httpx.URL(url).host
        except (httpx.InvalidURL, TypeError):
            raise InvalidArgumentsError(f"{url!r} is not an absolute URL.") from None
        if not host:
            raise InvalidArgumentsError(f"{url!r} is not an absolute URL (e.g. https://api.github.com/user).")
        return str(self.vault.providers.for_host(host).name)

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
    ) -> ApiResponse:
        """Call `url` with the credential of the grant the session resolves to.

        Raises `AmbiguousGrantError` (see `.accounts`), `NotConnectedError`, `HostNotAllowedError`, ...
        An upstream 4xx/5xx is returned, not raised.
        """
        token = await self.user_token(user_token)
        if not provider and not grant_id:
            provider = self.infer_provider(url)
        credential = await self.vault.release_for(
            url=url, method=method, provider=provider, user_token=token, account=account, label=label,
            grant_id=grant_id,
        )
        try:
            response, latency = await self.upstream.send(
                credential, method, url, query=query, headers=headers, json=json, content=content
            )
        except AlterError as exc:
            await self.vault.record_call(credential.grant, method=method, url=url, status=None, latency_ms=None,
                                         principal=credential.principal, error=exc.code)
            raise
        await self.vault.record_call(credential.grant, method=method, url=url, status=response.status,
                                     latency_ms=latency, principal=credential.principal)
        return response

    async def start_connect(
        self, provider: str, *, user_token: str | None = None, label: str | None = None,
        scopes: list[str] | None = None, headless: bool = False,
    ) -> ConnectStart:
        token = await self.user_token(user_token)
        return await self.vault.start_connect(provider, user_token=token, label=label, scopes=scopes,
                                              headless=headless)

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
    ) -> list[ConnectResult]:
        """Link one account per provider; returns the new grants (usable at once by grant id)."""
        token = await self.user_token(user_token)
        results: list[ConnectResult] = []
        for provider in providers:
            start = await self.vault.start_connect(provider, user_token=token, label=label, headless=token is None)
            await _announce(start, open_browser, on_url)
            status = await self.vault.wait_connect(start.session_id, timeout, on_progress)
            results.extend(status.results)
        return results

    async def grants(self, *, user_token: str | None = None, provider: str | None = None) -> list[Grant]:
        """The session's grants, without secrets."""
        token = await self.user_token(user_token)
        return await self.vault.list_grants(user_token=token, provider=provider)


async def _announce(start: ConnectStart, open_browser: bool, on_url: UrlCallback | None) -> None:
    if on_url is not None:
        result = on_url(start)
        if inspect.isawaitable(result):
            await result
        return
    opened = open_browser and await anyio.to_thread.run_sync(webbrowser.open, start.connect_url)
    if not opened:
        print(f"Open this URL to connect {start.provider}:\n  {start.connect_url}", file=sys.stderr, flush=True)
