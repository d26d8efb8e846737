"""Provider specs and the catalogue that loads them."""

from alter_agents.providers.catalogue import Providers
from alter_agents.providers.spec import AccountLookup, InjectSpec, ProviderSpec

__all__ = ["AccountLookup", "InjectSpec", "ProviderSpec", "Providers"]
