"""RemoteVault's audit posts, batched: one signed request per batch instead of one per call.

`App.request` returns before its audit row reaches the server, as with the embedded vault's audit
writer. Rows are posted within `FLUSH_DELAY` in batches of up to `BATCH_ROWS` to our server's
`/sdk/alter/audit/batch`, which writes them to its store before it answers; on `aclose` the rest are
posted. A server that cannot be reached keeps the rows queued (up to `MAX_PENDING`, the oldest are
dropped with a warning) for the next flush. So a client killed without closing loses at most the rows
of its last `FLUSH_DELAY`, and never the server's own record of each credential it released, which the
server writes itself when it answers `/sdk/token`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from alter_agents.errors import AlterError

FLUSH_DELAY = 0.05
BATCH_ROWS = 500
MAX_PENDING = 50_000
_log = logging.getLogger("alter_agents.audit")

Post = Callable[[list[dict[str, Any]]], Awaitable[None]]


class AuditPoster:
    """Queues audit rows and posts them in batches with `post`."""

    def __init__(self, post: Post) -> None:
        self._post = post
        self._pending: list[dict[str, Any]] = []
        self._task: asyncio.Task[None] | None = None
        self._lock = asyncio.Lock()
        self._dropped = 0
        self._closing = False

    def add(self, row: dict[str, Any]) -> None:
        if len(self._pending) >= MAX_PENDING:
            self._pending.pop(0)
            self._dropped += 1
        self._pending.append(row)
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(self._flush_soon())

    async def _flush_soon(self) -> None:
        while self._pending and not self._closing:
            await asyncio.sleep(FLUSH_DELAY)
            try:
                await self.flush()
            except AlterError as exc:
                _log.warning("audit rows stay queued (%d): the vault server is unavailable: %s",
                             len(self._pending), exc.message)
                await asyncio.sleep(1.0)

    async def flush(self) -> None:
        """Post every queued row; on failure the unposted rows are queued again and it raises."""
        async with self._lock:
            if self._dropped:
                _log.warning("dropped %d audit rows while the vault server was unavailable", self._dropped)
                self._dropped = 0
            rows, self._pending = self._pending, []
            posted = 0
            try:
                while posted < len(rows):
                    batch = rows[posted:posted + BATCH_ROWS]
                    await self._post(batch)
                    posted += len(batch)
            finally:
                if posted < len(rows):
                    self._pending[:0] = rows[posted:]
                    del self._pending[:max(0, len(self._pending) - MAX_PENDING)]

    async def aclose(self) -> None:
        """Post what is queued; a server that is down loses only the queued rows, with a warning."""
        self._closing = True
        task, self._task = self._task, None
        if task is not None and not task.done():
            if not self._lock.locked():
                task.cancel()  # waiting to flush; a post in flight is awaited, or it could be posted twice
            with contextlib.suppress(asyncio.CancelledError):
                await task
        try:
            await self.flush()
        except AlterError as exc:
            _log.warning("could not post %d audit rows on close: %s", len(self._pending), exc.message)
