"""Device-code connect flows: one connect session row per flow, polled by the process that started it.

The row is the same kind the browser flow writes, so `status`/`wait` and every surface read both alike,
and the grant is stored by the same code (`ConnectFlows.store_tokens`: account discovery, labels,
ownership, audit). Polling needs the device code, which lives only in this process's memory (it is a
bearer secret for the pending sign-in): if this process stops, the flow is marked ended at once on a
clean shutdown, or reads as expired at its deadline after a crash — never a silent hang.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from datetime import UTC, datetime

import httpx

from alter_agents.errors import AlterError, ConnectDeniedError, ConnectTimeoutError
from alter_agents.models import ConnectStart
from alter_agents.providers import Providers
from alter_agents.vault import device, oauth
from alter_agents.vault.connect import ConnectFlows
from alter_agents.vault.store import ConnectSessionRow, Store

DEVICE_REDIRECT = "urn:ietf:params:oauth:grant-type:device_code"  # marks a device row; no redirect happens
_log = logging.getLogger("alter_agents.connect")


class DeviceFlows:
    """Starts device sign-ins and polls them in tasks owned by this vault."""

    def __init__(self, store: Store, providers: Providers, http: httpx.AsyncClient, flows: ConnectFlows) -> None:
        self._store = store
        self._providers = providers
        self._http = http
        self._flows = flows
        self._pollers: dict[str, asyncio.Task[None]] = {}

    async def start(self, provider: str, owner: str, *, label: str | None = None,
                    scopes: list[str] | None = None) -> ConnectStart:
        spec = self._providers.get(provider)
        code = await device.request_code(self._http, spec, scopes)
        session_id = oauth.new_state()
        now = time.time()
        row = ConnectSessionRow(
            session_id=session_id, provider=spec.name, owner=owner, label=label,
            scopes=list(scopes if scopes is not None else spec.scopes), redirect_uri=DEVICE_REDIRECT,
            verifier=b"", status="pending", result=None, error=None, created_at=now, expires_at=code.expires_at,
        )
        await self._store.create_connect_session(row)
        task = asyncio.get_running_loop().create_task(self._poll(row, code))
        self._pollers[session_id] = task
        task.add_done_callback(lambda _t: self._pollers.pop(session_id, None))
        return ConnectStart(
            session_id=session_id, provider=spec.name, method="device",
            connect_url=code.verification_uri_complete or code.verification_uri,
            verification_uri=code.verification_uri, user_code=code.user_code,
            expires_at=datetime.fromtimestamp(code.expires_at, UTC),
        )

    async def _poll(self, row: ConnectSessionRow, code: device.DeviceCode) -> None:
        spec = self._providers.get(row.provider)
        try:
            tokens = await device.poll(self._http, spec, code)
        except ConnectDeniedError:
            await self._finish(row, "denied", "access_denied")
            return
        except ConnectTimeoutError:
            await self._finish(row, "expired", "the device code expired")
            return
        except AlterError as exc:
            await self._finish(row, "error", exc.message)
            return
        if not await self._store.claim_connect_session(row.session_id):
            return  # ended meanwhile (shut down, or expired by another reader)
        try:
            result = await self._flows.store_tokens(row, tokens)
        except AlterError as exc:
            await self._store.finish_connect_session(row.session_id, "error", error=exc.message)
            return
        except BaseException:
            with contextlib.suppress(Exception):
                await asyncio.shield(self._store.finish_connect_session(row.session_id, "error",
                                                                        error="interrupted while storing"))
            raise
        await self._store.finish_connect_session(row.session_id, "completed", result=result)

    async def _finish(self, row: ConnectSessionRow, status: str, error: str) -> None:
        if await self._store.claim_connect_session(row.session_id):
            await self._store.finish_connect_session(row.session_id, status, error=error)

    async def aclose(self) -> None:
        """Stop polling; each flow still pending ends now with a clear outcome instead of hanging."""
        for session_id, task in list(self._pollers.items()):
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
            try:
                if await self._store.claim_connect_session(session_id):
                    await self._store.finish_connect_session(
                        session_id, "expired", error="the process polling this device sign-in stopped")
            except Exception as exc:  # the store may already be gone at shutdown
                _log.warning("could not end device sign-in %s…: %s", session_id[:6], type(exc).__name__)
        self._pollers.clear()
