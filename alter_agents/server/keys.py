"""API keys for the vault server, in the official `alter-sdk` key format; only their hashes are stored.

A key reads `alter_<type>_<22 random chars>_<6-char checksum>` in the alphabet a-z2-7. The checksum is the
CRC-32 of `"<type>:<random>"` taken five bits at a time, least significant first, so a client can refuse a
mistyped key before any network call. It is not a secret and not a security boundary: the server looks a
key up by the SHA-256 of the whole key and derives the request-signing key from the key the client sends.

A key that authenticated is trusted again without a store read for `KEY_CACHE_SECONDS`, so a key revoked
from another process (the CLI, another replica) stops working within that bound; one revoked through
this process's `ApiKeys` stops at once.
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import secrets
import time
import uuid
import zlib
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal

from sqlalchemy import insert, select, update

from alter_agents.vault.schema import api_keys
from alter_agents.vault.store import Store

KeyKind = Literal["rk", "ak", "dk", "pk"]
ALPHABET = "abcdefghijklmnopqrstuvwxyz234567"
KEY_KINDS: tuple[KeyKind, ...] = ("rk", "ak", "dk", "pk")
_RANDOM_LEN = 22
_CHECKSUM_LEN = 6
_LAST_USED_RESOLUTION_SECONDS = 60.0
KEY_CACHE_SECONDS = 0.5
_CACHE_MAX = 10_000


class KeyRejected(Exception):
    """The request's API key is missing, malformed, unknown or revoked (HTTP 401)."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


def checksum(kind: str, random_part: str) -> str:
    crc = zlib.crc32(f"{kind}:{random_part}".encode())
    return "".join(ALPHABET[(crc >> (5 * i)) & 0x1F] for i in range(_CHECKSUM_LEN))


def generate_key(kind: KeyKind = "rk") -> str:
    """A fresh key; `rk` is an app (operator) key, the kind the official `App` client takes."""
    random_part = "".join(secrets.choice(ALPHABET) for _ in range(_RANDOM_LEN))
    return f"alter_{kind}_{random_part}_{checksum(kind, random_part)}"


def is_well_formed(key: str) -> bool:
    parts = key.split("_")
    if len(parts) != 4 or parts[0] != "alter" or parts[1] not in KEY_KINDS:
        return False
    _, kind, random_part, check = parts
    if len(random_part) != _RANDOM_LEN or any(c not in ALPHABET for c in random_part):
        return False
    return secrets.compare_digest(check, checksum(kind, random_part))


def key_hash(key: str) -> str:
    """Keys carry 110 random bits, so a plain SHA-256 is a safe lookup hash (no slow KDF needed)."""
    return hashlib.sha256(key.encode()).hexdigest()


@dataclass(frozen=True, slots=True)
class ApiKeyInfo:
    key_id: str
    name: str | None
    kind: str
    hint: str
    created_at: datetime
    last_used_at: datetime | None
    revoked_at: datetime | None

    @property
    def active(self) -> bool:
        return self.revoked_at is None


def _dt(value: float | None) -> datetime | None:
    return None if value is None else datetime.fromtimestamp(value, UTC)


def _info(row: Any) -> ApiKeyInfo:
    m = row._mapping
    created = _dt(m["created_at"])
    assert created is not None
    return ApiKeyInfo(key_id=m["key_id"], name=m["name"], kind=m["kind"], hint=m["hint"], created_at=created,
                      last_used_at=_dt(m["last_used_at"]), revoked_at=_dt(m["revoked_at"]))


class ApiKeys:
    """Create, list, revoke and check the vault server's API keys."""

    def __init__(self, store: Store) -> None:
        self._store = store
        self._last_touch: dict[str, float] = {}
        self._trusted: dict[str, tuple[float, ApiKeyInfo]] = {}
        self._loading: dict[str, tuple[float, asyncio.Future[ApiKeyInfo]]] = {}
        self._revocations = 0

    async def create(self, name: str | None = None, kind: KeyKind = "rk") -> tuple[str, ApiKeyInfo]:
        """Mint a key; the plaintext is returned once and never stored."""
        key = generate_key(kind)
        key_id = str(uuid.uuid4())
        now = time.time()
        hint = f"alter_{kind}_{key.split('_')[2][:4]}..."
        async with self._store.transaction(write=True) as conn:
            await conn.execute(insert(api_keys).values(
                key_id=key_id, name=name, kind=kind, hint=hint, key_hash=key_hash(key), created_at=now,
            ))
        info = ApiKeyInfo(key_id=key_id, name=name, kind=kind, hint=hint, created_at=_dt(now) or datetime.now(UTC),
                          last_used_at=None, revoked_at=None)
        return key, info

    async def list(self) -> list[ApiKeyInfo]:
        async with self._store.transaction() as conn:
            rows = (await conn.execute(select(api_keys).order_by(api_keys.c.created_at))).all()
        return [_info(r) for r in rows]

    async def revoke(self, key_id: str) -> ApiKeyInfo:
        """Revoke by key id (or a unique prefix of it, as `keys list` shows)."""
        matches = [k for k in await self.list() if k.key_id.startswith(key_id.strip())] if key_id.strip() else []
        if len(matches) != 1:
            raise ValueError(f"no single API key matches {key_id!r}" if not matches
                             else f"{key_id!r} matches {len(matches)} keys; give more of the id")
        self._trusted.clear()
        self._loading.clear()
        self._revocations += 1  # a read begun before this revocation is not cached
        async with self._store.transaction(write=True) as conn:
            await conn.execute(update(api_keys).where(api_keys.c.key_id == matches[0].key_id,
                                                      api_keys.c.revoked_at.is_(None))
                               .values(revoked_at=time.time()))
        revoked = [k for k in await self.list() if k.key_id == matches[0].key_id]
        return revoked[0]

    async def authenticate(self, key: str | None) -> ApiKeyInfo:
        """The active key behind `key`, or `KeyRejected`."""
        if not key:
            raise KeyRejected("invalid_key", "Send the API key in the x-api-key header.")
        digest = key_hash(key)
        now = time.monotonic()
        trusted = self._trusted.get(digest)
        if trusted is not None and trusted[0] > now:
            return trusted[1]  # well-formed: it was checked before it was trusted
        if not is_well_formed(key):
            raise KeyRejected("invalid_key", "The API key is malformed (bad format or checksum).")
        # The requests that find the entry expired together share one store read (one begun within the
        # cache bound, so a joiner never gets an answer older than a cached one could be).
        started, pending = self._loading.get(digest, (0.0, None))
        if pending is None or now - started >= KEY_CACHE_SECONDS:
            pending = asyncio.ensure_future(self._load(digest, now))
            self._loading[digest] = (now, pending)
            pending.add_done_callback(functools.partial(self._loaded, digest))
        return await asyncio.shield(pending)

    def _loaded(self, digest: str, done: asyncio.Future[ApiKeyInfo]) -> None:
        if self._loading.get(digest, (0.0, None))[1] is done:
            del self._loading[digest]
        if not done.cancelled():
            done.exception()  # retrieved here, so a read whose callers all left does not warn

    async def _load(self, digest: str, now: float) -> ApiKeyInfo:
        revocations = self._revocations
        async with self._store.transaction() as conn:
            row = (await conn.execute(select(api_keys).where(api_keys.c.key_hash == digest))).first()
        if row is None:
            raise KeyRejected("invalid_key", "Invalid API key.")
        info = _info(row)
        if not info.active:
            self._trusted.pop(digest, None)
            raise KeyRejected("key_revoked", "API key has been revoked.")
        await self._touch(info.key_id)
        if revocations != self._revocations:
            return info
        if len(self._trusted) >= _CACHE_MAX:
            self._trusted = {k: v for k, v in self._trusted.items() if v[0] > now}
        self._trusted[digest] = (now + KEY_CACHE_SECONDS, info)
        return info

    async def _touch(self, key_id: str) -> None:
        now = time.time()
        if now - self._last_touch.get(key_id, 0.0) < _LAST_USED_RESOLUTION_SECONDS:
            return
        self._last_touch[key_id] = now
        async with self._store.transaction(write=True) as conn:
            await conn.execute(update(api_keys).where(api_keys.c.key_id == key_id).values(last_used_at=now))
