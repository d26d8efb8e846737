"""A provider spec: how to obtain, inject and bind one API family's credential."""

from __future__ import annotations

import fnmatch
from collections.abc import Iterable
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from alter_agents.models import Injection
from alter_agents.scopes import ScopeSignals


class InjectSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")

    header: str | None = None
    format: str = "Bearer {token}"
    query: str | None = None
    basic: bool = False

    def to_injection(self) -> Injection:
        if self.query:
            return Injection(header=None, query=self.query)
        if self.basic:
            return Injection(header=None, basic=True)
        return Injection(header=self.header or "Authorization", format=self.format)


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
    client_secret: str | None = None
    token_auth_method: Literal["client_secret_basic", "client_secret_post"] = "client_secret_post"
    docs_url: str | None = None
    scope_signals: ScopeSignals | None = None  # how the provider says a token lacks a permission

    def requestable_scopes(self) -> list[str]:
        """The scopes a connect may request (the operator's `allowed_scopes`, else the default `scopes`)."""
        return list(self.scopes if self.allowed_scopes is None else self.allowed_scopes)

    def claims_host(self, host: str) -> bool:
        """True when `host` is one of this provider's hosts (`*.example.com` patterns allowed)."""
        return host_matches(host, self.hosts)


def host_matches(host: str, patterns: Iterable[str]) -> bool:
    """The one host-binding rule: a host name (any port) against exact names or `*.` patterns."""
    host = host.lower().rstrip(".")
    return any(fnmatch.fnmatchcase(host, pattern.lower()) for pattern in patterns)
