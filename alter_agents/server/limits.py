"""Body limit for signed routes: refuse before reading what no authenticated caller could have sent.

Before a byte of the body is read, a request must declare no more than the limit and carry a
well-formed API key and the signature headers (no store access, no HMAC: nothing an anonymous client
can make expensive). The body is then read counting bytes, chunked or not, and refused the moment it
passes the limit, so memory per request never exceeds the limit whatever the client sends. Refusals
close the connection, so an unread body is not drained. The body is kept in the scope for the
authentication backend (which verifies the signature over it) and replayed to the endpoint, beside the
headers as one dict (a signed request reads a dozen of them; Starlette's `Headers` scans the list for each).
"""

from __future__ import annotations

from collections.abc import Mapping

from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from alter_agents.server.keys import is_well_formed
from alter_agents.server.signing import SignatureRejected, check_headers

MAX_BODY_BYTES = 2 * 1024 * 1024
BODY_SCOPE_KEY = "alter_agents.body"
HEADERS_SCOPE_KEY = "alter_agents.headers"


def refusal(status: int, code: str, message: str) -> JSONResponse:
    return JSONResponse({"error": code, "message": message}, status_code=status, headers={"Connection": "close"})


def _too_large() -> JSONResponse:
    return refusal(413, "payload_too_large", f"The request body is larger than {MAX_BODY_BYTES} bytes.")


def header_dict(scope: Scope) -> dict[str, str]:
    """The request's headers by (lower-case) name; a repeated header counts as its first occurrence."""
    return {name.decode("latin-1"): value.decode("latin-1") for name, value in reversed(scope["headers"])}


def _precheck(headers: Mapping[str, str], limit: int) -> JSONResponse | None:
    declared = headers.get("content-length")
    if declared is not None and (not declared.isdigit() or int(declared) > limit):
        return _too_large()
    api_key = headers.get("x-api-key", "")
    if not api_key:
        return refusal(401, "invalid_key", "Send the API key in the x-api-key header.")
    if not is_well_formed(api_key):
        return refusal(401, "invalid_key", "The API key is malformed (bad format or checksum).")
    try:
        check_headers(headers)
    except SignatureRejected as exc:
        return refusal(401, exc.code, exc.message)
    return None


class SignedBodyLimit:
    """ASGI middleware for the routes under `prefix`: cheap header checks, then a counted body read."""

    def __init__(self, app: ASGIApp, prefix: str = "/sdk/", limit: int = MAX_BODY_BYTES) -> None:
        self.app = app
        self.prefix = prefix
        self.limit = limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not scope["path"].startswith(self.prefix):
            await self.app(scope, receive, send)
            return
        headers = header_dict(scope)
        refused = _precheck(headers, self.limit)
        if refused is not None:
            await refused(scope, receive, send)
            return
        body = bytearray()
        more = True
        while more:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            body += message.get("body", b"")
            if len(body) > self.limit:
                await _too_large()(scope, receive, send)
                return
            more = message.get("more_body", False)
        scope[BODY_SCOPE_KEY] = bytes(body)
        scope[HEADERS_SCOPE_KEY] = headers
        await self.app(scope, _replay(bytes(body), receive), send)


def _replay(body: bytes, receive: Receive) -> Receive:
    sent = False

    async def replay() -> Message:
        nonlocal sent
        if sent:
            return await receive()
        sent = True
        return {"type": "http.request", "body": body, "more_body": False}

    return replay
