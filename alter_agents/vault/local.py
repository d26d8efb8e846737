"""LocalVault: the embedded vault. Resolves grants, refreshes and releases credentials in-process."""

from __future__ import annotations

import asyncio
import functools
import json
import time
import uuid
from dataclasses import replace

import anyio
import httpx

from alter_agents import metrics, telemetry
from alter_agents.approval import Approver
from alter_agents.errors import (
    GrantNotFoundError,
    InvalidArgumentsError,
    ReauthRequiredError,
    UnauthenticatedError,
    UpstreamUnreachableError,
    VaultKeyError,
)
from alter_agents.models import (
    APP,
    ConnectMethod,
    ConnectStart,
    ConnectStatus,
    Grant,
    Principal,
    ReleasedCredential,
)
from alter_agents.policy import Policy
from alter_agents.providers import Providers, ProviderSpec
from alter_agents.providers.binding import check_destination, parse_url
from alter_agents.sessions import DEFAULT_SCOPE
from alter_agents.settings import Settings
from alter_agents.telemetry import Correlation
from alter_agents.vault import audit_chain, oauth
from alter_agents.vault.audit import AuditWriter
from alter_agents.vault.audit_chain import ChainReport
from alter_agents.vault.audit_ledger import AuditFilter
from alter_agents.vault.cache import GrantCache
from alter_agents.vault.connect import ConnectFlows, ProgressCallback
from alter_agents.vault.crypto import Cipher, derive, grant_binding
from alter_agents.vault.device_flows import DeviceFlows
from alter_agents.vault.gate import PolicyGate
from alter_agents.vault.identity import Identity, JWTVerifier
from alter_agents.vault.keyfile import load_key, reseal
from alter_agents.vault.memory import StoreMemory
from alter_agents.vault.resolve import choose, owned_by
from alter_agents.vault.store import AuditEntry, Store, StoredGrant

REFRESH_SKEW_SECONDS = 60.0
REFRESH_LEASE_SECONDS = 30.0
_KEY_CHECK = b"alter-agents key check"
_MAX_OPENED = 10_000


class LocalVault:
    """The embedded vault over a SQLite file or PostgreSQL. Opened lazily on first use."""

    def __init__(self, settings: Settings | None = None, *, providers: Providers | None = None) -> None:
        self.settings = settings or Settings.from_env()
        self.providers = providers or Providers.load(self.settings.providers_file)
        self.store = Store(self.settings.vault_url)
        self.audit_log = AuditWriter(self.store)
        self._grant_cache: GrantCache[list[StoredGrant]] = GrantCache(self.store)
        self._http = httpx.AsyncClient()
        self.verifier: JWTVerifier | None = None
        if self.settings.idp_issuer:
            self.verifier = JWTVerifier(
                self.settings.idp_issuer, self.settings.jwt_audience(), self.settings.idp_jwks_url,
                self.settings.idp_groups_claim, http=self._http,
            )
        self._cipher_obj: Cipher | None = None
        self._open_lock = asyncio.Lock()
        self._refreshing: dict[str, asyncio.Task[dict[str, str | None]]] = {}
        # Plaintexts keyed by ciphertext AND the row binding they were checked against.
        self._opened: dict[tuple[bytes, str], dict[str, str | None]] = {}
        self.connects = ConnectFlows(self.store, self._cipher, self.providers, self._http, self.settings.public_url)
        self.memory = StoreMemory(self.store, self.open)
        policy = Policy.load(self.settings.policy_file, known_providers=self.providers.names(),
                             server_read_only=self.settings.read_only)
        self.gate = PolicyGate(policy, self.memory, self.audit_log)
        self.devices = DeviceFlows(self.store, self.providers, self._http, self.connects)

    # -- lifecycle ---------------------------------------------------------------------------

    async def open(self) -> None:
        """Create or upgrade the schema and check the at-rest key against the store."""
        if self._cipher_obj is not None:
            return
        async with self._open_lock:
            if self._cipher_obj is not None:
                return
            await self.store.migrate()
            key, source = await load_key(self.settings, self.store)
            cipher = Cipher(key)
            check = await self.store.set_meta_once("key_check", cipher.encrypt(_KEY_CHECK, "key_check"))
            if cipher.try_decrypt(check, "key_check") != _KEY_CHECK:
                raise VaultKeyError(
                    f"Cannot decrypt the vault: {source} is not the key this store was written with. "
                    "Nothing was changed; see 'Recovering the vault key' in docs/vault.md."
                )
            await self.store.reseal_grants(functools.partial(reseal, cipher))
            self.store.audit_key = derive(key, audit_chain.PURPOSE)
            self._cipher_obj = cipher

    def _cipher(self) -> Cipher:
        if self._cipher_obj is None:
            raise RuntimeError("vault not opened")
        return self._cipher_obj

    async def aclose(self) -> None:
        await self.devices.aclose()
        refreshing = [t for t in self._refreshing.values() if not t.done()]
        if refreshing:  # let a refresh the provider already answered reach the store
            await asyncio.wait(refreshing, timeout=REFRESH_LEASE_SECONDS)
        await self.connects.aclose()
        await self._http.aclose()
        await self.audit_log.aclose()
        await self.store.close()

    # -- identity ----------------------------------------------------------------------------

    async def identify(self, user_token: str | None) -> Identity | None:
        """The verified user, or None in local mode. Raises when the session cannot act."""
        if user_token:
            if self.verifier is None:
                raise UnauthenticatedError(
                    "A user token was given but no identity provider is configured (ALTER_IDP_ISSUER)."
                )
            return await self.verifier.verify(user_token)
        if self.verifier is not None:
            raise UnauthenticatedError("This vault needs the end user's JWT to choose their grants; none was sent.")
        return None

    async def principal(self, user_token: str | None, *, headless: bool = False) -> str:
        """The verified owner key of the caller: `user:<sub>`, or `app` in local or headless mode."""
        if headless and not user_token:
            return str(APP)
        identity = await self.identify(user_token)
        return f"user:{identity.sub}" if identity else str(APP)

    async def owners(self, user_token: str | None) -> list[str]:
        identity = await self.identify(user_token)
        return identity.owners() if identity else [str(APP)]

    # -- resolution and release ---------------------------------------------------------------

    async def resolve(
        self,
        *,
        provider: str | None,
        identity: Identity | None,
        account: str | None = None,
        label: str | None = None,
        grant_id: str | None = None,
    ) -> StoredGrant:
        """Pick the grant that backs a call (DESIGN §3) for an already verified caller."""
        await self.open()
        if grant_id:
            found = await self._grant_cache.get(("id", grant_id), lambda: self._grant_by_id(grant_id))
            stored = found[0] if found else None
            owned_by(stored.grant if stored else None, identity.owners() if identity else None, grant_id)
            assert stored is not None
            if provider and provider != stored.grant.provider:
                raise InvalidArgumentsError(
                    f"This session's grant is for {stored.grant.provider}, not {provider}.",
                    provider=stored.grant.provider,
                )
            return stored
        if not provider:
            raise InvalidArgumentsError("Name the provider (or pass a grant id) so a grant can be chosen.")
        self.providers.get(provider)
        candidates = await self._grant_cache.get(
            ("owners", identity.sub, identity.groups, provider) if identity else ("owners", provider),
            lambda: self.store.list_grants(identity.owners() if identity else [str(APP)], provider,
                                           statuses=("active", "needs_reauth")),
        )
        if len(candidates) == 1 and not account and not label:
            return candidates[0]  # the common case: one account on this provider (listed active or needs_reauth)
        by_id = {c.grant.grant_id: c for c in candidates}
        chosen = choose([c.grant for c in candidates], provider, account, label)
        return by_id[chosen.grant_id]

    async def _grant_by_id(self, grant_id: str) -> list[StoredGrant]:
        stored = await self.store.get_grant(_canonical_uuid(grant_id)) if _is_uuid(grant_id) else None
        return [stored] if stored else []

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
        """Resolve the grant for a call to `url`, run the policy gate, and release its credential (one step,
        as `/sdk/token`). A rule that needs approval asks `approver`; without one it raises
        `ApprovalRequiredError`, and nothing is released."""
        await self.open()
        identity = None if grant_id and not user_token else await self.identify(user_token)
        stored = await self.resolve(provider=provider, identity=identity, account=account, label=label,
                                    grant_id=grant_id)
        principal = f"user:{identity.sub}" if identity else None
        decision = None
        if not self.gate.policy.empty:
            spec = self.providers.get(stored.grant.provider)
            check_destination(url, spec.name, spec.hosts, spec.allow_http)  # a refused host asks nobody
            decision = await self.gate.check(
                stored.grant, principals=identity.owners() if identity else [stored.grant.owner],
                principal=principal or stored.grant.owner, method=method, url=url, approver=approver, scope=scope,
            )
        released = await self.release(stored, url, principal=principal)
        return replace(released, decision=decision) if decision else released

    async def release(self, stored: StoredGrant, url: str, *, principal: str | None = None) -> ReleasedCredential:
        """Check the destination, refresh if due, and hand out the credential for one call."""
        grant = stored.grant
        spec = self.providers.get(grant.provider)
        check_destination(url, spec.name, spec.hosts, spec.allow_http)
        if grant.status == "needs_reauth":
            raise ReauthRequiredError(grant.provider, grant.account)
        if grant.status != "active":
            raise GrantNotFoundError(grant.grant_id)
        token = await self._access_token(stored, spec)
        return ReleasedCredential(grant=grant, token=token, injection=spec.inject.to_injection(),
                                  hosts=tuple(spec.hosts), allow_http=spec.allow_http,
                                  principal=principal or grant.owner)

    def seal(self, grant_id: str, owner: str, provider: str, secret: dict[str, str | None]) -> bytes:
        """Encrypt a credential for the grant row (id, owner, provider) it will be stored in."""
        return self._cipher().encrypt(json.dumps(secret).encode(), grant_binding(grant_id, owner, provider))

    def _open_secret(self, stored: StoredGrant) -> dict[str, str | None]:
        """Decrypt a grant's credential after checking it was sealed for this very row.

        The plaintext is remembered under the ciphertext and the row's binding, so a ciphertext copied
        into another row (or a row whose owner or provider changed) is checked afresh, and refused.
        """
        grant = stored.grant
        binding = grant_binding(grant.grant_id, grant.owner, grant.provider)
        data = self._opened.get((stored.secret, binding))
        if data is None:
            plaintext = self._cipher().try_decrypt(stored.secret, binding)
            if plaintext is None:
                raise VaultKeyError(
                    f"The stored credential of grant {grant.grant_id} was not sealed for that grant (the store "
                    "was changed without the vault key), so it was not used. Reconnect the account."
                )
            data = json.loads(plaintext)
            if len(self._opened) >= _MAX_OPENED:
                self._opened.clear()
            self._opened[(stored.secret, binding)] = data
        return dict(data)

    async def _access_token(self, stored: StoredGrant, spec: ProviderSpec) -> str:
        secret = self._open_secret(stored)
        if _due(stored.grant) and secret.get("refresh_token"):
            secret = await self._refresh(stored, spec)
        token = secret.get("access_token")
        if not token:
            raise ReauthRequiredError(stored.grant.provider, stored.grant.account)
        return token

    async def _refresh(self, seen: StoredGrant, spec: ProviderSpec) -> dict[str, str | None]:
        """Single-flight refresh in a vault-owned task, so a cancelled caller never loses the grant.

        Callers in this process share one task per grant and wait on it shielded: the task commits
        whatever the provider returned (a rotated refresh token included) and releases the store
        lease even when every caller has gone.
        """
        grant_id = seen.grant.grant_id
        loop = asyncio.get_running_loop()
        task = self._refreshing.get(grant_id)
        if task is None or task.done() or task.get_loop() is not loop:
            task = loop.create_task(self._refresh_now(seen, spec))
            self._refreshing[grant_id] = task
            task.add_done_callback(functools.partial(self._refresh_finished, grant_id))
        return dict(await asyncio.shield(task))

    def _refresh_finished(self, grant_id: str, task: asyncio.Task[dict[str, str | None]]) -> None:
        if self._refreshing.get(grant_id) is task:
            del self._refreshing[grant_id]
        if not task.cancelled():
            task.exception()  # retrieved here, so a refresh whose callers all left does not warn

    async def _refresh_now(self, seen: StoredGrant, spec: ProviderSpec) -> dict[str, str | None]:
        """Take the cross-process lease, ask the provider, commit; the lease is released on every exit."""
        grant_id = seen.grant.grant_id
        deadline = time.monotonic() + REFRESH_LEASE_SECONDS + 5
        while True:
            current = await self.store.get_grant(grant_id)
            if current is None:
                raise GrantNotFoundError(grant_id)
            if current.grant.status == "needs_reauth":
                raise ReauthRequiredError(current.grant.provider, current.grant.account)
            if current.secret != seen.secret and not _expired(current.grant):
                return self._open_secret(current)  # someone else refreshed meanwhile
            if await self.store.claim_refresh(grant_id, REFRESH_LEASE_SECONDS):
                break
            if time.monotonic() > deadline:
                raise UpstreamUnreachableError("Another process is still refreshing this token; try again.")
            await anyio.sleep(0.05)
        try:
            # Another process may have committed its refresh between our read and our claim;
            # its old refresh token is dead now, so re-read under the lease before using it.
            current = await self.store.get_grant(grant_id) or current
            if current.secret != seen.secret and not _expired(current.grant):
                await self._release_lease(grant_id)
                return self._open_secret(current)
            secret = self._open_secret(current)
            with telemetry.span("alter.refresh", provider=spec.name, grant_id=grant_id):
                tokens = await oauth.refresh(self._http, spec, secret["refresh_token"] or "")
        except oauth.InvalidGrant:
            metrics.REFRESHES.labels(spec.name, "reauth").inc()
            with anyio.CancelScope(shield=True):
                await self.store.finish_refresh(grant_id, secret=None, expires_at=None, status="needs_reauth")
                await self.store.record("refresh", grant_id=grant_id, provider=spec.name, detail="invalid_grant")
            raise ReauthRequiredError(current.grant.provider, current.grant.account) from None
        except BaseException as exc:
            if isinstance(exc, Exception):
                metrics.REFRESHES.labels(spec.name, "failed").inc()
            await self._release_lease(grant_id)
            raise
        metrics.REFRESHES.labels(spec.name, "ok").inc()
        new = {"access_token": tokens.access_token,
               "refresh_token": tokens.refresh_token or secret.get("refresh_token")}
        grant = current.grant
        with anyio.CancelScope(shield=True):  # the provider may have rotated the refresh token: keep it
            sealed = self.seal(grant_id, grant.owner, grant.provider, new)
            await self.store.finish_refresh(grant_id, secret=sealed, expires_at=tokens.expires_at)
            self._opened[(sealed, grant_binding(grant_id, grant.owner, grant.provider))] = new
            await self.store.record("refresh", grant_id=grant_id, provider=spec.name, detail="ok")
        return new

    async def _release_lease(self, grant_id: str) -> None:
        with anyio.CancelScope(shield=True):
            await self.store.finish_refresh(grant_id, secret=None, expires_at=None)

    # -- grants and secrets -----------------------------------------------------------------

    async def list_grants(
        self, *, user_token: str | None = None, provider: str | None = None, everyone: bool = False
    ) -> list[Grant]:
        await self.open()
        owners = None if everyone else await self.owners(user_token)
        stored = await self.store.list_grants(owners, provider, statuses=("active", "needs_reauth"))
        return [s.grant for s in stored]

    async def get_grant(self, grant_id: str) -> Grant | None:
        await self.open()
        stored = await self.store.get_grant(_canonical_uuid(grant_id)) if _is_uuid(grant_id) else None
        return stored.grant if stored else None

    async def revoke(self, grant_id: str, *, user_token: str | None = None) -> Grant:
        """Mark a grant revoked and wipe its credential."""
        await self.open()
        owners = await self.owners(user_token) if user_token else None
        stored = await self.store.get_grant(_canonical_uuid(grant_id)) if _is_uuid(grant_id) else None
        grant = owned_by(stored.grant if stored else None, owners, grant_id)
        empty = self._cipher().encrypt(b"{}", grant_binding(grant.grant_id, grant.owner, grant.provider))
        await self.store.finish_refresh(grant.grant_id, secret=empty, expires_at=None, status="revoked")
        await self.store.record("revoke", grant_id=grant.grant_id, provider=grant.provider,
                                principal=grant.owner)
        return grant

    async def add_secret(
        self, provider: str, value: str, *, owner: Principal, account: str, label: str | None = None,
        display_name: str | None = None,
    ) -> Grant:
        """Store an operator-issued secret (API key) as a grant."""
        await self.open()
        spec = self.providers.get(provider)
        if not value or any(c in value for c in "\r\n\0"):
            raise InvalidArgumentsError("The secret is empty or contains line breaks.")
        payload: dict[str, str | None] = {"access_token": value, "refresh_token": None}
        stored, _created = await self.store.upsert_grant(
            provider=spec.name, owner=str(owner), kind=spec.kind, account=account, label=label,
            display_name=display_name, scopes=[],
            seal=lambda grant_id: self.seal(grant_id, str(owner), spec.name, payload), expires_at=None,
        )
        await self.store.record("secret_added", grant_id=stored.grant.grant_id, provider=spec.name,
                                principal=str(owner))
        return stored.grant

    # -- connect ----------------------------------------------------------------------------

    async def start_connect(
        self, provider: str, *, user_token: str | None = None, label: str | None = None,
        scopes: list[str] | None = None, redirect_uri: str | None = None, headless: bool = False,
        login_hint: str | None = None,
        method: ConnectMethod = "browser",
    ) -> ConnectStart:
        """Begin linking an account; the grant is owned by the user, or by the app when headless.

        `method="device"` signs in with a device code (RFC 8628) for machines without a browser.
        """
        await self.open()
        identity = None if headless and not user_token else await self.identify(user_token)
        owner = f"user:{identity.sub}" if identity else str(APP)
        if method == "device":
            return await self.devices.start(provider, owner, label=label, scopes=scopes)
        return await self.connects.start(provider, owner, label=label, scopes=scopes, redirect_uri=redirect_uri,
                                         login_hint=login_hint)

    async def connect_status(self, session_id: str) -> ConnectStatus:
        await self.open()
        return await self.connects.status(session_id)

    async def wait_connect(self, session_id: str, timeout: float,
                           on_progress: ProgressCallback | None = None) -> ConnectStatus:
        await self.open()
        return await self.connects.wait(session_id, timeout, on_progress)

    async def complete_connect(self, query: dict[str, str], browser: str | None = None) -> tuple[bool, str]:
        await self.open()
        return await self.connects.complete(query, browser)

    async def connect_confirm_page(self, session_id: str) -> tuple[int, str]:
        await self.open()
        return await self.connects.confirm_page(session_id)

    async def open_connect_link(self, session_id: str) -> tuple[str, str]:
        await self.open()
        return await self.connects.open_link(session_id)

    # -- audit -----------------------------------------------------------------------------

    async def record_call(
        self, grant: Grant, *, method: str, url: str, status: int | None, latency_ms: float | None,
        principal: str | None, error: str | None = None, action: str = "call",
        correlation: Correlation | None = None,
    ) -> None:
        host, path = _host_and_path(url)
        row = {"at": time.time(), "action": action, "principal": principal, "grant_id": grant.grant_id,
               "provider": grant.provider, "method": method.upper(), "host": host, "path": path, "status": status,
               "latency_ms": latency_ms, "detail": error}
        if correlation is not None:
            row.update(correlation.audit_fields())
        self.audit_log.add_row(row)

    async def audit_query(self, where: AuditFilter) -> list[AuditEntry]:
        """Audit rows matching `where`, newest first (rows still queued are written first)."""
        await self.open()
        await self.audit_log.flush()
        return await self.store.audit_query(where)

    async def audit_prune(self, before: float) -> int:
        """Delete rows older than `before` (a retention policy); the chain still verifies from its anchor."""
        await self.open()
        await self.audit_log.flush()
        return await self.store.audit_prune(before)

    async def audit_verify(self) -> tuple[ChainReport, int]:
        """Check the audit log's hash chain: the first row changed, removed or inserted, if any."""
        await self.open()
        await self.audit_log.flush()
        return await self.store.audit_verify()

    async def audit(self, limit: int = 100, grant_id: str | None = None) -> list[AuditEntry]:
        await self.open()
        await self.audit_log.flush()
        return await self.store.audit_entries(limit, grant_id)


@functools.lru_cache(maxsize=1024)
def _host_and_path(url: str) -> tuple[str, str]:
    parsed = parse_url(url)
    return parsed.host, parsed.path


def _due(grant: Grant) -> bool:
    return grant.expires_at is not None and grant.expires_at.timestamp() - REFRESH_SKEW_SECONDS < time.time()


def _expired(grant: Grant) -> bool:
    return grant.expires_at is not None and grant.expires_at.timestamp() <= time.time()


def _is_uuid(text: str) -> bool:
    try:
        uuid.UUID(text)
    except (ValueError, AttributeError):
        return False
    return True


def _canonical_uuid(text: str) -> str:
    return str(uuid.UUID(text))

