"""Per-call policy: which calls an agent may make with a credential (deny / approve / allow).

Rules come from a TOML file (`ALTER_POLICY_FILE`), are checked once at start, and are matched in order:
the first rule that matches a call decides it; no match allows it. A `read_only` switch (per provider in
the file, or for a whole server) turns every call that is not GET/HEAD/OPTIONS into an approval (or a
denial). The decision is made before the credential is released, so a denied call never leaves.
"""

from __future__ import annotations

import fnmatch
import tomllib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from alter_agents.errors import ConfigurationError

Effect = Literal["deny", "approve", "allow"]
ReadOnly = Literal["approve", "deny"]
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
_METHODS = frozenset({"GET", "HEAD", "OPTIONS", "POST", "PUT", "PATCH", "DELETE"})


class PolicyRule(BaseModel):
    """One `[[policy]]` entry."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    provider: str
    methods: tuple[str, ...] | None = None
    paths: tuple[str, ...] | None = None
    owner: str | None = None
    effect: Effect
    name: str | None = Field(None, description="How the rule is named in errors and the audit log.")

    @field_validator("methods", mode="before")
    @classmethod
    def _methods(cls, value: object) -> object:
        if value is None:
            return None
        if not isinstance(value, list | tuple) or not value:
            raise ValueError("methods must be a non-empty list, e.g. [\"DELETE\"]")
        upper = tuple(str(m).strip().upper() for m in value)
        unknown = sorted(set(upper) - _METHODS)
        if unknown:
            raise ValueError(f"unknown method {unknown[0]!r} (use {', '.join(sorted(_METHODS))})")
        return upper

    @field_validator("paths", mode="before")
    @classmethod
    def _paths(cls, value: object) -> object:
        if value is None:
            return None
        if isinstance(value, str):
            value = [value]
        if not isinstance(value, list | tuple) or not value:
            raise ValueError("paths must be a non-empty list of globs, e.g. [\"/repos/*/*/hooks*\"]")
        for glob in value:
            if not isinstance(glob, str) or not glob.startswith("/"):
                raise ValueError(f"path glob {glob!r} must start with '/'")
            if glob.count("[") != glob.count("]"):
                raise ValueError(f"path glob {glob!r} has an unbalanced '['")
        return tuple(value)

    @field_validator("owner")
    @classmethod
    def _owner(cls, value: str | None) -> str | None:
        if value is None or value == "app":
            return value
        kind, sep, ident = value.partition(":")
        if not sep or not ident or kind not in ("user", "group"):
            raise ValueError(f"owner must be 'user:SUB', 'group:NAME' or 'app', not {value!r}")
        return value

    def matches(self, provider: str, method: str, path: str, principals: Sequence[str]) -> bool:
        if provider != self.provider:
            return False
        if self.methods is not None and method not in self.methods:
            return False
        if self.paths is not None and not any(fnmatch.fnmatchcase(path, glob) for glob in self.paths):
            return False
        return self.owner is None or self.owner in principals


class _ProviderPolicy(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    read_only: ReadOnly | bool = False


class _PolicyFile(BaseModel):
    model_config = ConfigDict(extra="forbid")

    read_only: ReadOnly | bool = False
    providers: dict[str, _ProviderPolicy] = Field(default_factory=dict)
    policy: list[PolicyRule] = Field(default_factory=list)


@dataclass(frozen=True, slots=True)
class Decision:
    """What the policy says of one call, and which rule said it (for the error and the audit row)."""

    effect: Effect
    rule: str | None = None

    @property
    def audit(self) -> str | None:
        """The audit-log form, e.g. `deny:github-hooks`; None when no rule applied."""
        return f"{self.effect}:{self.rule}" if self.rule else None


ALLOW = Decision("allow")


@dataclass(frozen=True)
class Policy:
    """The rules in force. `Policy()` allows everything."""

    rules: tuple[PolicyRule, ...] = ()
    read_only: dict[str, ReadOnly] | None = None
    server_read_only: ReadOnly | None = None

    @classmethod
    def load(cls, path: str | Path | None, *, known_providers: Iterable[str] | None = None,
             server_read_only: ReadOnly | None = None) -> Policy:
        """Read and check a policy file; every mistake is one `ConfigurationError` line naming it."""
        if path is None:
            return cls(server_read_only=server_read_only)
        where = Path(path)
        try:
            data = tomllib.loads(where.read_text("utf-8"))
        except FileNotFoundError:
            raise ConfigurationError(f"Policy file {where} does not exist (ALTER_POLICY_FILE).") from None
        except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
            raise ConfigurationError(f"Policy file {where} cannot be read: {exc}") from None
        return cls.parse(data, source=str(where), known_providers=known_providers,
                         server_read_only=server_read_only)

    @classmethod
    def parse(cls, data: dict[str, object], *, source: str = "policy", known_providers: Iterable[str] | None = None,
              server_read_only: ReadOnly | None = None) -> Policy:
        try:
            parsed = _PolicyFile.model_validate(data)
        except ValidationError as exc:
            first = exc.errors()[0]
            where = ".".join(str(p) for p in first["loc"]) or "file"
            raise ConfigurationError(f"{source}: {where}: {first['msg']}") from None
        known = set(known_providers) if known_providers is not None else None
        if known is not None:
            named = [r.provider for r in parsed.policy] + list(parsed.providers)
            for provider in named:
                if provider not in known:
                    raise ConfigurationError(
                        f"{source}: unknown provider {provider!r} (known: {', '.join(sorted(known))})"
                    )
        rules = tuple(
            rule if rule.name else rule.model_copy(update={"name": f"policy[{i}]"})
            for i, rule in enumerate(parsed.policy)
        )
        read_only = {name: _mode(p.read_only) for name, p in parsed.providers.items() if p.read_only}
        return cls(rules=rules, read_only={k: v for k, v in read_only.items() if v},
                   server_read_only=server_read_only or _mode(parsed.read_only))

    def with_server_read_only(self, mode: ReadOnly | None) -> Policy:
        return Policy(self.rules, self.read_only, mode or self.server_read_only)

    def decide(self, provider: str, method: str, path: str, principals: Sequence[str]) -> Decision:
        """First matching rule wins; then read-only modes; else allow."""
        method = method.upper()
        for rule in self.rules:
            if rule.matches(provider, method, path, principals):
                return Decision(rule.effect, rule.name)
        if method not in SAFE_METHODS:
            mode = (self.read_only or {}).get(provider)
            if mode:
                return Decision(mode, f"read_only:{provider}")
            if self.server_read_only:
                return Decision(self.server_read_only, "read_only")
        return ALLOW

    @property
    def empty(self) -> bool:
        return not self.rules and not self.read_only and not self.server_read_only


def _mode(value: ReadOnly | bool) -> ReadOnly | None:
    """`read_only = true` means approval; `"deny"` refuses outright."""
    if value is True:
        return "approve"
    if value is False:
        return None
    return value
