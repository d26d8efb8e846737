"""Our HTTP servers listen on sockets asyncio turns Nagle off for (else each response waits for a delayed ACK)."""

from __future__ import annotations

import asyncio
import socket
import time

from alter_agents.listen import listening_socket


async def test_accepted_connections_have_nagle_off_and_answer_without_the_delayed_ack_wait() -> None:
    sock = listening_socket("127.0.0.1", 0)
    nodelay: list[int] = []

    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nodelay.append(writer.get_extra_info("socket").getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY))
        while await reader.readline():
            writer.write(b"head\n")  # a response in two writes, as an HTTP server sends headers and body
            await writer.drain()
            writer.write(b"body\n")
            await writer.drain()
        writer.close()

    server = await asyncio.start_server(answer, sock=sock)
    reader, writer = await asyncio.open_connection(*sock.getsockname()[:2])
    took = []
    for _ in range(10):
        started = time.perf_counter()
        writer.write(b"ask\n")
        assert await reader.readline() == b"head\n" and await reader.readline() == b"body\n"
        took.append(time.perf_counter() - started)
    writer.close()
    server.close()
    await server.wait_closed()
    assert nodelay and all(nodelay), nodelay
    assert sorted(took)[5] < 0.02, took  # with Nagle on, the second write waits ~40 ms for an ACK


def test_the_mcp_server_and_the_vault_server_share_it() -> None:
    sock = listening_socket("127.0.0.1", 0)
    try:
        assert sock.proto == socket.IPPROTO_TCP
    finally:
        sock.close()
