"""Writing the nonce ledger's rows at driver level, on a connection of the ledger's own.

A nonce batch is one statement on the hot path of every signed request, and SQLAlchemy's Core and pool
machinery cost more than the statement itself (measured: ~300 µs of CPU per batch on PostgreSQL and
~800 µs through aiosqlite, against ~65 µs and ~60 µs here). So each store gets long-lived
connections of the ledger's own: asyncpg's, reached through SQLAlchemy so the store URL means what it
means everywhere else, or a `sqlite3` one used in a worker thread (see `SqliteRows`). Both insert a batch
in one statement and return the nonces that were new; the rest were already in the table (replays).
"""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Protocol

from sqlalchemy.dialects import sqlite
from sqlalchemy.engine import make_url
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncConnection, create_async_engine

from alter_agents.errors import VaultUnavailableError
from alter_agents.vault.schema import nonces
from alter_agents.vault.store import SQLITE_BUSY_TIMEOUT_MS, Store, unavailable_error

Row = tuple[str, str, float]  # nonce, key id, seen at
_PG_INSERT = (
    "INSERT INTO alter_nonces (nonce, key_id, seen_at) "
    "SELECT * FROM unnest($1::text[], $2::text[], $3::float8[]) "
    "ON CONFLICT (nonce) DO NOTHING RETURNING nonce"
)
_SQLITE_ROWS_PER_STATEMENT = 300  # 3 parameters a row, under SQLite's 999-parameter floor


class NonceRows(Protocol):
    async def insert(self, rows: Sequence[Row]) -> set[str]: ...

    async def aclose(self) -> None: ...


def nonce_rows(store: Store) -> NonceRows:
    if store.dialect == "postgresql":
        return PostgresRows(store.url)
    database = make_url(store.url).database
    if not database or database == ":memory:" or database.startswith("file:"):
        return StoreRows(store)  # a private database only the store's own connection can reach
    return SqliteRows(store, database)


def _unavailable(exc: BaseException) -> VaultUnavailableError:
    return VaultUnavailableError(
        f"The vault's database is unavailable right now ({type(exc).__name__}); try again shortly.")


class PostgresRows:
    """Autocommit inserts with `synchronous_commit = off`: visible to every replica at once, no fsync wait."""

    def __init__(self, url: str) -> None:
        self._engine = create_async_engine(
            url, pool_size=1, max_overflow=0, isolation_level="AUTOCOMMIT",
            connect_args={"server_settings": {"synchronous_commit": "off"}},
        )
        self._conn: AsyncConnection | None = None
        self._driver: Any = None  # asyncpg.Connection

    async def insert(self, rows: Sequence[Row]) -> set[str]:
        columns = [list(column) for column in zip(*rows, strict=True)]
        for attempt in (1, 2):  # a connection the database dropped fails once, then is replaced
            driver = await self._connect()
            try:
                return {record[0] for record in await driver.fetch(_PG_INSERT, *columns)}
            except BaseException as exc:
                await self._discard()  # a failed or cancelled statement leaves the connection in doubt
                if not _connection_lost(exc):
                    raise
                if attempt == 2:
                    raise _unavailable(exc) from exc
        raise AssertionError("unreachable")

    async def _connect(self) -> Any:
        if self._conn is None:
            try:
                conn = await self._engine.connect()
            except (DBAPIError, OSError) as exc:
                raise (unavailable_error(exc) or exc) from exc
            self._driver = (await conn.get_raw_connection()).driver_connection
            self._conn = conn
        return self._driver

    async def _discard(self) -> None:
        conn, self._conn, self._driver = self._conn, None, None
        if conn is not None:
            await conn.invalidate()
            await conn.close()

    async def aclose(self) -> None:
        await self._discard()
        await self._engine.dispose()


def _connection_lost(exc: BaseException) -> bool:
    import asyncpg

    state = str(getattr(exc, "sqlstate", "") or "")
    # InternalClientError: the protocol was left mid-operation (seen when the server ended the session)
    in_doubt = (OSError, asyncpg.InterfaceError, asyncpg.InternalClientError)
    return isinstance(exc, in_doubt) or state.startswith(("08", "57P"))


class SqliteRows:
    """A `sqlite3` connection of the ledger's own, used in a worker thread (no SQLite I/O on the event loop);
    batches take this process's writer turn, and each is one autocommit transaction."""

    def __init__(self, store: Store, path: str) -> None:
        self._store = store
        self._path = path
        self._thread = ThreadPoolExecutor(1, thread_name_prefix="alter-nonces")
        self._waiting: sqlite3.Connection | None = None

    async def insert(self, rows: Sequence[Row]) -> set[str]:
        async with self._store.writer_turn():
            try:
                return await asyncio.get_running_loop().run_in_executor(self._thread, self._insert_waiting, rows)
            except sqlite3.OperationalError as exc:  # locked past the busy timeout, disk gone, ...
                raise _unavailable(exc) from exc

    def _connect(self, *, busy_timeout_ms: int) -> sqlite3.Connection:
        db = sqlite3.connect(self._path, isolation_level=None, check_same_thread=False)
        db.execute(f"PRAGMA busy_timeout = {busy_timeout_ms}")
        db.execute("PRAGMA synchronous = NORMAL")
        return db

    def _insert_waiting(self, rows: Sequence[Row]) -> set[str]:
        if self._waiting is None:
            self._waiting = self._connect(busy_timeout_ms=SQLITE_BUSY_TIMEOUT_MS)
        return _insert(self._waiting, rows)

    async def aclose(self) -> None:
        await asyncio.get_running_loop().run_in_executor(self._thread, self._close_waiting)
        self._thread.shutdown()

    def _close_waiting(self) -> None:
        if self._waiting is not None:
            self._waiting.close()
            self._waiting = None


def _sqlite_insert(count: int) -> str:
    values = ",".join(["(?, ?, ?)"] * count)  # placeholders only: the rows are parameters
    return (f"INSERT INTO alter_nonces (nonce, key_id, seen_at) VALUES {values} "  # noqa: S608
            "ON CONFLICT (nonce) DO NOTHING RETURNING nonce")


def _flat(rows: Sequence[Row]) -> list[str | float]:
    return [value for row in rows for value in row]


def _insert(db: sqlite3.Connection, rows: Sequence[Row]) -> set[str]:
    """One transaction taking the write lock first (so it never fails halfway for a lock); the new nonces."""
    fresh: set[str] = set()
    db.execute("BEGIN IMMEDIATE")
    try:
        for start in range(0, len(rows), _SQLITE_ROWS_PER_STATEMENT):
            chunk = rows[start:start + _SQLITE_ROWS_PER_STATEMENT]
            fresh.update(r[0] for r in db.execute(_sqlite_insert(len(chunk)), _flat(chunk)).fetchall())
        db.execute("COMMIT")
    except BaseException:
        db.execute("ROLLBACK")
        raise
    return fresh


class StoreRows:
    """Through the store's own connections: for an in-memory SQLite store, which no other connection sees."""

    def __init__(self, store: Store) -> None:
        self._store = store

    async def insert(self, rows: Sequence[Row]) -> set[str]:
        values = [{"nonce": n, "key_id": key, "seen_at": at} for n, key, at in rows]
        async with self._store.transaction(write=True) as conn:
            result = await conn.execute(sqlite.insert(nonces).values(values)
                                        .on_conflict_do_nothing(index_elements=["nonce"]).returning(nonces.c.nonce))
            return set(result.scalars())

    async def aclose(self) -> None:
        return None
