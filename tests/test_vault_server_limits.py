"""Issue 11.8: a large body is refused before it is read, so an anonymous client cannot exhaust memory."""

from __future__ import annotations

import hashlib
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from alter_agents.server.signing import sign
from tests.conftest import Deployment
from tests.fixtures.vault_server import VaultServerProcess, mint_key

pytestmark = pytest.mark.timeout(120)
BODY_MIB = 96
CHUNK = b"x" * (1024 * 1024)


@pytest.fixture
def server(sqlite_deployment: Deployment) -> Iterator[VaultServerProcess]:
    with VaultServerProcess(sqlite_deployment.env) as process:
        yield process


def _rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS")


def _send_chunked(url: str, headers: dict[str, str]) -> tuple[int, bytes]:
    """POST /sdk/token with a chunked body of BODY_MIB MiB; returns (bytes sent, whatever came back)."""
    host, port = url.removeprefix("http://").split(":")
    head = "".join(f"{k}: {v}\r\n" for k, v in headers.items())
    sent = 0
    with socket.create_connection((host, int(port)), timeout=30) as sock:
        sock.sendall(f"POST /sdk/token HTTP/1.1\r\nHost: {host}\r\nTransfer-Encoding: chunked\r\n"
                     f"Content-Type: application/json\r\n{head}\r\n".encode())
        try:
            for _ in range(BODY_MIB):
                sock.sendall(b"%x\r\n" % len(CHUNK) + CHUNK + b"\r\n")
                sent += len(CHUNK)
            sock.sendall(b"0\r\n\r\n")
        except (BrokenPipeError, ConnectionResetError):
            pass  # the server answered and closed: it stopped reading
        answer = b""
        try:
            while chunk := sock.recv(65536):
                answer += chunk
        except (ConnectionResetError, TimeoutError):
            pass
    return sent, answer


def _assert_refused_early(server: VaultServerProcess, headers: dict[str, str], status: bytes) -> None:
    before = _rss_mib(server.pid)
    sent, answer = _send_chunked(server.url, headers)
    time.sleep(0.2)
    grown = _rss_mib(server.pid) - before
    # The server refuses and closes: the client cannot push the whole body, or it gets the refusal
    # (the kernel may have buffered a few MiB, or reset the connection before the answer was read).
    assert sent < BODY_MIB * len(CHUNK) or answer.startswith(b"HTTP/1.1 " + status), (sent, answer[:200])
    if answer:
        assert answer.startswith(b"HTTP/1.1 " + status), answer[:200]
    assert grown < 24, f"the server's memory grew by {grown:.0f} MiB for a {BODY_MIB} MiB body"


def test_a_large_chunked_body_without_a_key_is_refused_before_it_is_read(server: VaultServerProcess) -> None:
    _assert_refused_early(server, {}, b"401")
    assert httpx.get(f"{server.url}/healthz", timeout=5).status_code == 200


async def test_a_signed_looking_chunked_body_is_refused_once_it_passes_the_limit(
    server: VaultServerProcess, sqlite_deployment: Deployment,
) -> None:
    key = await mint_key(sqlite_deployment.settings)
    headers = {"x-api-key": key, **sign(key, "POST", "/sdk/token", b"{}")}
    headers["X-Alter-Content-SHA256"] = hashlib.sha256(b"x").hexdigest()
    _assert_refused_early(server, headers, b"413")


def test_a_declared_body_over_the_limit_is_refused_without_reading_it(server: VaultServerProcess) -> None:
    host, port = server.url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        sock.sendall(f"POST /sdk/token HTTP/1.1\r\nHost: {host}\r\nContent-Length: {BODY_MIB << 20}\r\n\r\n".encode())
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
    assert answer.startswith(b"HTTP/1.1 413"), answer[:200]
    assert b"payload_too_large" in answer
