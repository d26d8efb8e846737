"""Configuration, environment first (DESIGN §2b)."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Literal

import platformdirs
from pydantic import SecretStr
from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import ArgumentError

from alter_agents.errors import ConfigurationError

ConnectMethodSetting = Literal["auto", "browser", "device"]
ReadOnlySetting = Literal["approve", "deny"]
_SQLITE = "sqlite+aiosqlite"
_POSTGRES = "postgresql+asyncpg"
_ASYNC_DRIVERS = {"sqlite": _SQLITE, "postgresql": _POSTGRES}


def default_data_dir() -> Path:
    return Path(platformdirs.user_data_dir("alter-agents", appauthor=False))


def check_vault_url(url: str) -> URL:
    """Parse `ALTER_VAULT_URL`, naming the accepted form when it is not one (a typo should not be a traceback)."""
    example = f"{_SQLITE}:////path/to/vault.db or {_POSTGRES}://user@host/dbname"
    try:
        parsed = make_url(url)
    except ArgumentError:
        if "://" not in url:  # a plain file path: say the URL that names it
            example = f"{_SQLITE}:///{Path(url).expanduser().absolute()}"
        raise ConfigurationError(f"ALTER_VAULT_URL is not a database URL; use {example}.") from None
    backend = parsed.get_backend_name()
    if backend == "postgres":
        backend = "postgresql"
    wanted = _ASYNC_DRIVERS.get(backend)
    if wanted is None:
        raise ConfigurationError(f"ALTER_VAULT_URL names an unsupported database {backend!r}; use {example}.")
    if parsed.drivername != wanted:
        fixed = parsed.set(drivername=wanted).render_as_string(hide_password=True)
        raise ConfigurationError(
            f"ALTER_VAULT_URL must name the async driver: use {fixed} (not {parsed.drivername}://)."
        )
    return parsed


@dataclass(frozen=True, slots=True, repr=False)
class Settings:
    """Everything the embedded vault needs; `Settings.from_env()` reads the documented variables.

    The vault key is a `SecretStr` and the repr hides the database password, so a log line or a traceback
    that prints the settings carries neither.
    """

    vault_url: str
    vault_key: SecretStr | None = None
    key_file: Path | None = None
    idp_issuer: str | None = None
    idp_audience: str | None = None
    idp_jwks_url: str | None = None
    idp_groups_claim: str = "groups"
    providers_file: str | None = None
    public_url: str | None = None
    data_dir: Path | None = None
    connect_method: ConnectMethodSetting = "auto"
    policy_file: str | None = None
    read_only: ReadOnlySetting | None = None  # every write needs approval ("approve") or is refused ("deny")

    def __post_init__(self) -> None:
        check_vault_url(self.vault_url)
        if self.read_only not in (None, "approve", "deny"):
            raise ConfigurationError(f"ALTER_READ_ONLY must be approve or deny, not {self.read_only!r}.")
        if self.connect_method not in ("auto", "browser", "device"):
            raise ConfigurationError(
                f"ALTER_CONNECT_METHOD must be auto, browser or device, not {self.connect_method!r}."
            )
        if isinstance(self.vault_key, str):  # type: ignore[unreachable]
            object.__setattr__(self, "vault_key", SecretStr(self.vault_key))  # type: ignore[unreachable]

    def __repr__(self) -> str:
        shown = {f.name: getattr(self, f.name) for f in fields(self)}
        shown["vault_url"] = make_url(self.vault_url).render_as_string(hide_password=True)
        return f"Settings({', '.join(f'{k}={v!r}' for k, v in shown.items())})"

    @property
    def identity_provider_configured(self) -> bool:
        return bool(self.idp_issuer)

    def vault_key_value(self) -> str | None:
        """The key itself, for the one place that builds the cipher."""
        return self.vault_key.get_secret_value() if self.vault_key else None

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Settings:
        env = os.environ if env is None else env
        data_dir = Path(env.get("ALTER_DATA_DIR") or default_data_dir())
        vault_url = env.get("ALTER_VAULT_URL") or f"{_SQLITE}:///{data_dir / 'vault.db'}"
        key = env.get("ALTER_VAULT_KEY") or None
        return cls(
            vault_url=vault_url,
            vault_key=SecretStr(key) if key else None,
            key_file=Path(env["ALTER_VAULT_KEY_FILE"]) if env.get("ALTER_VAULT_KEY_FILE") else None,
            idp_issuer=env.get("ALTER_IDP_ISSUER") or None,
            idp_audience=env.get("ALTER_IDP_AUDIENCE") or None,
            idp_jwks_url=env.get("ALTER_IDP_JWKS_URL") or None,
            idp_groups_claim=env.get("ALTER_IDP_GROUPS_CLAIM") or "groups",
            providers_file=env.get("ALTER_PROVIDERS_FILE") or None,
            public_url=(env.get("ALTER_PUBLIC_URL") or "").rstrip("/") or None,
            data_dir=data_dir,
            connect_method=(env.get("ALTER_CONNECT_METHOD") or "auto").strip().lower(),  # type: ignore[arg-type]
            policy_file=env.get("ALTER_POLICY_FILE") or None,
            read_only=(env.get("ALTER_READ_ONLY") or "").strip().lower() or None,  # type: ignore[arg-type]
        )

    def jwt_audience(self) -> str:
        """The audience user JWTs must carry: ALTER_IDP_AUDIENCE, else this server's public URL.

        A verifier without an audience would accept tokens minted for any other service.
        """
        audience = self.idp_audience or self.public_url
        if not audience:
            raise ConfigurationError(
                "ALTER_IDP_ISSUER is set but ALTER_IDP_AUDIENCE is not: set it to the audience your identity "
                "provider puts in tokens meant for this server (or set ALTER_PUBLIC_URL if that is it)."
            )
        return audience

    def resolved_key_file(self) -> Path:
        """The key file beside a SQLite store, or in the data dir for server databases."""
        if self.key_file:
            return self.key_file
        prefix = "sqlite+aiosqlite:///"
        if self.vault_url.startswith(prefix) and ":memory:" not in self.vault_url:
            return Path(self.vault_url[len(prefix):]).parent / "vault.key"
        return (self.data_dir or default_data_dir()) / "vault.key"

    def locations(self) -> dict[str, str | bool | None]:
        """Where the store, its key and the configuration live (`alter-agents where`); opens nothing."""
        url = make_url(self.vault_url)
        key_file = None if self.vault_key else self.resolved_key_file()
        return {
            "data_dir": str(self.data_dir or default_data_dir()),
            "vault_url": url.render_as_string(hide_password=True),
            "vault_file": url.database if url.get_backend_name() == "sqlite" else None,
            "key_source": "ALTER_VAULT_KEY" if self.vault_key else "key_file",
            "key_file": str(key_file) if key_file else None,
            "key_file_exists": key_file.exists() if key_file else None,
            "providers_file": self.providers_file,
            "identity_provider": self.idp_issuer,
            "public_url": self.public_url,
        }
