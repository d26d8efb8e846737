"""What the tools return: results, and the one error shape every surface renders."""

from __future__ import annotations

import logging
from collections.abc import Awaitable
from datetime import datetime
from typing import Any, Literal, TypeVar

from pydantic import BaseModel, Field

from alter_agents.approval import is_pass_through
from alter_agents.errors import AlterError
from alter_agents.models import GrantRef, ToolErrorBody, ToolErrorPayload

log = logging.getLogger("alter_agents.tools")

_R = TypeVar("_R")


class RequestResult(BaseModel):
    status: int = Field(description="HTTP status code from the API.")
    headers: dict[str, str] = Field(description="A few useful response headers.")
    body: Any = Field(description="Parsed JSON, text, or a summary of binary content.")
    truncated: bool = Field(False, description="True when the body was cut to the size limit.")
    grant: GrantRef = Field(description="The account whose credential made the call.")
    note: str | None = Field(None, description="How the account was chosen, when not by the call itself.",
                             exclude_if=lambda v: v is None)


class ConnectResultOut(BaseModel):
    status: Literal["connected", "pending"]
    provider: str | None = None
    grant: GrantRef | None = None
    grant_id: str | None = None
    connect_url: str | None = None
    verification_uri: str | None = Field(None, exclude_if=lambda v: v is None)
    user_code: str | None = Field(None, exclude_if=lambda v: v is None)
    expires_at: datetime | None = None
    message: str



def internal_payload(reason: str, *, sent: bool | None = None) -> ToolErrorPayload:
    """The error a model gets for a fault of ours: typed, and without a traceback."""
    body = ToolErrorBody(code="internal", message=f"Internal error ({reason}); try again later.",
                         retryable=True, user_action="retry_later", sent=sent)
    return ToolErrorPayload(error=body)



async def shielded(work: Awaitable[_R]) -> _R | ToolErrorPayload:
    try:
        return await work
    except AlterError as exc:
        return exc.payload()
    except Exception as exc:  # a bug must still reach the model as a typed error, never a traceback
        if is_pass_through(exc):
            raise
        log.exception("tool failed")
        return internal_payload(type(exc).__name__)
