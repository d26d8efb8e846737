"""A short-lived cache of grant lookups for the request path.

A lookup is reused for at most `ttl` seconds, and never after this process has written any grant to
the same store (connect, revoke, refresh, status change: see `Store.grant_writes`). So a grant revoked
in this process stops working at once, and one revoked by another process (the CLI, another replica)
within `ttl`.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Hashable
from typing import Generic, TypeVar

from alter_agents.vault.store import Store

GRANT_CACHE_SECONDS = 0.5
_MAX_ENTRIES = 10_000
T = TypeVar("T")


class GrantCache(Generic[T]):
    """Memoizes store reads keyed by their arguments, invalidated by time and by local grant writes."""

    def __init__(self, store: Store, ttl: float | None = None) -> None:
        self._store = store
        self._ttl = GRANT_CACHE_SECONDS if ttl is None else ttl
        self._entries: dict[Hashable, tuple[float, int, T]] = {}
        self._loading: dict[tuple[Hashable, int], asyncio.Future[T]] = {}

    async def get(self, key: Hashable, load: Callable[[], Awaitable[T]]) -> T:
        writes = self._store.grant_writes
        now = time.monotonic()
        entry = self._entries.get(key)
        if entry is not None and entry[0] > now and entry[1] == writes:
            return entry[2]
        pending = self._loading.get((key, writes))
        if pending is not None:  # concurrent misses share one store read
            try:
                return await asyncio.shield(pending)
            except asyncio.CancelledError:
                if not pending.cancelled():
                    raise  # this caller was cancelled
                return await load()  # the caller doing the read was cancelled; read for ourselves
        future: asyncio.Future[T] = asyncio.get_running_loop().create_future()
        self._loading[(key, writes)] = future
        try:
            value = await load()
        except Exception as exc:
            future.set_exception(exc)
            future.exception()  # retrieved here, so a miss nobody shared does not warn
            raise
        except BaseException:
            future.cancel()
            raise
        else:
            future.set_result(value)
        finally:
            del self._loading[(key, writes)]
        if len(self._entries) >= _MAX_ENTRIES:
            self._entries = {k: e for k, e in self._entries.items() if e[0] > now and e[1] == writes}
            if len(self._entries) >= _MAX_ENTRIES:
                self._entries.clear()
        self._entries[key] = (now + self._ttl, writes, value)
        return value
