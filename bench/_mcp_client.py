"""One MCP client session for `bench.instructions`: warms up, then makes N calls when told to.

    python -m bench._mcp_client ENDPOINT TOKEN|- API_URL N

Prints `ready` after the warm-up calls and waits for a line on stdin; then makes the N calls, prints
`done` and waits for another line before it closes, so the parent can count exactly those calls.
"""

from __future__ import annotations

import sys

import anyio
import httpx2
from mcp import Client
from mcp.client.streamable_http import streamable_http_client

WARM_UP_CALLS = 20


async def main(endpoint: str, token: str, api: str, n: int) -> None:
    headers = {"Authorization": f"Bearer {token}"} if token != "-" else {}
    arguments = {"url": f"{api}/v1/items", "provider": "bench"}
    transport = streamable_http_client(endpoint, http_client=httpx2.AsyncClient(headers=headers, timeout=300))
    async with Client(transport, mode="legacy") as client:
        for _ in range(WARM_UP_CALLS):
            await client.call_tool("request", arguments)
        await _handshake("ready")
        for _ in range(n):
            result = await client.call_tool("request", arguments)
            assert not result.is_error, result
        await _handshake("done")


async def _handshake(word: str) -> None:
    print(word, flush=True)
    await anyio.to_thread.run_sync(sys.stdin.readline)


if __name__ == "__main__":
    anyio.run(main, sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]))
