"""The call audit log, written in batches off the request path.

One INSERT transaction per call costs more than the call itself on a local API, so calls only queue
their row; a background task writes what is queued in one transaction shortly after (`FLUSH_DELAY`),
and `flush()` (run by `LocalVault.audit()` and on close) writes the rest at once. When the store is
unreachable the rows stay queued, up to `MAX_PENDING`, and go out with the next flush.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from typing import Any

from sqlalchemy.exc import SQLAlchemyError

from alter_agents.errors import VaultUnavailableError
from alter_agents.vault.store import Store

FLUSH_DELAY = 0.5
MAX_PENDING = 50_000
_BATCH_ROWS = 1000
_log = logging.getLogger("alter_agents.audit")


class AuditWriter:
    """Queues audit rows and writes them to the store in batches."""

    def __init__(self, store: Store) -> None:
        self._store = store
        self._pending: list[dict[str, Any]] = []
        self._task: asyncio.Task[None] | None = None
        self._lock = asyncio.Lock()
        self._dropped = 0

    def add(self, action: str, **fields: Any) -> None:
        """Queue one row; it is written within about `FLUSH_DELAY` seconds."""
        self.add_row({"at": time.time(), "action": action, **fields})

    def add_row(self, row: dict[str, Any]) -> None:
        """Queue one row already holding `at` and `action` (the request path builds it once)."""
        if len(self._pending) >= MAX_PENDING:
            self._pending.pop(0)
            self._dropped += 1
        self._pending.append(row)
        loop = asyncio.get_running_loop()
        if self._task is None or self._task.done() or self._task.get_loop() is not loop:
            self._task = loop.create_task(self._flush_soon())

    async def _flush_soon(self) -> None:
        """Write the queue every `FLUSH_DELAY` seconds while rows keep coming (or the store stays down)."""
        while self._pending:
            await asyncio.sleep(FLUSH_DELAY)
            try:
                await self.flush()
            except (VaultUnavailableError, SQLAlchemyError, OSError) as exc:
                _log.warning("audit rows stay queued (%d): the store is unavailable: %s", len(self._pending), exc)

    async def flush(self) -> None:
        """Write every row queued so far; on a store error the unwritten rows are queued again and it raises.

        Rows queued while a write is in flight wait for the next flush: writing them as they arrive would
        turn a busy server's batches into one small transaction every few milliseconds.
        """
        async with self._lock:
            if self._dropped:
                _log.warning("dropped %d audit rows while the store was unavailable", self._dropped)
                self._dropped = 0
            rows, self._pending = self._pending, []
            written = 0
            try:
                while written < len(rows):
                    batch = rows[written : written + _BATCH_ROWS]
                    await self._store.record_many(batch)
                    written += len(batch)
            finally:
                if written < len(rows):
                    self._requeue(rows[written:])

    def _requeue(self, rows: list[dict[str, Any]]) -> None:
        """Put unwritten rows back ahead of newer ones, keeping at most `MAX_PENDING` (the newest)."""
        self._pending[:0] = rows
        excess = len(self._pending) - MAX_PENDING
        if excess > 0:
            del self._pending[:excess]
            self._dropped += excess

    async def aclose(self) -> None:
        """Write what is queued; a store that is down loses only the queued rows, with a warning."""
        task, self._task = self._task, None
        if task is not None and not task.done() and task.get_loop() is asyncio.get_running_loop():
            if not self._lock.locked():
                task.cancel()  # still waiting to flush; a flush in progress is awaited instead
            with contextlib.suppress(asyncio.CancelledError):
                await task
        try:
            await self.flush()
        except (VaultUnavailableError, SQLAlchemyError, OSError) as exc:
            _log.warning("could not write %d audit rows on close: %s", len(self._pending), exc)
