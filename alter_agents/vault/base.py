"""The vault contract every surface relies on; LocalVault and RemoteVault both fulfil it."""

from __future__ import annotations

from typing import Protocol

from alter_agents.approval import Approver
from alter_agents.models import ConnectMethod, ConnectStart, ConnectStatus, Grant, ReleasedCredential
from alter_agents.providers import Providers
from alter_agents.sessions import DEFAULT_SCOPE
from alter_agents.settings import Settings
from alter_agents.telemetry import Correlation
from alter_agents.vault.connect import ProgressCallback
from alter_agents.vault.memory import Memory


class Vault(Protocol):
    providers: Providers
    settings: Settings

    @property
    def memory(self) -> Memory:
        """What the tools remember per verified caller (pending connects, chosen accounts)."""
        ...

    async def principal(self, user_token: str | None, *, headless: bool = False) -> str:
        """The caller's verified owner key (`user:<sub>`, or `app` in local/headless mode); raises when the
        token does not verify. Everything the tools remember per user is keyed by it."""
        ...

    async def release_for(
        self,
        *,
        url: str,
        method: str = "GET",
        provider: str | None = None,
        user_token: str | None = None,
        account: str | None = None,
        label: str | None = None,
        grant_id: str | None = None,
        approver: Approver | None = None,
        scope: str = DEFAULT_SCOPE,
    ) -> ReleasedCredential: ...

    async def record_call(
        self, grant: Grant, *, method: str, url: str, status: int | None, latency_ms: float | None,
        principal: str | None, error: str | None = None, action: str = "call",
        correlation: Correlation | None = None,
    ) -> None: ...

    async def list_grants(
        self, *, user_token: str | None = None, provider: str | None = None, everyone: bool = False
    ) -> list[Grant]: ...

    async def start_connect(
        self, provider: str, *, user_token: str | None = None, label: str | None = None,
        scopes: list[str] | None = None, redirect_uri: str | None = None, headless: bool = False,
        login_hint: str | None = None,
        method: ConnectMethod = "browser",
    ) -> ConnectStart: ...

    async def connect_status(self, session_id: str) -> ConnectStatus: ...

    async def wait_connect(
        self, session_id: str, timeout: float, on_progress: ProgressCallback | None = None
    ) -> ConnectStatus: ...

    async def aclose(self) -> None: ...
