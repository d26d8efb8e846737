"""What a tool call acts for (DESIGN §2): a user's JWT, a pinned grant, a headless bootstrap, or local mode."""

from __future__ import annotations

import hashlib
import inspect
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

import jwt

from alter_agents.models import ConnectStart

TokenSource = str | Callable[[], str | None] | Callable[[], Awaitable[str | None]]


@dataclass
class _Memory:
    """Per-session memory: the account chosen per provider, and connect flows still pending."""

    chosen: dict[tuple[str, str], str] = field(default_factory=dict)
    pending: dict[tuple[str, str], ConnectStart] = field(default_factory=dict)


@dataclass
class UserSession:
    """Acts for the end user whose JWT is given (a string, or a getter called on every call).

    With no token the JWT must come with each call (e.g. LangChain's `configurable.user_token`), which
    is how one toolkit serves many users; in local mode (no identity provider) it acts as `LocalSession`.
    """

    token: TokenSource | None = field(default=None, repr=False)
    memory: _Memory = field(default_factory=_Memory, repr=False)

    async def user_token(self) -> str | None:
        value = self.token() if callable(self.token) else self.token
        if inspect.isawaitable(value):
            value = await value
        return str(value) if value else None


@dataclass
class GrantSession:
    """Pinned to one grant: the model cannot name a provider or account, so it cannot reach another."""

    grant_id: str
    memory: _Memory = field(default_factory=_Memory, repr=False)


@dataclass
class HeadlessSession:
    """No user yet: `connect` creates app-owned grants and pins each one (by provider) into the session."""

    pinned: dict[str, str] = field(default_factory=dict)
    memory: _Memory = field(default_factory=_Memory, repr=False)


@dataclass
class LocalSession:
    """The machine's single user: resolves by provider over the app's own grants (local mode)."""

    memory: _Memory = field(default_factory=_Memory, repr=False)


Session = UserSession | GrantSession | HeadlessSession | LocalSession


def token_key(user_token: str | None) -> str:
    """Key per-user memory in a session shared by many users, stable across token renewals.

    The unverified `sub` is enough here: memory only pre-fills `account`, and every call is still
    resolved against the verified identity, so a forged `sub` reaches nothing. Keys are remembered
    per token digest (never the token itself): a JWT comes with every call of its lifetime, and
    decoding it costs far more than the lookup.
    """
    if not user_token:
        return ""
    digest = hashlib.sha256(user_token.encode()).digest()
    key = _TOKEN_KEYS.get(digest)
    if key is None:
        if len(_TOKEN_KEYS) >= _MAX_TOKEN_KEYS:
            _TOKEN_KEYS.clear()
        key = _TOKEN_KEYS[digest] = _token_key(user_token)
    return key


_TOKEN_KEYS: dict[bytes, str] = {}
_MAX_TOKEN_KEYS = 4096


def _token_key(user_token: str) -> str:
    try:
        sub = jwt.decode(user_token, options={"verify_signature": False}).get("sub")
    except jwt.InvalidTokenError:
        sub = None
    digest = hashlib.sha256((str(sub) if sub else user_token).encode()).hexdigest()
    return digest[:32]
