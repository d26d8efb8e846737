"""The batched audit writer on a real SQLite store: few write transactions under load, nothing lost."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import event

from alter_agents.errors import VaultUnavailableError
from alter_agents.vault.audit import FLUSH_DELAY, AuditWriter
from alter_agents.vault.schema import audit
from alter_agents.vault.store import Store


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[Store]:
    s = Store(f"sqlite+aiosqlite:///{tmp_path}/vault.db")
    await s.migrate()
    yield s
    await s.close()


def _count_audit_inserts(s: Store) -> list[int]:
    """Row counts of every audit INSERT the driver runs (one entry per write transaction)."""
    batches: list[int] = []

    @event.listens_for(s.engine.sync_engine, "before_cursor_execute")
    def _seen(_conn: Any, _cursor: Any, statement: str, parameters: Any, _ctx: Any, executemany: bool) -> None:
        if statement.startswith(f"INSERT INTO {audit.name} "):
            batches.append(len(parameters) if executemany else 1)

    return batches


async def test_a_steady_stream_of_calls_is_written_about_once_per_flush_delay(store: Store) -> None:
    batches = _count_audit_inserts(store)
    writer = AuditWriter(store)
    seconds = 3 * FLUSH_DELAY + 0.2
    started = time.monotonic()
    added = 0
    while time.monotonic() - started < seconds:
        writer.add("call", provider="github", status=200)
        added += 1
        await asyncio.sleep(0.002)
    # One write per FLUSH_DELAY while calls keep coming, not one per few milliseconds.
    assert 2 <= len(batches) <= 4, batches
    await writer.aclose()
    assert sum(batches) == added
    assert len(await store.audit_entries(limit=added + 10)) == added


async def test_rows_queued_during_a_write_go_out_with_the_next_flush(store: Store) -> None:
    batches = _count_audit_inserts(store)
    writer = AuditWriter(store)
    for _ in range(5):
        writer.add("call", provider="github")
    flushing = asyncio.create_task(writer.flush())
    await asyncio.sleep(0)  # the flush has taken its rows; these arrive while it writes
    for _ in range(3):
        writer.add("call", provider="slack")
    await flushing
    assert batches == [5]
    await writer.flush()
    assert batches == [5, 3]
    providers = [e.provider or "" for e in await store.audit_entries(limit=20)]
    assert sorted(providers) == ["github"] * 5 + ["slack"] * 3
    await writer.aclose()


async def test_rows_stay_queued_while_the_store_is_down_and_are_written_after(store: Store, tmp_path: Path) -> None:
    writer = AuditWriter(store)
    for i in range(4):
        writer.add("call", provider="github", status=200 + i)
    await store.close()
    (tmp_path / "vault.db").rename(tmp_path / "moved.db")
    (tmp_path / "vault.db").mkdir()  # the store's file is now a directory: every write fails
    with pytest.raises(VaultUnavailableError):
        await writer.flush()
    writer.add("call", provider="github", status=299)
    (tmp_path / "vault.db").rmdir()
    (tmp_path / "moved.db").rename(tmp_path / "vault.db")
    await writer.flush()
    statuses = sorted(e.status or 0 for e in await store.audit_entries(limit=20))
    assert statuses == [200, 201, 202, 203, 299]
    await writer.aclose()
