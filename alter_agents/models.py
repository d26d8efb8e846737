"""Data shapes shared by the vault, the tools and every surface, declared once."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal

import httpx
from pydantic import BaseModel, ConfigDict, Field

from alter_agents import redact

GrantStatus = Literal["active", "needs_reauth", "revoked"]
PrincipalKind = Literal["user", "group", "app"]
ConnectMethod = Literal["browser", "device"]


@dataclass(frozen=True, slots=True)
class Principal:
    """Who owns a grant: a user (JWT `sub`), a group (groups claim value) or the app itself."""

    kind: PrincipalKind
    id: str = ""

    @classmethod
    def parse(cls, text: str) -> Principal:
        """Parse `user:SUB`, `group:NAME` or `app`."""
        if text == "app":
            return cls("app")
        kind, sep, ident = text.partition(":")
        if not sep or not ident or kind not in ("user", "group"):
            raise ValueError(f"owner must be 'user:SUB', 'group:NAME' or 'app', not {text!r}")
        return cls(kind, ident)  # type: ignore[arg-type]

    def __str__(self) -> str:
        return "app" if self.kind == "app" else f"{self.kind}:{self.id}"


APP = Principal("app")


class AccountRef(BaseModel):
    """One connected account as a model sees it when it must choose."""

    account: str
    label: str | None = None
    display_name: str | None = None
    grant_id: str | None = Field(None, exclude=True)  # for a script's retry by grant id; the model uses `account`

    @property
    def account_identifier(self) -> str:
        """The official client's name for `account`."""
        return self.account

    @property
    def account_display_name(self) -> str | None:
        """The official client's name for `display_name`."""
        return self.display_name


class GrantRef(BaseModel):
    """Which grant acted, so the model can tell the user which account was used."""

    provider: str
    account: str
    label: str | None = Field(None, exclude_if=lambda v: v is None)  # left out when empty: fewer tokens
    grant_id: str | None = Field(None, exclude=True)  # for scripts (`response.grant.grant_id`), not the model


class Grant(BaseModel):
    """A stored credential's metadata. Never carries the secret itself."""

    model_config = ConfigDict(frozen=True)

    grant_id: str
    provider: str
    owner: str
    kind: Literal["oauth2", "secret"]
    account: str
    label: str | None = None
    display_name: str | None = None
    scopes: list[str] = Field(default_factory=list)
    status: GrantStatus = "active"
    created_at: datetime
    updated_at: datetime
    expires_at: datetime | None = None

    def ref(self) -> GrantRef:
        return GrantRef(provider=self.provider, account=self.account, label=self.label, grant_id=self.grant_id)

    def account_ref(self) -> AccountRef:
        return AccountRef(account=self.account, label=self.label, display_name=self.display_name,
                          grant_id=self.grant_id)


@dataclass(frozen=True, slots=True)
class Injection:
    """How a credential rides on a request: header + format, query parameter, or basic auth."""

    header: str | None = "Authorization"
    format: str = "Bearer {token}"
    query: str | None = None
    basic: bool = False


@dataclass(frozen=True, slots=True)
class ReleasedCredential:
    """A credential released by the vault for one call. Lives only in memory, never in output."""

    grant: Grant
    token: str
    injection: Injection
    hosts: tuple[str, ...]
    allow_http: bool
    principal: str | None = None
    decision: str | None = None  # what the policy gate decided, for the audit row (None: plain allow)

    def __post_init__(self) -> None:
        redact.register(self.token)  # from release on, no message or log record may carry it

    def __repr__(self) -> str:
        return f"ReleasedCredential(grant={self.grant.grant_id!r}, token=<redacted>)"


class ConnectResult(BaseModel):
    """A grant created (or re-authorized) by a completed connect flow."""

    grant_id: str
    provider: str
    account: str
    label: str | None = None
    scopes: list[str] = Field(default_factory=list)
    operation: Literal["creation", "reauth"] = "creation"


class ConnectStart(BaseModel):
    """A connect flow waiting for the user: a browser link, or a device code to type at a verification URI."""

    session_id: str
    provider: str
    connect_url: str
    expires_at: datetime
    method: ConnectMethod = "browser"
    verification_uri: str | None = None
    user_code: str | None = None


class ConnectStatus(BaseModel):
    """The state of a connect flow, as polled."""

    status: Literal["pending", "completed", "denied", "expired", "error"]
    results: list[ConnectResult] = Field(default_factory=list)
    error: str | None = None
    error_code: str | None = None  # the typed error code of a failed flow


class ApiResponse(httpx.Response):
    """An upstream response, as httpx returns it, with every occurrence of the credential redacted.

    Scripts use it like any `httpx.Response` (`status_code`, `json()`, `text`, `headers`, `url`,
    `raise_for_status()`); `grant` names the grant that acted and `truncated` says the body was cut
    at the size cap. Its `request` is rebuilt from the method and the public URL alone, so no header
    and no query parameter carrying the credential is reachable from it.
    """

    def __init__(self, status_code: int, *, headers: Mapping[str, str] | Sequence[tuple[bytes, bytes]],
                 content: bytes, grant: GrantRef, method: str, url: httpx.URL | str, truncated: bool = False) -> None:
        # The body is whole and already decoded: handed over as a read stream, so httpx neither passes it
        # through its decoders again nor re-derives headers the caller already set.
        self._sent = (method, url)
        super().__init__(status_code, headers=headers, stream=httpx.ByteStream(content))
        self._content = content
        self.is_stream_consumed = self.is_closed = True
        self.grant = grant
        self.truncated = truncated

    @property  # type: ignore[override]
    def _request(self) -> httpx.Request:
        """httpx reads `_request` itself (`url`, `raise_for_status()`); built on first use, as most calls
        never look at it."""
        built = self.__dict__.get("_built_request")
        if built is None:
            built = self.__dict__["_built_request"] = httpx.Request(*self._sent)
        return built

    @_request.setter
    def _request(self, value: httpx.Request | None) -> None:
        if value is not None:
            self.__dict__["_built_request"] = value

    def __repr__(self) -> str:
        return f"<ApiResponse [{self.status_code} {self.reason_phrase}] {self.grant.provider}:{self.grant.account}>"

    @property
    def content_type(self) -> str:
        return str(self.headers.get("content-type", ""))

    @property
    def status(self) -> int:
        """The older name of `status_code`."""
        return self.status_code

    def json_body(self) -> Any:
        """The older name of `json()`."""
        return self.json()


class ToolErrorBody(BaseModel):
    """The error object of DESIGN §5; extra keys carry the data the model needs."""

    model_config = ConfigDict(extra="allow")

    code: str
    message: str
    retryable: bool = False
    user_action: str = "none"
    sent: bool | None = None  # on `request` errors: whether the upstream request left the process
    provider: str | None = None
    accounts: list[AccountRef] | None = None
    connect_url: str | None = None


class ToolErrorPayload(BaseModel):
    error: ToolErrorBody

    def to_json(self) -> str:
        return self.model_dump_json(exclude_none=True)
