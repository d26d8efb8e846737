"""alter-agents: let AI agents call third-party APIs with the right user's stored credential."""

from alter_agents.app import App
from alter_agents.errors import (
    AlterError,
    AmbiguousGrantError,
    ApprovalRequiredError,
    ConfigurationError,
    ConnectDeniedError,
    ConnectError,
    ConnectTimeoutError,
    GrantError,
    GrantNotFoundError,
    HostNotAllowedError,
    InsufficientScopeError,
    InvalidArgumentsError,
    NotConnectedError,
    PolicyDeniedError,
    ProviderNotConfiguredError,
    RateLimitedError,
    ReauthRequiredError,
    UnauthenticatedError,
    UnknownProviderError,
    UpstreamError,
    UpstreamTimeoutError,
    UpstreamUnreachableError,
    VaultKeyError,
    VaultUnavailableError,
)
from alter_agents.grant_tools import GrantContext, GrantTool, grant_tool, load_grant_tools
from alter_agents.models import (
    AccountRef,
    ApiResponse,
    ConnectResult,
    ConnectStart,
    ConnectStatus,
    Grant,
    GrantRef,
    Principal,
    ToolErrorPayload,
)
from alter_agents.sessions import GrantSession, HeadlessSession, LocalSession, UserSession
from alter_agents.settings import Settings
from alter_agents.tools import AlterTools, CallContext
from alter_agents.vault import LocalVault

__all__ = [
    "AccountRef",
    "AlterError",
    "AlterToolkit",
    "AlterTools",
    "AmbiguousGrantError",
    "ApiResponse",
    "App",
    "ApprovalRequiredError",
    "CallContext",
    "ConfigurationError",
    "ConnectDeniedError",
    "ConnectError",
    "ConnectResult",
    "ConnectStart",
    "ConnectStatus",
    "ConnectTimeoutError",
    "Grant",
    "GrantContext",
    "GrantError",
    "GrantNotFoundError",
    "GrantRef",
    "GrantSession",
    "GrantTool",
    "HeadlessSession",
    "HostNotAllowedError",
    "InsufficientScopeError",
    "InvalidArgumentsError",
    "LocalSession",
    "LocalVault",
    "NotConnectedError",
    "PolicyDeniedError",
    "Principal",
    "ProviderNotConfiguredError",
    "RateLimitedError",
    "ReauthRequiredError",
    "Settings",
    "ToolErrorPayload",
    "UnauthenticatedError",
    "UnknownProviderError",
    "UpstreamError",
    "UpstreamTimeoutError",
    "UpstreamUnreachableError",
    "UserSession",
    "VaultKeyError",
    "VaultUnavailableError",
    "grant_tool",
    "load_grant_tools",
]


def __getattr__(name: str) -> object:
    """`AlterToolkit` needs the `langchain` extra, so it is imported only when asked for."""
    if name == "AlterToolkit":
        from alter_agents.langchain import AlterToolkit

        return AlterToolkit
    raise AttributeError(f"module 'alter_agents' has no attribute {name!r}")
