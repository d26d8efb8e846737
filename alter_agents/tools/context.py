"""Per-call context and the state the request and connect tools share."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, replace

from alter_agents.app import App
from alter_agents.approval import Approver
from alter_agents.models import AccountRef, ConnectStart
from alter_agents.sessions import GrantSession, HeadlessSession, LocalSession, Session, UserSession
from alter_agents.telemetry import Correlation
from alter_agents.vault.memory import MemoryKey, MemoryKind

log = logging.getLogger("alter_agents.tools")

ChooseAccount = Callable[[str, list[AccountRef]], Awaitable[str | None]]
# Shows the link to the human; returning False says it did not (the link then travels through the model).
OnConnectUrl = Callable[[ConnectStart], Awaitable[bool | None] | bool | None]
Progress = Callable[[float, float | None, str], Awaitable[None]]


@dataclass(frozen=True)
class CallContext:
    """Per-call inputs a surface supplies: the caller's JWT and the hooks that reach the human."""

    user_token: str | None = None
    choose_account: ChooseAccount | None = None
    on_connect_url: OnConnectUrl | None = None
    progress: Progress | None = None
    link_shown: bool = False  # the human already has the connect link (e.g. URL elicitation accepted)
    approve: Approver | None = None  # asks the human when a policy rule needs approval
    correlation: Correlation | None = None  # surface, run/session ids, trace context: for audit rows and spans


async def _log_connect_url(start: ConnectStart) -> bool:
    """The default: no way to reach the human, so the link goes back to the model at once."""
    log.info("Connect link for %s issued (it is returned to the model)", start.provider)
    return False


class ToolsBase:
    """The session, the app and the surface's hooks; the tool mixins act on these."""

    app: App
    session: Session
    defaults: CallContext
    connect_wait: float
    max_body_bytes: int
    remember_account: bool

    @property
    def pinned(self) -> bool:
        return isinstance(self.session, GrantSession)


    def _context(self, call: CallContext | None) -> CallContext:
        if call is None:
            return self.defaults
        return replace(
            call,
            choose_account=call.choose_account or self.defaults.choose_account,
            on_connect_url=call.on_connect_url or self.defaults.on_connect_url,
            approve=call.approve or self.defaults.approve,
            correlation=call.correlation or self.defaults.correlation,
        )

    async def _user_token(self, call: CallContext) -> str | None:
        if call.user_token:
            return call.user_token
        if isinstance(self.session, UserSession):
            return await self.session.user_token()
        return None

    async def _memory_key(self, token: str | None, kind: MemoryKind, provider: str) -> MemoryKey:
        """Key the caller's memory by its *verified* owner: raises before anything is read for a bad token."""
        headless = isinstance(self.session, HeadlessSession | LocalSession)
        owner = await self.app.vault.principal(token, headless=headless)
        return MemoryKey(owner=owner, scope=self.session.scope, kind=kind, name=provider)
