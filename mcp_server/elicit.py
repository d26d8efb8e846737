"""Reaching the human through the MCP client: a form to choose an account, a URL to link one.

On 2025-11-25 connections the server asks mid-call (a server-to-client request). 2026-07-28
connections have no back channel: the tool returns an `InputRequiredResult`, the client asks the
human and retries the same call with the answer. Where the client cannot ask, or the human declines,
the structured error or the pending result goes to the model instead.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import Any, Literal

from mcp.server.elicitation import render_elicitation_schema
from mcp.server.mcpserver import Context
from mcp.shared.exceptions import NoBackChannelError
from mcp_types import ElicitRequest, ElicitRequestFormParams, ElicitRequestURLParams, ElicitResult, InputRequiredResult
from mcp_types.version import is_version_at_least
from pydantic import BaseModel, Field, ValidationError, create_model

from alter_agents.models import AccountRef
from alter_agents.tools import ConnectResultOut

MODERN_ERA = "2026-07-28"
_ACCOUNT = "account"
_CONNECT = "connect"


@dataclass(frozen=True)
class ClientReach:
    """What this call's client can show the human, and how to ask it."""

    ctx: Context[Any, Any]

    @property
    def modern(self) -> bool:
        version = self.ctx.protocol_version
        return version is not None and is_version_at_least(version, MODERN_ERA)

    @property
    def can_form(self) -> bool:
        capability = self._elicitation()
        # An empty `elicitation: {}` (2025-06-18 clients) means form mode.
        return capability is not None and (capability.form is not None or capability.url is None)

    @property
    def can_url(self) -> bool:
        capability = self._elicitation()
        return capability is not None and capability.url is not None

    def _elicitation(self) -> Any:
        capabilities = self.ctx.client_capabilities
        return capabilities.elicitation if capabilities is not None else None

    # -- choosing an account --------------------------------------------------------------

    async def choose_account(self, provider: str, accounts: list[AccountRef]) -> str | None:
        """Ask mid-call (2025-11-25); None sends the ambiguity to the model."""
        if self.modern or not self.can_form:
            return None
        try:
            result = await self.ctx.elicit(_account_message(provider, accounts), _account_choice(accounts))
        except (NoBackChannelError, ValueError):
            return None
        return str(getattr(result.data, "account", "")) or None if result.action == "accept" else None

    def ask_account(self, provider: str, accounts: list[AccountRef]) -> InputRequiredResult | None:
        """The question to return instead of the error (2026-07-28), or None when it cannot be asked."""
        if not (self.modern and self.can_form) or self.ctx.input_responses:
            return None
        schema = render_elicitation_schema(_account_choice(accounts))
        params = ElicitRequestFormParams(message=_account_message(provider, accounts), requested_schema=schema)
        return InputRequiredResult(input_requests={_ACCOUNT: ElicitRequest(params=params)}, request_state=_ACCOUNT)

    def answered_account(self) -> str | None:
        """The account the human chose in the previous round (2026-07-28)."""
        answer = (self.ctx.input_responses or {}).get(_ACCOUNT)
        if not isinstance(answer, ElicitResult) or answer.action != "accept" or not answer.content:
            return None
        value = answer.content.get("account")
        return value if isinstance(value, str) and value else None

    # -- linking an account ---------------------------------------------------------------

    async def open_url(self, provider: str, pending: ConnectResultOut) -> str | None:
        """Offer the connect URL mid-call (2025-11-25); the elicitation id when the human accepted."""
        if self.modern or not self.can_url or not pending.connect_url:
            return None
        elicitation_id = uuid.uuid4().hex
        try:
            result = await self.ctx.elicit_url(_connect_message(provider, pending), pending.connect_url,
                                               elicitation_id)
        except NoBackChannelError:
            return None
        return elicitation_id if result.action == "accept" else None

    def offer_url(self, provider: str, pending: ConnectResultOut) -> InputRequiredResult | None:
        """The URL to return instead of waiting (2026-07-28), or None when it cannot be offered."""
        if not (self.modern and self.can_url) or not pending.connect_url or self.ctx.input_responses:
            return None
        params = ElicitRequestURLParams(message=_connect_message(provider, pending), url=pending.connect_url)
        return InputRequiredResult(input_requests={_CONNECT: ElicitRequest(params=params)},
                                   request_state=pending.model_dump_json())

    def url_answer(self) -> tuple[bool, ConnectResultOut | None]:
        """(accepted, the pending result offered) from the previous round (2026-07-28)."""
        answer = (self.ctx.input_responses or {}).get(_CONNECT)
        if not isinstance(answer, ElicitResult):
            return False, None
        try:
            pending = ConnectResultOut.model_validate_json(self.ctx.request_state or "")
        except ValidationError:
            pending = None
        return answer.action == "accept", pending

    async def completed(self, elicitation_id: str) -> None:
        """Tell a 2025-11-25 client the sign-in it opened has finished."""
        await self.ctx.session.send_elicit_complete(elicitation_id, related_request_id=self.ctx.request_id)


def _account_choice(accounts: list[AccountRef]) -> type[BaseModel]:
    choices = tuple(a.account for a in accounts)
    field = Field(description="The account to use for this call.")
    choice: Any = Literal[choices]
    model: type[BaseModel] = create_model("ChooseAccount", account=(choice, field))
    return model


def _account_message(provider: str, accounts: list[AccountRef]) -> str:
    listed = ", ".join(f"{a.account} ({a.label})" if a.label else a.account for a in accounts)
    return f"Several {provider} accounts are connected: {listed}. Which one should this call use?"


def _connect_message(provider: str, pending: ConnectResultOut | None = None) -> str:
    if pending is not None and pending.user_code:  # device sign-in: the page asks for this code
        return (f"Sign in to {provider} to link your account: on the page that opens (or on any device at "
                f"{pending.verification_uri}), enter the code {pending.user_code}.")
    return f"Sign in to {provider} to link your account, so the agent can call it for you."
