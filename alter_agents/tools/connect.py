"""The `connect` tool: start (or check on) a connect flow and wait a while for the user."""

from __future__ import annotations

import inspect
from typing import Any

from alter_agents.errors import ConnectDeniedError, ConnectError, ConnectTimeoutError, InvalidArgumentsError
from alter_agents.models import ConnectStart, GrantRef, ToolErrorPayload
from alter_agents.sessions import GrantSession, HeadlessSession, LocalSession, token_key
from alter_agents.tools.args import ConnectArgs, validate_args
from alter_agents.tools.context import CallContext, ToolsBase
from alter_agents.tools.results import ConnectResultOut, shielded

DEFAULT_CONNECT_WAIT = 60.0
CONNECT_DESCRIPTION = (
    "Link an account for a provider; the user finishes in the browser. Returns status 'connected' with "
    "the account, or 'pending' with a connect_url to show the user — call connect again with the same "
    "provider to learn whether they finished."
)


class ConnectTool(ToolsBase):
    """`connect`, as a mixin of `AlterTools`."""

    async def run_connect(self, args: ConnectArgs | dict[str, Any], call: CallContext | None = None
                          ) -> ConnectResultOut | ToolErrorPayload:
        return await shielded(self.connect(args, call))

    async def connect(self, args: ConnectArgs | dict[str, Any], call: CallContext | None = None) -> ConnectResultOut:
        """Start (or check on) a connect flow and wait a while for the user. Raises typed `AlterError`s."""
        parsed = validate_args(ConnectArgs, args)
        ctx = self._context(call)
        if isinstance(self.session, GrantSession):
            raise InvalidArgumentsError("This session is pinned to one grant; connecting accounts is not available.",
                                        retryable=False, user_action="none")
        spec = self.app.providers.get(parsed.provider)
        if spec.kind != "oauth2":
            raise InvalidArgumentsError(
                f"{spec.name} uses an API key that an operator adds (alter-agents secrets add {spec.name} ...), "
                "not a browser sign-in; ask the user to have it added.",
                provider=spec.name, retryable=False, user_action="none",
            )
        token = await self._user_token(ctx)
        key = (token_key(token), spec.name)
        memory = self.session.memory
        start = memory.pending.get(key)
        if start is not None:
            status = await self.app.vault.connect_status(start.session_id)
            if status.status == "expired":
                memory.pending.pop(key, None)
                raise ConnectTimeoutError(
                    f"The user did not finish connecting {spec.name} before the link expired. Call connect "
                    "again for a new link.", provider=spec.name,
                )
        else:
            headless = isinstance(self.session, HeadlessSession | LocalSession)
            start = await self.app.start_connect(spec.name, user_token=token, label=parsed.label,
                                                 scopes=parsed.scopes, headless=headless)
            memory.pending[key] = start
            if ctx.on_connect_url is not None:
                announced = ctx.on_connect_url(start)
                if inspect.isawaitable(announced):
                    await announced
        return await self._await_connect(start, key, ctx)

    async def _await_connect(self, start: ConnectStart, key: tuple[str, str], ctx: CallContext) -> ConnectResultOut:
        wait = self.connect_wait

        async def progress(elapsed: float, message: str) -> None:
            if ctx.progress is not None:
                await ctx.progress(elapsed, wait, message)

        try:
            status = await self.app.vault.wait_connect(start.session_id, wait, progress)
        except ConnectTimeoutError:
            return ConnectResultOut(
                status="pending", connect_url=start.connect_url, expires_at=start.expires_at,
                message=f"Waiting for the user to sign in to {start.provider}. Show them connect_url; call "
                        "connect again with the same provider to learn whether they finished.",
            )
        except ConnectDeniedError:
            self.session.memory.pending.pop(key, None)
            raise ConnectDeniedError(
                f"The user did not grant access to {start.provider}. Call connect again only if they ask to.",
                provider=start.provider,
            ) from None
        except ConnectError as exc:
            self.session.memory.pending.pop(key, None)
            raise ConnectError(f"{exc.message} Call connect again to retry.", provider=start.provider,
                               retryable=True, user_action="connect") from None
        self.session.memory.pending.pop(key, None)
        result = status.results[0]
        if isinstance(self.session, HeadlessSession):
            self.session.pinned[result.provider] = result.grant_id
        grant = GrantRef(provider=result.provider, account=result.account, label=result.label)
        return ConnectResultOut(status="connected", grant=grant, grant_id=result.grant_id,
                                message=f"Connected {result.provider} account {result.account}.")
