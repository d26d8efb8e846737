"""The vault: resolves grants and releases credentials."""

from alter_agents.vault.base import Vault
from alter_agents.vault.identity import Identity, JWTVerifier
from alter_agents.vault.local import LocalVault
from alter_agents.vault.remote import RemoteVault

__all__ = ["Identity", "JWTVerifier", "LocalVault", "RemoteVault", "Vault"]
