"""Tamper evidence for the audit log: every row carries a keyed hash chaining it to the one before.

`hash(n) = HMAC(chain_key, hash(n-1) ‖ canonical(row n))`, with `seq` (a gap-free counter kept by the
store under its write lock) inside the row. The key is derived from the vault key, so someone who can
write the store but does not hold the key can neither re-chain an edited row nor forge a new one, and
`verify` names the first row that was changed, removed or inserted. What it does not prove: someone
with the vault key can rewrite the whole chain; an external anchor (the head hash, printed and kept
elsewhere from time to time: `alter-agents audit verify` prints it) closes that. Pruning old rows keeps
the hash of the last pruned row as the new anchor, so the rest still verifies.
"""

from __future__ import annotations

import functools
import hashlib
import hmac
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

GENESIS = "0" * 64
PURPOSE = b"alter-audit-chain-v1"  # the chain key is `crypto.derive(vault key, PURPOSE)`

# The columns a row's hash covers, in order. Adding a column appends here (old rows hash it as null).
CHAINED = (
    "seq", "at", "action", "principal", "grant_id", "provider", "method", "host", "path", "status",
    "latency_ms", "detail", "surface", "tool", "session_id", "request_id", "run_id", "thread_id", "trace_id",
    "outcome",
)


_ENCODER = json.JSONEncoder(separators=(",", ":"), ensure_ascii=True)


def link(key: bytes, previous: str, row: Mapping[str, Any]) -> str:
    """The hash of `row` chained to `previous`. Floats are hashed as fixed text, so both stores (SQLite
    REAL, PostgreSQL double) hash the same row alike."""
    values = [format(v, ".6f") if isinstance(v, float) else v for v in map(row.get, CHAINED)]
    mac = _keyed(key).copy()  # the key's HMAC state, set up once, not per row
    mac.update(f"{previous}\n{_ENCODER.encode(values)}".encode())
    return mac.hexdigest()


@functools.lru_cache(maxsize=8)
def _keyed(key: bytes) -> hmac.HMAC:
    return hmac.new(key, digestmod=hashlib.sha256)


Problem = Literal["changed", "removed", "inserted"]


@dataclass(frozen=True, slots=True)
class ChainReport:
    """The outcome of a verification: how many rows were checked and the first problem, if any."""

    checked: int
    head: str
    problem: Problem | None = None
    seq: int | None = None
    detail: str = ""

    @property
    def ok(self) -> bool:
        return self.problem is None


def verify(key: bytes, rows: Sequence[Mapping[str, Any]], *, anchor: str = GENESIS, anchor_seq: int = 0) -> ChainReport:
    """Check rows in storage order (by `seq`) against the chain; stop at the first broken link."""
    previous, expected = anchor, anchor_seq + 1
    ordered = sorted(rows, key=lambda r: (r.get("seq") or 0, r.get("id") or 0))
    for i, row in enumerate(ordered):
        seq = row.get("seq")
        if seq is None:
            return ChainReport(i, previous, "inserted", None, "a row without a sequence number")
        if seq < expected:
            return ChainReport(i, previous, "inserted", seq, f"a second row numbered {seq}")
        if seq > expected:
            return ChainReport(i, previous, "removed", expected,
                               f"rows {expected}..{seq - 1} are missing" if seq - 1 > expected
                               else f"row {expected} is missing")
        good = row.get("prev_hash") == previous and hmac.compare_digest(str(row.get("hash")), link(key, previous, row))
        if not good:
            following = ordered[i + 1] if i + 1 < len(ordered) else None
            if following is not None and following.get("prev_hash") == previous:
                return ChainReport(i, previous, "inserted", seq, f"row {seq} does not belong to the chain")
            return ChainReport(i, previous, "changed", seq, f"row {seq} differs from what was written")
        previous, expected = str(row["hash"]), seq + 1
    return ChainReport(len(ordered), previous)
