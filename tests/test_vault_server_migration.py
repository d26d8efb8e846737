"""A store written by schema version 1 is upgraded in place to version 2 without losing a grant."""

from __future__ import annotations

import json
import time
import uuid
from pathlib import Path

from sqlalchemy import MetaData, insert, inspect, select
from sqlalchemy.ext.asyncio import create_async_engine

from alter_agents import App
from alter_agents.server.keys import ApiKeys
from alter_agents.vault import schema
from alter_agents.vault.crypto import Cipher, load_or_create_key
from alter_agents.vault.local import LocalVault
from tests.conftest import Deployment, make_deployment
from tests.fixtures import IdentityProvider, OAuthServer, UpstreamAPI

V1_TABLES = ("alter_schema_version", "alter_meta", "alter_grants", "alter_connect_sessions", "alter_audit")


async def _write_v1_store(d: Deployment, secret: str) -> str:
    """What alter-agents with schema version 1 left on disk: its five tables and one stored API key."""
    v1 = MetaData()
    for name in V1_TABLES:
        schema.metadata.tables[name].to_metadata(v1)
    cipher = Cipher(load_or_create_key(d.settings.vault_key_value(), d.settings.resolved_key_file()))
    grant_id, now = str(uuid.uuid4()), time.time()
    engine = create_async_engine(d.settings.vault_url)
    try:
        async with engine.begin() as conn:
            await conn.run_sync(v1.create_all)
            await conn.execute(insert(v1.tables["alter_schema_version"]).values(version=1))
            await conn.execute(insert(v1.tables["alter_meta"]).values(
                key="key_check", value=cipher.encrypt(b"alter-agents key check", "key_check")))
            await conn.execute(insert(v1.tables["alter_grants"]).values(
                grant_id=grant_id, provider="keyed", owner="app", kind="secret", account="ops@acme.com",
                scopes="[]", status="active", created_at=now, updated_at=now,
                secret=cipher.encrypt(json.dumps({"access_token": secret, "refresh_token": None}).encode(),
                                      grant_id),
            ))
    finally:
        await engine.dispose()
    return grant_id


async def test_an_old_store_upgrades_to_version_2_and_keeps_its_grants(
    tmp_path: Path, store_url: str, idp: IdentityProvider, oauth: OAuthServer, upstream: UpstreamAPI,
    oauth_client: tuple[str, str],
) -> None:
    d = make_deployment(tmp_path, store_url, idp, oauth, upstream, oauth_client).local()
    upstream.add_secret("sk-old-but-gold", "ops@acme.com")
    grant_id = await _write_v1_store(d, "sk-old-but-gold")

    async with App(settings=d.settings) as app:
        response = await app.request("GET", f"{upstream.url}/echo/still-here", grant_id=grant_id)
        assert response.json_body()["account"] == "ops@acme.com"
        assert isinstance(app.vault, LocalVault)
        store = app.vault.store
        assert await store.migrate() == schema.SCHEMA_VERSION >= 3
        async with store.transaction() as conn:
            version = await conn.scalar(select(schema.schema_version.c.version))
            tables = set(await conn.run_sync(lambda sync: inspect(sync).get_table_names()))
        assert version == schema.SCHEMA_VERSION
        assert {t.name for t in (*schema.V2_TABLES, *schema.V3_TABLES)} <= tables
        _key, info = await ApiKeys(store).create("after upgrade")
        assert [k.key_id for k in await ApiKeys(store).list()] == [info.key_id]
