"""The vault's objects in the wire shapes of the official protocol (see `wire`)."""

from __future__ import annotations

import base64

from alter_agents.models import AccountRef, Grant, ReleasedCredential
from alter_agents.providers import Providers
from alter_agents.server.wire import (
    Candidate,
    GrantExtension,
    GrantItem,
    PrincipalType,
    TokenResponse,
    WireInjection,
    rfc3339,
)


def token_response(credential: ReleasedCredential) -> TokenResponse:
    grant, injection = credential.grant, credential.injection
    access_token, header, fmt = credential.token, injection.header or "Authorization", injection.format
    extra: list[dict[str, str]] | None = None
    if injection.basic:
        access_token = base64.b64encode(f"{credential.token}:".encode()).decode()
        header, fmt = "Authorization", "Basic {token}"
    elif injection.query:
        extra = [{"target": "query_param", "key": injection.query, "value_source": "token"}]
        header, fmt = "Authorization", "Bearer {token}"
    return TokenResponse(
        access_token=access_token, grant_id=grant.grant_id, provider_id=grant.provider,
        expires_at=rfc3339(grant.expires_at), scopes=grant.scopes, injection_header=header, injection_format=fmt,
        additional_injections=extra,
        alter_agents=GrantExtension(grant=grant, hosts=list(credential.hosts), allow_http=credential.allow_http,
                                    injection=WireInjection.of(injection)),
    )


def candidate(account: AccountRef) -> Candidate:
    return Candidate(grant_id=account.grant_id or "", label=account.label, account_identifier=account.account,
                     account_display_name=account.display_name)


def grant_item(grant: Grant, providers: Providers) -> GrantItem:
    spec = providers.get(grant.provider)
    oauth = grant.kind == "oauth2"
    return GrantItem(
        grant_kind="oauth" if oauth else "managed_secret", grant_id=grant.grant_id,
        provider_id=grant.provider if oauth else None,
        managed_secret_id=None if oauth else grant.provider, managed_secret_slug=None if oauth else grant.provider,
        managed_secret_name=None if oauth else (spec.display_name or grant.provider),
        status=grant.status, scopes=grant.scopes, account_identifier=grant.account,
        account_display_name=grant.display_name, label=grant.label, expires_at=rfc3339(grant.expires_at),
        created_at=rfc3339(grant.created_at) or "", principal_type=_principal_type(grant.owner, oauth),
        alter_agents=GrantExtension(grant=grant, hosts=list(spec.hosts), allow_http=spec.allow_http,
                                    injection=WireInjection.of(spec.inject.to_injection())),
    )


def _principal_type(owner: str, oauth: bool) -> PrincipalType:
    if owner == "app":
        return "system"
    if owner.startswith("group:"):
        return "group" if not oauth else "user"  # the official OAuth item has no group principal
    return "user"
