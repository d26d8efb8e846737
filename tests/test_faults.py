"""Fault injection: broken APIs, flaky token endpoints, killed processes, wrong keys, a restarted database.

Every fault must end as a typed error (or an HTTP result the model reads), leave stored credentials
intact, and never stop the process from serving everyone else.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import textwrap
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest
from sqlalchemy import select

from alter_agents import App, VaultKeyError, VaultUnavailableError
from alter_agents.models import Principal, ToolErrorPayload
from alter_agents.sessions import UserSession
from alter_agents.tools import AlterTools, RequestResult
from alter_agents.upstream import Upstream
from alter_agents.vault.crypto import generate_key
from alter_agents.vault.schema import grants
from tests.conftest import Deployment, connect_as, fresh_postgres, make_deployment
from tests.fixtures import AsyncBrowser, IdentityProvider, OAuthServer, UpstreamAPI
from tests.fixtures.tcp_proxy import TcpProxy

# An access token that lives less than the refresh skew (60 s) is due for refresh on every call.
DUE_AT_ONCE_TTL = 30


def _code(outcome: object) -> str:
    assert isinstance(outcome, ToolErrorPayload), outcome
    return outcome.error.code


async def test_broken_upstreams_give_results_or_typed_errors_while_other_sessions_keep_being_served(
    sqlite_deployment: Deployment, abrowser: AsyncBrowser
) -> None:
    d = sqlite_deployment
    app = d.app(upstream=Upstream(timeout=1.0))
    alice, bob = d.idp.issue("alice"), d.idp.issue("bob")
    await connect_as(app, abrowser, "github", "alice-gh", alice)
    await connect_as(app, abrowser, "github", "bob-gh", bob)
    as_alice, as_bob = AlterTools(app, UserSession(alice)), AlterTools(app, UserSession(bob))
    api = d.upstream.url

    async def alice_calls(path: str) -> object:
        return await as_alice.run_request({"url": f"{api}{path}", "provider": "github"})

    async def bob_keeps_working() -> list[float]:
        took = []
        for _ in range(20):
            started = time.perf_counter()
            result = await as_bob.run_request({"url": d.upstream.echo_url("bob"), "provider": "github"})
            took.append(time.perf_counter() - started)
            assert isinstance(result, RequestResult) and result.body["account"] == "bob-gh"
        return took

    started = time.perf_counter()
    server_error, hang, reset, bobs = await asyncio.gather(
        alice_calls("/status/503"), alice_calls("/slow?s=3"), alice_calls("/reset"), bob_keeps_working(),
    )
    assert isinstance(server_error, RequestResult) and server_error.status == 503
    assert _code(hang) == "upstream_timeout"
    assert _code(reset) == "upstream_unreachable"
    assert time.perf_counter() - started < 2.5, "the hung call must end at its timeout, not when the API answers"
    assert max(bobs) < 0.9, "bob's calls must not wait behind alice's hung call"

    again = await alice_calls("/echo/after")
    assert isinstance(again, RequestResult) and again.body["account"] == "alice-gh"
    await app.aclose()


async def test_token_endpoint_500s_during_refresh_are_retried_and_the_grant_stays_active(
    sqlite_deployment: Deployment, abrowser: AsyncBrowser
) -> None:
    d = sqlite_deployment
    d.oauth.access_token_ttl = DUE_AT_ONCE_TTL
    app = d.app()
    alice = d.idp.issue("alice")
    grant = await connect_as(app, abrowser, "github", "alice-gh", alice)
    url = d.upstream.echo_url("x")

    d.oauth.fail_next_token_requests(2, status=500)
    before = d.oauth.count("refresh_token")
    response = await app.request("GET", url, provider="github", user_token=alice)
    assert response.status == 200 and response.json_body()["account"] == "alice-gh"
    assert d.oauth.count("refresh_token") - before == 3  # two 500s, then the refresh that worked

    d.oauth.fail_next_token_requests(10, status=503)
    outcome = await AlterTools(app, UserSession(alice)).run_request({"url": url, "provider": "github"})
    assert _code(outcome) == "upstream_unreachable"
    assert isinstance(outcome, ToolErrorPayload) and outcome.error.retryable is True
    stored = await app.vault.get_grant(grant.grant_id)  # type: ignore[attr-defined]
    assert stored is not None and stored.status == "active"

    d.oauth.fail_next_token_requests(0)
    response = await app.request("GET", url, provider="github", user_token=alice)
    assert response.status == 200
    await app.aclose()


_REFRESH_THEN_HANG = textwrap.dedent("""
    import asyncio, sys
    import alter_agents.vault.local as local
    local.REFRESH_LEASE_SECONDS = float(sys.argv[3])
    from alter_agents import App

    async def main() -> None:
        async with App() as app:
            await app.request("GET", sys.argv[1], grant_id=sys.argv[2])

    asyncio.run(main())
""")


async def test_a_process_killed_mid_refresh_loses_nothing_and_its_lease_lapses(
    sqlite_deployment: Deployment, abrowser: AsyncBrowser, tmp_path: Path
) -> None:
    d = sqlite_deployment
    d.oauth.access_token_ttl = DUE_AT_ONCE_TTL
    app = d.app()
    alice = d.idp.issue("alice")
    grant = await connect_as(app, abrowser, "github", "alice-gh", alice)
    url = d.upstream.echo_url("x")
    store = app.vault.store  # type: ignore[attr-defined]
    secret_before = await _stored_secret(app, grant.grant_id)

    lease = 3.0
    d.oauth.token_delay = 8.0  # the child's refresh is still at the token endpoint when it dies
    script = tmp_path / "refresh_then_hang.py"
    script.write_text(_REFRESH_THEN_HANG, "utf-8")
    child = subprocess.Popen([sys.executable, str(script), url, grant.grant_id, str(lease)],
                             env={**os.environ, **d.env}, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 15
        while await store.refresh_lease(grant.grant_id) is None:
            assert child.poll() is None, child.stderr.read() if child.stderr else ""
            assert time.monotonic() < deadline, "the child never started its refresh"
            await asyncio.sleep(0.05)
        await asyncio.sleep(0.3)
        child.send_signal(signal.SIGKILL)
        child.wait(timeout=5)
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
        if child.stderr:
            child.stderr.close()
    assert child.returncode == -signal.SIGKILL
    d.oauth.token_delay = 0.0
    assert await store.refresh_lease(grant.grant_id) is not None, "the dead process's lease is still recorded"
    assert await _stored_secret(app, grant.grant_id) == secret_before, "nothing was half-written"

    started = time.monotonic()
    async with d.app() as fresh:
        response = await fresh.request("GET", url, grant_id=grant.grant_id)
    waited = time.monotonic() - started
    assert response.status == 200 and response.json_body()["account"] == "alice-gh"
    assert waited < lease + 3, "the lease of a dead process must lapse, not block forever"
    assert await _stored_secret(app, grant.grant_id) != secret_before, "the stored refresh token still worked"
    await app.aclose()


async def _stored_secret(app: App, grant_id: str) -> bytes:
    store = app.vault.store  # type: ignore[attr-defined]
    async with store.engine.connect() as conn:
        value = await conn.scalar(select(grants.c.secret).where(grants.c.grant_id == grant_id))
    return bytes(value)


async def _all_grant_rows(app: App) -> list[Any]:
    store = app.vault.store  # type: ignore[attr-defined]
    async with store.engine.connect() as conn:
        return [tuple(r) for r in (await conn.execute(select(grants).order_by(grants.c.grant_id))).all()]


@pytest.mark.parametrize("bad_key", ["wrong", "not base64 !!", "c2hvcnQ="])
async def test_a_wrong_or_corrupt_vault_key_is_a_clear_error_and_changes_nothing(
    deployment: Deployment, abrowser: AsyncBrowser, bad_key: str
) -> None:
    d = deployment.local()
    app = d.app()
    await connect_as(app, abrowser, "github", "me-gh", None)
    await app.vault.add_secret("keyed", "api-key-1", owner=Principal("app"), account="svc")  # type: ignore[attr-defined]
    before = await _all_grant_rows(app)
    await app.aclose()

    key = generate_key() if bad_key == "wrong" else bad_key
    wrong = App(settings=replace(d.settings, vault_key=key))
    with pytest.raises(VaultKeyError) as caught:
        await wrong.request("GET", d.upstream.echo_url("x"), provider="github")
    assert "ALTER_VAULT_KEY" in str(caught.value)
    with pytest.raises(VaultKeyError):
        await wrong.vault.add_secret("keyed", "api-key-2", owner=Principal("app"), account="svc2")  # type: ignore[attr-defined]
    await wrong.aclose()

    async with d.app() as right:
        assert await _all_grant_rows(right) == before
        response = await right.request("GET", d.upstream.echo_url("x"), provider="github")
        assert response.status == 200 and response.json_body()["account"] == "me-gh"


async def test_a_postgresql_outage_under_load_fails_calls_cleanly_and_they_recover_in_process(
    tmp_path: Path, idp: IdentityProvider, oauth: OAuthServer, upstream: UpstreamAPI, oauth_client: tuple[str, str],
) -> None:
    """The outage is a TCP proxy of the test's own cutting every connection: the shared server is never touched."""
    from sqlalchemy.engine import make_url

    url = make_url(await fresh_postgres())
    proxy = TcpProxy(url.host or "127.0.0.1", url.port or 5432).__enter__()
    d = make_deployment(tmp_path, url.set(host="127.0.0.1", port=proxy.port).render_as_string(hide_password=False),
                        idp, oauth, upstream, oauth_client).local()
    app = d.app()
    upstream.add_secret("key-under-load", "svc")
    await app.vault.add_secret("keyed", "key-under-load", owner=Principal("app"), account="svc")  # type: ignore[attr-defined]
    url = upstream.echo_url("load")
    outcomes: list[str] = []
    restarted = asyncio.Event()
    recovered_streak = 0

    async def worker() -> None:
        nonlocal recovered_streak
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and recovered_streak < 30:
            try:
                response = await app.request("GET", url, provider="keyed")
            except VaultUnavailableError as exc:
                outcomes.append(exc.code)
                recovered_streak = 0
                assert exc.retryable and "unavailable" in exc.message
            else:
                assert response.status == 200 and response.json_body()["account"] == "svc"
                outcomes.append("ok")
                if restarted.is_set():
                    recovered_streak += 1
            await asyncio.sleep(0.02)

    async def restart() -> None:
        await asyncio.sleep(0.5)
        try:  # down for longer than the grant cache lives, so calls must reach the dead database
            proxy.cut()
            await asyncio.sleep(1.5)
        finally:
            proxy.restore()
        restarted.set()

    try:
        await asyncio.gather(restart(), *(worker() for _ in range(4)))
    finally:
        proxy.restore()
    assert recovered_streak >= 30, f"calls did not recover after the restart: {outcomes[-20:]}"
    assert set(outcomes) == {"ok", "internal"}, "calls failed with the typed, retryable error while it was down"
    entries = await app.vault.audit(limit=10_000)  # type: ignore[attr-defined]
    assert sum(e.action == "call" for e in entries) >= outcomes.count("ok") - 1
    await app.aclose()
    proxy.__exit__(None, None, None)


_MCP_HEADERS = {"Accept": "application/json, text/event-stream", "Content-Type": "application/json"}


async def test_clients_that_vanish_mid_call_do_not_take_the_mcp_server_down(
    sqlite_deployment: Deployment, abrowser: AsyncBrowser
) -> None:
    from mcp_server.auth import session_jwt
    from tests.mcp_support import http_server, link, payload

    d = sqlite_deployment
    alice, bob = d.idp.issue("alice"), d.idp.issue("bob")
    slow = f"{d.upstream.url}/slow?s=1.5"
    async with http_server(d, lambda _settings: UserSession(session_jwt)) as srv:
        await link(srv.app, abrowser, "github", "alice-gh", alice)
        await link(srv.app, abrowser, "github", "bob-gh", bob)

        with anyio.move_on_after(0.5) as gave_up:  # an MCP client cancelled while its call is in flight
            async with srv.client(alice) as client:
                await client.call_tool("request", {"url": slow, "provider": "github"})
        assert gave_up.cancelled_caught

        async with httpx.AsyncClient(timeout=10) as http:  # a raw client that drops the TCP connection
            opened = await http.post(f"{srv.url}/mcp", headers={**_MCP_HEADERS, "Authorization": f"Bearer {bob}"},
                                     json={"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
                                         "protocolVersion": "2025-11-25", "capabilities": {},
                                         "clientInfo": {"name": "vanishing", "version": "1"}}})
            common = {**_MCP_HEADERS, "Authorization": f"Bearer {bob}",
                      "mcp-session-id": opened.headers["mcp-session-id"], "mcp-protocol-version": "2025-11-25"}
            await http.post(f"{srv.url}/mcp", headers=common,
                            json={"jsonrpc": "2.0", "method": "notifications/initialized"})
            call = {"jsonrpc": "2.0", "id": 2, "method": "tools/call",
                    "params": {"name": "request", "arguments": {"url": slow, "provider": "github"}}}
            with anyio.move_on_after(0.5):
                async with http.stream("POST", f"{srv.url}/mcp", headers=common, json=call) as response:
                    async for _ in response.aiter_bytes():
                        pass

        await anyio.sleep(1.5)  # the abandoned calls finish upstream after their clients left
        with anyio.fail_after(20):
            async with srv.client(alice) as client:
                result = await client.call_tool("request", {"url": d.upstream.echo_url("x"), "provider": "github"})
            async with srv.client(bob, "2026-07-28") as client:
                bobs = await client.call_tool("request", {"url": d.upstream.echo_url("y"), "provider": "github"})
    assert payload(result)["body"]["account"] == "alice-gh"
    assert payload(bobs)["body"]["account"] == "bob-gh"
