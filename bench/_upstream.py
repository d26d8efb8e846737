"""A minimal keep-alive HTTP/1.1 API for benchmarks, run in its own process.

It answers every request with a small JSON body when the bearer token matches, 401 otherwise, so
the benchmark measures our overhead rather than a slow fixture server. `python -m bench._upstream
TOKEN [DELAY_SECONDS]` prints its port on stdout and serves until its stdin closes.
"""

from __future__ import annotations

import asyncio
import sys

_OK = b'{"ok":true,"account":"alice","items":[1,2,3]}'


def _response(status: bytes, body: bytes) -> bytes:
    return (b"HTTP/1.1 " + status + b"\r\ncontent-type: application/json\r\ncontent-length: "
            + str(len(body)).encode() + b"\r\n\r\n" + body)


class _Protocol(asyncio.Protocol):
    def __init__(self, expected: bytes, delay: float) -> None:
        self._expected = expected
        self._delay = delay
        self._buffer = b""
        self._transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self._transport = transport

    def data_received(self, data: bytes) -> None:
        self._buffer += data
        while b"\r\n\r\n" in self._buffer:
            head, _, rest = self._buffer.partition(b"\r\n\r\n")
            length = 0
            authorized = False
            for line in head.split(b"\r\n")[1:]:
                name, _, value = line.partition(b":")
                name = name.strip().lower()
                if name == b"content-length":
                    length = int(value)
                elif name == b"authorization":
                    authorized = value.strip() == self._expected
            if len(rest) < length:
                return
            self._buffer = rest[length:]
            reply = _response(b"200 OK", _OK) if authorized else _response(b"401 Unauthorized", b'{"error":1}')
            if self._delay:
                asyncio.get_running_loop().call_later(self._delay, self._write, reply)
            else:
                self._write(reply)

    def _write(self, reply: bytes) -> None:
        if self._transport is not None and not self._transport.is_closing():
            self._transport.write(reply)


async def _serve(token: str, delay: float) -> None:
    expected = b"Bearer " + token.encode()
    loop = asyncio.get_running_loop()
    server = await loop.create_server(lambda: _Protocol(expected, delay), "127.0.0.1", 0, backlog=1024)
    print(server.sockets[0].getsockname()[1], flush=True)
    await loop.run_in_executor(None, sys.stdin.read)
    server.close()


if __name__ == "__main__":
    asyncio.run(_serve(sys.argv[1], float(sys.argv[2]) if len(sys.argv) > 2 else 0.0))
