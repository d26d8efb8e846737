"""The vault's own promises: credentials bound to their row, refreshes that survive cancellation."""

from __future__ import annotations

import json
import time
import uuid
from pathlib import Path
from typing import Any

import anyio
import pytest
from sqlalchemy import delete, insert, select, text, update
from sqlalchemy.ext.asyncio import create_async_engine

from alter_agents import App, VaultKeyError
from alter_agents.models import Principal
from alter_agents.vault import schema
from alter_agents.vault.crypto import Cipher, grant_binding
from alter_agents.vault.local import LocalVault
from tests.conftest import Deployment, connect_as, make_deployment
from tests.fixtures import AsyncBrowser, IdentityProvider, OAuthServer, UpstreamAPI

ALICE_KEY = "sk-alice-0123456789abcdef"
BOB_KEY = "sk-bob-fedcba9876543210"


def _status(response: Any) -> int:
    return int(getattr(response, "status_code", None) or response.status)


async def _sql(url: str, *statements: Any) -> list[Any]:
    """Write the store with plain SQL, as someone who can write it but has no key would."""
    engine = create_async_engine(url)
    results: list[Any] = []
    try:
        async with engine.begin() as conn:
            for statement in statements:
                result = await conn.execute(statement)
                results.append(result.scalar() if result.returns_rows else None)
    finally:
        await engine.dispose()
    return results


async def _alice_and_bob(d: Deployment, app: App) -> tuple[str, str]:
    d.upstream.add_secret(ALICE_KEY, "alice@acme.com")
    d.upstream.add_secret(BOB_KEY, "bob@acme.com")
    alice = await app.vault.add_secret("keyed", ALICE_KEY, owner=Principal("user", "alice"),  # type: ignore[attr-defined]
                                       account="alice@acme.com")
    bob = await app.vault.add_secret("keyed", BOB_KEY, owner=Principal("user", "bob"),  # type: ignore[attr-defined]
                                     account="bob@acme.com")
    return alice.grant_id, bob.grant_id


async def test_alices_ciphertext_copied_into_bobs_row_is_never_sent(deployment: Deployment) -> None:
    d = deployment
    alice, bob = d.idp.issue("alice"), d.idp.issue("bob")
    async with d.app() as app:
        alice_grant, bob_grant = await _alice_and_bob(d, app)
        # This process has opened alice's secret, so a cache keyed by ciphertext alone would serve it.
        first = await app.request("GET", d.upstream.echo_url("a"), provider="keyed", user_token=alice)
        assert first.json_body()["account"] == "alice@acme.com"
        grants = schema.grants
        await _sql(d.settings.vault_url, update(grants).where(grants.c.grant_id == bob_grant).values(
            secret=select(grants.c.secret).where(grants.c.grant_id == alice_grant).scalar_subquery()))
        d.upstream.reset_records()
        with pytest.raises(VaultKeyError) as info:
            await app.request("GET", d.upstream.echo_url("b"), provider="keyed", user_token=bob)
        body = info.value.payload().error
        assert body.code == "internal" and bob_grant in body.message and "Reconnect" in body.message
        assert ALICE_KEY not in d.upstream.seen_credentials and not d.upstream.received_anywhere(ALICE_KEY)
        assert d.upstream.requests == []


async def test_a_row_moved_to_another_owner_or_provider_does_not_decrypt(deployment: Deployment) -> None:
    d = deployment
    alice, bob = d.idp.issue("alice"), d.idp.issue("bob")
    async with d.app() as app:
        alice_grant, bob_grant = await _alice_and_bob(d, app)
        await app.request("GET", d.upstream.echo_url("a"), provider="keyed", user_token=alice)
        grants = schema.grants
        await _sql(d.settings.vault_url, delete(grants).where(grants.c.grant_id == bob_grant),
                   update(grants).where(grants.c.grant_id == alice_grant).values(owner="user:bob"))
        d.upstream.reset_records()
        with pytest.raises(VaultKeyError):
            await app.request("GET", d.upstream.echo_url("b"), provider="keyed", user_token=bob)
        await _sql(d.settings.vault_url, update(grants).where(grants.c.grant_id == alice_grant).values(
            owner="user:alice", provider="queried"))
        with pytest.raises(VaultKeyError):
            await app.request("GET", d.upstream.echo_url("c"), provider="queried", user_token=alice)
        assert not d.upstream.received_anywhere(ALICE_KEY)


async def _write_schema_2_store(url: str, key: str, secrets: dict[str, tuple[str, str]]) -> dict[str, str]:
    """A store as schema version 2 left it: credentials bound to their grant id only."""
    cipher = Cipher(key)
    engine = create_async_engine(url)
    ids: dict[str, str] = {}
    now = time.time()
    try:
        async with engine.begin() as conn:
            await conn.run_sync(schema.metadata.create_all)
            await conn.execute(text(f"ALTER TABLE {schema.connect_sessions.name} DROP COLUMN error_code"))
            await conn.execute(insert(schema.schema_version).values(version=2))
            await conn.execute(insert(schema.meta).values(
                key="key_check", value=cipher.encrypt(b"alter-agents key check", "key_check")))
            for owner, (secret, account) in secrets.items():
                grant_id = ids[owner] = str(uuid.uuid4())
                payload = json.dumps({"access_token": secret, "refresh_token": None}).encode()
                await conn.execute(insert(schema.grants).values(
                    grant_id=grant_id, provider="keyed", owner=owner, kind="secret", account=account,
                    scopes="[]", status="active", created_at=now, updated_at=now,
                    secret=cipher.encrypt(payload, grant_id)))
    finally:
        await engine.dispose()
    return ids


async def test_a_schema_2_store_is_resealed_for_id_owner_and_provider(
    tmp_path: Path, store_url: str, idp: IdentityProvider, oauth: OAuthServer, upstream: UpstreamAPI,
    oauth_client: tuple[str, str],
) -> None:
    d = make_deployment(tmp_path, store_url, idp, oauth, upstream, oauth_client)
    assert d.settings.vault_key_value()
    ids = await _write_schema_2_store(d.settings.vault_url, d.settings.vault_key_value() or "", {
        "user:alice": (ALICE_KEY, "alice@acme.com"), "user:bob": (BOB_KEY, "bob@acme.com")})
    upstream.add_secret(ALICE_KEY, "alice@acme.com")
    upstream.add_secret(BOB_KEY, "bob@acme.com")
    alice, bob = idp.issue("alice"), idp.issue("bob")
    async with d.app() as app:
        for token, account in ((alice, "alice@acme.com"), (bob, "bob@acme.com")):
            response = await app.request("GET", upstream.echo_url("x"), provider="keyed", user_token=token)
            assert response.json_body()["account"] == account
    grants = schema.grants
    version, pending, sealed = await _sql(
        d.settings.vault_url, select(schema.schema_version.c.version),
        select(schema.meta.c.key).where(schema.meta.c.key == schema.GRANT_RESEAL_PENDING),
        select(grants.c.secret).where(grants.c.grant_id == ids["user:alice"]))
    assert (version, pending) == (schema.SCHEMA_VERSION, None)
    cipher = Cipher(d.settings.vault_key_value() or "")
    assert cipher.try_decrypt(sealed, ids["user:alice"]) is None  # the grant-id-only form is gone
    assert cipher.try_decrypt(sealed, grant_binding(ids["user:alice"], "user:alice", "keyed")) is not None

    # After the upgrade, moving alice's row to bob (the attack schema 2 allowed) is refused.
    await _sql(d.settings.vault_url, delete(grants).where(grants.c.grant_id == ids["user:bob"]),
               update(grants).where(grants.c.grant_id == ids["user:alice"]).values(owner="user:bob"))
    upstream.reset_records()
    async with d.app() as app:
        with pytest.raises(VaultKeyError):
            await app.request("GET", upstream.echo_url("y"), provider="keyed", user_token=bob)
    assert not upstream.received_anywhere(ALICE_KEY)


async def test_processes_opening_an_old_store_together_reseal_it_once(
    tmp_path: Path, sqlite_url: str, idp: IdentityProvider, oauth: OAuthServer, upstream: UpstreamAPI,
    oauth_client: tuple[str, str],
) -> None:
    d = make_deployment(tmp_path, sqlite_url, idp, oauth, upstream, oauth_client).local()
    assert d.settings.vault_key_value()
    ids = await _write_schema_2_store(d.settings.vault_url, d.settings.vault_key_value() or "",
                                      {"app": (ALICE_KEY, "ops@acme.com")})
    upstream.add_secret(ALICE_KEY, "ops@acme.com")
    vaults = [LocalVault(d.settings) for _ in range(5)]
    try:
        async with anyio.create_task_group() as tg:
            for vault in vaults:
                tg.start_soon(vault.open)
        async with App(vault=vaults[0]) as app:
            response = await app.request("GET", upstream.echo_url("z"), grant_id=ids["app"])
            assert response.json_body()["account"] == "ops@acme.com"
    finally:
        for vault in vaults[1:]:
            await vault.aclose()


# -- refresh and cancellation ------------------------------------------------------------------

CANCEL_AFTER = (0.0, 0.001, 0.003, 0.006, 0.01, 0.02, 0.035, 0.05, 0.08, 0.11, 0.15, 0.2, 0.26, 0.32, 0.4)


async def test_a_call_cancelled_anywhere_in_a_refresh_keeps_the_grant(
    sqlite_deployment: Deployment, abrowser: AsyncBrowser
) -> None:
    """Cancel the call at each point of a refresh against an endpoint that rotates refresh tokens."""
    d = sqlite_deployment
    d.oauth.access_token_ttl = 30  # shorter than the refresh skew: every call refreshes
    async with d.app() as app:
        alice = d.idp.issue("alice")
        grant = await connect_as(app, abrowser, "github", "alice-gh", alice)
        d.oauth.token_delay = 0.15
        for delay in CANCEL_AFTER:
            with anyio.move_on_after(delay):
                await app.request("GET", d.upstream.echo_url("cancelled"), provider="github", user_token=alice)
            started = time.monotonic()
            response = await app.request("GET", d.upstream.echo_url("next"), provider="github", user_token=alice)
            assert time.monotonic() - started < 10, f"the call after a cancel at {delay}s waited on a lease"
            assert _status(response) == 200 and response.json_body()["account"] == "alice-gh", delay
            assert [g.status for g in await app.grants(user_token=alice)] == ["active"]
        assert d.oauth.count("refresh_token") >= len(CANCEL_AFTER)
        assert {r.status for r in d.oauth.token_requests} == {200}  # no dead refresh token was ever used
    async with d.app() as again:  # and a new process finds the grant working
        response = await again.request("GET", d.upstream.echo_url("later"), grant_id=grant.grant_id)
        assert response.json_body()["account"] == "alice-gh"


async def test_closing_the_app_mid_refresh_commits_the_rotated_token(
    sqlite_deployment: Deployment, abrowser: AsyncBrowser
) -> None:
    d = sqlite_deployment
    d.oauth.access_token_ttl = 30
    async with d.app() as app:
        alice = d.idp.issue("alice")
        grant = await connect_as(app, abrowser, "github", "alice-gh", alice)
        d.oauth.token_delay = 0.3
        with anyio.move_on_after(0.1):
            await app.request("GET", d.upstream.echo_url("x"), grant_id=grant.grant_id)
    async with d.app() as again:
        response = await again.request("GET", d.upstream.echo_url("y"), grant_id=grant.grant_id)
        assert response.json_body()["account"] == "alice-gh"
    assert {r.status for r in d.oauth.token_requests} == {200}
