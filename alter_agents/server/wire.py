"""The wire shapes of the `alter-sdk` protocol, declared once for the vault server and RemoteVault.

Field names follow the official client (read from `alter-sdk` 0.29.0). Our server adds one extension
object, `alter_agents`, to token responses and grant items: the full grant (owner, account, label), the
hosts the credential is bound to and how it is injected. The official client ignores it; RemoteVault
uses it when present and falls back to the standard fields when talking to another server.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from alter_agents.models import Grant, Injection

PrincipalType = Literal["user", "group", "system", "agent"]


class _In(BaseModel):
    """Requests: unknown fields are ignored, as the official server does."""

    model_config = ConfigDict(extra="ignore")


class _Out(BaseModel):
    """Responses: RemoteVault reads ours and other servers' answers leniently."""

    model_config = ConfigDict(extra="ignore")


class CallTarget(_In):
    method: str = "GET"
    url: str


class TokenRequest(_In):
    provider_id: str | None = None
    grant_id: str | None = None
    user_token: str | None = None
    account: str | None = None
    label: str | None = None
    reason: str | None = None
    request: CallTarget | None = None


class WireInjection(_Out):
    header: str | None = "Authorization"
    format: str = "Bearer {token}"
    query: str | None = None
    basic: bool = False

    @classmethod
    def of(cls, injection: Injection) -> WireInjection:
        return cls(header=injection.header, format=injection.format, query=injection.query, basic=injection.basic)

    def to_injection(self) -> Injection:
        return Injection(header=self.header, format=self.format, query=self.query, basic=self.basic)


class GrantExtension(_Out):
    """Our extension: the grant as the vault knows it, and how its credential is bound and injected."""

    grant: Grant
    hosts: list[str] = Field(default_factory=list)
    allow_http: bool = False
    injection: WireInjection = Field(default_factory=WireInjection)


class TokenResponse(_Out):
    access_token: str
    grant_id: str
    provider_id: str = ""
    token_type: str = "Bearer"
    expires_at: str | None = None
    scopes: list[str] = Field(default_factory=list)
    injection_header: str = "Authorization"
    injection_format: str = "Bearer {token}"
    additional_injections: list[dict[str, str]] | None = None
    alter_agents: GrantExtension | None = None


class Candidate(_Out):
    grant_id: str
    label: str | None = None
    account_identifier: str | None = None
    account_display_name: str | None = None


class GrantListRequest(_In):
    limit: int = Field(default=100, ge=1, le=1000)
    offset: int = Field(default=0, ge=0)
    provider_id: str | None = None
    status: str | None = None
    account: str | None = None
    label: str | None = None
    user_token: str | None = None
    # Ours: "session" lists what the caller's session may use (as the embedded vault does);
    # the official client sends nothing and gets the operator's view of every grant.
    alter_owner_scope: Literal["operator", "session"] = "operator"


class GrantItem(_Out):
    grant_kind: Literal["oauth", "managed_secret"]
    grant_id: str
    provider_id: str | None = None
    managed_secret_id: str | None = None
    managed_secret_slug: str | None = None
    managed_secret_name: str | None = None
    status: str
    scopes: list[str] = Field(default_factory=list)
    account_identifier: str | None = None
    account_display_name: str | None = None
    label: str | None = None
    expires_at: str | None = None
    created_at: str
    principal_type: PrincipalType
    alter_agents: GrantExtension | None = None


class GrantListResponse(_Out):
    grants: list[GrantItem]
    total: int
    limit: int
    offset: int
    has_more: bool


class ConnectSessionRequest(_In):
    allowed_providers: list[str] | None = None
    return_url: str | None = None
    allowed_origin: str | None = None
    metadata: dict[str, Any] | None = None
    user_token: str | None = None
    required_scopes: dict[str, list[str]] | None = None
    # Ours: a label for the new grant, and whether a session without a user token may create
    # app-owned grants (the official client's connect() is headless, so that is the default).
    label: str | None = None
    alter_headless: bool = True


class ConnectSessionResponse(_Out):
    session_token: str
    connect_url: str
    expires_in: int
    expires_at: str
    single_provider: bool = False


class PollRequest(_In):
    session_token: str


class PolledGrant(_Out):
    grant_id: str
    provider_id: str
    account_identifier: str | None = None
    scopes: list[str] = Field(default_factory=list)
    operation: Literal["creation", "reauth"] = "creation"
    label: str | None = None


class PollError(_Out):
    error_code: str
    error_message: str


class PollResponse(_Out):
    status: str
    grants: list[PolledGrant] | None = None
    error: PollError | None = None


class AuditRequest(_In):
    grant_id: str
    provider_id: str | None = None
    method: str = "GET"
    url: str = ""
    response_status: int = 0
    latency_ms: float = 0.0


class AuditBatchRequest(_In):
    """Ours (`/sdk/alter/audit/batch`): many `AuditRequest`s in one signed call, recorded before the answer."""

    calls: list[AuditRequest] = Field(max_length=1000)


class AuditBatchResponse(_Out):
    status: Literal["recorded"] = "recorded"
    recorded: int = 0


def rfc3339(value: datetime | None) -> str | None:
    """RFC 3339 with an explicit offset, which the official client requires."""
    return value.isoformat() if value is not None else None
