"""Data shapes shared by the vault, the tools and every surface, declared once."""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

GrantStatus = Literal["active", "needs_reauth", "revoked"]
PrincipalKind = Literal["user", "group", "app"]


@dataclass(frozen=True, slots=True)
class Principal:
    """Who owns a grant: a user (JWT `sub`), a group (groups claim value) or the app itself."""

    kind: PrincipalKind
    id: str = ""

    @classmethod
    def parse(cls, text: str) -> Principal:
        """Parse `user:SUB`, `group:NAME` or `app`."""
        if text == "app":
            return cls("app")
        kind, sep, ident = text.partition(":")
        if not sep or not ident or kind not in ("user", "group"):
            raise ValueError(f"owner must be 'user:SUB', 'group:NAME' or 'app', not {text!r}")
        return cls(kind, ident)  # type: ignore[arg-type]

    def __str__(self) -> str:
        return "app" if self.kind == "app" else f"{self.kind}:{self.id}"


APP = Principal("app")


class AccountRef(BaseModel):
    """One connected account as a model sees it when it must choose."""

    account: str
    label: str | None = None
    display_name: str | None = None


class GrantRef(BaseModel):
    """Which grant acted, so the model can tell the user which account was used."""

    provider: str
    account: str
    label: str | None = Field(None, exclude_if=lambda v: v is None)  # left out when empty: fewer tokens


class Grant(BaseModel):
    """A stored credential's metadata. Never carries the secret itself."""

    model_config = ConfigDict(frozen=True)

    grant_id: str
    provider: str
    owner: str
    kind: Literal["oauth2", "secret"]
    account: str
    label: str | None = None
    display_name: str | None = None
    scopes: list[str] = Field(default_factory=list)
    status: GrantStatus = "active"
    created_at: datetime
    updated_at: datetime
    expires_at: datetime | None = None

    def ref(self) -> GrantRef:
        return GrantRef(provider=self.provider, account=self.account, label=self.label)

    def account_ref(self) -> AccountRef:
        return AccountRef(account=self.account, label=self.label, display_name=self.display_name)


@dataclass(frozen=True, slots=True)
class Injection:
    """How a credential rides on a request: header + format, query parameter, or basic auth."""

    header: str | None = "Authorization"
    format: str = "Bearer {token}"
    query: str | None = None
    basic: bool = False


@dataclass(frozen=True, slots=True)
class ReleasedCredential:
    """A credential released by the vault for one call. Lives only in memory, never in output."""

    grant: Grant
    token: str
    injection: Injection
    hosts: tuple[str, ...]
    allow_http: bool
    principal: str | None = None

    def __repr__(self) -> str:
        return f"ReleasedCredential(grant={self.grant.grant_id!r}, token=<redacted>)"


class ConnectResult(BaseModel):
    """A grant created (or re-authorized) by a completed connect flow."""

    grant_id: str
    provider: str
    account: str
    label: str | None = None
    scopes: list[str] = Field(default_factory=list)
    operation: Literal["creation", "reauth"] = "creation"


class ConnectStart(BaseModel):
    """A connect flow waiting for the user's browser."""

    session_id: str
    provider: str
    connect_url: str
    expires_at: datetime


class ConnectStatus(BaseModel):
    """The state of a connect flow, as polled."""

    status: Literal["pending", "completed", "denied", "expired", "error"]
    results: list[ConnectResult] = Field(default_factory=list)
    error: str | None = None


class ApiResponse(BaseModel):
    """An upstream response with every occurrence of the credential already redacted."""

    status: int
    headers: dict[str, str]
    content: bytes
    truncated: bool = False
    grant: GrantRef

    @property
    def content_type(self) -> str:
        return self.headers.get("content-type", "")

    def json_body(self) -> Any:
        """The body parsed as JSON."""
        return json.loads(self.content)

    @property
    def text(self) -> str:
        return self.content.decode("utf-8", errors="replace")


class ToolErrorBody(BaseModel):
    """The error object of DESIGN §5; extra keys carry the data the model needs."""

    model_config = ConfigDict(extra="allow")

    code: str
    message: str
    retryable: bool = False
    user_action: str = "none"
    provider: str | None = None
    accounts: list[AccountRef] | None = None
    connect_url: str | None = None


class ToolErrorPayload(BaseModel):
    error: ToolErrorBody

    def to_json(self) -> str:
        return self.model_dump_json(exclude_none=True)
