"""The store: encrypted at rest, versioned schema, audit log — on SQLite and on PostgreSQL."""

from __future__ import annotations

import base64
import os
import stat
from dataclasses import replace
from pathlib import Path

import pytest
from sqlalchemy import insert, select, text, update

from alter_agents import App, ConfigurationError, Settings, VaultKeyError
from alter_agents.models import APP, Principal
from alter_agents.vault import schema
from alter_agents.vault import store as store_module
from alter_agents.vault.crypto import generate_key, grant_binding
from alter_agents.vault.local import LocalVault
from tests.conftest import Deployment, connect_as
from tests.fixtures import AsyncBrowser

SECRET = "sk_live_c0ffee0123456789abcdef"


async def _raw_bytes(app: App, d: Deployment) -> bytes:
    """Everything the store holds, as an attacker reading the disk (or the database) would see it."""
    url = d.settings.vault_url
    if url.startswith("sqlite"):
        path = Path(url.split("///", 1)[1])
        return b"".join(p.read_bytes() for p in path.parent.glob(path.name + "*"))
    chunks = []
    async with app.vault.store.engine.connect() as conn:  # type: ignore[attr-defined]
        for table in schema.metadata.sorted_tables:
            for row in (await conn.execute(select(table))).all():
                chunks.extend(bytes(v) if isinstance(v, bytes | memoryview) else str(v).encode() for v in row)
    return b"\0".join(chunks)


async def test_tokens_and_secrets_are_encrypted_at_rest(deployment: Deployment, abrowser: AsyncBrowser) -> None:
    d = deployment
    d.oauth.access_token_ttl = 30  # so a refresh stores a second pair of tokens too
    async with d.app() as app:
        alice = d.idp.issue("alice")
        await connect_as(app, abrowser, "github", "alice-gh", alice)
        await app.request("GET", d.upstream.echo_url("x"), provider="github", user_token=alice)
        await app.vault.add_secret("keyed", SECRET, owner=Principal("user", "alice"), account="acct-1")
        raw = await _raw_bytes(app, d)
    assert b"alice-gh" in raw  # the metadata is there in the clear; the credentials are not
    secrets = [SECRET, *(t.access_token for t in d.oauth.tokens_for("alice-gh")),
               *(t.refresh_token or "" for t in d.oauth.tokens_for("alice-gh"))]
    assert len(secrets) == 5
    for secret in secrets:
        assert secret.encode() not in raw
        assert secret[:12].encode() not in raw


async def test_a_wrong_vault_key_is_refused_without_touching_the_store(
    deployment: Deployment, abrowser: AsyncBrowser
) -> None:
    d = deployment
    async with d.app() as app:
        await app.vault.add_secret("keyed", SECRET, owner=APP, account="acct-1")
    async with App(settings=replace(d.settings, vault_key=generate_key())) as wrong:
        with pytest.raises(VaultKeyError, match="ALTER_VAULT_KEY"):
            await wrong.grants()
    short = base64.urlsafe_b64encode(b"k" * 16).decode()
    async with App(settings=replace(d.settings, vault_key=short)) as broken:
        with pytest.raises(VaultKeyError, match="32 bytes"):
            await broken.grants()
    async with d.app() as app:
        assert [g.account for g in await app.vault.list_grants(everyone=True)] == ["acct-1"]


async def test_without_a_key_a_0600_key_file_is_created_beside_the_store(tmp_path: Path) -> None:
    settings = Settings.from_env({"ALTER_VAULT_URL": f"sqlite+aiosqlite:///{tmp_path / 'vault.db'}"})
    assert settings.vault_key is None
    key_file = tmp_path / "vault.key"
    async with App(settings=settings) as app:
        await app.vault.add_secret("stripe", SECRET, owner=APP, account="acct-1")
    assert stat.S_IMODE(os.stat(key_file).st_mode) == 0o600
    first_key = key_file.read_text()
    async with App(settings=settings) as again:  # the same file opens the store again
        assert [g.account for g in await again.grants()] == ["acct-1"]
    assert key_file.read_text() == first_key


async def test_a_fresh_store_is_stamped_with_the_current_schema_version(deployment: Deployment) -> None:
    vault = LocalVault(deployment.settings)
    try:
        await vault.open()
        async with vault.store.engine.connect() as conn:
            versions = (await conn.execute(select(schema.schema_version.c.version))).scalars().all()
        assert versions == [schema.SCHEMA_VERSION]
        assert await vault.store.migrate() == schema.SCHEMA_VERSION  # idempotent
    finally:
        await vault.aclose()


async def test_a_store_from_a_newer_release_refuses_to_open(deployment: Deployment) -> None:
    async with deployment.app() as app:
        await app.vault.add_secret("stripe", SECRET, owner=APP, account="acct-1")
        async with app.vault.store.engine.begin() as conn:  # type: ignore[attr-defined]
            await conn.execute(update(schema.schema_version).values(version=schema.SCHEMA_VERSION + 1))
    async with deployment.app() as newer:
        with pytest.raises(ConfigurationError, match=f"schema version {schema.SCHEMA_VERSION + 1}.*Upgrade"):
            await newer.vault.list_grants(everyone=True)


async def test_an_older_store_is_upgraded_in_place_keeping_its_grants(
    deployment: Deployment, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with deployment.app() as app:
        grant = await app.vault.add_secret("stripe", SECRET, owner=APP, account="acct-1")
        async with app.vault.store.engine.begin() as conn:  # type: ignore[attr-defined]
            await conn.execute(update(schema.schema_version).values(version=schema.SCHEMA_VERSION - 1))
    ran: list[int] = []

    def upgrade(conn: object) -> None:
        ran.append(1)
        conn.execute(insert(schema.meta).values(key="upgraded", value=b"yes"))  # type: ignore[attr-defined]

    monkeypatch.setitem(store_module._MIGRATIONS, schema.SCHEMA_VERSION - 1, upgrade)
    async with deployment.app() as upgraded:
        assert [g.grant_id for g in await upgraded.vault.list_grants(everyone=True)] == [grant.grant_id]
        assert await upgraded.vault.store.get_meta("upgraded") == b"yes"  # type: ignore[attr-defined]
        async with upgraded.vault.store.engine.connect() as conn:  # type: ignore[attr-defined]
            assert await conn.scalar(text("SELECT version FROM alter_schema_version")) == schema.SCHEMA_VERSION
    async with deployment.app() as again:
        await again.vault.list_grants(everyone=True)
    assert ran == [1]


async def test_every_call_is_audited_without_secrets(deployment: Deployment, abrowser: AsyncBrowser) -> None:
    d = deployment
    d.upstream.add_secret(SECRET, "acct-1")
    async with d.app() as app:
        alice = d.idp.issue("alice")
        await connect_as(app, abrowser, "github", "alice-gh", alice)
        await app.vault.add_secret("keyed", SECRET, owner=Principal("user", "alice"), account="acct-1")
        await app.request("GET", d.upstream.echo_url("one?x=1"), provider="github", user_token=alice)
        await app.request("POST", d.upstream.echo_url("two"), provider="keyed", user_token=alice, json={"a": 1})
        await app.request("GET", f"{d.upstream.url}/status/404", provider="keyed", user_token=alice)
        entries = await app.vault.audit(50)
        raw = await _raw_bytes(app, d)
    calls = [e for e in reversed(entries) if e.action == "call"]
    assert [(e.method, e.host, e.path, e.status, e.principal, e.provider) for e in calls] == [
        ("GET", "127.0.0.1", "/echo/one", 200, "user:alice", "github"),
        ("POST", "127.0.0.1", "/echo/two", 200, "user:alice", "keyed"),
        ("GET", "127.0.0.1", "/status/404", 404, "user:alice", "keyed"),
    ]
    assert all(e.latency_ms is not None and e.latency_ms > 0 and e.grant_id for e in calls)
    assert {"connect", "secret_added"} <= {e.action for e in entries}
    (token,) = d.oauth.tokens_for("alice-gh")
    for secret in (SECRET, token.access_token, token.refresh_token or "-"):
        assert all(secret not in repr(e) for e in entries)
        assert secret.encode() not in raw


async def test_adding_a_secret_again_replaces_it_in_the_same_grant(deployment: Deployment) -> None:
    d = deployment
    d.upstream.add_secret("new-secret-value-123", "acct-1")
    async with d.local().app() as app:
        first = await app.vault.add_secret("keyed", SECRET, owner=APP, account="acct-1", label="main")
        second = await app.vault.add_secret("keyed", "new-secret-value-123", owner=APP, account="acct-1")
        assert second.grant_id == first.grant_id and second.label == "main"
        response = await app.request("GET", d.upstream.echo_url("x"), provider="keyed")
        assert response.json_body()["account"] == "acct-1"


async def test_a_revoked_grant_loses_its_credential(deployment: Deployment) -> None:
    d = deployment
    async with d.local().app() as app:
        grant = await app.vault.add_secret("keyed", SECRET, owner=APP, account="acct-1")
        revoked = await app.vault.revoke(grant.grant_id)
        assert revoked.grant_id == grant.grant_id
        assert await app.grants() == []
        stored = await app.vault.store.get_grant(grant.grant_id)  # type: ignore[attr-defined]
        assert stored.grant.status == "revoked"
        binding = grant_binding(grant.grant_id, grant.owner, grant.provider)
        assert app.vault._cipher().decrypt(stored.secret, binding) == b"{}"  # type: ignore[attr-defined]
