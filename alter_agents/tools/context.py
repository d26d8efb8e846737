"""Per-call context and the state the request and connect tools share."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, replace

from alter_agents.app import App
from alter_agents.models import AccountRef, ConnectStart
from alter_agents.sessions import GrantSession, Session, UserSession

log = logging.getLogger("alter_agents.tools")

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
        )

    async def _user_token(self, call: CallContext) -> str | None:
        if call.user_token:
            return call.user_token
        if isinstance(self.session, UserSession):
            return await self.session.user_token()
        return None

    # -- request ------------------------------------------------------------------------------
