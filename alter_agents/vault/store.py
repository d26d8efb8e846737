"""The vault store: SQLAlchemy 2 async over a SQLite file (default) or PostgreSQL.

SQLite runs in WAL mode with a busy timeout, and write transactions start with `BEGIN IMMEDIATE`
so two processes writing one file wait for each other instead of failing with "database is locked".
"""

from __future__ import annotations

import asyncio
import json
import os
import time
import uuid
import weakref
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import AbstractAsyncContextManager, asynccontextmanager, suppress
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sqlalchemy import Connection, Table, delete, event, func, insert, inspect, select, text, update
from sqlalchemy.engine import make_url
from sqlalchemy.exc import DBAPIError, IntegrityError, InterfaceError, OperationalError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine

from alter_agents.errors import ConfigurationError, VaultUnavailableError
from alter_agents.models import ConnectResult, Grant
from alter_agents.vault import audit_ledger, schema
from alter_agents.vault.audit_chain import GENESIS, ChainReport
from alter_agents.vault.crypto import make_private_dir
from alter_agents.vault.schema import audit, connect_sessions, grants, meta

SQLITE_BUSY_TIMEOUT_MS = 30_000

# Grant writes made by this process, per store URL, so read caches of any Store on that URL can tell.
_GRANT_WRITES: dict[str, int] = {}


def _v1_to_v2(conn: Connection) -> None:
    """Add the vault server's tables: API keys, request nonces, hosted connect sessions."""
    schema.metadata.create_all(conn, tables=list(schema.V2_TABLES))


def _v2_to_v3(conn: Connection) -> None:
    """Add the tools' per-user memory (pending connects, chosen accounts), shared by every replica."""
    schema.metadata.create_all(conn, tables=list(schema.V3_TABLES))  # checkfirst: safe in any order


def _v3_to_v4(conn: Connection) -> None:
    """Typed connect errors, and a flag asking the next open (which has the key) to re-seal the grants."""
    _add_columns(conn, connect_sessions, {"error_code": "VARCHAR(64)", "browser": "VARCHAR(64)"})
    conn.execute(insert(meta).values(key=schema.GRANT_RESEAL_PENDING, value=b"1"))


def _v4_to_v5(conn: Connection) -> None:
    """Audit correlation and tamper evidence: new columns; rows written before stay outside the chain."""
    _add_columns(conn, audit, {name: "BIGINT" if name == "seq" else "VARCHAR(128)" for name in schema.AUDIT_V5_COLUMNS})
    _start_audit_chain(conn)


def _add_columns(conn: Connection, table: Table, columns: dict[str, str]) -> None:
    """Add the columns a table lacks (name: SQL type), then its indexes: a migration may be re-run safely."""
    present = {c["name"] for c in inspect(conn).get_columns(table.name)}
    for name, kind in columns.items():
        if name not in present:
            conn.execute(text(f"ALTER TABLE {table.name} ADD COLUMN {name} {kind}"))
    for index in table.indexes:
        index.create(conn, checkfirst=True)


def _start_audit_chain(conn: Connection) -> None:
    """The chain's head row exists from the start, so every writer has a row to lock; older rows are legacy."""
    legacy = int(conn.scalar(select(func.max(audit.c.id))) or 0)
    conn.execute(insert(meta).values(key=audit_ledger.LEGACY_KEY, value=str(legacy).encode()))
    conn.execute(insert(meta).values(key=audit_ledger.HEAD_KEY, value=f"0:{GENESIS}".encode()))


# Upgrades from version N to N+1, applied in order to stores written by older releases.
_MIGRATIONS: dict[int, Callable[[Connection], None]] = {1: _v1_to_v2, 2: _v2_to_v3, 3: _v3_to_v4, 4: _v4_to_v5}


def _ts(value: float | None) -> datetime | None:
    return None if value is None else datetime.fromtimestamp(value, UTC)


@dataclass(frozen=True, slots=True)
class StoredGrant:
    grant: Grant
    secret: bytes


@dataclass(frozen=True, slots=True)
class ConnectSessionRow:
    session_id: str
    provider: str
    owner: str
    label: str | None
    scopes: list[str]
    redirect_uri: str
    verifier: bytes
    status: str
    result: ConnectResult | None
    error: str | None
    created_at: float
    expires_at: float
    error_code: str | None = None
    browser: str | None = None


@dataclass(frozen=True, slots=True)
class AuditEntry:
    at: datetime
    action: str
    principal: str | None
    grant_id: str | None
    provider: str | None
    method: str | None
    host: str | None
    path: str | None
    status: int | None
    latency_ms: float | None
    detail: str | None
    outcome: str | None = None
    surface: str | None = None
    tool: str | None = None
    session_id: str | None = None
    request_id: str | None = None
    run_id: str | None = None
    thread_id: str | None = None
    trace_id: str | None = None
    seq: int | None = None


_AUDIT_ENTRY_FIELDS = ("action", "principal", "grant_id", "provider", "method", "host", "path", "status",
                       "latency_ms", "detail", "outcome", "surface", "tool", "session_id", "request_id", "run_id",
                       "thread_id", "trace_id", "seq")


def _grant(row: Any) -> StoredGrant:
    m = row._mapping
    grant = Grant(
        grant_id=m["grant_id"],
        provider=m["provider"],
        owner=m["owner"],
        kind=m["kind"],
        account=m["account"],
        label=m["label"],
        display_name=m["display_name"],
        scopes=json.loads(m["scopes"] or "[]"),
        status=m["status"],
        created_at=_ts(m["created_at"]),
        updated_at=_ts(m["updated_at"]),
        expires_at=_ts(m["expires_at"]),
    )
    return StoredGrant(grant=grant, secret=m["secret"])


def _sqlite_setup(engine: AsyncEngine) -> None:
    @event.listens_for(engine.sync_engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        cursor.execute(f"PRAGMA busy_timeout = {SQLITE_BUSY_TIMEOUT_MS}")
        cursor.execute("PRAGMA journal_mode = WAL")
        cursor.execute("PRAGMA synchronous = NORMAL")
        cursor.close()

    @event.listens_for(engine.sync_engine, "begin")
    def _on_begin(conn: Connection) -> None:
        write = conn.get_execution_options().get("alter_write", False)
        conn.exec_driver_sql("BEGIN IMMEDIATE" if write else "BEGIN")


class Store:
    """Persistence for grants, connect sessions and the audit log. Knows nothing of crypto or OAuth."""

    def __init__(self, url: str) -> None:
        self.audit_key: bytes | None = None  # the audit chain's key; the vault sets it when it opens with its key
        parsed = make_url(url)
        self.dialect = parsed.get_backend_name()
        if self.dialect == "sqlite" and parsed.database and parsed.database != ":memory:":
            _create_private_file(Path(parsed.database))
        kwargs: dict[str, Any] = {}
        if self.dialect == "postgresql":
            kwargs.update(pool_size=10, max_overflow=20, pool_pre_ping=True)
        self.engine: AsyncEngine = create_async_engine(url, **kwargs)
        if self.dialect == "sqlite":
            _sqlite_setup(self.engine)
        self.url = url
        # SQLite takes one writer at a time, and a writer that finds the lock taken sleeps in SQLite's
        # busy handler (up to 100 ms a try). Queueing this process's writers here leaves the busy handler
        # to writers in other processes; 16 concurrent writers in one process get ~1.6x the writes/s.
        self._write_locks: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, asyncio.Lock] = (
            weakref.WeakKeyDictionary()
        )

    async def close(self) -> None:
        await self.engine.dispose()

    @property
    def grant_writes(self) -> int:
        """How many grant writes this process has made to this store; caches compare it."""
        return _GRANT_WRITES.get(self.url, 0)

    def _wrote_grants(self) -> None:
        _GRANT_WRITES[self.url] = _GRANT_WRITES.get(self.url, 0) + 1

    @asynccontextmanager
    async def _write(self) -> AsyncIterator[AsyncConnection]:
        async with self.writer_turn(), self._write_transaction() as conn:
            yield conn

    @asynccontextmanager
    async def writer_turn(self) -> AsyncIterator[None]:
        """This process's turn to write (SQLite); for a module writing through a connection of its own."""
        if self.dialect != "sqlite":
            yield  # PostgreSQL locks rows, not the database
            return
        loop = asyncio.get_running_loop()
        lock = self._write_locks.get(loop)
        if lock is None:
            lock = self._write_locks[loop] = asyncio.Lock()
        async with lock:
            yield

    @asynccontextmanager
    async def _write_transaction(self) -> AsyncIterator[AsyncConnection]:
        try:
            async with self.engine.connect() as conn:
                conn = await conn.execution_options(alter_write=True)
                async with conn.begin():
                    yield conn
        except (DBAPIError, OSError) as exc:
            if (outage := unavailable_error(exc)) is None:
                raise
            raise outage from exc

    @asynccontextmanager
    async def _read(self) -> AsyncIterator[AsyncConnection]:
        try:
            async with self.engine.connect() as conn, conn.begin():
                yield conn
        except (DBAPIError, OSError) as exc:
            if (outage := unavailable_error(exc)) is None:
                raise
            raise outage from exc

    def transaction(self, *, write: bool = False) -> AbstractAsyncContextManager[AsyncConnection]:
        """A connection inside a transaction, for modules that keep their own tables in this store."""
        return self._write() if write else self._read()

    # -- schema ------------------------------------------------------------------------------

    async def migrate(self) -> int:
        """Create a fresh store at the current version, or upgrade an older one in place."""
        async with self._write() as conn:
            if self.dialect == "postgresql":
                await conn.execute(text("SELECT pg_advisory_xact_lock(7261001)"))
            return await conn.run_sync(_migrate_sync)

    # -- meta --------------------------------------------------------------------------------

    async def get_meta(self, key: str) -> bytes | None:
        async with self._read() as conn:
            value = await conn.scalar(select(meta.c.value).where(meta.c.key == key))
        return bytes(value) if value is not None else None

    async def set_meta_once(self, key: str, value: bytes) -> bytes:
        """Store `value` unless the key exists; return whatever is stored."""
        async with self._write() as conn:
            existing = await conn.scalar(select(meta.c.value).where(meta.c.key == key))
            if existing is not None:
                return bytes(existing)
            await conn.execute(insert(meta).values(key=key, value=value))
            return value

    # -- grants ------------------------------------------------------------------------------

    async def get_grant(self, grant_id: str) -> StoredGrant | None:
        async with self._read() as conn:
            row = (await conn.execute(select(grants).where(grants.c.grant_id == grant_id))).first()
        return _grant(row) if row else None

    async def list_grants(
        self,
        owners: Sequence[str] | None = None,
        provider: str | None = None,
        statuses: Sequence[str] | None = None,
    ) -> list[StoredGrant]:
        query = select(grants).order_by(grants.c.created_at, grants.c.grant_id)
        if owners is not None:
            query = query.where(grants.c.owner.in_(list(owners)))
        if provider is not None:
            query = query.where(grants.c.provider == provider)
        if statuses is not None:
            query = query.where(grants.c.status.in_(list(statuses)))
        async with self._read() as conn:
            rows = (await conn.execute(query)).all()
        return [_grant(row) for row in rows]

    async def upsert_grant(
        self,
        *,
        provider: str,
        owner: str,
        kind: str,
        account: str,
        label: str | None,
        display_name: str | None,
        scopes: Sequence[str],
        seal: Callable[[str], bytes],
        expires_at: float | None,
    ) -> tuple[StoredGrant, bool]:
        """Insert a grant, or replace the credential of the same owner+provider+account.

        `seal(grant_id)` encrypts the credential for that row. Returns (grant, created).
        """
        now = time.time()
        for _attempt in range(3):
            async with self._write() as conn:
                existing = await conn.scalar(
                    select(grants.c.grant_id).where(
                        grants.c.owner == owner, grants.c.provider == provider, grants.c.account == account
                    )
                )
                values: dict[str, Any] = {
                    "kind": kind,
                    "display_name": display_name,
                    "scopes": json.dumps(list(scopes)),
                    "status": "active",
                    "expires_at": expires_at,
                    "updated_at": now,
                    "refresh_lock_until": None,
                }
                if label is not None:
                    values["label"] = label
                try:
                    if existing:
                        values["secret"] = seal(existing)
                        await conn.execute(update(grants).where(grants.c.grant_id == existing).values(values))
                        grant_id, created = existing, False
                    else:
                        grant_id = str(uuid.uuid4())
                        values.update(
                            grant_id=grant_id, provider=provider, owner=owner, account=account,
                            label=label, secret=seal(grant_id), created_at=now,
                        )
                        await conn.execute(insert(grants).values(values))
                        created = True
                except IntegrityError:
                    continue  # another writer inserted the same account first; update it instead
            self._wrote_grants()
            stored = await self.get_grant(grant_id)
            assert stored is not None
            return stored, created
        raise RuntimeError("could not store grant after concurrent inserts")

    async def claim_refresh(self, grant_id: str, lease_seconds: float) -> bool:
        """Take the cross-process refresh lease of a grant (an atomic row update); True if won."""
        now = time.time()
        async with self._write() as conn:
            result = await conn.execute(
                update(grants)
                .where(grants.c.grant_id == grant_id)
                .where((grants.c.refresh_lock_until.is_(None)) | (grants.c.refresh_lock_until < now))
                .values(refresh_lock_until=now + lease_seconds)
            )
        return bool(result.rowcount)

    async def finish_refresh(
        self, grant_id: str, *, secret: bytes | None, expires_at: float | None, status: str | None = None
    ) -> None:
        """Commit a refreshed credential (or only a status) and drop the lease, in one transaction."""
        values: dict[str, Any] = {"refresh_lock_until": None, "updated_at": time.time()}
        if secret is not None:
            values.update(secret=secret, expires_at=expires_at)
        if status is not None:
            values["status"] = status
        async with self._write() as conn:
            await conn.execute(update(grants).where(grants.c.grant_id == grant_id).values(values))
        self._wrote_grants()

    async def refresh_lease(self, grant_id: str) -> float | None:
        async with self._read() as conn:
            value = await conn.scalar(
                select(grants.c.refresh_lock_until).where(grants.c.grant_id == grant_id)
            )
        return float(value) if value is not None else None

    # -- connect sessions --------------------------------------------------------------------

    async def create_connect_session(self, row: ConnectSessionRow) -> None:
        async with self._write() as conn:
            await conn.execute(
                insert(connect_sessions).values(
                    session_id=row.session_id,
                    provider=row.provider,
                    owner=row.owner,
                    label=row.label,
                    scopes=json.dumps(row.scopes),
                    redirect_uri=row.redirect_uri,
                    verifier=row.verifier,
                    status=row.status,
                    created_at=row.created_at,
                    expires_at=row.expires_at,
                    browser=row.browser,
                )
            )

    async def get_connect_session(self, session_id: str) -> ConnectSessionRow | None:
        async with self._read() as conn:
            row = (
                await conn.execute(select(connect_sessions).where(connect_sessions.c.session_id == session_id))
            ).first()
        if row is None:
            return None
        m = row._mapping
        return ConnectSessionRow(
            session_id=m["session_id"],
            provider=m["provider"],
            owner=m["owner"],
            label=m["label"],
            scopes=json.loads(m["scopes"] or "[]"),
            redirect_uri=m["redirect_uri"],
            verifier=m["verifier"],
            status=m["status"],
            result=ConnectResult.model_validate_json(m["result"]) if m["result"] else None,
            error=m["error"],
            created_at=m["created_at"],
            expires_at=m["expires_at"],
            error_code=m["error_code"],
            browser=m["browser"],
        )

    async def bind_connect_browser(self, session_id: str, browser: str) -> bool:
        """Record the one browser a connect link was opened in; False if it was opened already."""
        async with self._write() as conn:
            result = await conn.execute(
                update(connect_sessions)
                .where(connect_sessions.c.session_id == session_id, connect_sessions.c.browser == "",
                       connect_sessions.c.status == "pending", connect_sessions.c.expires_at >= time.time())
                .values(browser=browser)
            )
        return bool(result.rowcount)

    async def claim_connect_session(self, session_id: str) -> bool:
        """Move a pending session to `exchanging` so one callback, and only one, completes it."""
        async with self._write() as conn:
            result = await conn.execute(
                update(connect_sessions)
                .where(connect_sessions.c.session_id == session_id, connect_sessions.c.status == "pending")
                .values(status="exchanging")
            )
        return bool(result.rowcount)

    async def finish_connect_session(
        self, session_id: str, status: str, *, result: ConnectResult | None = None, error: str | None = None,
        error_code: str | None = None,
    ) -> None:
        async with self._write() as conn:
            await conn.execute(
                update(connect_sessions)
                .where(connect_sessions.c.session_id == session_id)
                .values(status=status, result=result.model_dump_json() if result else None, error=error,
                        error_code=error_code)
            )

    async def live_connect_sessions(self, owner: str, *, expired_before: float) -> int:
        """Drop flows that expired before `expired_before`; count `owner`'s flows still open."""
        now = time.time()
        async with self._write() as conn:
            await conn.execute(delete(connect_sessions).where(connect_sessions.c.expires_at < expired_before))
            count = await conn.scalar(
                select(func.count()).select_from(connect_sessions).where(
                    connect_sessions.c.owner == owner, connect_sessions.c.expires_at >= now,
                    connect_sessions.c.status.in_(("pending", "exchanging")),
                )
            )
        return int(count or 0)

    # -- re-sealing grants (schema version 3) -----------------------------------------------

    async def reseal_grants(self, reseal: Callable[[StoredGrant], bytes | None]) -> int:
        """Once per store: replace each grant's ciphertext by `reseal(grant)` (None keeps it).

        Runs only while the `GRANT_RESEAL_PENDING` flag is set, in one transaction that clears it, so
        processes opening the store together re-seal it once.
        """
        async with self._write() as conn:
            if self.dialect == "postgresql":
                await conn.execute(text("SELECT pg_advisory_xact_lock(7261002)"))
            pending = await conn.scalar(select(meta.c.key).where(meta.c.key == schema.GRANT_RESEAL_PENDING))
            if pending is None:
                return 0
            rows = [_grant(row) for row in (await conn.execute(select(grants))).all()]
            changed = 0
            for stored in rows:
                sealed = reseal(stored)
                if sealed is not None:
                    await conn.execute(
                        update(grants).where(grants.c.grant_id == stored.grant.grant_id).values(secret=sealed)
                    )
                    changed += 1
            await conn.execute(delete(meta).where(meta.c.key == schema.GRANT_RESEAL_PENDING))
        self._wrote_grants()
        return changed

    async def holds_secrets(self) -> bool:
        """Whether anything in the store was sealed with a key (a key check row or any grant)."""
        async with self._read() as conn:
            check = await conn.scalar(select(meta.c.key).where(meta.c.key == "key_check"))
            grant = await conn.scalar(select(grants.c.grant_id).limit(1))
        return check is not None or grant is not None

    # -- audit -------------------------------------------------------------------------------

    async def record(self, action: str, **fields: Any) -> None:
        await self.record_many([{"at": time.time(), "action": action, **fields}])

    async def record_many(self, rows: Sequence[dict[str, Any]]) -> None:
        """Append audit rows (each with `at` and `action`) to the hash chain, in one transaction."""
        if not rows:
            return
        async with self._write() as conn:
            await audit_ledger.append(conn, rows, self.audit_key)

    async def count_grants(self, status: str) -> int:
        async with self._read() as conn:
            return int(await conn.scalar(select(func.count()).select_from(grants).where(grants.c.status == status))
                       or 0)

    async def audit_entries(self, limit: int = 100, grant_id: str | None = None) -> list[AuditEntry]:
        return await self.audit_query(audit_ledger.AuditFilter(limit=limit, grant_id=grant_id))

    async def audit_query(self, where: audit_ledger.AuditFilter) -> list[AuditEntry]:
        async with self._read() as conn:
            rows = await audit_ledger.entries(conn, where)
        return [AuditEntry(at=datetime.fromtimestamp(r["at"], UTC),
                           **{k: r[k] for k in _AUDIT_ENTRY_FIELDS}) for r in rows]

    async def audit_prune(self, before: float) -> int:
        async with self._write() as conn:
            return await audit_ledger.prune(conn, before)

    async def audit_verify(self) -> tuple[ChainReport, int]:
        if self.audit_key is None:
            raise RuntimeError("the audit chain's key is set when the vault opens")
        async with self._read() as conn:
            return await audit_ledger.verify(conn, self.audit_key)

def unavailable_error(exc: DBAPIError | OSError) -> VaultUnavailableError | None:
    """A database that is down, restarting or unreachable becomes a typed, retryable error; bugs stay as they are."""
    if isinstance(exc, DBAPIError):
        state = str(getattr(exc.orig, "pgcode", None) or getattr(exc.orig, "sqlstate", None) or "")
        if not (exc.connection_invalidated or isinstance(exc, OperationalError | InterfaceError)
                or state.startswith(("08", "57P"))):
            return None
        reason = type(exc.orig).__name__
    else:
        reason = type(exc).__name__
    return VaultUnavailableError(f"The vault's database is unavailable right now ({reason}); try again shortly.")


def _create_private_file(path: Path) -> None:
    """Create the SQLite file 0600 in a 0700 directory before SQLite does (it follows the umask).

    SQLite gives its -wal and -shm files the database file's permissions, so they are private too.
    """
    make_private_dir(path.parent)
    with suppress(FileExistsError):
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))


def _migrate_sync(conn: Connection) -> int:
    inspector = inspect(conn)
    if not inspector.has_table(schema.schema_version.name):
        schema.metadata.create_all(conn)
        conn.execute(insert(schema.schema_version).values(version=schema.SCHEMA_VERSION))
        _start_audit_chain(conn)
        return schema.SCHEMA_VERSION
    version = int(conn.scalar(select(schema.schema_version.c.version)) or 0)
    if version > schema.SCHEMA_VERSION:
        raise ConfigurationError(
            f"This vault store has schema version {version}; this alter-agents understands up to "
            f"{schema.SCHEMA_VERSION}. Upgrade alter-agents."
        )
    while version < schema.SCHEMA_VERSION:
        _MIGRATIONS[version](conn)
        version += 1
        conn.execute(update(schema.schema_version).values(version=version))
    return version
