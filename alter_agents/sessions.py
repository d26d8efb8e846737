"""What a tool call acts for (DESIGN §2): a user's JWT, a pinned grant, a headless bootstrap, or local mode.

What the tools remember (a pending connect, the account chosen per provider) lives in the vault,
keyed by the caller's *verified* owner and the session's `scope`: sessions with the same scope share
it, across processes and replicas of one store. Give agents that must not share choices their own scope.
"""

from __future__ import annotations

import inspect
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

TokenSource = str | Callable[[], str | None] | Callable[[], Awaitable[str | None]]
DEFAULT_SCOPE = "default"


@dataclass
class UserSession:
    """Acts for the end user whose JWT is given (a string, or a getter called on every call).

    With no token the JWT must come with each call (e.g. LangChain's `configurable.user_token`), which
    is how one toolkit serves many users; in local mode (no identity provider) it acts as `LocalSession`.
    """

    token: TokenSource | None = field(default=None, repr=False)
    scope: str = DEFAULT_SCOPE

    async def user_token(self) -> str | None:
        value = self.token() if callable(self.token) else self.token
        if inspect.isawaitable(value):
            value = await value
        return str(value) if value else None


@dataclass
class GrantSession:
    """Pinned to one grant: the model cannot name a provider or account, so it cannot reach another."""

    grant_id: str
    scope: str = DEFAULT_SCOPE


@dataclass
class HeadlessSession:
    """No user yet: `connect` creates app-owned grants and pins each one (by provider) into the session.

    Its pins live in this object, so its scope is its own unless one is given.
    """

    pinned: dict[str, str] = field(default_factory=dict)
    scope: str = field(default_factory=lambda: f"headless-{uuid.uuid4().hex[:16]}")


@dataclass
class LocalSession:
    """The machine's single user: resolves by provider over the app's own grants (local mode)."""

    scope: str = DEFAULT_SCOPE


Session = UserSession | GrantSession | HeadlessSession | LocalSession
