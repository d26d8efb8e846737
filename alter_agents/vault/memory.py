"""What the tools remember for a verified caller: pending connect flows and the account chosen per provider.

Keys always start with the caller's *verified* owner (`user:<sub>` or `app`, from the vault's
`principal`), so nothing here can be read or written for a user whose token was not checked. The
embedded vault keeps entries in the store, so every replica sharing a PostgreSQL store sees them; a
vault reached over HTTP keeps them in this process (`ProcessMemory`), keyed by the caller's token.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Literal, Protocol

from sqlalchemy import delete, insert, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.sql.elements import ColumnElement

from alter_agents.vault.schema import session_memory
from alter_agents.vault.store import Store

MemoryKind = Literal["connect", "account", "approval"]
_MAX_ENTRIES = 10_000


@dataclass(frozen=True, slots=True)
class MemoryKey:
    """Whose (verified owner), in which session scope, what (kind), for which provider (name)."""

    owner: str
    scope: str
    kind: MemoryKind
    name: str


class Memory(Protocol):
    async def recall(self, key: MemoryKey) -> str | None: ...

    async def remember(self, key: MemoryKey, value: str, ttl: float, *, keep_existing: bool = False) -> str:
        """Store `value` and return it; with `keep_existing`, an unexpired value already stored wins and
        is returned instead (two replicas starting the same flow at once settle on one)."""
        ...

    async def forget(self, key: MemoryKey) -> None: ...


class StoreMemory:
    """Entries in the vault store (`alter_session_memory`), expiring after their time to live."""

    def __init__(self, store: Store, ready: Callable[[], Awaitable[None]]) -> None:
        self._store = store
        self._ready = ready

    async def recall(self, key: MemoryKey) -> str | None:
        await self._ready()
        async with self._store.transaction() as conn:
            row = (await conn.execute(
                select(session_memory.c.value, session_memory.c.expires_at).where(*_where(key))
            )).first()
        if row is None or row.expires_at < time.time():
            return None
        return str(row.value)

    async def remember(self, key: MemoryKey, value: str, ttl: float, *, keep_existing: bool = False) -> str:
        await self._ready()
        for _attempt in range(3):
            now = time.time()
            stale = session_memory.c.expires_at < now
            try:
                async with self._store.transaction(write=True) as conn:
                    # Keeping, only an expired entry goes (with the owner's other expired ones): a concurrent
                    # writer's row then makes our insert fail on the primary key, and theirs is returned.
                    if not keep_existing:
                        await conn.execute(delete(session_memory).where(*_where(key)))
                    await conn.execute(delete(session_memory).where(session_memory.c.owner == key.owner, stale))
                    await conn.execute(insert(session_memory).values(
                        owner=key.owner, scope=key.scope, kind=key.kind, name=key.name, value=value,
                        expires_at=now + ttl,
                    ))
                return value
            except IntegrityError:
                if keep_existing and (current := await self.recall(key)) is not None:
                    return current  # another call (or replica) stored its value first: it wins
        return value

    async def forget(self, key: MemoryKey) -> None:
        await self._ready()
        async with self._store.transaction(write=True) as conn:
            await conn.execute(delete(session_memory).where(*_where(key)))


class ProcessMemory:
    """Entries in this process only: for a vault with no store of ours (a remote vault server)."""

    def __init__(self) -> None:
        self._entries: dict[MemoryKey, tuple[str, float]] = {}

    async def recall(self, key: MemoryKey) -> str | None:
        entry = self._entries.get(key)
        if entry is None or entry[1] < time.time():
            return None
        return entry[0]

    async def remember(self, key: MemoryKey, value: str, ttl: float, *, keep_existing: bool = False) -> str:
        if keep_existing and (current := await self.recall(key)) is not None:
            return current
        if len(self._entries) >= _MAX_ENTRIES:
            now = time.time()
            self._entries = {k: v for k, v in self._entries.items() if v[1] >= now}
            if len(self._entries) >= _MAX_ENTRIES:
                self._entries.clear()
        self._entries[key] = (value, time.time() + ttl)
        return value

    async def forget(self, key: MemoryKey) -> None:
        self._entries.pop(key, None)


def _where(key: MemoryKey) -> tuple[ColumnElement[bool], ...]:
    return (session_memory.c.owner == key.owner, session_memory.c.scope == key.scope,
            session_memory.c.kind == key.kind, session_memory.c.name == key.name)
