"""Typed errors. Every error knows the tool-error payload a model receives.

    AlterError                       internal
     ├── ConfigurationError          internal
     │    └── ProviderNotConfiguredError provider_not_configured
     ├── InvalidArgumentsError       invalid_arguments
     ├── UnknownProviderError        unknown_provider
     ├── UnauthenticatedError        unauthenticated
     ├── GrantError
     │    ├── NotConnectedError      not_connected
     │    ├── AmbiguousGrantError    ambiguous_grant
     │    ├── GrantNotFoundError     grant_not_found
     │    └── ReauthRequiredError    reauth_required
     ├── HostNotAllowedError         host_not_allowed
     ├── PolicyDeniedError           policy_denied (a policy rule, or the human, refused the call)
     ├── ApprovalRequiredError       approval_required (a rule needs a human, and none can be asked)
     ├── InsufficientScopeError      insufficient_scope (the provider wants more permission; sent)
     ├── UpstreamError
     │    ├── UpstreamTimeoutError   upstream_timeout
     │    └── UpstreamUnreachableError upstream_unreachable
     ├── ConnectError
     │    ├── ConnectTimeoutError    connect_timeout
     │    └── ConnectDeniedError     connect_denied
     ├── RateLimitedError            rate_limited
     ├── VaultKeyError               internal (wrong or corrupt ALTER_VAULT_KEY)
     └── VaultUnavailableError       internal, retryable (the store cannot be reached right now)

`retryable` means only "the same call may succeed later with nothing else changed" (timeouts,
unreachable upstreams, rate limits, a store that is down); what must change is `user_action`.
`sent` (on `request` errors) says whether the upstream request left the process: False for every
error raised before the credential was released, True once bytes may have reached the provider.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, ClassVar, Literal

from alter_agents import redact
from alter_agents.models import AccountRef, ToolErrorBody, ToolErrorPayload

UserAction = Literal["choose_account", "connect", "reauthorize", "approve", "fix_arguments", "retry_later",
                     "ask_operator", "none"]


class AlterError(Exception):
    """Base of every error raised by alter-agents."""

    code: ClassVar[str] = "internal"
    user_action: ClassVar[UserAction] = "none"
    retryable: ClassVar[bool] = False
    sent: bool | None = None  # whether the upstream request left the process; set where that is known

    def __init__(
        self,
        message: str,
        *,
        retryable: bool | None = None,
        user_action: UserAction | None = None,
        **data: Any,
    ) -> None:
        message = redact.redact_text(message)  # a message may quote upstream text or the caller's URL
        super().__init__(message)
        self.message = message
        if retryable is not None:
            self.retryable = retryable  # type: ignore[misc]
        if user_action is not None:
            self.user_action = user_action  # type: ignore[misc]
        self.data: dict[str, Any] = {k: redact.redact_value(v) for k, v in data.items() if v is not None}

    def payload(self) -> ToolErrorPayload:
        """The one error shape every surface renders (DESIGN §5)."""
        body = ToolErrorBody(
            code=self.code,
            message=self.message,
            retryable=self.retryable,
            user_action=self.user_action,
            sent=self.sent,
            **self.data,
        )
        return ToolErrorPayload(error=body)


class ConfigurationError(AlterError):
    """The deployment is misconfigured (missing client id, bad providers file, ...)."""

    user_action = "ask_operator"


class ProviderNotConfiguredError(ConfigurationError):
    """A provider has no OAuth client: only the operator can fix it, by setting its client id and secret."""

    code = "provider_not_configured"
    user_action = "ask_operator"

    def __init__(self, provider: str) -> None:
        env = f"ALTER_{provider.upper().replace('-', '_')}_CLIENT_ID"
        secret = env.removesuffix("_ID") + "_SECRET"
        super().__init__(
            f"No OAuth client is configured for {provider}, so accounts cannot be linked. Tell the user an "
            f"operator must set {env} and {secret} (or client_id/client_secret in the providers file).",
            provider=provider, operator_must_set=[env, secret],
        )
        self.provider = provider


class VaultKeyError(AlterError):
    """The at-rest key cannot decrypt the store: wrong or corrupt `ALTER_VAULT_KEY`."""

    user_action = "ask_operator"


class VaultUnavailableError(AlterError):
    """The vault's database is down, restarting or unreachable; the same call can succeed later."""

    user_action = "retry_later"
    retryable = True


class InvalidArgumentsError(AlterError):
    code = "invalid_arguments"
    user_action = "fix_arguments"


class UnknownProviderError(AlterError):
    code = "unknown_provider"
    user_action = "fix_arguments"

    def __init__(self, provider: str, known: Sequence[str]) -> None:
        super().__init__(
            f"Unknown provider {provider!r}. Known providers: {', '.join(sorted(known))}.",
            provider=provider,
            known_providers=sorted(known),
        )
        self.provider = provider


class UnauthenticatedError(AlterError):
    code = "unauthenticated"
    user_action = "none"  # retryable only when the identity provider's keys could not be fetched


class GrantError(AlterError):
    """A grant could not be resolved for this call."""


class NotConnectedError(GrantError):
    code = "not_connected"
    user_action = "connect"

    def __init__(self, provider: str, *, account: str | None = None, connect_url: str | None = None) -> None:
        which = f" for account {account!r}" if account else ""
        super().__init__(
            f"No {provider} account is connected{which}. Call connect with provider={provider!r}, "
            "ask the user to finish in the browser, then call request again.",
            provider=provider,
            account=account,
            connect_url=connect_url,
        )
        self.provider = provider


class AmbiguousGrantError(GrantError):
    code = "ambiguous_grant"
    user_action = "choose_account"

    def __init__(self, provider: str, accounts: Sequence[AccountRef]) -> None:
        names = ", ".join(a.account for a in accounts)
        super().__init__(
            f"{len(accounts)} {provider} accounts are connected; call request again with account "
            f"set to one of: {names}",
            provider=provider,
            accounts=[a.model_dump() for a in accounts],
        )
        self.provider = provider
        self.accounts: list[AccountRef] = list(accounts)

    # The official client's names, so its `except AmbiguousGrantError as e:` recipes run unchanged.
    @property
    def provider_id(self) -> str:
        return self.provider

    @property
    def account_identifiers(self) -> list[str]:
        """Each candidate's account: pass one back as `account=` to retry."""
        return [a.account for a in self.accounts]

    @property
    def candidates(self) -> list[AccountRef]:
        """Each candidate with its `grant_id` (retry with `grant_id=` alone), label and display name."""
        return self.accounts

    @property
    def grant_ids(self) -> list[str]:
        return [a.grant_id for a in self.accounts if a.grant_id]


class GrantNotFoundError(GrantError):
    code = "grant_not_found"
    user_action = "fix_arguments"

    def __init__(self, grant_id: str) -> None:
        super().__init__(f"Grant {grant_id!r} was not found for this session.", grant_id=grant_id)


class ReauthRequiredError(GrantError):
    code = "reauth_required"
    user_action = "reauthorize"

    def __init__(self, provider: str, account: str | None, *, connect_url: str | None = None) -> None:
        target = f" and account={account!r}" if account else ""
        super().__init__(
            f"The {provider} account {account or ''} must be re-authorised (its authorization was revoked "
            f"or expired). Call connect with provider={provider!r}{target}, show the user the link, then "
            "repeat this call.",
            provider=provider,
            account=account,
            connect_url=connect_url,
        )
        self.provider = provider


class HostNotAllowedError(AlterError):
    code = "host_not_allowed"
    user_action = "fix_arguments"

    def __init__(self, url: str, provider: str, hosts: Sequence[str], reason: str | None = None) -> None:
        why = reason or f"its host is not one of {provider}'s API hosts ({', '.join(hosts)})"
        super().__init__(
            f"Refused to send the {provider} credential to {url}: {why}.",
            provider=provider,
            allowed_hosts=list(hosts),
        )


class PolicyDeniedError(AlterError):
    """A policy rule (or the human asked to approve) refused the call before its credential was released."""

    code = "policy_denied"
    user_action = "none"
    sent = False

    def __init__(self, message: str, *, provider: str, rule: str | None, decided_by: str = "policy") -> None:
        super().__init__(message, provider=provider, rule=rule, decided_by=decided_by)


class ApprovalRequiredError(AlterError):
    """A rule says a human must approve the call, and no one can be asked from here."""

    code = "approval_required"
    user_action = "approve"
    sent = False

    def __init__(self, provider: str, method: str, url: str, rule: str | None, account: str | None) -> None:
        super().__init__(
            f"{method} {url} needs the user's approval (rule {rule}) and this client cannot ask them. Nothing was "
            "sent. Ask the user in the chat whether to allow it; they can allow it by approving it in a client "
            "that supports approvals, or an operator can add an allow rule to the policy file (ALTER_POLICY_FILE).",
            provider=provider, rule=rule, method=method, url=url, account=account,
        )


class InsufficientScopeError(AlterError):
    """The provider answered that the grant lacks a permission the call needs (the call was sent)."""

    code = "insufficient_scope"
    user_action = "reauthorize"
    sent = True

    def __init__(self, provider: str, account: str, status: int, granted: Sequence[str] | None,
                 required: Sequence[str] | None) -> None:
        needs = f" It needs: {', '.join(required)}." if required else ""
        super().__init__(
            f"{provider} refused the call (HTTP {status}): the {account} grant lacks a permission.{needs} Call "
            f"connect with provider={provider!r}, account={account!r} and scopes set to the needed scopes; the "
            "user approves the added permission and the same grant is upgraded. Then call request again.",
            provider=provider, account=account, status=status,
            granted_scopes=list(granted) if granted is not None else None,
            required_scopes=list(required) if required is not None else None,
        )
        self.provider = provider
        self.account = account
        self.status = status
        self.granted_scopes = list(granted or [])
        self.required_scopes = list(required or [])


class UpstreamError(AlterError):
    retryable = True
    user_action = "retry_later"


class UpstreamTimeoutError(UpstreamError):
    code = "upstream_timeout"


class UpstreamUnreachableError(UpstreamError):
    code = "upstream_unreachable"


class ConnectError(AlterError):
    """The OAuth connect flow did not complete."""


class ConnectTimeoutError(ConnectError):
    code = "connect_timeout"
    user_action = "connect"


class ConnectDeniedError(ConnectError):
    code = "connect_denied"
    user_action = "connect"


class RateLimitedError(AlterError):
    code = "rate_limited"
    user_action = "retry_later"
    retryable = True


ERROR_CODES: tuple[str, ...] = (
    "ambiguous_grant",
    "not_connected",
    "grant_not_found",
    "reauth_required",
    "host_not_allowed",
    "policy_denied",
    "approval_required",
    "insufficient_scope",
    "unknown_provider",
    "provider_not_configured",
    "invalid_arguments",
    "unauthenticated",
    "upstream_timeout",
    "upstream_unreachable",
    "connect_timeout",
    "connect_denied",
    "rate_limited",
    "internal",
)
