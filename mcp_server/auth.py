"""Bearer authentication for the HTTP transport.

With an identity provider, every request's `Authorization: Bearer <JWT>` is verified by the vault's own
`JWTVerifier` (same issuer, audience and JWKS). Without one, the server serves the local user behind a
random token made at start — never unauthenticated. With an identity provider the SDK answers a missing
or bad token with 401, `WWW-Authenticate` and RFC 9728 protected-resource metadata naming that provider;
the local token is not OAuth, so no metadata names an authorization server that does not exist.

Why a token was refused (expired, wrong audience, bad signature) is kept for the request being served,
so the 401 can say it in `error_description`, and logged — never the token itself.
"""

from __future__ import annotations

import hmac
import logging
import secrets
from contextvars import ContextVar
from typing import Any

from mcp.server.auth.middleware.auth_context import get_access_token
from mcp.server.auth.provider import AccessToken, TokenVerifier
from mcp.server.auth.settings import AuthSettings

from alter_agents.errors import UnauthenticatedError
from alter_agents.vault.identity import JWTVerifier

LOCAL_SUBJECT = "local"
NO_TOKEN = "No bearer token was sent: add 'Authorization: Bearer <token>'."
log = logging.getLogger("mcp_server.auth")


class Refusal:
    """The reason this request's bearer token was refused, if it was."""

    def __init__(self) -> None:
        self.reason: str | None = None


refusal: ContextVar[Refusal | None] = ContextVar("alter_mcp_refusal", default=None)


def refuse(reason: str) -> None:
    """Note why the token was refused, for the 401 and the server log."""
    log.warning("refused a bearer token: %s", reason)
    current = refusal.get()
    if current is not None:
        current.reason = reason


class JWTTokenVerifier(TokenVerifier):
    """Accepts a JWT the identity provider signed for this audience; the subject scopes the MCP session."""

    def __init__(self, verifier: JWTVerifier) -> None:
        self._verifier = verifier

    async def verify_token(self, token: str) -> AccessToken | None:
        try:
            identity = await self._verifier.verify(token)
        except UnauthenticatedError as exc:
            refuse(exc.message)
            return None
        claims = identity.claims
        return AccessToken(
            token=token,
            client_id=str(claims.get("azp") or claims.get("client_id") or "alter-agents"),
            scopes=_scopes(claims),
            expires_at=int(claims["exp"]),
            subject=identity.sub,
            claims=claims,
        )


class StaticTokenVerifier(TokenVerifier):
    """Accepts only the token generated at start (local mode over HTTP)."""

    def __init__(self, token: str) -> None:
        self._token = token

    async def verify_token(self, token: str) -> AccessToken | None:
        if not hmac.compare_digest(token.encode(), self._token.encode()):
            refuse("The bearer token is not the one this server printed at start.")
            return None
        return AccessToken(token=token, client_id="alter-agents-local", scopes=[], subject=LOCAL_SUBJECT)


def request_jwt() -> str | None:
    """The verified bearer JWT of the HTTP request being served (None over stdio or in local mode)."""
    token = get_access_token()
    return token.token if token is not None and token.claims else None


def session_jwt() -> str:
    """Token getter for the HTTP `UserSession`: whoever this request authenticated as."""
    return request_jwt() or ""


def new_bearer_token() -> str:
    return secrets.token_urlsafe(32)


def auth_settings(public_url: str, issuer: str | None) -> AuthSettings:
    """RFC 9728 metadata for `<public_url>/mcp`; the verifier checks the audience itself."""
    return AuthSettings(
        issuer_url=issuer or public_url,  # type: ignore[arg-type]
        resource_server_url=f"{public_url}/mcp",  # type: ignore[arg-type]
        validate_token_resource=False,
    )


def _scopes(claims: dict[str, Any]) -> list[str]:
    value = claims.get("scope") or claims.get("scp") or []
    return value.split() if isinstance(value, str) else [str(v) for v in value]
