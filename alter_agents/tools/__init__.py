"""The `request`, `connect` and `accounts` tools, framework-neutral (DESIGN §5). Surfaces only render these.

Every failure becomes one `ToolErrorPayload` with a stable `code`; nothing here imports MCP or LangChain.
"""

from __future__ import annotations

from alter_agents.app import App
from alter_agents.approval import Approver
from alter_agents.sessions import Session
from alter_agents.tools.accounts import ACCOUNTS_DESCRIPTION, AccountsArgs, AccountsResult, AccountsTool
from alter_agents.tools.args import (
    ConnectArgs,
    GrantRequestArgs,
    RequestArgs,
    arguments_error,
    validate_args,
)
from alter_agents.tools.connect import CONNECT_DESCRIPTION, DEFAULT_CONNECT_WAIT, ConnectTool
from alter_agents.tools.context import CallContext, ChooseAccount, OnConnectUrl, Progress, _log_connect_url
from alter_agents.tools.request import (
    DEFAULT_MAX_BODY_BYTES,
    GRANT_REQUEST_DESCRIPTION,
    REQUEST_DESCRIPTION,
    RequestTool,
)
from alter_agents.tools.results import ConnectResultOut, RequestResult, internal_payload, shielded

__all__ = [
    "ACCOUNTS_DESCRIPTION",
    "CONNECT_DESCRIPTION",
    "DEFAULT_CONNECT_WAIT",
    "DEFAULT_MAX_BODY_BYTES",
    "GRANT_REQUEST_DESCRIPTION",
    "REQUEST_DESCRIPTION",
    "AccountsArgs",
    "AccountsResult",
    "AlterTools",
    "CallContext",
    "ChooseAccount",
    "ConnectArgs",
    "ConnectResultOut",
    "GrantRequestArgs",
    "OnConnectUrl",
    "Progress",
    "RequestArgs",
    "RequestResult",
    "arguments_error",
    "internal_payload",
    "shielded",
    "validate_args",
]


class AlterTools(RequestTool, ConnectTool, AccountsTool):
    """The tools bound to one session. Safe to share across concurrent calls and users.

    `on_connect_url` shows a connect link to the human (return False when it could not); only then does
    `connect` wait up to `connect_wait` seconds for them. Without it the link goes back to the model in a
    `pending` result at once. What the tools remember per user lives in the vault (`app.vault.memory`).
    """

    def __init__(
        self,
        app: App,
        session: Session,
        *,
        choose_account: ChooseAccount | None = None,
        on_connect_url: OnConnectUrl | None = None,
        connect_wait: float = DEFAULT_CONNECT_WAIT,
        max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
        remember_account: bool = True,
        approve: Approver | None = None,
    ) -> None:
        self.app = app
        self.session = session
        self.defaults = CallContext(choose_account=choose_account, on_connect_url=on_connect_url or _log_connect_url,
                                    approve=approve)
        self.connect_wait = connect_wait
        self.max_body_bytes = max_body_bytes
        self.remember_account = remember_account

