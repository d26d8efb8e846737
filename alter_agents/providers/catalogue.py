"""The provider catalogue: built-in specs merged with the user's TOML file and OAuth clients from env."""

from __future__ import annotations

import logging
import os
import tomllib
from collections.abc import Iterator, Mapping
from importlib import resources
from pathlib import Path
from typing import Any

import httpx
from pydantic import ValidationError

from alter_agents.errors import ConfigurationError, InvalidArgumentsError, UnknownProviderError
from alter_agents.providers import binding
from alter_agents.providers.spec import ProviderSpec

log = logging.getLogger("alter_agents.providers")


def _builtin_entries() -> dict[str, dict[str, Any]]:
    text = resources.files("alter_agents.providers").joinpath("catalogue.toml").read_text("utf-8")
    return dict(tomllib.loads(text)["providers"])


def _merge(base: dict[str, Any], override: Mapping[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in override.items():
        if isinstance(value, Mapping) and isinstance(merged.get(key), dict) and key != "inject":
            merged[key] = _merge(merged[key], value)
        else:
            merged[key] = value
    return merged


class Providers:
    """Read-only catalogue of provider specs, by name and by API host."""

    def __init__(self, specs: Mapping[str, ProviderSpec]) -> None:
        self._specs = dict(specs)

    @classmethod
    def load(cls, providers_file: str | Path | None = None, env: Mapping[str, str] | None = None) -> Providers:
        """Built-ins, then `providers_file` (TOML, `[providers.NAME]` tables), then env client ids."""
        env = os.environ if env is None else env
        entries = _builtin_entries()
        path = providers_file or env.get("ALTER_PROVIDERS_FILE")
        if path:
            try:
                user = tomllib.loads(Path(path).read_text("utf-8")).get("providers", {})
            except (OSError, tomllib.TOMLDecodeError) as exc:
                raise ConfigurationError(f"Cannot read providers file {path}: {exc}") from exc
            for name, override in user.items():
                if name in entries and "hosts" in override:
                    _warn_on_moved_hosts(name, entries[name].get("hosts", []), override["hosts"], path)
                entries[name] = _merge(entries.get(name, {}), override)
        specs: dict[str, ProviderSpec] = {}
        for name, entry in entries.items():
            prefix = f"ALTER_{name.upper().replace('-', '_')}_"
            entry = dict(entry)
            entry.setdefault("display_name", name.title())
            if client_id := env.get(prefix + "CLIENT_ID"):
                entry["client_id"] = client_id
            if client_secret := env.get(prefix + "CLIENT_SECRET"):
                entry["client_secret"] = client_secret
            try:
                specs[name] = ProviderSpec(name=name, **entry)
            except ValidationError as exc:
                raise ConfigurationError(f"Provider {name!r} is invalid: {_problems(exc)}.") from None
        return cls(specs)

    def __iter__(self) -> Iterator[ProviderSpec]:
        return iter(self._specs.values())

    def __contains__(self, name: object) -> bool:
        return name in self._specs

    def names(self) -> list[str]:
        return sorted(self._specs)

    def get(self, name: str) -> ProviderSpec:
        try:
            return self._specs[name]
        except KeyError:
            raise UnknownProviderError(name, list(self._specs)) from None

    def for_host(self, host: str) -> ProviderSpec:
        """The single provider whose https API lives on `host` (default port); see `for_url`."""
        return self.for_url(f"https://{host}/")

    def for_url(self, url: str) -> ProviderSpec:
        """The single provider that claims `url`'s host and port; an error naming the candidates otherwise."""
        claimants = [spec for spec in self._specs.values() if spec.claims(url)]
        host = _where(url)
        if len(claimants) == 1:
            return claimants[0]
        if not claimants:
            raise InvalidArgumentsError(
                f"No provider's API lives at {host}; set provider to one of: {', '.join(self.names())}.",
                known_providers=self.names(),
            )
        names = sorted(spec.name for spec in claimants)
        raise InvalidArgumentsError(
            f"Several providers serve {host}; set provider to one of: {', '.join(names)}.",
            candidates=names,
        )


def _problems(exc: ValidationError) -> str:
    """Pydantic's errors on one line, unknown keys pointed at the reference of the known ones."""
    def one(error: Any) -> str:
        where = ".".join(str(part) for part in error["loc"])
        if error["type"] == "extra_forbidden":
            return f"{where}: unknown key (the keys are listed in docs/configuration.md)"
        return f"{where}: {error['msg']}"

    return "; ".join(one(e) for e in exc.errors())


def _where(url: str) -> str:
    try:
        return binding.entry_for(binding.parse_url(url))
    except (httpx.InvalidURL, TypeError):
        return url


def _domain(entry: str) -> str:
    try:
        host = binding.parse_entry(entry).host
    except ValueError:
        return entry
    return binding.registrable(host)


def _loopback(entry: str) -> bool:
    try:
        return binding.is_loopback(binding.parse_entry(entry).host)
    except ValueError:
        return False


def _warn_on_moved_hosts(name: str, builtin: list[str], override: object, path: object) -> None:
    """A built-in provider's credential sent to another domain is legitimate (a proxy) but easy to do by
    mistake or by a tampered file: say so. A loopback fake (local development, tests) stays on the machine."""
    if not isinstance(override, list):
        return
    known = {_domain(h) for h in builtin}
    moved = sorted(str(h) for h in override if _domain(str(h)) not in known and not _loopback(str(h)))
    if moved:
        log.warning("providers file %s sends the built-in %s credential to other domains: %s",
                    path, name, ", ".join(moved))
