"""Asking the human to approve a call (policy effect `approve`) through the MCP client.

2025-11-25 connections are asked mid-call with a form (allow once / allow for this session / deny).
2026-07-28 connections have no back channel: the call first fails `approval_required` (nothing sent), the
tool returns an `InputRequiredResult` with the question, and the client retries with the answer. The
`requestState` of that round trip is sealed (HMAC) and bound to the verified user, the exact call and a
five-minute lifetime, so an answer cannot be replayed for another call or another user. Where the client
cannot show a form, the `approval_required` error goes to the model.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Sequence
from typing import Any, Literal

from mcp.server.elicitation import render_elicitation_schema
from mcp.shared.exceptions import NoBackChannelError
from mcp_types import ElicitRequest, ElicitRequestFormParams, ElicitResult, InputRequiredResult
from pydantic import BaseModel, Field

from alter_agents.approval import CHOICES, ApprovalChoice, ApprovalRequest, Approver, open_state, seal_state
from alter_agents.models import ToolErrorBody
from mcp_server.elicit import ClientReach

_APPROVAL = "approval"
_STATE_PREFIX = "approval:"


class ApprovalForm(BaseModel):
    decision: Literal["allow_once", "allow_session", "deny"] = Field(
        description="allow_once: this call only; allow_session: calls like it for the rest of this session; "
                    "deny: refuse it."
    )


class Approvals:
    """The server's way to ask; `state_keys` (shared by replicas) seal the 2026-07-28 round trip."""

    def __init__(self, state_keys: Sequence[str] = ()) -> None:
        secret = state_keys[0].encode() if state_keys else os.urandom(32)
        self._key = hashlib.sha256(b"alter-approval-state\n" + secret).digest()

    def approver(self, reach: ClientReach) -> Approver | None:
        """How this call's client can answer: a mid-call form, or last round's sealed answer."""
        if reach.modern:
            choice, state = _answered(reach)
            if choice is None or state is None:
                return None
            key = self._key

            async def answered(request: ApprovalRequest) -> ApprovalChoice | None:
                return choice if open_state(key, state, request) is not None else None

            return answered
        if not reach.can_form:
            return None

        async def ask(request: ApprovalRequest) -> ApprovalChoice | None:
            try:
                result = await reach.ctx.elicit(request.prompt, ApprovalForm)
            except (NoBackChannelError, ValueError):
                return None
            if result.action != "accept":
                return "deny"
            decision = getattr(result.data, "decision", "deny")
            return decision if decision in CHOICES else "deny"

        return ask

    def question(self, reach: ClientReach, error: ToolErrorBody, principal: str) -> InputRequiredResult | None:
        """2026-07-28: `approval_required` becomes a question to the human, bound to this user and call."""
        if not (reach.modern and reach.can_form) or reach.ctx.input_responses:
            return None
        data: dict[str, Any] = error.model_extra or {}
        request = ApprovalRequest(provider=error.provider or "", account=str(data.get("account") or ""),
                                  method=str(data.get("method") or ""), url=str(data.get("url") or ""),
                                  rule=data.get("rule"), principal=principal)
        params = ElicitRequestFormParams(message=request.prompt,
                                         requested_schema=render_elicitation_schema(ApprovalForm))
        return InputRequiredResult(input_requests={_APPROVAL: ElicitRequest(params=params)},
                                   request_state=_STATE_PREFIX + seal_state(self._key, request))


def _answered(reach: ClientReach) -> tuple[ApprovalChoice | None, str | None]:
    answer = (reach.ctx.input_responses or {}).get(_APPROVAL)
    state = reach.ctx.request_state or ""
    if not isinstance(answer, ElicitResult) or not state.startswith(_STATE_PREFIX):
        return None, None
    if answer.action != "accept" or not answer.content:
        return "deny", state[len(_STATE_PREFIX):]
    decision = answer.content.get("decision")
    return (decision if decision in CHOICES else "deny"), state[len(_STATE_PREFIX):]  # type: ignore[return-value]
