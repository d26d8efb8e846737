"""The listening socket of our HTTP servers (the MCP server, the vault server)."""

from __future__ import annotations

import socket

__all__ = ["listening_socket"]


def listening_socket(host: str, port: int) -> socket.socket:
    """Bound and listening before the server starts, so clients that connect early are queued.

    Made with `IPPROTO_TCP`, not the default 0: asyncio turns Nagle off only on sockets that say they are
    TCP, and with Nagle on, a response written in two parts (headers, then body) waits ~40 ms for the
    client's delayed ACK.
    """
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.listen(2048)
    return sock
