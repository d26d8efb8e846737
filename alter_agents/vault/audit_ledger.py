"""The audit table as a ledger: chained inserts, filtered reads, pruning and verification.

Every row written gets the next `seq` and a keyed hash chaining it to the row before (`audit_chain`).
The chain head lives in the meta table and is read under the store's write lock (SQLite's single
writer, a row lock on PostgreSQL), so concurrent writers and several replicas extend one chain.
"""

from __future__ import annotations

import functools
import operator
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import delete, insert, select, update
from sqlalchemy.ext.asyncio import AsyncConnection

from alter_agents.vault import audit_chain
from alter_agents.vault.schema import audit, meta

HEAD_KEY = "audit_head"  # "<seq>:<hash>" of the newest row
ANCHOR_KEY = "audit_anchor"  # "<seq>:<hash>" of the newest pruned row: where the remaining chain starts
LEGACY_KEY = "audit_legacy_max_id"  # rows up to this id predate the chain (schema < 5)
COLUMNS = tuple(c.name for c in audit.columns if c.name != "id")
_EMPTY = dict.fromkeys(COLUMNS)
_values = operator.itemgetter(*COLUMNS)


@dataclass(frozen=True, slots=True)
class AuditFilter:
    """What `alter-agents audit` and the vault server's export select."""

    since: float | None = None
    until: float | None = None
    principal: str | None = None
    provider: str | None = None
    grant_id: str | None = None
    outcome: str | None = None  # ok | error | a code (policy_denied, http_404, upstream_timeout, …)
    limit: int = 1000


def outcome_of(row: Mapping[str, Any]) -> str | None:
    """A row's outcome: `ok`, `http_<status>` for an upstream error status, or the error or policy code."""
    status = row.get("status")
    if isinstance(status, int):
        return "ok" if status < 400 else f"http_{status}"
    detail = str(row.get("detail") or "")
    if row.get("action") in ("call", "policy") and detail:
        return detail.split(":", 1)[0].split(" ", 1)[0][:64]
    return None


async def append(conn: AsyncConnection, rows: Sequence[dict[str, Any]], key: bytes | None) -> None:
    """Insert rows at the end of the chain, inside the caller's write transaction."""
    head = await _read_pointer(conn, HEAD_KEY, lock=True)
    seq, previous = head if head else (0, audit_chain.GENESIS)
    params: list[tuple[Any, ...]] = []
    for row in rows:
        seq += 1
        full = {**_EMPTY, **row}
        full["at"] = full["at"] if full["at"] is not None else time.time()
        full["outcome"] = full["outcome"] or outcome_of(full)
        full["seq"], full["prev_hash"] = seq, previous
        full["hash"] = previous = audit_chain.link(key or b"", previous, full)
        params.append(_values(full))
    # A plain driver-level executemany: SQLAlchemy's per-row parameter processing costs several times the
    # insert itself, and the writer shares the event loop with the calls it audits.
    await conn.exec_driver_sql(_insert_sql(conn.dialect.paramstyle), params)
    await _write_pointer(conn, HEAD_KEY, seq, previous, existed=head is not None)


@functools.lru_cache(maxsize=4)
def _insert_sql(paramstyle: str) -> str:
    marks = [f"${i}" if paramstyle == "numeric_dollar" else "?" if paramstyle == "qmark" else "%s"
             for i in range(1, len(COLUMNS) + 1)]
    return f"INSERT INTO {audit.name} ({', '.join(COLUMNS)}) VALUES ({', '.join(marks)})"  # noqa: S608 (our names)


async def entries(conn: AsyncConnection, where: AuditFilter) -> list[dict[str, Any]]:
    query = select(audit).order_by(audit.c.id.desc()).limit(where.limit)
    if where.since is not None:
        query = query.where(audit.c.at >= where.since)
    if where.until is not None:
        query = query.where(audit.c.at < where.until)
    if where.principal:
        query = query.where(audit.c.principal == where.principal)
    if where.provider:
        query = query.where(audit.c.provider == where.provider)
    if where.grant_id:
        query = query.where(audit.c.grant_id == where.grant_id)
    if where.outcome == "error":
        query = query.where(audit.c.outcome.is_not(None), audit.c.outcome != "ok")
    elif where.outcome:
        query = query.where(audit.c.outcome == where.outcome)
    return [dict(r._mapping) for r in (await conn.execute(query)).all()]


async def prune(conn: AsyncConnection, before: float) -> int:
    """Delete rows older than `before`; the newest deleted row becomes the anchor the chain verifies from."""
    last = (await conn.execute(
        select(audit.c.seq, audit.c.hash).where(audit.c.at < before, audit.c.seq.is_not(None))
        .order_by(audit.c.seq.desc()).limit(1)
    )).first()
    deleted = await conn.execute(delete(audit).where(audit.c.at < before))
    if last is not None:
        existed = await _read_pointer(conn, ANCHOR_KEY, lock=True) is not None
        await _write_pointer(conn, ANCHOR_KEY, int(last.seq), str(last.hash), existed=existed)
    return int(deleted.rowcount or 0)


async def verify(conn: AsyncConnection, key: bytes) -> tuple[audit_chain.ChainReport, int]:
    """Check the whole chain; returns the report and how many rows predate the chain (schema < 5)."""
    anchor = await _read_pointer(conn, ANCHOR_KEY)
    legacy_max = await _read_int(conn, LEGACY_KEY)
    rows = [dict(r._mapping) for r in (await conn.execute(select(audit).order_by(audit.c.id))).all()]
    unchained = [r for r in rows if r["seq"] is None]
    sneaked = [r for r in unchained if r["id"] > legacy_max]
    chained = [r for r in rows if r["seq"] is not None]
    if sneaked:
        return audit_chain.ChainReport(0, audit_chain.GENESIS, "inserted", None,
                                       f"a row without a chain link (id {sneaked[0]['id']})"), len(unchained)
    anchor_seq, anchor_hash = anchor if anchor else (0, audit_chain.GENESIS)
    report = audit_chain.verify(key, chained, anchor=anchor_hash, anchor_seq=anchor_seq)
    head = await _read_pointer(conn, HEAD_KEY)
    if report.ok and head is not None and head != (anchor_seq + report.checked, report.head):
        missing = anchor_seq + report.checked + 1
        return audit_chain.ChainReport(report.checked, report.head, "removed", missing,
                                       f"the newest rows (from {missing} on) are missing"), len(unchained)
    return report, len(unchained)


async def _read_pointer(conn: AsyncConnection, key: str, *, lock: bool = False) -> tuple[int, str] | None:
    query = select(meta.c.value).where(meta.c.key == key)
    if lock and conn.dialect.name == "postgresql":
        query = query.with_for_update()
    value = (await conn.execute(query)).scalar()
    if value is None:
        return None
    seq, _, digest = bytes(value).decode().partition(":")
    return int(seq), digest


async def _write_pointer(conn: AsyncConnection, key: str, seq: int, digest: str, *, existed: bool) -> None:
    value = f"{seq}:{digest}".encode()
    if existed:
        await conn.execute(update(meta).where(meta.c.key == key).values(value=value))
    else:
        await conn.execute(insert(meta).values(key=key, value=value))


async def _read_int(conn: AsyncConnection, key: str) -> int:
    value = (await conn.execute(select(meta.c.value).where(meta.c.key == key))).scalar()
    return int(bytes(value).decode()) if value is not None else 0
