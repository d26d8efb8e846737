"""RemoteVault: the Vault protocol over HTTP, speaking the official `alter-sdk` wire protocol.

Against our own vault server every error comes back as the typed error the embedded vault raises (the
server sends its error payload along); against another server of the protocol, the standard error codes
are mapped to the nearest of ours.
"""

from __future__ import annotations

import base64
import hashlib
import json
import logging
import os
import time
from datetime import UTC, datetime
from typing import Any, TypeVar

import httpx
from pydantic import BaseModel, ValidationError

from alter_agents import errors
from alter_agents.approval import Approver
from alter_agents.errors import (
    AlterError,
    AmbiguousGrantError,
    ConfigurationError,
    GrantNotFoundError,
    NotConnectedError,
    ReauthRequiredError,
    UnauthenticatedError,
    UpstreamUnreachableError,
)
from alter_agents.models import (
    AccountRef,
    ConnectMethod,
    ConnectResult,
    ConnectStart,
    ConnectStatus,
    Grant,
    ReleasedCredential,
)
from alter_agents.providers import Providers, ProviderSpec
from alter_agents.providers.binding import entry_for, is_loopback, parse_url
from alter_agents.server.keys import is_well_formed
from alter_agents.server.signing import sign
from alter_agents.server.wire import (
    ConnectSessionResponse,
    GrantItem,
    GrantListResponse,
    PollResponse,
    TokenResponse,
    WireInjection,
)
from alter_agents.sessions import DEFAULT_SCOPE
from alter_agents.settings import Settings
from alter_agents.telemetry import Correlation
from alter_agents.vault.connect import ProgressCallback, wait_for_connect
from alter_agents.vault.memory import ProcessMemory
from alter_agents.vault.remote_audit import AuditPoster

_POLL_INTERVAL = 0.25
# A released credential is reused for the same call target this long (never near its expiry, and never
# after this client saw a connect complete), so a revoked grant or API key stops working within the
# server's own bound plus this (see docs/vault-server.md).
CREDENTIAL_CACHE_SECONDS = 0.5
_CACHE_MAX = 10_000
_EXPIRY_MARGIN_SECONDS = 60.0
M = TypeVar("M", bound=BaseModel)
_PAGE = 1000
_log = logging.getLogger("alter_agents.audit")


class RemoteVault:
    """A vault server (ours, or any server of the `alter-sdk` protocol) behind the Vault protocol."""

    def __init__(self, base_url: str, api_key: str | None = None, settings: Settings | None = None,
                 *, timeout: float = 30.0, credential_ttl: float = CREDENTIAL_CACHE_SECONDS) -> None:
        api_key = api_key or os.environ.get("ALTER_API_KEY")
        if not api_key:
            raise ConfigurationError("A vault server needs an API key: pass api_key= or set ALTER_API_KEY.")
        if not is_well_formed(api_key) and not api_key.startswith("alter_key_"):
            raise ConfigurationError("The API key is malformed (expected alter_<type>_<random>_<checksum>).")
        url = httpx.URL(base_url.rstrip("/"))
        if url.scheme != "https" and not (url.scheme == "http" and is_loopback(url.host)):
            raise ConfigurationError("The vault server URL must be https (plain http only on loopback).")
        self.settings = settings or Settings.from_env()
        self.providers = Providers.load(self.settings.providers_file)
        self._api_key = api_key
        self._prefix = url.path.rstrip("/")
        self._http = httpx.AsyncClient(base_url=str(url), timeout=timeout)
        self._audit = AuditPoster(self._post_audit_batch)
        self._ours = False  # whether the server has shown our extension, and so takes batched audit posts
        self._credential_ttl = credential_ttl
        self._released: dict[tuple[str | None, ...], tuple[float, ReleasedCredential]] = {}
        # The server verifies tokens, not this client: memory is per exact token (only its holder reaches it).
        self.memory = ProcessMemory()

    def __repr__(self) -> str:
        return f"RemoteVault({str(self._http.base_url)!r}, api_key=<redacted>)"

    async def aclose(self) -> None:
        await self._audit.aclose()
        await self._http.aclose()

    async def principal(self, user_token: str | None, *, headless: bool = False) -> str:
        """A key for the caller's memory: the token's digest (the server verifies it on every call that acts)."""
        if not user_token:
            return "app"
        return "token:" + hashlib.sha256(user_token.encode()).hexdigest()[:40]

    async def _post(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        content = json.dumps({k: v for k, v in body.items() if v is not None}, separators=(",", ":")).encode()
        headers = {"x-api-key": self._api_key, "Content-Type": "application/json",
                   **sign(self._api_key, "POST", path, content)}
        try:
            response = await self._http.post(self._prefix + path, content=content, headers=headers)
        except httpx.TimeoutException:
            raise UpstreamUnreachableError("The vault server did not answer in time.") from None
        except httpx.TransportError as exc:
            raise UpstreamUnreachableError(f"Could not reach the vault server: {type(exc).__name__}.") from None
        try:
            data = response.json()
        except ValueError:
            data = None
        if not isinstance(data, dict):
            raise UpstreamUnreachableError(f"The vault server answered HTTP {response.status_code} without JSON.")
        if response.status_code >= 400:
            raise _error_from_wire(response.status_code, data)
        return data

    # -- credentials ----------------------------------------------------------------------------

    async def release_for(
        self,
        *,
        url: str,
        method: str = "GET",
        provider: str | None = None,
        user_token: str | None = None,
        account: str | None = None,
        label: str | None = None,
        grant_id: str | None = None,
        approver: Approver | None = None,
        scope: str = DEFAULT_SCOPE,
    ) -> ReleasedCredential:
        """The credential for one call; the same call target within `credential_ttl` reuses the last one.

        The vault server runs the policy gate; a rule that needs approval answers `approval_required`
        (a human cannot be asked across the wire protocol), whatever `approver` is given here.
        """
        target = (method.upper(), url, provider, user_token, account, label, grant_id)
        cached = self._released.get(target)
        if cached is not None and cached[0] > time.monotonic():
            return cached[1]
        credential = await self._release(url, method, provider, user_token, account, label, grant_id)
        self._keep(target, credential)
        return credential

    def _keep(self, target: tuple[str | None, ...], credential: ReleasedCredential) -> None:
        now = time.monotonic()
        expires = credential.grant.expires_at
        near_expiry = expires is not None and (
            expires.timestamp() - _EXPIRY_MARGIN_SECONDS < time.time() + self._credential_ttl)
        if self._credential_ttl <= 0 or near_expiry:
            return
        if len(self._released) >= _CACHE_MAX:
            self._released = {k: v for k, v in self._released.items() if v[0] > now}
            if len(self._released) >= _CACHE_MAX:
                self._released.clear()
        self._released[target] = (now + self._credential_ttl, credential)

    async def _release(self, url: str, method: str, provider: str | None, user_token: str | None,
                       account: str | None, label: str | None, grant_id: str | None) -> ReleasedCredential:
        body: dict[str, Any] = {"request": {"method": method.upper(), "url": url}, "user_token": user_token}
        if grant_id:
            body["grant_id"] = grant_id
        else:
            body.update(provider_id=provider, account=account, label=label)
        token = _parse(TokenResponse, await self._post("/sdk/token", body))
        ext = token.alter_agents
        if ext is not None:
            self._ours = True
            injection = ext.injection.to_injection()
            secret = token.access_token
            if injection.basic:
                secret = base64.b64decode(secret).decode().removesuffix(":")
            principal = ext.grant.owner if not user_token else None
            return ReleasedCredential(grant=ext.grant, token=secret, injection=injection, hosts=tuple(ext.hosts),
                                      allow_http=ext.allow_http, principal=principal)
        return self._foreign_credential(token, url, account, label)

    def _foreign_credential(self, token: TokenResponse, url: str, account: str | None,
                            label: str | None) -> ReleasedCredential:
        """Another server's answer: bind the credential to the provider's hosts we know, else the URL's host."""
        try:
            known: ProviderSpec | None = self.providers.get(token.provider_id)
        except AlterError:
            known = None
        parsed = parse_url(url)
        hosts = tuple(known.hosts) if known else (entry_for(parsed),)
        allow_http = known.allow_http if known else parsed.scheme == "http" and is_loopback(parsed.host)
        now = datetime.now(UTC)
        grant = Grant(grant_id=token.grant_id, provider=token.provider_id, owner="remote", kind="oauth2",
                      account=account or token.grant_id, label=label, scopes=token.scopes, created_at=now,
                      updated_at=now, expires_at=_parse_time(token.expires_at))
        injection = WireInjection(header=token.injection_header, format=token.injection_format).to_injection()
        return ReleasedCredential(grant=grant, token=token.access_token, injection=injection, hosts=hosts,
                                  allow_http=allow_http)

    async def record_call(
        self, grant: Grant, *, method: str, url: str, status: int | None, latency_ms: float | None,
        principal: str | None, error: str | None = None, action: str = "call",
        correlation: Correlation | None = None,
    ) -> None:
        """Best effort, as the official client does: an audit failure never fails the call.

        Our server takes them in batches (see `remote_audit`); another server gets one post per call.
        """
        body = {"grant_id": grant.grant_id, "provider_id": grant.provider, "method": method.upper(),
                "url": str(parse_url(url).copy_with(query=None)), "response_status": status or 0,
                "latency_ms": int(latency_ms or 0)}
        if correlation is not None:  # the official protocol's optional run/thread/trace tags
            body.update({k: v for k, v in correlation.audit_fields().items()
                         if k in ("run_id", "thread_id", "trace_id", "surface", "tool")})
        if self._ours:
            self._audit.add(body)
            return
        try:
            await self._post("/sdk/oauth/audit/api-call", body)
        except AlterError:
            return

    async def _post_audit_batch(self, rows: list[dict[str, Any]]) -> None:
        """Post one batch; a refusal (not an outage) drops it with a warning rather than retrying forever."""
        try:
            await self._post("/sdk/alter/audit/batch", {"calls": rows})
        except UpstreamUnreachableError:
            raise
        except AlterError as exc:
            _log.warning("the vault server refused %d audit rows: %s", len(rows), exc.message)

    # -- grants ---------------------------------------------------------------------------------

    async def list_grants(
        self, *, user_token: str | None = None, provider: str | None = None, everyone: bool = False
    ) -> list[Grant]:
        found: list[Grant] = []
        offset = 0
        while True:
            body = {"limit": _PAGE, "offset": offset, "provider_id": provider, "user_token": user_token,
                    "alter_owner_scope": "operator" if everyone else "session"}
            listed = _parse(GrantListResponse, await self._post("/sdk/grants/list", body))
            found.extend(_grant_of(item) for item in listed.grants)
            if not listed.has_more or not listed.grants:
                return found
            offset += len(listed.grants)

    # -- connect ----------------------------------------------------------------------------------

    async def start_connect(
        self, provider: str, *, user_token: str | None = None, label: str | None = None,
        scopes: list[str] | None = None, redirect_uri: str | None = None, headless: bool = False,
        login_hint: str | None = None,
        method: ConnectMethod = "browser",
    ) -> ConnectStart:
        """Start a hosted connect session (the wire protocol carries no login hint: it is not sent)."""
        if method == "device":
            raise ConfigurationError(
                "Device-code sign-in runs on an embedded vault; the vault server's connect protocol has no "
                "device mode. Run `alter-agents connect PROVIDER --device` where the vault's store is."
            )
        body = {"allowed_providers": [provider], "user_token": user_token, "label": label,
                "required_scopes": {provider: scopes} if scopes else None, "alter_headless": headless}
        session = _parse(ConnectSessionResponse, await self._post("/sdk/oauth/connect/session", body))
        expires = _parse_time(session.expires_at) or datetime.fromtimestamp(time.time() + session.expires_in, UTC)
        return ConnectStart(session_id=session.session_token, provider=provider, connect_url=session.connect_url,
                            expires_at=expires)

    async def connect_status(self, session_id: str) -> ConnectStatus:
        polled = _parse(PollResponse, await self._post("/sdk/oauth/connect/session/poll",
                                                       {"session_token": session_id}))
        if polled.status == "completed":
            self._released.clear()  # a new grant may change what a call target resolves to
            return ConnectStatus(status="completed", results=[
                ConnectResult(grant_id=g.grant_id, provider=g.provider_id, account=g.account_identifier or "",
                              label=g.label, scopes=g.scopes, operation=g.operation)
                for g in polled.grants or []
            ])
        if polled.status == "error":
            code = polled.error.error_code if polled.error else "connect_failed"
            message = polled.error.error_message if polled.error else None
            return ConnectStatus(status="denied" if code == "connect_denied" else "error", error=message)
        if polled.status in ("pending", "expired"):
            return ConnectStatus(status=polled.status)  # type: ignore[arg-type]
        return ConnectStatus(status="error", error=f"unexpected connect status {polled.status!r}")

    async def wait_connect(self, session_id: str, timeout: float,
                           on_progress: ProgressCallback | None = None) -> ConnectStatus:
        """Poll until the user finishes; raises on denial, error or timeout (as the embedded vault does)."""
        return await wait_for_connect(self.connect_status, session_id, timeout, on_progress, _POLL_INTERVAL)


def _parse(model: type[M], data: dict[str, Any]) -> M:
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise UpstreamUnreachableError(f"The vault server sent a malformed {model.__name__}: {exc.error_count()} "
                                       "field errors.", retryable=False) from None


def _parse_time(value: str | None) -> datetime | None:
    if not value:
        return None
    try:
        return datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None


def _grant_of(item: GrantItem) -> Grant:
    if item.alter_agents is not None:
        return item.alter_agents.grant
    created = _parse_time(item.created_at) or datetime.now(UTC)
    return Grant(
        grant_id=item.grant_id, provider=item.provider_id or item.managed_secret_slug or "",
        owner="app" if item.principal_type == "system" else item.principal_type,
        kind="oauth2" if item.grant_kind == "oauth" else "secret", account=item.account_identifier or item.grant_id,
        label=item.label, display_name=item.account_display_name, scopes=item.scopes,
        status="active" if item.status == "active" else "needs_reauth", created_at=created, updated_at=created,
        expires_at=_parse_time(item.expires_at),
    )


def _error_from_wire(status: int, data: dict[str, Any]) -> AlterError:
    """Rebuild our typed error from a server error body."""
    if isinstance(data.get("detail"), dict):
        data = {**data["detail"], **{k: v for k, v in data.items() if k != "detail"}}
    code = str(data.get("error") or "")
    message = str(data.get("message") or f"The vault server answered HTTP {status}.")
    provider = str(data.get("provider_id") or "")
    ours: dict[str, Any] = data["alter_error"] if isinstance(data.get("alter_error"), dict) else {}
    if code == "ambiguous_grant":
        accounts = [AccountRef(account=str(c.get("account_identifier") or c.get("grant_id")), label=c.get("label"),
                               display_name=c.get("account_display_name"), grant_id=c.get("grant_id"))
                    for c in data.get("candidates") or [] if isinstance(c, dict)]
        if not accounts:
            accounts = [AccountRef(account=str(a)) for a in data.get("account_identifiers") or []]
        return AmbiguousGrantError(provider, accounts)
    if code == "not_connected" or (status == 404 and provider and ours.get("code") != "grant_not_found"):
        return NotConnectedError(provider, account=ours.get("account"), connect_url=ours.get("connect_url"))
    if status == 404:
        return GrantNotFoundError(str(ours.get("grant_id") or data.get("grant_id") or ""))
    if code in ("credential_revoked", "grant_revoked") and provider:
        return ReauthRequiredError(provider, ours.get("account"), connect_url=ours.get("connect_url"))
    if code == "jwt_validation_error":
        return UnauthenticatedError(message)
    if ours.get("code"):
        return _rebuild(str(data.get("alter_error_type") or ""), ours)
    if status == 401:
        return ConfigurationError(f"The vault server refused this client: {message} ({code or status}).")
    if status in (429, 503, 504) or status >= 500:
        return UpstreamUnreachableError(f"The vault server is unavailable: {message}")
    return AlterError(message, wire_error=code or None)


def _rebuild(type_name: str, body: dict[str, Any]) -> AlterError:
    """The same class, message and data as the server's error, without re-running its constructor."""
    cls = getattr(errors, type_name, None)
    if not (isinstance(cls, type) and issubclass(cls, AlterError)):
        cls = next((c for c in _leaf_classes() if c.code == body.get("code")), AlterError)
    data = {k: v for k, v in body.items() if k not in ("code", "message", "retryable", "user_action")}
    exc = cls.__new__(cls)
    AlterError.__init__(exc, str(body.get("message", "")), **data)
    return exc


def _leaf_classes() -> list[type[AlterError]]:
    found: list[type[AlterError]] = []
    pending: list[type[AlterError]] = [AlterError]
    while pending:
        cls = pending.pop()
        found.append(cls)
        pending.extend(cls.__subclasses__())
    return [c for c in found if c.code != "internal"]
