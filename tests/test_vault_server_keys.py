"""API keys in the official format: the official client accepts ours, a typo is caught offline, and the
vault keeps only a hash."""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import sqlite3
import subprocess
from pathlib import Path

import alter_sdk
import pytest
from hypothesis import given
from hypothesis import strategies as st

from alter_agents.server.keys import ALPHABET, KEY_KINDS, generate_key, is_well_formed
from tests.conftest import Deployment
from tests.fixtures.vault_server import VaultServerProcess, _command


@given(st.sampled_from(KEY_KINDS), st.integers(min_value=6, max_value=27), st.sampled_from(ALPHABET))
def test_every_minted_key_passes_the_official_check_and_a_one_character_typo_fails_both(
    kind: str, position: int, replacement: str
) -> None:
    key = generate_key(kind)  # type: ignore[arg-type]
    assert is_well_formed(key) and alter_sdk.is_valid_key(key)
    typo = key[:position] + replacement + key[position + 1:]
    if typo != key:
        assert not is_well_formed(typo) and not alter_sdk.is_valid_key(typo)


async def test_a_created_key_is_stored_only_as_its_hash_and_the_hash_alone_lets_it_in(
    sqlite_deployment: Deployment, monkeypatch: pytest.MonkeyPatch
) -> None:
    d = sqlite_deployment
    env = {k: v for k, v in os.environ.items() if not k.startswith("ALTER_")} | d.env
    created = subprocess.run([*_command(), "keys", "create", "--name", "ci", "--json"], env=env,
                             capture_output=True, text=True, timeout=60)
    assert created.returncode == 0, created.stderr
    key = json.loads(created.stdout)["api_key"]
    secret_part = key.split("_")[2]

    database = Path(d.settings.vault_url.split("///", 1)[1])
    on_disk = b"".join(p.read_bytes() for p in database.parent.glob(database.name + "*"))  # with -wal/-journal
    assert secret_part.encode() not in on_disk
    with sqlite3.connect(database) as db:
        db.row_factory = sqlite3.Row
        (row,) = [dict(r) for r in db.execute("SELECT * FROM alter_api_keys")]
    assert row["key_hash"] == hashlib.sha256(key.encode()).hexdigest()
    assert not any(secret_part in str(value) for value in row.values())
    assert row["hint"] == f"alter_rk_{secret_part[:4]}..."

    listed = subprocess.run([*_command(), "keys", "list", "--json"], env=env, capture_output=True, text=True,
                            timeout=60)
    assert secret_part not in listed.stdout and json.loads(listed.stdout)[0]["name"] == "ci"

    with VaultServerProcess(d.env) as server:
        monkeypatch.setenv("ALTER_BASE_URL", server.url)
        client = alter_sdk.App(api_key=key)
        try:
            assert await client.list_grants() is not None  # the server found the key by its hash
        finally:
            await client.close()


async def test_requests_that_find_a_key_expired_together_share_one_store_read(tmp_path: Path) -> None:
    from sqlalchemy import event

    from alter_agents.server.keys import ApiKeys, KeyRejected
    from alter_agents.vault.store import Store

    store = Store(f"sqlite+aiosqlite:///{tmp_path / 'vault.db'}")
    await store.migrate()
    reads: list[str] = []
    event.listen(store.engine.sync_engine, "before_cursor_execute",
                 lambda _c, _cur, statement, *_a: reads.append(statement) if "FROM alter_api_keys" in statement
                 else None)
    try:
        keys = ApiKeys(store)
        key, info = await keys.create("burst")
        answers = await asyncio.gather(*(keys.authenticate(key) for _ in range(20)))
        assert {a.key_id for a in answers} == {info.key_id}
        assert len(reads) == 1
        unknown = generate_key()
        refused = await asyncio.gather(*(keys.authenticate(unknown) for _ in range(5)), return_exceptions=True)
        assert all(isinstance(r, KeyRejected) and r.code == "invalid_key" for r in refused)
        assert len(reads) == 2
        await keys.revoke(info.key_id)  # through this process: refused at once, cache or not
        with pytest.raises(KeyRejected) as revoked:
            await keys.authenticate(key)
        assert revoked.value.code == "key_revoked"
    finally:
        await store.close()
