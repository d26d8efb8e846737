"""Identity resolution (DESIGN §3): which grant backs a call. Pure functions over stored grants."""

from __future__ import annotations

from collections.abc import Sequence

from alter_agents.errors import AmbiguousGrantError, GrantNotFoundError, NotConnectedError
from alter_agents.models import Grant


def matches_account(grant: Grant, account: str) -> bool:
    """`account` names a grant by its identifier or its label (case-insensitive)."""
    wanted = account.strip().casefold()
    return grant.account.casefold() == wanted or (grant.label or "").casefold() == wanted


def choose(
    candidates: Sequence[Grant],
    provider: str,
    account: str | None = None,
    label: str | None = None,
    connect_url: str | None = None,
) -> Grant:
    """0 candidates → not connected; 1 → it; more → ambiguous, listing every candidate."""
    active = [g for g in candidates if g.provider == provider and g.status != "revoked"]
    if account:
        active = [g for g in active if matches_account(g, account)]
    if label:
        active = [g for g in active if (g.label or "").casefold() == label.casefold()]
    if not active:
        raise NotConnectedError(provider, account=account or label, connect_url=connect_url)
    if len(active) > 1:
        raise AmbiguousGrantError(provider, [g.account_ref() for g in active])
    return active[0]


def owned_by(grant: Grant | None, owners: Sequence[str] | None, grant_id: str) -> Grant:
    """An explicit grant id, checked against the caller's principals when there is a caller.

    A grant that exists but belongs to someone else is reported exactly like a missing one.
    """
    if grant is None or grant.status == "revoked":
        raise GrantNotFoundError(grant_id)
    if owners is not None and grant.owner not in owners:
        raise GrantNotFoundError(grant_id)
    return grant
