"""Where the at-rest key comes from, and the one-time re-seal of credentials to their rows.

A key is never made for a store that already holds secrets (a new key could not open them), and no
local key file is written for a shared database.
"""

from __future__ import annotations

import anyio

from alter_agents.errors import ConfigurationError, VaultKeyError
from alter_agents.settings import Settings
from alter_agents.vault.crypto import Cipher, create_key_file, grant_binding, read_key_file
from alter_agents.vault.store import Store, StoredGrant


async def load_key(settings: Settings, store: Store) -> tuple[str, str]:
    """The at-rest key and where it came from (for error messages)."""
    if key := settings.vault_key_value():
        return key, "ALTER_VAULT_KEY"
    if store.dialect != "sqlite" and not settings.key_file:
        raise ConfigurationError(
            "This vault's store is a shared database: set ALTER_VAULT_KEY (the same key in every process "
            "using it); no local key file is written for a shared store."
        )
    path = settings.resolved_key_file()
    source = f"the key file {path}"
    if existing := await anyio.to_thread.run_sync(read_key_file, path):
        return existing, source
    if await store.holds_secrets():
        # A process starting beside us may have made the key (linked before anything is sealed with
        # it) since we looked: then the file is there now.
        if existing := await anyio.to_thread.run_sync(read_key_file, path):
            return existing, source
        raise VaultKeyError(
            f"The vault key file {path} is missing, but the store already holds secrets sealed with a key; "
            "restore that file (or set ALTER_VAULT_KEY). No new key was made; see 'Recovering the vault "
            "key' in docs/vault.md."
        )
    return await anyio.to_thread.run_sync(create_key_file, path), source


def reseal(cipher: Cipher, stored: StoredGrant) -> bytes | None:
    """A credential sealed for its grant id only (schema 2), sealed again for id, owner and provider."""
    grant = stored.grant
    binding = grant_binding(grant.grant_id, grant.owner, grant.provider)
    if cipher.try_decrypt(stored.secret, binding) is not None:
        return None
    plaintext = cipher.try_decrypt(stored.secret, grant.grant_id)
    return None if plaintext is None else cipher.encrypt(plaintext, binding)
