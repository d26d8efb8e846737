"""Configuration, environment first (DESIGN §2b)."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import platformdirs


def default_data_dir() -> Path:
    return Path(platformdirs.user_data_dir("alter-agents", appauthor=False))


@dataclass(frozen=True, slots=True)
class Settings:
    """Everything the embedded vault needs; `Settings.from_env()` reads the documented variables."""

    vault_url: str
    vault_key: str | None = None
    key_file: Path | None = None
    idp_issuer: str | None = None
    idp_audience: str | None = None
    idp_jwks_url: str | None = None
    idp_groups_claim: str = "groups"
    providers_file: str | None = None
    public_url: str | None = None

    @property
    def identity_provider_configured(self) -> bool:
        return bool(self.idp_issuer)

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Settings:
        env = os.environ if env is None else env
        data_dir = Path(env.get("ALTER_DATA_DIR") or default_data_dir())
        vault_url = env.get("ALTER_VAULT_URL") or f"sqlite+aiosqlite:///{data_dir / 'vault.db'}"
        return cls(
            vault_url=vault_url,
            vault_key=env.get("ALTER_VAULT_KEY") or None,
            key_file=Path(env["ALTER_VAULT_KEY_FILE"]) if env.get("ALTER_VAULT_KEY_FILE") else None,
            idp_issuer=env.get("ALTER_IDP_ISSUER") or None,
            idp_audience=env.get("ALTER_IDP_AUDIENCE") or None,
            idp_jwks_url=env.get("ALTER_IDP_JWKS_URL") or None,
            idp_groups_claim=env.get("ALTER_IDP_GROUPS_CLAIM") or "groups",
            providers_file=env.get("ALTER_PROVIDERS_FILE") or None,
            public_url=(env.get("ALTER_PUBLIC_URL") or "").rstrip("/") or None,
        )

    def resolved_key_file(self) -> Path:
        """The key file beside a SQLite store, or in the data dir for server databases."""
        if self.key_file:
            return self.key_file
        prefix = "sqlite+aiosqlite:///"
        if self.vault_url.startswith(prefix) and ":memory:" not in self.vault_url:
            return Path(self.vault_url[len(prefix):]).parent / "vault.key"
        return default_data_dir() / "vault.key"
