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
        if len(self._pending) >= MAX_PENDING:
            self._pending.pop(0)
            self._dropped += 1
        self._pending.append({"at": time.time(), "action": action, **fields})
        loop = asyncio.get_running_loop()
        if self._task is None or self._task.done() or self._task.get_loop() is not loop:
            self._task = loop.create_task(self._flush_soon())

    async def _flush_soon(self) -> None:
        await asyncio.sleep(FLUSH_DELAY)
        try:
            await self.flush()
        except (VaultUnavailableError, SQLAlchemyError, OSError) as exc:
            _log.warning("audit rows stay queued (%d): the store is unavailable: %s", len(self._pending), exc)

    async def flush(self) -> None:
        """Write every queued row now; on a store error the rows stay queued and the error is raised."""
        async with self._lock:
            if self._dropped:
                _log.warning("dropped %d audit rows while the store was unavailable", self._dropped)
                self._dropped = 0
            while self._pending:
                batch = self._pending[:1000]
                await self._store.record_many(batch)
                del self._pending[: len(batch)]

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
