"""MCP logging: `logging/setLevel` on 2025-11-25 connections, and one log entry per tool call.

Handshake-era clients (Claude Desktop, MCP Inspector, `mcp` 1.x) choose a level for the whole
connection with `logging/setLevel`; 2026-07-28 removed that method and lets each request opt in through
`_meta` (the SDK applies that gate itself). Either way the entries say what a call did — tool, outcome,
the account that acted, the error code — and never carry a credential: they are built from the tool's
result, which is already redacted.
"""

from __future__ import annotations

import time
import warnings
from typing import Any, Final, get_args

import mcp_types as types
from mcp.server.context import CallNext, HandlerResult, ServerRequestContext
from mcp.server.mcpserver import MCPServer
from mcp.shared.exceptions import MCPDeprecationWarning
from mcp_types.version import MODERN_PROTOCOL_VERSIONS

LOGGER_NAME = "alter-agents"
DEFAULT_LEVEL: Final[types.LoggingLevel] = "info"
_LEVELS: Final[tuple[types.LoggingLevel, ...]] = get_args(types.LoggingLevel)
_STATE_KEY = "alter_agents.log_level"


def enable_client_logging(server: MCPServer) -> None:
    """Serve `logging/setLevel` (so `capabilities.logging` is declared) and log every tool call."""
    # The SDK documents the low-level `add_request_handler` as the way to serve a method that 2026-07-28
    # removed; its per-version gate answers "Method not found" to modern clients.
    server._lowlevel_server.add_request_handler("logging/setLevel", types.SetLevelRequestParams, _set_level)
    server.middleware.append(_log_tool_calls)
    # Serving the deprecated capability is deliberate (handshake-era hosts read it); say so once, not per call.
    warnings.filterwarnings("ignore", "The logging capability is deprecated", MCPDeprecationWarning)


async def _set_level(ctx: ServerRequestContext[Any, Any], params: types.SetLevelRequestParams) -> types.EmptyResult:
    _connection_state(ctx)[_STATE_KEY] = params.level
    return types.EmptyResult()


async def _log_tool_calls(ctx: ServerRequestContext[Any, Any], call_next: CallNext) -> HandlerResult:
    if ctx.method != "tools/call":
        return await call_next(ctx)
    started = time.monotonic()
    result = await call_next(ctx)
    name = str((ctx.params or {}).get("name", ""))
    if isinstance(result, dict):
        level, data = _entry(name, result)
        await _send(ctx, level, data)
        await _send(ctx, "debug", {"tool": name, "elapsed_ms": round((time.monotonic() - started) * 1000, 1)})
    return result


def _entry(tool: str, result: dict[str, Any]) -> tuple[types.LoggingLevel, dict[str, Any]]:
    structured = result.get("structuredContent")
    content = structured if isinstance(structured, dict) else {}
    if result.get("isError"):
        found = content.get("error")
        error: dict[str, Any] = found if isinstance(found, dict) else {}
        return "warning", {"tool": tool, "error": error.get("code", "error"), "message": error.get("message", "")}
    if "inputRequests" in result or "input_requests" in result:
        return "info", {"tool": tool, "outcome": "asked the user"}
    data: dict[str, Any] = {"tool": tool}
    for key in ("status", "grant", "truncated"):
        if key in content:
            data[key] = content[key]
    return "info", data


async def _send(ctx: ServerRequestContext[Any, Any], level: types.LoggingLevel, data: dict[str, Any]) -> None:
    if ctx.protocol_version not in MODERN_PROTOCOL_VERSIONS:
        chosen = _connection_state(ctx).get(_STATE_KEY, DEFAULT_LEVEL)
        if _LEVELS.index(level) < _LEVELS.index(chosen):
            return
    # The SDK drops what a 2026-07-28 request did not opt in to; the entry rides this request's stream.
    await ctx.session.send_log_message(level, data, logger=LOGGER_NAME, related_request_id=ctx.request_id)


def _connection_state(ctx: ServerRequestContext[Any, Any]) -> dict[str, Any]:
    """The connection's scratch state (`Connection.state`), which outlives the request."""
    state: dict[str, Any] = ctx.session._connection.state
    return state
