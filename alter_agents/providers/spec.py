"""A provider spec: how to obtain, inject and bind one API family's credential."""

from __future__ import annotations

import functools
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator

from alter_agents.models import Injection
from alter_agents.providers import binding
from alter_agents.scopes import ScopeSignals


class InjectSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")

    header: str | None = None
    format: str = "Bearer {token}"
    query: str | None = None
    basic: bool = False

    @field_validator("format")
    @classmethod
    def _has_token(cls, value: str) -> str:
        if "{token}" not in value:
            raise ValueError("inject.format must contain {token}, where the credential goes")
        return value

    def to_injection(self) -> Injection:
        return _injection(self.header, self.format, self.query, self.basic)


@functools.lru_cache(maxsize=256)
def _injection(header: str | None, format: str, query: str | None, basic: bool) -> Injection:
    """One immutable `Injection` per distinct spec: asked for on every release."""
    if query:
        return Injection(header=None, query=query)
    if basic:
        return Injection(header=None, basic=True)
    return Injection(header=header or "Authorization", format=format)


class AccountLookup(BaseModel):
    """Where the account identifier is learned after connecting (e.g. GitHub `GET /user` → `login`)."""

    model_config = ConfigDict(extra="forbid")

    url: str
    field: str
    display_field: str | None = None


class ProviderSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str
    kind: Literal["oauth2", "secret"] = "oauth2"
    display_name: str = ""
    hosts: list[str] = Field(default_factory=list)
    allow_http: bool = False
    inject: InjectSpec = Field(default_factory=InjectSpec)
    authorize_url: str | None = None
    token_url: str | None = None
    device_authorization_url: str | None = None  # RFC 8628; sign-in from machines without a browser
    scopes: list[str] = Field(default_factory=list)
    allowed_scopes: list[str] | None = None  # what `connect` may ask for; default: `scopes`
    scope_separator: str = " "
    authorize_params: dict[str, str] = Field(default_factory=dict)
    login_hint: str | None = None  # the authorize parameter that pre-selects an account (e.g. login_hint)
    account: AccountLookup | None = None
    client_id: str | None = None
    client_secret: SecretStr | None = None
    token_auth_method: Literal["client_secret_basic", "client_secret_post"] = "client_secret_post"
    docs_url: str | None = None
    scope_signals: ScopeSignals | None = None  # how the provider says a token lacks a permission
    propagate_trace: bool = False  # send W3C traceparent to this provider's API (off: it learns nothing of ours)

    @field_validator("hosts")
    @classmethod
    def _safe_hosts(cls, value: list[str]) -> list[str]:
        for entry in value:
            binding.parse_entry(entry)
        return value

    def requestable_scopes(self) -> list[str]:
        """The scopes a connect may request (the operator's `allowed_scopes`, else the default `scopes`)."""
        return list(self.scopes if self.allowed_scopes is None else self.allowed_scopes)

    def claims(self, url: str) -> bool:
        """True when `url` (host and port) is one of this provider's API destinations."""
        return binding.claims(url, self.hosts)
