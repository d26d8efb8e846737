"""Connect flows: start an OAuth authorization, receive its redirect, store the resulting grant.

Flow state lives in the store (keyed by the OAuth `state`), so the redirect may be received by
another process or server replica than the one that started the flow.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import logging
import secrets
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime

import anyio
import httpx

from alter_agents.errors import (
    AlterError,
    ConnectDeniedError,
    ConnectError,
    ConnectTimeoutError,
    InvalidArgumentsError,
    RateLimitedError,
    UpstreamUnreachableError,
)
from alter_agents.models import ConnectResult, ConnectStart, ConnectStatus
from alter_agents.providers import Providers, ProviderSpec
from alter_agents.providers.binding import check_destination
from alter_agents.vault import oauth
from alter_agents.vault.crypto import Cipher, grant_binding
from alter_agents.vault.loopback import LoopbackReceiver, confirm_page, page
from alter_agents.vault.store import ConnectSessionRow, Store

CONNECT_TTL_SECONDS = 600.0
START_PATH = "/oauth/start"  # where a server-hosted connect link opens: a confirm page on our own server
MAX_LIVE_FLOWS_PER_OWNER = 20
_log = logging.getLogger(__name__)
ProgressCallback = Callable[[float, str], Awaitable[None]]


class ConnectFlows:
    def __init__(self, store: Store, cipher: Callable[[], Cipher], providers: Providers,
                 http: httpx.AsyncClient, public_url: str | None) -> None:
        self._store = store
        self._cipher = cipher
        self._providers = providers
        self._http = http
        self._public_url = public_url
        self._receivers: dict[str, LoopbackReceiver] = {}

    @property
    def callback_url(self) -> str | None:
        return f"{self._public_url}/oauth/callback" if self._public_url else None

    @staticmethod
    def browser_cookie(session_id: str) -> str:
        """The cookie that ties a flow to the browser its link was opened in."""
        return "alter_connect_" + hashlib.sha256(session_id.encode()).hexdigest()[:16]

    async def start(
        self, provider: str, owner: str, *, label: str | None = None, scopes: list[str] | None = None,
        redirect_uri: str | None = None, ttl: float = CONNECT_TTL_SECONDS, login_hint: str | None = None,
    ) -> ConnectStart:
        spec = self._providers.get(provider)
        if spec.kind != "oauth2":
            raise ConnectError(
                f"{provider} uses a managed secret, not OAuth; an operator adds it with "
                f"`alter-agents secrets add {provider} ...`.",
                provider=provider,
            )
        scopes = _allowed(spec, scopes)
        now = time.time()
        live = await self._store.live_connect_sessions(owner, expired_before=now - CONNECT_TTL_SECONDS)
        if live >= MAX_LIVE_FLOWS_PER_OWNER:
            raise RateLimitedError(
                f"{live} sign-ins started for this user are still open; finish one in the browser or wait for "
                f"them to expire (at most {CONNECT_TTL_SECONDS / 60:.0f} minutes) before starting another.",
                provider=provider,
            )
        state = oauth.new_state()
        verifier = oauth.new_code_verifier()
        receiver: LoopbackReceiver | None = None
        # A flow whose redirect comes back to our own server is handed out as a link to our confirm page,
        # usable in one browser only; the callback then requires that browser's cookie.
        bind_browser = redirect_uri is None and self.callback_url is not None
        redirect_uri = redirect_uri or self.callback_url
        if redirect_uri is None:
            receiver = LoopbackReceiver(self._on_loopback_redirect(state))
            await receiver.start()
            redirect_uri = receiver.redirect_uri
        url = oauth.authorization_url(spec, redirect_uri=redirect_uri, state=state, code_verifier=verifier,
                                      scopes=scopes, login_hint=login_hint)
        now = time.time()
        await self._store.create_connect_session(ConnectSessionRow(
            session_id=state, provider=provider, owner=owner, label=label, scopes=list(scopes or spec.scopes),
            redirect_uri=redirect_uri, verifier=self._cipher().encrypt(verifier.encode(), state),
            status="pending", result=None, error=None, created_at=now, expires_at=now + ttl,
            browser="" if bind_browser else None,
        ))
        if bind_browser:
            url = f"{self._public_url}{START_PATH}/{state}"
        if receiver is not None:
            self._receivers[state] = receiver
            self._expire_receiver_later(state, ttl)
        return ConnectStart(session_id=state, provider=provider, connect_url=url,
                            expires_at=_dt(now + ttl))

    def _on_loopback_redirect(self, state: str) -> Callable[[dict[str, str]], Awaitable[tuple[bool, str]]]:
        async def handle(query: dict[str, str]) -> tuple[bool, str]:
            if query.get("state") != state:
                return False, "This redirect does not belong to the sign-in in progress."
            return await self.complete(query)
        return handle

    def _expire_receiver_later(self, state: str, ttl: float) -> None:
        async def expire() -> None:
            receiver = self._receivers.get(state)
            if receiver is None:
                return
            with anyio.move_on_after(ttl):
                await receiver.done.wait()
            await anyio.sleep(0.2)
            await self._close_receiver(state)

        task = asyncio.get_running_loop().create_task(expire())
        _background.add(task)
        task.add_done_callback(_background.discard)

    async def _close_receiver(self, state: str) -> None:
        receiver = self._receivers.pop(state, None)
        if receiver is not None:
            await receiver.close()

    async def confirm_page(self, session_id: str) -> tuple[int, str]:
        """The page a server-hosted connect link shows: who asked to link what, and one button.

        A GET changes nothing (link previews must not use up the link); the button POSTs to `open_link`.
        """
        row = await self._store.get_connect_session(session_id)
        if row is None or row.browser is None or row.expires_at < time.time() or row.status != "pending":
            return 404, page("Link expired", "This sign-in link is unknown or expired; ask for a new one.")
        if row.browser:
            return 409, page("Link already used", "This sign-in link was already opened in a browser. If that was "
                             "not you, do not continue; ask for a new link.")
        spec = self._providers.get(row.provider)
        minutes = max(int((row.expires_at - time.time()) // 60), 1)
        action = f"{self._public_url}{START_PATH}/{session_id}"
        return 200, confirm_page(spec.display_name or spec.name, row.owner, minutes, action)

    async def open_link(self, session_id: str) -> tuple[str, str]:
        """Use a server-hosted connect link, once: returns the authorization URL and the secret that binds
        the flow to this browser (set it as the `browser_cookie`)."""
        row = await self._store.get_connect_session(session_id)
        secret = secrets.token_urlsafe(32)
        if row is None or not await self._store.bind_connect_browser(session_id, _hash(secret)):
            raise ConnectError("This sign-in link was already used or has expired; ask for a new one.")
        spec = self._providers.get(row.provider)
        verifier = self._cipher().decrypt(row.verifier, row.session_id).decode()
        url = oauth.authorization_url(spec, redirect_uri=row.redirect_uri, state=session_id,
                                      code_verifier=verifier, scopes=row.scopes)
        return url, secret

    async def complete(self, query: dict[str, str], browser: str | None = None) -> tuple[bool, str]:
        """Handle the authorization server's redirect; returns (finished, message for the browser).

        `browser` is the flow's browser cookie; a flow opened through a confirm page completes only in
        the browser that opened it.
        """
        state = query.get("state", "")
        row = await self._store.get_connect_session(state) if state else None
        if row is None:
            return False, "Unknown or expired sign-in; start connect again."
        if row.browser is not None and not (row.browser and browser and hmac.compare_digest(row.browser,
                                                                                           _hash(browser))):
            return False, "This sign-in was not started in this browser; open the sign-in link you were given."
        if row.expires_at < time.time():
            await self._store.finish_connect_session(state, "expired")
            return False, "This sign-in expired; start connect again."
        if not await self._store.claim_connect_session(state):
            return True, "This sign-in was already completed; you can close this window."
        try:
            if error := query.get("error"):
                raise oauth.oauth_error(error if error in oauth.KNOWN_ERRORS else "", self._providers.get(row.provider))
            result = await self._exchange(row, query.get("code", ""))
        except BaseException as exc:
            status, code, message = _outcome(exc)
            with anyio.CancelScope(shield=True):  # every exit finishes the flow, a cancelled one too
                await self._store.finish_connect_session(state, status, error=message, error_code=code)
            if not isinstance(exc, Exception):
                raise
            if status == "denied":
                return True, "Access was not granted. You can close this window."
            return True, f"Sign-in failed: {message}"
        with anyio.CancelScope(shield=True):
            await self._store.finish_connect_session(state, "completed", result=result)
        return True, f"Connected {row.provider} account {result.account}. You can close this window."

    async def _exchange(self, row: ConnectSessionRow, code: str) -> ConnectResult:
        spec = self._providers.get(row.provider)
        verifier = self._cipher().decrypt(row.verifier, row.session_id).decode()
        tokens = await oauth.exchange_code(self._http, spec, code=code, redirect_uri=row.redirect_uri,
                                           code_verifier=verifier)
        return await self.store_tokens(row, tokens)

    async def store_tokens(self, row: ConnectSessionRow, tokens: oauth.TokenSet) -> ConnectResult:
        """Learn the account and store the grant: the same for the browser and the device flow."""
        spec = self._providers.get(row.provider)
        if spec.account is not None:
            check_destination(spec.account.url, spec.name, spec.hosts, spec.allow_http)
        account, display = await oauth.lookup_account(self._http, spec, tokens)
        secret = json.dumps({"access_token": tokens.access_token, "refresh_token": tokens.refresh_token}).encode()
        stored, created = await self._store.upsert_grant(
            provider=spec.name, owner=row.owner, kind="oauth2", account=account, label=row.label,
            display_name=display, scopes=tokens.scopes or row.scopes,
            seal=lambda grant_id: self._cipher().encrypt(secret, grant_binding(grant_id, row.owner, spec.name)),
            expires_at=tokens.expires_at,
        )
        await self._store.record("connect", principal=row.owner, grant_id=stored.grant.grant_id,
                                 provider=spec.name, detail="creation" if created else "reauth")
        grant = stored.grant
        return ConnectResult(grant_id=grant.grant_id, provider=grant.provider, account=grant.account,
                             label=grant.label, scopes=grant.scopes,
                             operation="creation" if created else "reauth")

    async def status(self, session_id: str) -> ConnectStatus:
        row = await self._store.get_connect_session(session_id)
        if row is None:
            return ConnectStatus(status="error", error="unknown connect session")
        if row.status == "completed" and row.result is not None:
            return ConnectStatus(status="completed", results=[row.result])
        if row.status in ("denied", "error", "expired"):
            return ConnectStatus(status=row.status, error=row.error, error_code=row.error_code)  # type: ignore[arg-type]
        if row.expires_at < time.time():
            return ConnectStatus(status="expired")
        return ConnectStatus(status="pending")

    async def wait(self, session_id: str, timeout: float, on_progress: ProgressCallback | None = None,
                   poll_interval: float = 0.25) -> ConnectStatus:
        """Wait for the user to finish; raises on denial, error or timeout."""
        return await wait_for_connect(self.status, session_id, timeout, on_progress, poll_interval)

    async def aclose(self) -> None:
        for state in list(self._receivers):
            await self._close_receiver(state)


async def wait_for_connect(
    status_of: Callable[[str], Awaitable[ConnectStatus]], session_id: str, timeout: float,
    on_progress: ProgressCallback | None, poll_interval: float,
) -> ConnectStatus:
    """Poll a connect flow until the user finishes; raises on denial, error or timeout.

    Shared by the embedded and the remote vault, so both report the outcome identically.
    """
    started = time.monotonic()
    status = await status_of(session_id)
    while status.status == "pending":
        elapsed = time.monotonic() - started
        if elapsed >= timeout:
            break
        if on_progress is not None:
            await on_progress(elapsed, "waiting for the user to finish signing in")
        await anyio.sleep(min(poll_interval, max(timeout - elapsed, 0.01)))
        status = await status_of(session_id)
    if status.status == "completed":
        return status
    if status.status == "denied":
        raise ConnectDeniedError("The user did not grant access.", provider=None)
    if status.status == "expired":
        raise ConnectTimeoutError(f"The sign-in ended before the user finished ({status.error or 'expired'}); "
                                  "call connect again for a new link.")
    if status.status == "error" and status.error_code in _ERRORS_BY_CODE:
        raise _ERRORS_BY_CODE[status.error_code](status.error or "Connect failed.")
    if status.status == "pending":
        raise ConnectTimeoutError(
            f"The user did not finish signing in within {timeout:.0f}s; call connect again later "
            "to see whether they finished.",
        )
    raise ConnectError(f"Connect failed: {(status.error or status.status).rstrip('.')}.")


_ERRORS_BY_CODE: dict[str, type[AlterError]] = {
    "invalid_arguments": InvalidArgumentsError,
    "provider_not_configured": oauth.OAuthClientRejectedError,
    "upstream_unreachable": UpstreamUnreachableError,
    "rate_limited": RateLimitedError,
}


def _allowed(spec: ProviderSpec, scopes: list[str] | None) -> list[str] | None:
    """The model may narrow the scopes, never widen them past what the operator allows."""
    if scopes is None:
        return None
    allowed = spec.requestable_scopes()
    refused = [s for s in scopes if s not in allowed]
    if refused:
        raise InvalidArgumentsError(
            f"{spec.name} does not allow requesting {', '.join(refused)}; choose scopes from: "
            f"{', '.join(allowed) or '(none: leave scopes out)'}.",
            provider=spec.name, allowed_scopes=allowed,
        )
    return list(dict.fromkeys(scopes))


def _outcome(exc: BaseException) -> tuple[str, str, str]:
    """How a flow that failed with `exc` is finished: (status, error code, message for the model)."""
    if isinstance(exc, ConnectDeniedError):
        return "denied", exc.code, exc.message
    if isinstance(exc, AlterError):
        return "error", exc.code, exc.message
    if isinstance(exc, oauth.InvalidGrant):
        return "error", "internal", "The authorization code was refused; start connect again."
    if isinstance(exc, Exception):
        _log.error("connect flow failed unexpectedly: %s", type(exc).__name__)
        return "error", "internal", f"Sign-in failed unexpectedly ({type(exc).__name__}); start connect again."
    return "error", "internal", "The sign-in was interrupted; start connect again."


def _hash(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def _dt(ts: float) -> datetime:
    return datetime.fromtimestamp(ts, UTC)


_background: set[asyncio.Task[None]] = set()
