"""An independent client: the MCP Inspector CLI from npm drives `python -m mcp_server` over stdio.

It validates `structuredContent` against `outputSchema` even on tool errors, so an ambiguous call
must exit with the tool-error status (5), not the schema-violation one (1).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import anyio
import pytest

from tests.conftest import Deployment
from tests.fixtures import AsyncBrowser
from tests.mcp_support import link

ROOT = Path(__file__).resolve().parent.parent
INSPECTOR = ROOT / "tests" / "node" / "node_modules" / ".bin" / "mcp-inspector"
EXIT_OK, EXIT_TOOL_ERROR, EXIT_SCHEMA = 0, 5, 1

pytestmark = pytest.mark.timeout(120)


@pytest.fixture
def inspector() -> Path:
    if not INSPECTOR.exists():
        if os.environ.get("CI"):
            pytest.fail("the MCP Inspector is not installed: run `npm ci` in tests/node")
        pytest.skip("run `npm ci` in tests/node to install the MCP Inspector")
    return INSPECTOR


async def run_inspector(inspector: Path, env: dict[str, str], home: Path, *args: str) -> tuple[int, Any]:
    server_env = [f"{k}={v}" for k, v in env.items() if k.startswith("ALTER_")]
    command = [str(inspector), "--cli", "--cwd", str(ROOT)]
    for pair in server_env:
        command += ["-e", pair]
    command += [*args, "--", sys.executable, "-m", "mcp_server"]
    with anyio.fail_after(90):
        done = await anyio.run_process(command, check=False, env={**os.environ, "HOME": str(home)},
                                       stdin=subprocess.DEVNULL)
    out = done.stdout.decode()
    try:
        return done.returncode, json.loads(out)
    except ValueError:
        return done.returncode, out + done.stderr.decode()


async def test_mcp_inspector_lists_calls_and_sees_a_tool_error_not_a_schema_failure(
    sqlite_deployment: Deployment, abrowser: AsyncBrowser, inspector: Path, tmp_path: Path
) -> None:
    d = sqlite_deployment.local()
    async with d.app() as app:
        await link(app, abrowser, "github", "octo", None)
        await link(app, abrowser, "google", "me@gmail.com", None)
        await link(app, abrowser, "google", "me@work.com", None, label="work")

    status, listed = await run_inspector(inspector, d.env, tmp_path, "--method", "tools/list")
    assert status == EXIT_OK, listed
    assert {t["name"] for t in listed["tools"]} == {"request", "connect"}

    status, called = await run_inspector(
        inspector, d.env, tmp_path, "--method", "tools/call", "--tool-name", "request",
        "--tool-arg", f"url={d.upstream.url}/echo/inspected", "--tool-arg", "provider=github",
    )
    assert status == EXIT_OK, called
    assert called["structuredContent"]["body"]["account"] == "octo"

    status, ambiguous = await run_inspector(
        inspector, d.env, tmp_path, "--method", "tools/call", "--tool-name", "request",
        "--tool-arg", f"url={d.upstream.url}/echo/x", "--tool-arg", "provider=google",
    )
    assert status == EXIT_TOOL_ERROR, ambiguous
    assert status != EXIT_SCHEMA
    assert ambiguous["isError"] is True
    assert ambiguous["structuredContent"]["error"]["code"] == "ambiguous_grant"
