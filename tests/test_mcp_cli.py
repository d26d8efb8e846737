"""`alter-agents mcp` as a person runs it: the real command in a subprocess.

Ctrl-C stops it at once; a mistake is one line at start, not a traceback or an option silently ignored;
stderr says what is being served and carries no library chatter and no user's sign-in link.
"""

from __future__ import annotations

import json
import os
import pty
import select
import signal
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path

import anyio
import pytest

from tests.conftest import Deployment
from tests.fixtures import AsyncBrowser
from tests.mcp_support import RunningHttp, link, payload

pytestmark = pytest.mark.timeout(120)
ROOT = Path(__file__).resolve().parent.parent
CLI = [sys.executable, "-m", "alter_agents.cli", "mcp"]
# Python's own start-up on a loaded 2-core machine is not what is measured: the clock starts at SIGINT.
STOP_WITHIN = 3.0
INITIALIZE = {"jsonrpc": "2.0", "id": 1, "method": "initialize",
              "params": {"protocolVersion": "2025-11-25", "capabilities": {},
                         "clientInfo": {"name": "raw", "version": "1"}}}


def run(env: dict[str, str], *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*CLI, *args], env={**os.environ, **env}, cwd=str(ROOT), capture_output=True, text=True,
                          timeout=timeout, stdin=subprocess.DEVNULL)


def one_line_error(done: subprocess.CompletedProcess[str]) -> str:
    lines = done.stderr.strip().splitlines()
    assert done.returncode != 0, done
    assert "Traceback" not in done.stderr, done.stderr
    assert len(lines) == 1, done.stderr
    return lines[0]


def _read_until(fd: int, marker: bytes, seconds: float) -> bytes:
    seen, deadline = b"", time.monotonic() + seconds
    while marker not in seen and time.monotonic() < deadline:
        ready, _, _ = select.select([fd], [], [], 0.2)
        if ready:
            try:
                seen += os.read(fd, 4096)
            except OSError:
                break
    return seen


@pytest.mark.parametrize("transport", ["stdio", "http"])
def test_ctrl_c_in_a_terminal_stops_the_server_at_once_without_a_traceback(
    sqlite_deployment: Deployment, transport: str
) -> None:
    d = sqlite_deployment.local()
    primary, terminal = pty.openpty()
    args = ["--transport", "http", "--port", "0"] if transport == "http" else []
    process = subprocess.Popen([*CLI, *args], stdin=terminal, stdout=terminal, stderr=terminal,
                               env={**os.environ, **d.env}, cwd=str(ROOT))
    os.close(terminal)
    try:
        banner = _read_until(primary, b"Ctrl-C", 60)
        assert b"Ctrl-C" in banner, banner
        sent = time.monotonic()
        process.send_signal(signal.SIGINT)
        status = process.wait(timeout=30)
        elapsed = time.monotonic() - sent
        rest = _read_until(primary, b"\0", 0.5)
    finally:
        if process.poll() is None:
            process.kill()
        os.close(primary)
    assert elapsed < STOP_WITHIN, f"still alive {elapsed:.1f}s after Ctrl-C"
    assert status == 0
    assert b"Traceback" not in banner + rest, (banner + rest).decode(errors="replace")
    assert b"stopped" in rest


async def test_the_stdio_server_says_it_is_serving_and_keeps_httpx_lines_off_stderr(
    sqlite_deployment: Deployment, abrowser: AsyncBrowser
) -> None:
    d = sqlite_deployment.local()
    async with d.app() as app:
        await link(app, abrowser, "github", "octo", None)
    call = {"jsonrpc": "2.0", "id": 2, "method": "tools/call",
            "params": {"name": "request", "arguments": {"url": f"{d.upstream.url}/echo/x", "provider": "github"}}}
    messages = [INITIALIZE, {"jsonrpc": "2.0", "method": "notifications/initialized"}, call]
    with subprocess.Popen(CLI, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                          env={**os.environ, **d.env}, cwd=str(ROOT)) as server:
        assert server.stdin is not None and server.stdout is not None and server.stderr is not None
        server.stdin.write("".join(json.dumps(m) + "\n" for m in messages).encode())
        server.stdin.flush()
        answers = [json.loads(server.stdout.readline())]
        while answers[-1].get("id") != 2:
            answers.append(json.loads(server.stdout.readline()))
        server.stdin.close()
        server.wait(timeout=30)
        stderr = server.stderr.read().decode()
    assert payload_of(answers[-1])["body"]["account"] == "octo"  # the call went upstream
    assert "waiting for an MCP client on stdin" in stderr and "Ctrl-C" in stderr
    assert "HTTP Request" not in stderr and "INFO" not in stderr, stderr


def payload_of(answer: dict[str, object]) -> dict[str, object]:
    result = answer["result"]
    assert isinstance(result, dict) and not result["isError"], answer
    structured: dict[str, object] = result["structuredContent"]
    return structured


def test_a_port_already_in_use_is_one_line(sqlite_deployment: Deployment) -> None:
    d = sqlite_deployment.local()
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        line = one_line_error(run(d.env, "--transport", "http", "--port", str(port)))
    assert f"{port}" in line and "already in use" in line


def test_a_vault_url_without_an_api_key_is_one_line(sqlite_deployment: Deployment) -> None:
    env = {**sqlite_deployment.local().env, "ALTER_API_KEY": ""}
    line = one_line_error(run(env, "--vault-url", "http://127.0.0.1:9"))
    assert "API key" in line


def test_without_the_mcp_extra_the_command_says_what_to_install(tmp_path: Path) -> None:
    missing = tmp_path / "site" / "mcp"
    missing.mkdir(parents=True)
    (missing / "__init__.py").write_text("raise ModuleNotFoundError(\"No module named 'mcp'\", name='mcp')\n")
    env = {"PYTHONPATH": str(tmp_path / "site")}
    line = one_line_error(run(env))
    assert "alter-agents[mcp]" in line


@pytest.mark.parametrize(("args", "named"), [
    (["--transport", "http", "--user-token-file", "{token_file}"], "--user-token-file"),
    (["--port", "9999"], "--port"),
    (["--host", "127.0.0.2"], "--host"),
    (["--transport", "http", "--host", "0.0.0.0", "--port", "0"], "--allow-remote"),
    (["--grant-id", "bogus"], "--grant-id"),
    (["--grant-id", str(uuid.UUID(int=7))], "does not exist"),
])
def test_options_that_would_be_ignored_or_unsafe_are_refused_at_start(
    sqlite_deployment: Deployment, tmp_path: Path, args: list[str], named: str
) -> None:
    token_file = tmp_path / "token"
    token_file.write_text("x")
    line = one_line_error(run(sqlite_deployment.local().env, *[a.format(token_file=token_file) for a in args]))
    assert named in line


async def test_multi_user_http_does_not_log_anyones_sign_in_link(
    sqlite_deployment: Deployment, abrowser: AsyncBrowser
) -> None:
    d = sqlite_deployment
    alice = d.idp.issue("alice")
    env = {**os.environ, **d.env}
    env.pop("ALTER_PUBLIC_URL", None)
    command = [*CLI, "--transport", "http", "--port", "0", "--connect-wait", "0"]
    async with await anyio.open_process(command, env=env, cwd=str(ROOT)) as process:
        assert process.stderr is not None
        seen = b""
        try:
            with anyio.fail_after(60):
                while b" at http" not in seen:
                    seen += await process.stderr.receive()
            url = seen.decode().split(" at ", 1)[1].split()[0]
            with anyio.fail_after(30):
                async with RunningHttp(url.removesuffix("/mcp"), None, None).client(alice) as client:  # type: ignore[arg-type]
                    pending = payload(await client.call_tool("connect", {"provider": "github"}))
        finally:
            process.send_signal(signal.SIGINT)
            with anyio.fail_after(30):
                await process.wait()
            seen += await _drain(process.stderr)
    logged = seen.decode(errors="replace")
    assert pending["status"] == "pending" and pending["connect_url"]
    assert pending["connect_url"] not in logged
    assert "state=" not in logged and "Open this URL" not in logged, logged
    assert "Traceback" not in logged


async def _drain(stream: anyio.abc.ByteReceiveStream) -> bytes:
    data = b""
    try:
        while True:
            data += await stream.receive()
    except (anyio.EndOfStream, anyio.ClosedResourceError, anyio.BrokenResourceError):
        return data
