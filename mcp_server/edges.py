"""What wraps `/mcp` before the SDK sees a request: the local bearer, error bodies, sessions per user.

- `LocalBearer`: local mode's random token. It is not OAuth, so the 401 names no authorization server
  and no protected-resource metadata (an OAuth-capable client would try to register with it and fail).
- `JsonRpcErrors`: every refusal of `/mcp` is a JSON-RPC error body, whatever produced it (the SDK
  answers a wrong Content-Type, an oversized body, a bad Host in plain text), and a 401 says why the
  token was refused in `error_description`.
- `SessionQuota`: one user may hold at most N stateful (2025-11-25) sessions; opening one more ends their
  oldest, so nobody can use up the server-wide session limit and lock the others out.
- `ReplicaSessionIds`: a replica's session ids start with its name (`r1.<id>`), so a balancer can send
  each request of a 2025-11-25 session to the replica that holds it with a plain header match.
"""

from __future__ import annotations

import json
import logging
import re
from collections import OrderedDict
from typing import Any

from mcp.server.auth.middleware.bearer_auth import AuthenticatedUser
from mcp.server.streamable_http_manager import StreamableHTTPSessionManager
from mcp_types import INVALID_REQUEST
from starlette.datastructures import Headers
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from mcp_server.auth import LOCAL_SUBJECT, NO_TOKEN, Refusal, StaticTokenVerifier, refusal

MCP_PATH = "/mcp"
SESSION_HEADER = "mcp-session-id"
DEFAULT_SESSIONS_PER_USER = 32
log = logging.getLogger("mcp_server.http")


def _is_mcp(scope: Scope) -> bool:
    return scope["type"] == "http" and str(scope.get("path", "")).rstrip("/") == MCP_PATH


class LocalBearer:
    """Requires local mode's token on `/mcp`; other routes (the OAuth callback) stay open."""

    def __init__(self, app: ASGIApp, verifier: StaticTokenVerifier) -> None:
        self.app = app
        self.verifier = verifier

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if not _is_mcp(scope):
            await self.app(scope, receive, send)
            return
        header = Headers(scope=scope).get("authorization", "")
        token = header[7:].strip() if header.lower().startswith("bearer ") else ""
        if not token:
            await _unauthorized(send, NO_TOKEN, error=None)
            return
        if await self.verifier.verify_token(token) is None:
            current = refusal.get()
            await _unauthorized(send, current.reason if current and current.reason else "invalid token")
            return
        await self.app(scope, receive, send)


async def _unauthorized(send: Send, reason: str, *, error: str | None = "invalid_token") -> None:
    params = ['realm="alter-agents"']
    if error:
        params += [f'error="{error}"', f'error_description="{_quoted(reason)}"']
    body = json.dumps({"error": error or "invalid_request", "error_description": reason}).encode()
    await send({"type": "http.response.start", "status": 401, "headers": [
        (b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
        (b"www-authenticate", f"Bearer {', '.join(params)}".encode())]})
    await send({"type": "http.response.body", "body": body})


class JsonRpcErrors:
    """Rewrites `/mcp` refusals into JSON-RPC errors and gives each 401 its reason."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if not _is_mcp(scope):
            await self.app(scope, receive, send)
            return
        holder = Refusal()
        reset = refusal.set(holder)
        held: Message | None = None
        body = b""

        async def capture(message: Message) -> None:
            nonlocal held, body
            if message["type"] == "http.response.start" and _needs_rewrite(message):
                held = message
                return
            if held is None or message["type"] != "http.response.body":
                await send(message)
                return
            body += message.get("body", b"")
            if not message.get("more_body", False):
                reason = holder.reason or (None if "authorization" in Headers(scope=scope) else NO_TOKEN)
                start, rewritten = _rewrite(held, body, reason)
                await send(start)
                await send({"type": "http.response.body", "body": rewritten})

        try:
            await self.app(scope, receive, capture)
        finally:
            refusal.reset(reset)


def _needs_rewrite(start: Message) -> bool:
    status = int(start["status"])
    if status < 400:
        return False
    content_type = Headers(raw=start["headers"]).get("content-type", "")
    return status == 401 or not content_type.startswith("application/json")


def _rewrite(start: Message, body: bytes, reason: str | None) -> tuple[Message, bytes]:
    status = int(start["status"])
    headers = [(k, v) for k, v in start["headers"] if k.lower() not in (b"content-type", b"content-length")]
    if status == 401:
        headers = [(k, _with_reason(v, reason) if k.lower() == b"www-authenticate" else v) for k, v in headers]
        try:
            payload = json.loads(body)
        except ValueError:
            payload = {"error": "invalid_token"}
        if reason and isinstance(payload, dict):
            payload["error_description"] = reason
        new_body = json.dumps(payload).encode()
    else:
        message = body.decode("utf-8", "replace").strip() or "Request refused"
        error = {"code": INVALID_REQUEST, "message": message}
        new_body = json.dumps({"jsonrpc": "2.0", "id": None, "error": error}).encode()
    headers += [(b"content-type", b"application/json"), (b"content-length", str(len(new_body)).encode())]
    return {**start, "headers": headers}, new_body


def _with_reason(challenge: bytes, reason: str | None) -> bytes:
    if not reason:
        return challenge
    text = challenge.decode("latin-1")
    marker = 'error_description="'
    if marker not in text:
        return challenge
    head, rest = text.split(marker, 1)
    tail = rest.split('"', 1)[1] if '"' in rest else ""
    return f'{head}{marker}{_quoted(reason)}"{tail}'.encode("latin-1", "replace")


def _quoted(text: str) -> str:
    """An RFC 7230 quoted-string body: no quotes, backslashes or non-Latin-1 characters."""
    cleaned = text.replace("\\", "/").replace('"', "'").replace("\r", " ").replace("\n", " ")
    return cleaned.encode("latin-1", "replace").decode("latin-1")


class SessionQuota:
    """At most `limit` open 2025-11-25 sessions per user; opening one more ends that user's oldest."""

    def __init__(self, app: ASGIApp, manager: StreamableHTTPSessionManager, limit: int) -> None:
        if limit < 1:
            raise ValueError("the per-user session limit must be at least 1")
        self.app = app
        self.manager = manager
        self.limit = limit
        self._sessions: dict[str, OrderedDict[str, None]] = {}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        opening = _is_mcp(scope) and scope.get("method") == "POST" and SESSION_HEADER not in Headers(scope=scope)
        if not opening:
            await self.app(scope, receive, send)
            return

        async def watch(message: Message) -> None:
            if message["type"] == "http.response.start" and int(message["status"]) < 400:
                opened = Headers(raw=message["headers"]).get(SESSION_HEADER)
                if opened:
                    await self._admit(_subject(scope), opened)
            await send(message)

        await self.app(scope, receive, watch)

    async def _admit(self, subject: str, session_id: str) -> None:
        live = self._live()
        mine = self._sessions.setdefault(subject, OrderedDict())
        for gone in [sid for sid in mine if sid not in live]:
            del mine[gone]
        mine[session_id] = None
        while len(mine) > self.limit:
            oldest, _ = mine.popitem(last=False)
            transport = live.get(oldest)
            log.info("user %s opened more than %d MCP sessions: ending their oldest", subject, self.limit)
            if transport is not None and not transport.is_terminated:
                await transport.terminate()
        if not mine:
            del self._sessions[subject]

    def _live(self) -> dict[str, Any]:
        # The manager keeps no public registry of open sessions; this is the one place that reads it.
        live: dict[str, Any] = self.manager._server_instances
        return live


def _subject(scope: Scope) -> str:
    user = scope.get("user")
    if isinstance(user, AuthenticatedUser):
        return user.access_token.subject or user.access_token.client_id
    return LOCAL_SUBJECT


REPLICA_ID = re.compile(r"[A-Za-z0-9_-]{1,32}")


class ReplicaSessionIds:
    """Prefixes this replica's `Mcp-Session-Id`s with its name and strips the prefix from requests."""

    def __init__(self, app: ASGIApp, replica_id: str) -> None:
        if not REPLICA_ID.fullmatch(replica_id):
            raise ValueError("a replica id is 1 to 32 letters, digits, '-' or '_'")
        self.app = app
        self.prefix = f"{replica_id}.".encode()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if not _is_mcp(scope):
            await self.app(scope, receive, send)
            return
        headers = [(k, v.removeprefix(self.prefix) if k == SESSION_HEADER.encode() else v)
                   for k, v in scope["headers"]]

        async def prefixed(message: Message) -> None:
            if message["type"] == "http.response.start":
                message = {**message, "headers": [
                    (k, self.prefix + v if k.lower() == SESSION_HEADER.encode() else v) for k, v in message["headers"]]}
            await send(message)

        await self.app({**scope, "headers": headers}, receive, prefixed)
