"""The stdio transport: newline-delimited JSON-RPC on the process's stdin and stdout.

Two things differ from the SDK's transport, both visible to a person or a host:
- a malformed line gets a JSON-RPC error back (`-32700` parse error, `-32600` invalid request) instead
  of silence, so a client never waits for an answer that will not come;
- stdin is read by a daemon thread, so Ctrl-C stops the server at once instead of after the next line.
While serving, fd 0 reads the null device and fd 1 goes to stderr, so a stray `print` or a child process
can neither read the client's messages nor corrupt the wire.
"""

from __future__ import annotations

import json
import os
import threading
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager, suppress
from typing import Any, BinaryIO

import anyio
import anyio.from_thread
import anyio.lowlevel
import mcp_types as types
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream
from mcp.server.mcpserver import MCPServer
from mcp.shared.message import SessionMessage
from pydantic import ValidationError

_Inbound = SessionMessage | Exception


async def serve_stdio(server: MCPServer) -> None:
    """Serve one client on stdin/stdout until it closes stdin or the task is cancelled."""
    async with stdio_streams() as (read, write):
        # `MCPServer.run_stdio_async` does exactly this over the SDK's transport.
        lowlevel = server._lowlevel_server
        await lowlevel.run(read, write, lowlevel.create_initialization_options())


@asynccontextmanager
async def stdio_streams() -> AsyncIterator[tuple[MemoryObjectReceiveStream[_Inbound],
                                                 MemoryObjectSendStream[SessionMessage]]]:
    wire_in, wire_out, restore = _claim_std_fds()
    lines_send, lines_recv = anyio.create_memory_object_stream[bytes](16)
    read_send, read_recv = anyio.create_memory_object_stream[_Inbound](0)
    write_send, write_recv = anyio.create_memory_object_stream[SessionMessage](0)
    reader = threading.Thread(target=_pump, args=(wire_in, lines_send, anyio.lowlevel.current_token()),
                              name="mcp-stdin", daemon=True)
    try:
        async with anyio.create_task_group() as tg:
            tg.start_soon(_parse, lines_recv, read_send, write_send.clone())
            tg.start_soon(_write, wire_out, write_recv)
            reader.start()
            try:
                yield read_recv, write_send
            finally:
                tg.cancel_scope.cancel()
    finally:
        restore()


def _pump(wire_in: BinaryIO, lines: MemoryObjectSendStream[bytes], token: Any) -> None:
    """Blocking reads, off the event loop; a daemon thread never keeps the process alive."""
    try:
        for line in wire_in:
            anyio.from_thread.run(lines.send, line, token=token)
        anyio.from_thread.run_sync(lines.close, token=token)
    except (anyio.BrokenResourceError, anyio.ClosedResourceError, anyio.RunFinishedError, OSError, ValueError):
        return


async def _parse(lines: MemoryObjectReceiveStream[bytes], inbound: MemoryObjectSendStream[_Inbound],
                 replies: MemoryObjectSendStream[SessionMessage]) -> None:
    async with lines, inbound, replies:
        async for line in lines:
            if not line.strip():
                continue
            try:
                message = types.jsonrpc_message_adapter.validate_json(line, by_name=False)
            except ValidationError:
                await replies.send(SessionMessage(rejection(line)))
                continue
            await inbound.send(SessionMessage(message))


def rejection(line: bytes | str) -> types.JSONRPCError:
    """The JSON-RPC 2.0 answer to a message that cannot be served (its id when one can be read)."""
    try:
        parsed = json.loads(line)
    except ValueError:
        return _error(None, types.PARSE_ERROR, "Parse error: the message is not valid JSON")
    if isinstance(parsed, list):
        return _error(None, types.INVALID_REQUEST, "Invalid Request: JSON-RPC batches are not supported")
    found = parsed.get("id") if isinstance(parsed, dict) else None
    request_id = found if isinstance(found, str | int) and not isinstance(found, bool) else None
    return _error(request_id, types.INVALID_REQUEST, "Invalid Request: not a JSON-RPC 2.0 request or notification")


def _error(request_id: str | int | None, code: int, message: str) -> types.JSONRPCError:
    return types.JSONRPCError(jsonrpc="2.0", id=request_id, error=types.ErrorData(code=code, message=message))


async def _write(wire_out: BinaryIO, outbound: MemoryObjectReceiveStream[SessionMessage]) -> None:
    async with outbound:
        async for item in outbound:
            data = item.message.model_dump_json(by_alias=True, exclude_unset=True).encode() + b"\n"
            await anyio.to_thread.run_sync(_write_all, wire_out, data)


def _write_all(wire_out: BinaryIO, data: bytes) -> None:
    wire_out.write(data)
    wire_out.flush()


def _claim_std_fds() -> tuple[BinaryIO, BinaryIO, Callable[[], None]]:
    """Private duplicates of fds 0 and 1 for the wire; the originals point at /dev/null and stderr."""
    saved_in, saved_out = os.dup(0), os.dup(1)
    wire_in = os.fdopen(os.dup(0), "rb")
    wire_out = os.fdopen(os.dup(1), "wb")
    null = os.open(os.devnull, os.O_RDONLY)
    os.dup2(null, 0)
    os.close(null)
    os.dup2(2, 1)

    def restore() -> None:
        with suppress(OSError):
            wire_out.close()
        os.dup2(saved_in, 0)
        os.dup2(saved_out, 1)
        os.close(saved_in)
        os.close(saved_out)

    return wire_in, wire_out, restore
