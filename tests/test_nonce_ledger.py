"""The nonce ledger accepts each nonce once across every process sharing the store, whatever its driver does.

Each ledger here stands for one server replica: two ledgers on one store are two replicas.
"""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import AsyncIterator

import pytest
from sqlalchemy import text

from alter_agents.errors import VaultUnavailableError
from alter_agents.server.nonce_rows import PostgresRows, SqliteRows, StoreRows, nonce_rows
from alter_agents.server.nonces import NonceLedger
from alter_agents.server.signing import SignatureRejected
from alter_agents.vault.store import Store
from tests.conftest import fresh_postgres


@pytest.fixture
async def store(store_url: str) -> AsyncIterator[Store]:
    store = Store(store_url)
    await store.migrate()
    yield store
    await store.close()


@pytest.fixture
async def pg_store() -> AsyncIterator[Store]:
    store = Store(await fresh_postgres())
    await store.migrate()
    yield store
    await store.close()


async def _accepted(ledger: NonceLedger, nonce: str) -> bool:
    try:
        await ledger.remember("key", nonce)
    except SignatureRejected as exc:
        assert exc.code == "replayed_nonce"
        return False
    return True


async def test_a_nonce_is_accepted_once_across_two_replicas_even_when_both_see_it_at_once(store: Store) -> None:
    a, b = NonceLedger(store), NonceLedger(store)
    try:
        assert await _accepted(a, "first-nonce-0001")
        assert not await _accepted(b, "first-nonce-0001")
        assert not await _accepted(a, "first-nonce-0001")
        nonces = [secrets.token_hex(16) for _ in range(200)]
        # Every nonce sent to both replicas (and twice to one) at once: batches race, one acceptance each.
        outcomes = await asyncio.gather(*(_accepted(ledger, n) for n in nonces for ledger in (a, b, a)))
        assert [sum(outcomes[i * 3:i * 3 + 3]) for i in range(len(nonces))] == [1] * len(nonces)
    finally:
        await a.aclose()
        await b.aclose()


async def test_each_store_gets_the_driver_level_writer(store: Store) -> None:
    rows = nonce_rows(store)
    try:
        assert isinstance(rows, PostgresRows if store.dialect == "postgresql" else SqliteRows)
    finally:
        await rows.aclose()


async def test_an_in_memory_store_keeps_its_nonces_on_its_own_connection() -> None:
    store = Store("sqlite+aiosqlite://")
    await store.migrate()
    ledger, second = NonceLedger(store), NonceLedger(store)
    try:
        assert isinstance(nonce_rows(store), StoreRows)
        assert await _accepted(ledger, "memory-nonce-0001")
        assert not await _accepted(second, "memory-nonce-0001")
    finally:
        await ledger.aclose()
        await second.aclose()
        await store.close()


async def test_a_connection_the_database_dropped_is_replaced_without_failing_a_request(pg_store: Store) -> None:
    store = pg_store
    ledger = NonceLedger(store)
    try:
        assert await _accepted(ledger, secrets.token_hex(16))
        async with store.transaction(write=True) as conn:  # as an administrator or a failover would
            killed = await conn.scalar(text(
                "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                "WHERE datname = current_database() AND pid <> pg_backend_pid()"))
        assert killed >= 1
        assert await _accepted(ledger, secrets.token_hex(16))
    finally:
        await ledger.aclose()


async def test_a_database_that_stays_down_is_a_retryable_error(pg_store: Store) -> None:
    from sqlalchemy.engine import make_url

    unreachable = make_url(pg_store.url).set(host="127.0.0.1", port=9).render_as_string(hide_password=False)
    ledger = NonceLedger(Store(unreachable))
    try:
        with pytest.raises(VaultUnavailableError):
            await ledger.remember("key", secrets.token_hex(16))
    finally:
        await ledger.aclose()


async def test_on_sqlite_a_write_lock_held_by_another_process_makes_the_batch_wait_not_fail(sqlite_url: str) -> None:
    import sqlite3

    from sqlalchemy.engine import make_url

    store = Store(sqlite_url)
    await store.migrate()
    ledger, second = NonceLedger(store), NonceLedger(store)
    other = sqlite3.connect(str(make_url(sqlite_url).database), isolation_level=None)
    try:
        assert await _accepted(ledger, "before-the-lock-0001")
        other.execute("BEGIN IMMEDIATE")  # as another process writing would
        waiting = asyncio.ensure_future(_accepted(ledger, "during-the-lock-01"))
        await asyncio.sleep(0.3)
        assert not waiting.done()  # neither refused nor failed: waiting for the lock
        other.execute("COMMIT")
        assert await asyncio.wait_for(waiting, 10)
        assert not await _accepted(second, "during-the-lock-01")
    finally:
        other.close()
        await ledger.aclose()
        await second.aclose()
        await store.close()
