"""Human approval of a call, before its credential is released (policy effect `approve`).

One shape under every surface: the vault's policy says a call needs approval, the surface asks the
human through whatever it has (MCP form elicitation, an `InputRequiredResult` round trip on the
2026-07-28 protocol, a LangGraph `interrupt`, an `on_approval` callback in `App`), and the answer is
one of allow once / allow for this session / deny. Where nobody can be asked, the call fails with
`approval_required` and nothing is sent.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Literal

ApprovalChoice = Literal["allow_once", "allow_session", "deny"]
CHOICES: tuple[ApprovalChoice, ...] = ("allow_once", "allow_session", "deny")
STATE_TTL_SECONDS = 300


@dataclass(frozen=True, slots=True)
class ApprovalRequest:
    """What the human is asked about: who, with which account, which call, and which rule asked."""

    provider: str
    account: str
    method: str
    url: str  # without its query string: a credential may ride there, and the human needs no more
    rule: str | None
    principal: str

    @property
    def prompt(self) -> str:
        return f"Allow {self.method} {self.url} as {self.account} ({self.provider})?"

    def digest(self) -> str:
        """Binds an answer to exactly this call (and this user)."""
        text = "\n".join((self.principal, self.provider, self.account, self.method, self.url, self.rule or ""))
        return hashlib.sha256(text.encode()).hexdigest()


# The human's answer; None when they could not be asked after all (the call then fails `approval_required`).
Approver = Callable[[ApprovalRequest], Awaitable[ApprovalChoice | None]]


_PASSTHROUGH: list[type[BaseException]] = []


def pass_through(exc_type: type[BaseException]) -> None:
    """Let an approver's control-flow exception (LangGraph's interrupt) travel up through the tools untouched
    instead of becoming an `internal` error: the framework that raised it resumes the call later."""
    if exc_type not in _PASSTHROUGH:
        _PASSTHROUGH.append(exc_type)


def is_pass_through(exc: BaseException) -> bool:
    return isinstance(exc, tuple(_PASSTHROUGH))


def seal_state(key: bytes, request: ApprovalRequest, extra: dict[str, str] | None = None,
               ttl: float = STATE_TTL_SECONDS) -> str:
    """An integrity-protected `request_state` for the 2026-07-28 round trip: bound to user, call and time."""
    body = json.dumps({"d": request.digest(), "p": request.principal, "exp": int(time.time() + ttl),
                       **({"x": extra} if extra else {})}, separators=(",", ":")).encode()
    tag = hmac.new(key, body, hashlib.sha256).digest()
    return f"{_b64(body)}.{_b64(tag)}"


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode().rstrip("=")


def open_state(key: bytes, state: str, request: ApprovalRequest) -> dict[str, str] | None:
    """The sealed extras when `state` is genuine, unexpired and for this very call and user; else None."""
    try:
        body_b64, tag_b64 = state.split(".", 1)
        body = base64.urlsafe_b64decode(body_b64 + "=" * (-len(body_b64) % 4))
        tag = base64.urlsafe_b64decode(tag_b64 + "=" * (-len(tag_b64) % 4))
    except (ValueError, TypeError):
        return None
    if not hmac.compare_digest(tag, hmac.new(key, body, hashlib.sha256).digest()):
        return None
    data = json.loads(body)
    if data.get("d") != request.digest() or data.get("p") != request.principal or data.get("exp", 0) < time.time():
        return None
    extra = data.get("x") or {}
    return {str(k): str(v) for k, v in extra.items()}
