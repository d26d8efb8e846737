"""The `connect` tool: start a connect flow, or report on the one already under way.

The flow a caller started is remembered in the vault under its *verified* owner and provider, so a
second call — on this process or another replica — returns the same link until it expires, and the
connected account once the user finished. Where the link can only reach the human through the model,
`pending` comes back at once; the tool waits (with progress) only where the human already has it.
"""

from __future__ import annotations

import inspect
import time
from datetime import datetime

from pydantic import BaseModel

from alter_agents.errors import AlterError, ConnectDeniedError, ConnectError, ConnectTimeoutError, InvalidArgumentsError
from alter_agents.models import ConnectResult, ConnectStart, GrantRef, ToolErrorPayload
from alter_agents.sessions import GrantSession, HeadlessSession, LocalSession
from alter_agents.tools.args import ConnectArgs, validate_args
from alter_agents.tools.context import CallContext, ToolsBase
from alter_agents.tools.results import ConnectResultOut, shielded
from alter_agents.vault.device import choose_method
from alter_agents.vault.memory import MemoryKey

DEFAULT_CONNECT_WAIT = 60.0
CONNECT_DESCRIPTION = (
    "Link an account for a provider (provider ids: see the `accounts` tool); the user finishes in the "
    "browser. Returns status 'connected' with the account, or 'pending' with a connect_url: show it to the "
    "user, and after they finish call connect again with the same provider (it returns the same link until "
    "it expires, then the connected account). To re-authorise an account that needs it (reauth_required), "
    "pass its identifier or label as `account`: that same grant is renewed. To link one more account of a "
    "provider already connected, give it a new `label`."
)


class _Flow(BaseModel):
    """A connect flow as remembered for its caller."""

    start: ConnectStart
    label: str | None = None
    account: str | None = None
    scopes: list[str] | None = None


class ConnectTool(ToolsBase):
    """`connect`, as a mixin of `AlterTools`."""

    async def run_connect(self, args: ConnectArgs | dict[str, object], call: CallContext | None = None
                          ) -> ConnectResultOut | ToolErrorPayload:
        return await shielded(self.connect(args, call))

    async def connect(self, args: ConnectArgs | dict[str, object], call: CallContext | None = None
                      ) -> ConnectResultOut:
        """Start (or report on) a connect flow. Raises typed `AlterError`s."""
        parsed = validate_args(ConnectArgs, args)
        ctx = self._context(call)
        if isinstance(self.session, GrantSession):
            raise InvalidArgumentsError("This session is pinned to one grant; connecting accounts is not available.",
                                        user_action="none")
        spec = self.app.providers.get(parsed.provider)
        if spec.kind != "oauth2":
            raise InvalidArgumentsError(
                f"{spec.name} uses an API key that an operator adds (alter-agents secrets add {spec.name} ...), "
                "not a browser sign-in; ask the user to have it added.",
                provider=spec.name, user_action="ask_operator",
            )
        token = await self._user_token(ctx)
        key = await self._memory_key(token, "connect", spec.name)  # verifies the caller before any lookup
        memory = self.app.vault.memory
        remembered = await memory.recall(key)
        flow = _Flow.model_validate_json(remembered) if remembered else None
        if flow is not None and _same_request(flow, parsed):
            outcome = await self._report(flow, key, parsed, ctx)
            if outcome is not None:
                return outcome
        login_hint = await self._login_hint(spec.name, parsed.account, token)
        scopes = await self._step_up_scopes(spec.name, parsed, token)
        settings = self.app.vault.settings
        method = choose_method(settings.connect_method, spec, public_callback=bool(settings.public_url))
        start = await self.app.start_connect(spec.name, user_token=token, label=parsed.label, scopes=scopes,
                                             headless=isinstance(self.session, HeadlessSession | LocalSession),
                                             login_hint=login_hint, method=method)
        ours = _Flow(start=start, label=parsed.label, account=parsed.account, scopes=parsed.scopes)
        stored = await memory.remember(key, ours.model_dump_json(), _seconds_until(start.expires_at),
                                       keep_existing=flow is None)
        flow = _Flow.model_validate_json(stored)
        if flow.start.session_id != start.session_id:  # another call started one first: show its link
            return await self._await_connect(flow, key, ctx, self.connect_wait if ctx.link_shown else 0.0)
        shown = ctx.link_shown or await _announce(ctx, start)
        return await self._await_connect(ours, key, ctx, self.connect_wait if shown else 0.0)

    async def _report(self, flow: _Flow, key: MemoryKey, parsed: ConnectArgs, ctx: CallContext
                      ) -> ConnectResultOut | None:
        """The state of the caller's earlier flow; None when a new flow should start."""
        status = await self.app.vault.connect_status(flow.start.session_id)
        if status.status == "pending":
            return await self._await_connect(flow, key, ctx, self.connect_wait if ctx.link_shown else 0.0)
        if status.status == "completed" and status.results:
            result = status.results[0]
            if parsed.account and not _names(result, parsed.account):
                return None  # that flow linked another account; this call asks for a different one
            return self._connected(result)
        await self.app.vault.memory.forget(key)
        provider = flow.start.provider
        if status.status == "expired":
            raise ConnectTimeoutError(
                f"The user did not finish connecting {provider} before the link expired. Call connect again "
                "for a new link.", provider=provider,
            )
        if status.status == "denied":
            raise ConnectDeniedError(
                f"The user did not grant access to {provider}. Call connect again only if they ask to.",
                provider=provider,
            )
        raise ConnectError(f"Connecting {provider} failed ({status.error or status.status}). Call connect again "
                           "to retry.", provider=provider, user_action="connect")

    async def _await_connect(self, flow: _Flow, key: MemoryKey, ctx: CallContext, wait: float) -> ConnectResultOut:
        start = flow.start

        async def progress(elapsed: float, message: str) -> None:
            if ctx.progress is not None:
                await ctx.progress(elapsed, wait, message)

        try:
            status = await self.app.vault.wait_connect(start.session_id, wait, progress)
        except ConnectTimeoutError:
            if start.method == "device":
                return ConnectResultOut(
                    status="pending", provider=start.provider, connect_url=start.connect_url,
                    verification_uri=start.verification_uri, user_code=start.user_code, expires_at=start.expires_at,
                    message=f"Tell the user to open {start.verification_uri} on any device and enter the code "
                            f"{start.user_code} to sign in to {start.provider} (until expires_at). After they "
                            "finish, call connect again with the same provider to get the account.",
                )
            return ConnectResultOut(
                status="pending", provider=start.provider, connect_url=start.connect_url,
                expires_at=start.expires_at,
                message=f"Show the user connect_url to sign in to {start.provider} (it works until expires_at). "
                        "After they finish, call connect again with the same provider to get the account.",
            )
        except ConnectDeniedError:
            await self.app.vault.memory.forget(key)
            raise ConnectDeniedError(
                f"The user did not grant access to {start.provider}. Call connect again only if they ask to.",
                provider=start.provider,
            ) from None
        except ConnectError as exc:
            await self.app.vault.memory.forget(key)
            raise ConnectError(f"{exc.message} Call connect again to retry.", provider=start.provider,
                               user_action="connect") from None
        return self._connected(status.results[0])

    def _connected(self, result: ConnectResult) -> ConnectResultOut:
        if isinstance(self.session, HeadlessSession):
            self.session.pinned[result.provider] = result.grant_id
        grant = GrantRef(provider=result.provider, account=result.account, label=result.label)
        verb = "Re-authorised" if result.operation == "reauth" else "Connected"
        return ConnectResultOut(
            status="connected", provider=result.provider, grant=grant, grant_id=result.grant_id,
            message=f"{verb} {result.provider} account {result.account}. To link another {result.provider} "
                    "account, call connect with a new label.",
        )

    async def _step_up_scopes(self, provider: str, parsed: ConnectArgs, token: str | None) -> list[str] | None:
        """Scopes asked for an account already connected: the union of what it has and what is asked, so
        upgrading a grant (after `insufficient_scope`) never drops a permission it had (MCP step-up rule)."""
        if not parsed.scopes or isinstance(self.session, HeadlessSession):
            return parsed.scopes
        try:
            grants = await self.app.vault.list_grants(user_token=token, provider=provider)
        except AlterError:
            return parsed.scopes
        wanted = (parsed.account or "").strip().casefold()
        matching = [g for g in grants if wanted in (g.account.casefold(), (g.label or "").casefold())] if wanted \
            else (grants if len(grants) == 1 and parsed.label is None else [])
        if len(matching) != 1:
            return parsed.scopes
        had = list(matching[0].scopes)
        return had + [scope for scope in parsed.scopes if scope not in had]

    async def _login_hint(self, provider: str, account: str | None, token: str | None) -> str | None:
        """The account identifier `account` names among the caller's grants (identifier or label), else itself."""
        if not account or isinstance(self.session, HeadlessSession):
            return account
        try:
            grants = await self.app.vault.list_grants(user_token=token, provider=provider)
        except AlterError:
            return account
        wanted = account.strip().casefold()
        for grant in grants:
            if wanted in (grant.account.casefold(), (grant.label or "").casefold()):
                return grant.account
        return account


def _same_request(flow: _Flow, parsed: ConnectArgs) -> bool:
    """A call without label/account (or with the flow's own) is about the flow already under way."""
    if parsed.label is not None and parsed.label != flow.label:
        return False
    if parsed.scopes is not None and set(parsed.scopes) != set(flow.scopes or ()):
        return False  # asking for other permissions (a step-up) starts a new flow
    return parsed.account is None or flow.account is None or parsed.account.casefold() == flow.account.casefold()


def _names(result: ConnectResult, account: str) -> bool:
    wanted = account.strip().casefold()
    return wanted in (result.account.casefold(), (result.label or "").casefold())


async def _announce(ctx: CallContext, start: ConnectStart) -> bool:
    """Hand the link to the surface's hook; True when the human was shown it (the hook did not say False)."""
    if ctx.on_connect_url is None:
        return False
    shown = ctx.on_connect_url(start)
    if inspect.isawaitable(shown):
        shown = await shown
    return shown is not False


def _seconds_until(moment: datetime) -> float:
    return max(moment.timestamp() - time.time(), 1.0)
