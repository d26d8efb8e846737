"""An independent client: the MCP Inspector CLI from npm drives `python -m mcp_server` over stdio.

It validates `structuredContent` against `outputSchema` even on tool errors, so an ambiguous call
must exit with the tool-error status (5), not the schema-violation one (1).
"""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import anyio
import pytest

from tests.conftest import Deployment, LinkTwoGoogleAccounts, with_coverage
from tests.fixtures import AsyncBrowser
from tests.mcp_support import link

ROOT = Path(__file__).resolve().parent.parent
NODE_DIR = ROOT / "tests" / "node"
INSPECTOR = NODE_DIR / "node_modules" / ".bin" / "mcp-inspector"
# The Inspector declares Node >= 22.19; package.json brings a Node 22 build from the npm registry for it.
BUNDLED_NODES = [NODE_DIR / "node_modules" / f"node-linux-{arch}" / "bin" / "node" for arch in ("x64", "arm64")]
MIN_NODE = (22, 19)
EXIT_OK, EXIT_TOOL_ERROR, EXIT_SCHEMA = 0, 5, 1

pytestmark = pytest.mark.timeout(300)


def _installed() -> bool:
    """`npm ci` has run for the current lock file (npm records it as node_modules/.package-lock.json)."""
    done = NODE_DIR / "node_modules" / ".package-lock.json"
    lock = NODE_DIR / "package-lock.json"
    return INSPECTOR.exists() and done.exists() and done.stat().st_mtime >= lock.stat().st_mtime


def _node_version(node: Path | str) -> tuple[int, ...]:
    out = subprocess.run([str(node), "--version"], capture_output=True, text=True, timeout=30).stdout
    return tuple(int(p) for p in out.strip().lstrip("v").split(".")[:2] if p.isdigit())


@pytest.fixture(scope="session")
def inspector() -> list[str]:
    """The command that runs the MCP Inspector, installing it with `npm ci` in tests/node when missing."""
    npm = shutil.which("npm")
    if not _installed():
        assert npm, "the MCP Inspector test needs Node.js and npm on PATH (apt-get install nodejs npm)"
        with open(NODE_DIR / ".npm-ci.lock", "w") as lock:  # two suites at once install once
            fcntl.flock(lock, fcntl.LOCK_EX)
            if not _installed():
                done = subprocess.run([npm, "ci", "--no-audit", "--no-fund", "--loglevel=error"], cwd=NODE_DIR,
                                      capture_output=True, text=True, timeout=240)
                assert done.returncode == 0, f"npm ci in {NODE_DIR} failed:\n{done.stdout}{done.stderr}"
    candidates = [*(str(n) for n in BUNDLED_NODES if n.exists()), shutil.which("node")]
    node = next((n for n in candidates if n and _node_version(n) >= MIN_NODE), None)
    assert node, f"no Node >= {'.'.join(map(str, MIN_NODE))} for the MCP Inspector among {candidates}"
    return [node, str(INSPECTOR.resolve())]


async def run_inspector(inspector: list[str], env: dict[str, str], home: Path, *args: str) -> tuple[int, Any]:
    server_env = [f"{k}={v}" for k, v in with_coverage(env).items() if k.startswith(("ALTER_", "COVERAGE_"))]
    command = [*inspector, "--cli", "--cwd", str(ROOT)]
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
    sqlite_deployment: Deployment, abrowser: AsyncBrowser, alice_google: LinkTwoGoogleAccounts, inspector: list[str],
    tmp_path: Path,
) -> None:
    d = sqlite_deployment.local()
    async with d.app() as app:
        await link(app, abrowser, "github", "octo", None)
        await alice_google(app, None)

    status, listed = await run_inspector(inspector, d.env, tmp_path, "--method", "tools/list")
    assert status == EXIT_OK, listed
    assert {t["name"] for t in listed["tools"]} == {"request", "connect", "accounts"}

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


async def test_mcp_inspector_gets_the_connect_link_within_its_default_time_out(
    sqlite_deployment: Deployment, inspector: Path, tmp_path: Path
) -> None:
    d = sqlite_deployment.local()
    started = anyio.current_time()
    status, called = await run_inspector(inspector, d.env, tmp_path, "--method", "tools/call",
                                         "--tool-name", "connect", "--tool-arg", "provider=github")
    assert status == EXIT_OK, called
    assert called["structuredContent"]["status"] == "pending"
    assert called["structuredContent"]["connect_url"].startswith(d.oauth.url)
    assert anyio.current_time() - started < 30  # the Inspector gives up at 60 s; the server waited 60 s before

    status, listed = await run_inspector(inspector, d.env, tmp_path, "--method", "tools/call",
                                         "--tool-name", "accounts")
    assert status == EXIT_OK, listed  # the structured result passes the Inspector's output-schema check
    assert any(p["name"] == "github" for p in listed["structuredContent"]["providers"])
