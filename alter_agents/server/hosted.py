"""Hosted connect sessions: the `session_token` / `connect_url` pair of the official protocol.

A session lets the user link one account among its allowed providers. Its connect URL opens a page
on the vault server that starts the OAuth flow (straight away when only one provider is allowed). The
session, each flow it started, and each flow's outcome live in the store, so any server process can
serve the page, receive the OAuth callback, or answer a poll.
"""

from __future__ import annotations

import hashlib
import json
import secrets
import time
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import insert, select

from alter_agents.errors import ConnectError, InvalidArgumentsError
from alter_agents.models import APP, ConnectStatus
from alter_agents.server.wire import ConnectSessionResponse, PolledGrant, PollError, PollResponse
from alter_agents.vault.connect import CONNECT_TTL_SECONDS
from alter_agents.vault.local import LocalVault
from alter_agents.vault.schema import connect_link_flows, connect_links

_TERMINAL_ERRORS = {"denied": "connect_denied", "error": "connect_failed"}


def _token_hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


class LinkNotFound(Exception):
    """No live connect session has this id."""


class HostedConnect:
    def __init__(self, vault: LocalVault, public_url: str) -> None:
        self._vault = vault
        self._public_url = public_url.rstrip("/")

    def connect_url(self, link_id: str) -> str:
        return f"{self._public_url}/connect/{link_id}"

    def callback_url(self) -> str:
        return f"{self._public_url}/oauth/callback"

    async def create(
        self, *, key_id: str, providers: list[str] | None, user_token: str | None, headless: bool,
        label: str | None = None, scopes: dict[str, list[str]] | None = None,
    ) -> ConnectSessionResponse:
        """A session for the user behind `user_token`, or for the app itself when headless."""
        vault = self._vault
        identity = None if headless and not user_token else await vault.identify(user_token)
        owner = f"user:{identity.sub}" if identity else str(APP)
        names = self._oauth_providers(providers)
        link_id, token = secrets.token_urlsafe(24), secrets.token_urlsafe(32)
        now = time.time()
        async with vault.store.transaction(write=True) as conn:
            await conn.execute(insert(connect_links).values(
                link_id=link_id, token_hash=_token_hash(token), key_id=key_id, owner=owner,
                providers=json.dumps(names), label=label, scopes=json.dumps(scopes) if scopes else None,
                created_at=now, expires_at=now + CONNECT_TTL_SECONDS,
            ))
        return ConnectSessionResponse(
            session_token=token, connect_url=self.connect_url(link_id), expires_in=int(CONNECT_TTL_SECONDS),
            expires_at=datetime.fromtimestamp(now + CONNECT_TTL_SECONDS, UTC).isoformat(),
            single_provider=len(names) == 1,
        )

    def _oauth_providers(self, requested: list[str] | None) -> list[str]:
        catalogue = self._vault.providers
        if requested is None:
            names = [s.name for s in catalogue if s.kind == "oauth2" and s.client_id]
        else:
            names = list(dict.fromkeys(p.strip().lower() for p in requested))
            for name in names:
                if catalogue.get(name).kind != "oauth2":
                    raise ConnectError(f"{name} uses a managed secret, not OAuth; an operator adds it with "
                                       f"`alter-agents secrets add {name} ...`.", provider=name)
        if not names:
            raise InvalidArgumentsError("No OAuth provider is configured to connect.")
        return names

    async def providers_of(self, link_id: str) -> list[str]:
        row = await self._link(link_id)
        return list(json.loads(row["providers"]))

    async def begin(self, link_id: str, provider: str) -> str:
        """Start the OAuth flow for `provider` in this session; returns the authorization URL."""
        row = await self._link(link_id)
        if provider not in json.loads(row["providers"]):
            raise LinkNotFound(link_id)
        scopes = json.loads(row["scopes"]).get(provider) if row["scopes"] else None
        start = await self._vault.connects.start(
            provider, row["owner"], label=row["label"], scopes=scopes, redirect_uri=self.callback_url(),
            ttl=max(row["expires_at"] - time.time(), 1.0),
        )
        async with self._vault.store.transaction(write=True) as conn:
            await conn.execute(insert(connect_link_flows).values(
                session_id=start.session_id, link_id=link_id, provider=provider, created_at=time.time(),
            ))
        return start.connect_url

    async def _link(self, link_id: str) -> dict[str, Any]:
        async with self._vault.store.transaction() as conn:
            row = (await conn.execute(select(connect_links).where(connect_links.c.link_id == link_id))).first()
        if row is None or float(row.expires_at) < time.time():
            raise LinkNotFound(link_id)
        return dict(row._mapping)

    async def poll(self, session_token: str) -> PollResponse:
        """Completed as soon as the user linked an account; otherwise the latest flow's outcome."""
        async with self._vault.store.transaction() as conn:
            link = (await conn.execute(
                select(connect_links).where(connect_links.c.token_hash == _token_hash(session_token))
            )).first()
            flows = [] if link is None else list((await conn.execute(
                select(connect_link_flows.c.session_id).where(connect_link_flows.c.link_id == link.link_id)
                .order_by(connect_link_flows.c.created_at)
            )).scalars())
        if link is None:
            return PollResponse(status="expired")
        statuses: list[ConnectStatus] = [await self._vault.connects.status(sid) for sid in flows]
        done = [r for s in statuses if s.status == "completed" for r in s.results]
        if done:
            return PollResponse(status="completed", grants=[
                PolledGrant(grant_id=r.grant_id, provider_id=r.provider, account_identifier=r.account,
                            scopes=r.scopes, operation=r.operation, label=r.label)
                for r in done
            ])
        if statuses and statuses[-1].status in _TERMINAL_ERRORS:
            last = statuses[-1]
            message = "The user did not grant access." if last.status == "denied" else (last.error or "failed")
            return PollResponse(status="error", error=PollError(error_code=_TERMINAL_ERRORS[last.status],
                                                                error_message=message))
        if float(link.expires_at) < time.time():
            return PollResponse(status="expired")
        return PollResponse(status="pending")
