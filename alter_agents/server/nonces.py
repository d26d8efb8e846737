"""The nonce ledger: a request nonce is accepted once by every server process sharing the store.

Every nonce is inserted into the shared table before its request is answered, so a replay sent to any
replica within the skew window finds it there and is refused. What makes this cheap is group commit:
the nonces of requests arriving together go in one `INSERT … ON CONFLICT DO NOTHING RETURNING`
statement, and the rows it did not return are the replays. That statement goes over a connection of
the ledger's own, at driver level (`nonce_rows`); on SQLite a nonce reaching an idle ledger is written
at once when the write lock is free, with no queue at all. On PostgreSQL the statement runs alone
(autocommit: one round trip) with `synchronous_commit = off`: it is visible to every replica at once,
but a crash of the database server itself (not of a replica) can forget the nonces of its last ~0.6 s
(three `wal_writer_delay`s), which could then be replayed until their timestamps leave the skew
window. A small cache of nonces seen by this process refuses same-process replays without a round
trip; the table stays the authority.
"""

from __future__ import annotations

import asyncio
import time

from sqlalchemy import delete

from alter_agents.server.nonce_rows import nonce_rows
from alter_agents.server.signing import MAX_SKEW_SECONDS, SignatureRejected
from alter_agents.vault.schema import nonces
from alter_agents.vault.store import Store

_PRUNE_EVERY = 4096
_RECENT_MAX = 100_000
_BATCH_MAX = 500


def _replayed() -> SignatureRejected:
    return SignatureRejected("replayed_nonce", "This request was already received (nonce reused).")


class NonceLedger:
    """Nonces seen within the skew window, in the shared store: a replay is refused by every process."""

    def __init__(self, store: Store) -> None:
        self._store = store
        self._recent: set[str] = set()
        self._queued: dict[str, tuple[str, float, asyncio.Future[bool]]] = {}
        self._writer: asyncio.Task[None] | None = None
        self._since_prune = 0
        self._rows = nonce_rows(store)

    async def remember(self, key_id: str, nonce: str) -> None:
        """Return once `nonce` is in the shared ledger; raise `replayed_nonce` if it already was."""
        if nonce in self._recent or nonce in self._queued:
            raise _replayed()
        accepted: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        self._queued[nonce] = (key_id, time.time(), accepted)
        if self._writer is None or self._writer.done():
            self._writer = asyncio.create_task(self._write_queued())
        if not await accepted:  # a caller cancelled here leaves its row to the batch; the writer checks done()
            raise _replayed()

    def _remembered(self, written: list[str]) -> None:
        if len(self._recent) + len(written) > _RECENT_MAX:
            self._recent.clear()
        self._recent.update(written)
        self._since_prune += len(written)

    async def _write_queued(self) -> None:
        """Write what is queued, batch after batch: requests arriving during a write join the next one."""
        while self._queued:
            batch = dict(list(self._queued.items())[:_BATCH_MAX])
            for nonce in batch:
                del self._queued[nonce]
            try:
                fresh = await self._insert(batch)
            except Exception as exc:
                for _key, _at, accepted in batch.values():
                    if not accepted.done():
                        accepted.set_exception(exc)
                        accepted.exception()  # retrieved here too: a caller that went away must not warn
                continue
            except BaseException:
                for _key, _at, accepted in batch.values():
                    accepted.cancel()
                raise
            self._remembered(list(batch))
            for nonce, (_key, _at, accepted) in batch.items():
                if not accepted.done():
                    accepted.set_result(nonce in fresh)
            if self._since_prune >= _PRUNE_EVERY:
                self._since_prune = 0
                await self.prune()

    async def _insert(self, batch: dict[str, tuple[str, float, asyncio.Future[bool]]]) -> set[str]:
        return await self._rows.insert([(nonce, key, at) for nonce, (key, at, _f) in batch.items()])

    async def prune(self, now: float | None = None) -> None:
        """Forget nonces older than twice the skew window: their timestamps are refused anyway."""
        cutoff = (time.time() if now is None else now) - 2 * MAX_SKEW_SECONDS
        async with self._store.transaction(write=True) as conn:
            await conn.execute(delete(nonces).where(nonces.c.seen_at < cutoff))

    async def aclose(self) -> None:
        if self._writer is not None:
            await asyncio.gather(self._writer, return_exceptions=True)
        await self._rows.aclose()
