"""Tables of the vault store. Times are UNIX seconds (float) so SQLite and PostgreSQL agree."""

from __future__ import annotations

from sqlalchemy import (
    BigInteger,
    Column,
    Float,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Table,
    Text,
    UniqueConstraint,
)

SCHEMA_VERSION = 5
AUDIT_CORRELATION = ("surface", "tool", "session_id", "request_id", "run_id", "thread_id", "trace_id")
AUDIT_V5_COLUMNS = (*AUDIT_CORRELATION, "outcome", "seq", "prev_hash", "hash")
# Version 4 binds each grant's ciphertext to its grant id, owner and provider (re-sealed on open,
# see `GRANT_RESEAL_PENDING`) and records a typed error code for a failed connect flow.
GRANT_RESEAL_PENDING = "grant_reseal_pending"

metadata = MetaData()

schema_version = Table(
    "alter_schema_version",
    metadata,
    Column("version", Integer, nullable=False),
)

meta = Table(
    "alter_meta",
    metadata,
    Column("key", String(64), primary_key=True),
    Column("value", LargeBinary, nullable=False),
)

grants = Table(
    "alter_grants",
    metadata,
    Column("grant_id", String(36), primary_key=True),
    Column("provider", String(64), nullable=False),
    Column("owner", String(255), nullable=False),
    Column("kind", String(16), nullable=False),
    Column("account", String(320), nullable=False),
    Column("label", String(255)),
    Column("display_name", String(255)),
    Column("scopes", Text, nullable=False, default="[]"),
    Column("status", String(16), nullable=False, default="active"),
    Column("secret", LargeBinary, nullable=False),
    Column("expires_at", Float),
    Column("created_at", Float, nullable=False),
    Column("updated_at", Float, nullable=False),
    Column("refresh_lock_until", Float),
    UniqueConstraint("owner", "provider", "account", name="uq_alter_grants_owner_provider_account"),
)
Index("ix_alter_grants_owner_provider", grants.c.owner, grants.c.provider)

connect_sessions = Table(
    "alter_connect_sessions",
    metadata,
    Column("session_id", String(64), primary_key=True),
    Column("provider", String(64), nullable=False),
    Column("owner", String(255), nullable=False),
    Column("label", String(255)),
    Column("scopes", Text, nullable=False, default="[]"),
    Column("redirect_uri", Text, nullable=False),
    Column("verifier", LargeBinary, nullable=False),
    Column("status", String(16), nullable=False, default="pending"),
    Column("result", Text),
    Column("error", Text),
    Column("created_at", Float, nullable=False),
    Column("expires_at", Float, nullable=False),
    Column("error_code", String(64)),
    # The browser a server-hosted connect link was opened in (a hash); "" = not opened yet, NULL = unbound.
    Column("browser", String(64)),
)
Index("ix_alter_connect_sessions_owner", connect_sessions.c.owner, connect_sessions.c.expires_at)

audit = Table(
    "alter_audit",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("at", Float, nullable=False),
    Column("action", String(32), nullable=False),
    Column("principal", String(255)),
    Column("grant_id", String(36)),
    Column("provider", String(64)),
    Column("method", String(16)),
    Column("host", String(255)),
    Column("path", Text),
    Column("status", Integer),
    Column("latency_ms", Float),
    Column("detail", Text),
    # version 5: correlation (which run, session, trace) and tamper evidence (a keyed hash chain)
    *[Column(name, String(128)) for name in AUDIT_CORRELATION],
    Column("outcome", String(64)),
    Column("seq", BigInteger),
    Column("prev_hash", String(64)),
    Column("hash", String(64)),
)
Index("ix_alter_audit_at", audit.c.at)
Index("ix_alter_audit_seq", audit.c.seq)

# -- version 2: the vault server (API keys, request nonces, hosted connect sessions) -------------

api_keys = Table(
    "alter_api_keys",
    metadata,
    Column("key_id", String(36), primary_key=True),
    Column("name", String(255)),
    Column("kind", String(4), nullable=False),
    Column("hint", String(32), nullable=False),
    Column("key_hash", String(64), nullable=False, unique=True),
    Column("created_at", Float, nullable=False),
    Column("last_used_at", Float),
    Column("revoked_at", Float),
)

nonces = Table(
    "alter_nonces",
    metadata,
    Column("nonce", String(128), primary_key=True),
    Column("key_id", String(36), nullable=False),
    Column("seen_at", Float, nullable=False),
)
Index("ix_alter_nonces_seen_at", nonces.c.seen_at)

connect_links = Table(
    "alter_connect_links",
    metadata,
    Column("link_id", String(64), primary_key=True),
    Column("token_hash", String(64), nullable=False, unique=True),
    Column("key_id", String(36), nullable=False),
    Column("owner", String(255), nullable=False),
    Column("providers", Text, nullable=False),
    Column("label", String(255)),
    Column("scopes", Text),
    Column("created_at", Float, nullable=False),
    Column("expires_at", Float, nullable=False),
)

connect_link_flows = Table(
    "alter_connect_link_flows",
    metadata,
    Column("session_id", String(64), primary_key=True),
    Column("link_id", String(64), nullable=False),
    Column("provider", String(64), nullable=False),
    Column("created_at", Float, nullable=False),
)
Index("ix_alter_connect_link_flows_link", connect_link_flows.c.link_id)

V2_TABLES = (api_keys, nonces, connect_links, connect_link_flows)

# -- version 3: what the tools remember per verified user (pending connects, chosen accounts) ----

session_memory = Table(
    "alter_session_memory",
    metadata,
    Column("owner", String(255), primary_key=True),
    Column("scope", String(64), primary_key=True),
    Column("kind", String(16), primary_key=True),
    Column("name", String(64), primary_key=True),
    Column("value", Text, nullable=False),
    Column("expires_at", Float, nullable=False),
)
Index("ix_alter_session_memory_expires_at", session_memory.c.expires_at)

V3_TABLES = (session_memory,)
