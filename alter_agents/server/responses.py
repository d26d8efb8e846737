"""Errors as the official client reads them, and the app's exception handlers.

Errors are JSON with the official `error` codes plus our own error payload under `alter_error`, so
RemoteVault raises exactly the error the embedded vault would have raised. No route answers 404 for an
unknown path: the official client reads any 404 as "grant not found".
"""

from __future__ import annotations

from typing import Any

from pydantic import ValidationError
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from alter_agents import errors
from alter_agents.errors import AlterError

_STATUS = {
    "ambiguous_grant": 409, "not_connected": 404, "grant_not_found": 404, "reauth_required": 403,
    "host_not_allowed": 422, "unknown_provider": 400, "invalid_arguments": 400, "unauthenticated": 401,
    "upstream_timeout": 504, "upstream_unreachable": 503, "connect_timeout": 408, "connect_denied": 400,
    "rate_limited": 429, "policy_denied": 403, "approval_required": 403, "insufficient_scope": 403,
}
# The official client keys its typed errors on these codes (403 → credential revoked, and so on).
_WIRE_CODE = {"reauth_required": "credential_revoked", "host_not_allowed": "blocked_destination",
              "unauthenticated": "jwt_validation_error", "rate_limited": "rate_limit_exceeded"}


class InvalidBody(Exception):
    """The body is not a JSON object (HTTP 400)."""


def error_response(exc: AlterError, **extra: Any) -> JSONResponse:
    status = _STATUS.get(exc.code, 400 if isinstance(exc, errors.ConnectError) else 500)
    body = exc.payload().error.model_dump(exclude_none=True)
    wire = _WIRE_CODE.get(exc.code, exc.code)
    if isinstance(exc, errors.ConnectError) and exc.code == "internal":
        wire = "connect_config_error"
    content = {"error": wire, "message": exc.message, **extra, "alter_error": body,
               "alter_error_type": type(exc).__name__}
    if provider := exc.data.get("provider"):
        content.setdefault("provider_id", provider)
    headers = {"Retry-After": "1"} if status in (429, 503) else None
    return JSONResponse(content, status_code=status, headers=headers)


def plain_error(status: int, code: str, message: str) -> JSONResponse:
    return JSONResponse({"error": code, "message": message}, status_code=status)


async def alter_error(_request: Request, exc: Exception) -> Response:
    assert isinstance(exc, AlterError)
    return error_response(exc)


async def invalid_body(_request: Request, exc: Exception) -> Response:
    if isinstance(exc, ValidationError):
        return plain_error(422, "validation_error", str(exc.errors(include_url=False)[:5]))
    return plain_error(400, "invalid_json", str(exc) or "The body must be a JSON object.")


async def unknown_route(_request: Request, exc: Exception) -> Response:
    status = exc.status_code if isinstance(exc, HTTPException) and exc.status_code == 405 else 501
    return plain_error(status, "unknown_route", "This vault server has no such route.")


async def crashed(_request: Request, exc: Exception) -> Response:
    return plain_error(500, "internal", f"The vault server failed: {type(exc).__name__}.")
