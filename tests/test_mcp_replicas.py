"""Two MCP server replicas over one PostgreSQL store, behind a balancer on loopback.

2026-07-28 clients need no affinity: any replica serves any call. 2025-11-25 sessions live in the
replica that opened them, so the supported deployment routes by `Mcp-Session-Id`: each replica puts
its name in front of its session ids (`--replica-id`), and the balancer matches that prefix — what
examples/nginx-mcp.conf does (examples/haproxy-mcp.cfg learns the ids instead).
"""

from __future__ import annotations

import os
import secrets
import sys
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from pathlib import Path

import anyio
import pytest
from anyio.abc import Process

from tests.conftest import Deployment
from tests.fixtures import AsyncBrowser, BackgroundServer
from tests.fixtures.affine_balancer import AffineBalancer
from tests.mcp_support import ERAS, RunningHttp, link, payload

pytestmark = pytest.mark.timeout(180)
ROOT = Path(__file__).resolve().parent.parent


# One PostgreSQL store (and key) for every replica: the `deployment` fixture on this run's own database.
on_postgres = pytest.mark.parametrize("store_url", ["postgres"], indirect=True)


@pytest.fixture
def shared(deployment: Deployment) -> Deployment:
    assert deployment.settings.vault_url.startswith("postgresql")
    return deployment


@asynccontextmanager
async def behind_balancer(d: Deployment, *, affinity: bool, count: int = 2) -> AsyncIterator[AffineBalancer]:
    balancer = AffineBalancer(affinity=affinity)
    front = BackgroundServer(balancer, asgi=True)
    env = {k: v for k, v in os.environ.items() if not k.startswith("ALTER_")} | d.env
    env |= {"ALTER_PUBLIC_URL": front.url, "ALTER_MCP_STATE_KEYS": secrets.token_urlsafe(48)}
    async with AsyncExitStack() as stack:
        for index in range(1, count + 1):
            name = f"r{index}"
            command = [sys.executable, "-m", "mcp_server", "--transport", "http", "--port", "0", "--replica-id", name]
            process = await stack.enter_async_context(await anyio.open_process(command, env=env, cwd=str(ROOT)))
            stack.push_async_callback(_stop, process)
            balancer.add(name, await _listening(process))
        front.start()
        try:
            balancer.front_url = front.url
            yield balancer
        finally:
            front.stop()


async def _listening(process: Process) -> str:
    assert process.stderr is not None
    seen = b""
    with anyio.fail_after(60):
        while b"Listening on " not in seen or b";" not in seen.split(b"Listening on ", 1)[1]:
            seen += await process.stderr.receive()
    address = seen.split(b"Listening on ", 1)[1].split(b";", 1)[0].decode()
    return f"http://{address}"


async def _stop(process: Process) -> None:
    if process.returncode is None:
        process.terminate()
        with anyio.move_on_after(20):
            await process.wait()
        if process.returncode is None:
            process.kill()


@on_postgres
@pytest.mark.parametrize("mode", ERAS)
async def test_clients_of_both_eras_work_through_two_replicas_behind_an_affine_balancer(
    shared: Deployment, abrowser: AsyncBrowser, mode: str
) -> None:
    d = shared
    alice, bob = d.idp.issue("alice", expires_in=600), d.idp.issue("bob", expires_in=600)
    async with d.app() as app:
        await link(app, abrowser, "github", "alice-gh", alice)
        await link(app, abrowser, "github", "bob-gh", bob)
    async with behind_balancer(d, affinity=True) as balancer:
        front = RunningHttp(balancer.front_url, None, None)  # type: ignore[arg-type]
        seen: dict[str, set[str]] = {"alice": set(), "bob": set()}
        with anyio.fail_after(90):
            for user, token in (("alice", alice), ("bob", bob)):
                async with front.client(token, mode) as client:
                    for _ in range(4):
                        result = await client.call_tool("request", {"url": f"{d.upstream.url}/echo/x",
                                                                    "provider": "github"})
                        assert not result.is_error, payload(result)
                        seen[user].add(payload(result)["body"]["account"])
    assert seen == {"alice": {"alice-gh"}, "bob": {"bob-gh"}}
    assert {name for name, _ in balancer.served} == {"r1", "r2"}  # both replicas did work
    by_session: dict[str, set[str]] = {}
    for name, session_id in balancer.served:
        if session_id:
            by_session.setdefault(session_id, set()).add(name)
    if mode == "legacy":
        assert by_session and all(len(names) == 1 for names in by_session.values())
        assert all(sid.split(".", 1)[0] in ("r1", "r2") for sid in by_session)
    else:
        assert not by_session  # 2026-07-28 has no sessions to route


@on_postgres
async def test_without_affinity_a_2025_11_25_session_is_lost_on_the_other_replica(
    shared: Deployment, abrowser: AsyncBrowser
) -> None:
    """Why the deployment needs the affine route: plain round-robin breaks handshake-era clients."""
    d = shared
    alice = d.idp.issue("alice", expires_in=600)
    async with d.app() as app:
        await link(app, abrowser, "github", "alice-gh", alice)
    async with behind_balancer(d, affinity=False) as balancer:
        front = RunningHttp(balancer.front_url, None, None)  # type: ignore[arg-type]
        with anyio.fail_after(90), pytest.raises(BaseException) as lost:
            async with front.client(alice, "legacy") as client:
                for _ in range(4):
                    await client.call_tool("request", {"url": f"{d.upstream.url}/echo/x", "provider": "github"})
    assert "Session not found" in _messages(lost.value)


def _messages(exc: BaseException) -> str:
    found = [str(exc)]
    for inner in getattr(exc, "exceptions", ()):
        found.append(_messages(inner))
    if exc.__cause__ is not None:
        found.append(_messages(exc.__cause__))
    return " | ".join(found)
