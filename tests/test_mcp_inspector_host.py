"""MCP Inspector CLI against the protocol edges: logging, and a local-mode HTTP server with its token.

(`tools/call connect` answering with the link inside the Inspector's time-out is in test_mcp_inspector.py.)
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import anyio
import pytest

from tests.conftest import Deployment
from tests.fixtures import AsyncBrowser
from tests.mcp_support import link
from tests.test_mcp_inspector import EXIT_OK, ROOT, inspector, run_inspector

pytestmark = pytest.mark.timeout(180)
__all__ = ["inspector"]  # the fixture, shared with test_mcp_inspector.py


async def test_mcp_inspector_sets_the_log_level(
    sqlite_deployment: Deployment, inspector: list[str], tmp_path: Path
) -> None:
    d = sqlite_deployment.local()
    status, levelled = await run_inspector(inspector, d.env, tmp_path, "--method", "logging/setLevel",
                                           "--log-level", "debug")
    assert status == EXIT_OK, levelled


async def test_mcp_inspector_reaches_a_local_mode_http_server_with_its_printed_token(
    sqlite_deployment: Deployment, abrowser: AsyncBrowser, inspector: list[str], tmp_path: Path
) -> None:
    d = sqlite_deployment.local()
    async with d.app() as app:
        await link(app, abrowser, "github", "octo", None)
    command = [sys.executable, "-m", "alter_agents.cli", "mcp", "--transport", "http", "--port", "0"]
    env = {**os.environ, **d.env}
    async with await anyio.open_process(command, env=env, cwd=str(ROOT)) as server:
        try:
            assert server.stderr is not None
            seen = ""
            with anyio.fail_after(60):
                while "Bearer " not in seen or "(printed once)" not in seen:
                    seen += (await server.stderr.receive()).decode()
            url = seen.split(" at ", 1)[1].split()[0]
            token = seen.split("Bearer ", 1)[1].split("'", 1)[0]
            command = [*inspector, "--cli", url, "--transport", "http",
                       "--header", f"Authorization: Bearer {token}", "--method", "tools/call", "--tool-name", "request",
                       "--tool-arg", f"url={d.upstream.url}/echo/x", "--tool-arg", "provider=github"]
            with anyio.fail_after(90):
                done = await anyio.run_process(command, check=False, env={**os.environ, "HOME": str(tmp_path)},
                                               stdin=subprocess.DEVNULL)
        finally:
            server.terminate()
    output = done.stdout.decode() + done.stderr.decode()
    assert done.returncode == EXIT_OK, output
    assert "Dynamic Client Registration" not in output
    assert json.loads(done.stdout)["structuredContent"]["body"]["account"] == "octo"
