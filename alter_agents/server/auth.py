"""Who is calling: the API key behind a signed `/sdk/*` request, as a Starlette authentication backend.

A request is authenticated when its key is active (see `keys`), its signature verifies over the body
`SignedBodyLimit` read, and its nonce was not seen by any process sharing the store (see `nonces`).
Routes outside `/sdk/` (the browser's connect page and OAuth callback, health) carry no key.
"""

from __future__ import annotations

from starlette.authentication import AuthCredentials, AuthenticationBackend, AuthenticationError, BaseUser
from starlette.requests import HTTPConnection
from starlette.responses import JSONResponse, Response

from alter_agents.errors import AlterError
from alter_agents.server.keys import ApiKeyInfo, ApiKeys, KeyRejected
from alter_agents.server.limits import BODY_SCOPE_KEY, HEADERS_SCOPE_KEY
from alter_agents.server.nonces import NonceLedger
from alter_agents.server.responses import error_response, plain_error
from alter_agents.server.signing import SignatureRejected, verify

SCOPE = "sdk"


class ApiKeyUser(BaseUser):
    def __init__(self, key: ApiKeyInfo) -> None:
        self.key = key

    @property
    def is_authenticated(self) -> bool:
        return True

    @property
    def display_name(self) -> str:
        return self.key.name or self.key.key_id

    @property
    def identity(self) -> str:
        return self.key.key_id


class Refused(AuthenticationError):
    """Authentication failed; carries the response the client gets."""

    def __init__(self, response: Response) -> None:
        super().__init__()
        self.response = response


class SignedKeyBackend(AuthenticationBackend):
    def __init__(self, keys: ApiKeys, nonces: NonceLedger, prefix: str = "/sdk/") -> None:
        self.keys = keys
        self.nonces = nonces
        self.prefix = prefix

    async def authenticate(self, conn: HTTPConnection) -> tuple[AuthCredentials, BaseUser] | None:
        scope = conn.scope
        if not scope["path"].startswith(self.prefix):
            return None
        headers = scope[HEADERS_SCOPE_KEY]
        api_key = headers.get("x-api-key", "")
        try:
            key = await self.keys.authenticate(api_key)
            nonce = verify(api_key, scope["method"], scope["path"], scope["query_string"].decode(), headers,
                           scope[BODY_SCOPE_KEY])
            await self.nonces.remember(key.key_id, nonce)
        except (KeyRejected, SignatureRejected) as exc:
            raise Refused(plain_error(401, exc.code, exc.message)) from None
        except AlterError as exc:  # the store is unreachable: the client may retry
            raise Refused(error_response(exc)) from None
        return AuthCredentials([SCOPE]), ApiKeyUser(key)


def on_refused(_conn: HTTPConnection, exc: AuthenticationError) -> Response:
    if isinstance(exc, Refused):
        return exc.response
    return JSONResponse({"error": "invalid_key", "message": str(exc)}, status_code=401)
