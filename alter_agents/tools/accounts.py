"""The `accounts` tool: which accounts the session can act with, and which providers it can connect.

Many MCP hosts never show resources to the model, so this is a tool (`alter://grants` stays). It is
also where the model learns provider ids and each provider's API hosts — the only hosts a credential
is ever sent to.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from alter_agents.errors import AlterError
from alter_agents.models import Grant, GrantStatus, ToolErrorPayload
from alter_agents.sessions import HeadlessSession
from alter_agents.tools.args import validate_args
from alter_agents.tools.context import CallContext, ToolsBase
from alter_agents.tools.results import shielded

ACCOUNTS_DESCRIPTION = (
    "List the connected accounts (provider, account, label, status) and every provider you can use, with "
    "its id, API hosts (the only hosts its credential is ever sent to) and whether it is connected. Use the "
    "provider ids and account names shown here in request and connect. A status of needs_reauth means the "
    "user must re-authorise that account: call connect with its provider and account."
)


class AccountsArgs(BaseModel):
    model_config = ConfigDict(extra="forbid")

    provider: str | None = Field(None, description="Only this provider (an id such as github or google).")


class AccountOut(BaseModel):
    provider: str = Field(description="Provider id, as request and connect take it.")
    account: str = Field(description="The account identifier (pass it as `account` to choose it).")
    label: str | None = Field(None, description="The user's name for the account, e.g. work.",
                              exclude_if=lambda v: v is None)
    status: GrantStatus = Field(description="active, or needs_reauth (call connect with this account).")
    shared: bool = Field(False, description="True when the account belongs to a group the user is in.",
                         exclude_if=lambda v: v is False)


class ProviderOut(BaseModel):
    name: str = Field(description="Provider id.")
    display_name: str
    hosts: list[str] = Field(description="API hosts the credential may be sent to (*. = any subdomain).")
    kind: Literal["oauth2", "secret"] = Field(
        description="oauth2: the user links it with connect; secret: an operator adds an API key."
    )
    connected: bool = Field(description="True when an active account of this provider is available.")


class AccountsResult(BaseModel):
    accounts: list[AccountOut]
    providers: list[ProviderOut]


class AccountsTool(ToolsBase):
    """`accounts`, as a mixin of `AlterTools`."""

    async def run_accounts(self, args: AccountsArgs | dict[str, Any] | None = None, call: CallContext | None = None
                           ) -> AccountsResult | ToolErrorPayload:
        return await shielded(self.accounts(args, call))

    async def accounts(self, args: AccountsArgs | dict[str, Any] | None = None, call: CallContext | None = None
                       ) -> AccountsResult:
        """The session's accounts and the provider catalogue. Raises typed `AlterError`s."""
        parsed = validate_args(AccountsArgs, args or {})
        if parsed.provider is not None:
            self.app.providers.get(parsed.provider)  # unknown_provider lists the known ids
        grants = await self._session_grants(await self._user_token(self._context(call)), parsed.provider)
        accounts = [
            AccountOut(provider=g.provider, account=g.account, label=g.label, status=g.status,
                       shared=g.owner.startswith("group:"))
            for g in sorted(grants, key=lambda g: (g.provider, g.account.casefold()))
            if g.status in ("active", "needs_reauth")
        ]
        active = {a.provider for a in accounts if a.status == "active"}
        providers = [
            ProviderOut(name=spec.name, display_name=spec.display_name or spec.name, hosts=list(spec.hosts),
                        kind=spec.kind, connected=spec.name in active)
            for spec in sorted(self.app.providers, key=lambda spec: spec.name)
            if parsed.provider in (None, spec.name)
        ]
        return AccountsResult(accounts=accounts, providers=providers)

    async def _session_grants(self, token: str | None, provider: str | None) -> list[Grant]:
        if isinstance(self.session, HeadlessSession):
            pinned = set(self.session.pinned.values())
            if not pinned:
                return []
            try:  # the app's own grants; only those this session pinned are its accounts
                every = await self.app.vault.list_grants(provider=provider, everyone=True)
            except AlterError:
                return []
            return [g for g in every if g.grant_id in pinned]
        return await self.app.vault.list_grants(user_token=token, provider=provider)
