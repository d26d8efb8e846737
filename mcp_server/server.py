"""Build the MCP server: the `request`, `connect` and `accounts` tools of `alter_agents.tools`, rendered for MCP.

The server holds no resolution logic. Each call runs the framework-neutral tool and renders its
result (or its error payload) as `structuredContent` plus the same JSON as text, `isError` for errors.
The declared `outputSchema` admits both shapes, since some clients validate errors against it too.
`@grant_tool` functions (`extra_tools`) are served the same way, through the same elicitation path.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable, Sequence
from importlib.metadata import PackageNotFoundError, version
from typing import Annotated, Any

from mcp.server.auth.provider import TokenVerifier
from mcp.server.auth.settings import AuthSettings
from mcp.server.mcpserver import Context, MCPServer
from mcp.server.mcpserver.tools import Tool
from mcp.server.request_state import RequestStateSecurity
from mcp_types import CallToolResult, InputRequiredResult, TextContent, ToolAnnotations
from pydantic import BaseModel

from alter_agents.app import App
from alter_agents.grant_tools import GrantTool
from alter_agents.models import ToolErrorPayload
from alter_agents.sessions import Session
from alter_agents.telemetry import Correlation, traceparent_from
from alter_agents.tools import (
    ACCOUNTS_DESCRIPTION,
    CONNECT_DESCRIPTION,
    DEFAULT_CONNECT_WAIT,
    AccountsArgs,
    AccountsResult,
    AlterTools,
    CallContext,
    ConnectArgs,
    ConnectResultOut,
    RequestResult,
)
from mcp_server.approve import Approvals
from mcp_server.auth import request_jwt
from mcp_server.client_log import enable_client_logging
from mcp_server.elicit import ClientReach
from mcp_server.resources import add_grants_resource
from mcp_server.schema import output_schema

SERVER_NAME = "alter-agents"
INSTRUCTIONS = (
    "Use `request` to call a connected provider's HTTP API as the user; credentials are added for you and "
    "only ever go to that provider's own API hosts. `accounts` lists the connected accounts, the provider ids "
    "and their hosts. If no account is connected, call `connect` and show the user the link it returns."
)
PINNED_INSTRUCTIONS = (
    "Use `request` to call this session's connected API over HTTP; credentials are added for you and only "
    "ever go to that provider's own API hosts."
)
ToolReturn = CallToolResult | InputRequiredResult
_Body = Callable[[dict[str, Any], Context[Any, Any]], Awaitable[ToolReturn]]
_Run = Callable[[dict[str, Any], CallContext], Awaitable[BaseModel]]

REQUEST_ANNOTATIONS = ToolAnnotations(
    title="Call a connected API", read_only_hint=False, destructive_hint=True, idempotent_hint=False,
    open_world_hint=True,
)
CONNECT_ANNOTATIONS = ToolAnnotations(
    title="Link an account", read_only_hint=False, destructive_hint=False, idempotent_hint=True,
    open_world_hint=True,
)
ACCOUNTS_ANNOTATIONS = ToolAnnotations(
    title="List connected accounts", read_only_hint=True, destructive_hint=False, idempotent_hint=True,
    open_world_hint=False,
)


def build_server(
    app: App,
    session: Session,
    *,
    connect_wait: float = DEFAULT_CONNECT_WAIT,
    auth: AuthSettings | None = None,
    token_verifier: TokenVerifier | None = None,
    state_keys: Sequence[str] = (),
    extra_tools: Sequence[GrantTool] = (),
) -> MCPServer:
    """An MCP server acting for `session` (over HTTP, per request for the bearer's user).

    `state_keys` (>= 32 bytes each, newest first) let every replica open the `requestState` of a
    2026-07-28 retry that another replica issued; without them each process uses its own key.
    `extra_tools` adds `@grant_tool` functions, scoped like `request`.
    """
    surface = _Surface(app, session, connect_wait, state_keys)
    tools = [
        _tool("request", surface.tools.request_description, REQUEST_ANNOTATIONS,
              surface.tools.request_args_model, RequestResult, surface.request),
    ]
    if not surface.tools.pinned:
        tools.append(_tool("connect", CONNECT_DESCRIPTION, CONNECT_ANNOTATIONS, ConnectArgs, ConnectResultOut,
                           surface.connect))
        tools.append(_tool("accounts", ACCOUNTS_DESCRIPTION, ACCOUNTS_ANNOTATIONS, AccountsArgs, AccountsResult,
                           surface.accounts))
    for extra in extra_tools:
        tools.append(_tool(extra.name, extra.description, _grant_annotations(extra),
                           extra.schema_model(surface.tools), extra.result_model, surface.grant_tool(extra)))
    names = [tool.name for tool in tools]
    if len(set(names)) != len(names):
        raise ValueError(f"tool names must be unique: {', '.join(sorted(names))}")
    security = RequestStateSecurity(keys=list(state_keys)) if state_keys else None
    instructions = PINNED_INSTRUCTIONS if surface.tools.pinned else INSTRUCTIONS
    server: MCPServer = MCPServer(SERVER_NAME, instructions=instructions, tools=tools, auth=auth,
                                  token_verifier=token_verifier, request_state_security=security,
                                  version=_package_version())
    add_grants_resource(server, app, session)
    enable_client_logging(server)
    return server


class _Surface:
    """Per-call glue: the caller's token, the client's ways to reach the human, progress."""

    def __init__(self, app: App, session: Session, connect_wait: float, state_keys: Sequence[str] = ()) -> None:
        self.tools = AlterTools(app, session, connect_wait=connect_wait)
        self.approvals = Approvals(state_keys)

    async def request(self, arguments: dict[str, Any], ctx: Context[Any, Any]) -> ToolReturn:
        return await self._scoped(self.tools.run_request, not self.tools.pinned, arguments, ctx)

    def grant_tool(self, extra: GrantTool) -> _Body:
        async def run(arguments: dict[str, Any], call: CallContext) -> BaseModel:
            return await extra.run_structured(self.tools, arguments, call)

        async def body(arguments: dict[str, Any], ctx: Context[Any, Any]) -> ToolReturn:
            return await self._scoped(run, extra.takes_account(self.tools), arguments, ctx)

        return body

    async def _scoped(self, run: _Run, takes_account: bool, arguments: dict[str, Any],
                      ctx: Context[Any, Any]) -> ToolReturn:
        """A call resolved like `request`: an ambiguous account is asked of the human where the client can."""
        reach = ClientReach(ctx)
        chosen = reach.answered_account()
        if chosen and takes_account:
            arguments = {**arguments, "account": chosen}
        token = request_jwt()
        call = CallContext(user_token=token, choose_account=reach.choose_account, progress=_progress(ctx),
                           approve=self.approvals.approver(reach), correlation=_correlation(ctx))
        result = await run(arguments, call)
        if (isinstance(result, ToolErrorPayload) and result.error.code == "ambiguous_grant" and result.error.accounts
                and takes_account):
            question = reach.ask_account(result.error.provider or "", result.error.accounts)
            if question is not None:
                return question
        if isinstance(result, ToolErrorPayload) and result.error.code == "approval_required":
            principal = await self.tools.app.vault.principal(token, headless=not token)
            approval = self.approvals.question(reach, result.error, principal)
            if approval is not None:
                return approval
        return render(result)

    async def accounts(self, arguments: dict[str, Any], ctx: Context[Any, Any]) -> ToolReturn:
        return render(await self.tools.run_accounts(arguments, CallContext(user_token=request_jwt())))

    async def connect(self, arguments: dict[str, Any], ctx: Context[Any, Any]) -> ToolReturn:
        """The link goes to the human by URL elicitation where the client can (then the call waits, with
        progress); otherwise `pending` with the link comes back to the model at once."""
        reach = ClientReach(ctx)
        provider = str(arguments.get("provider", ""))
        token = request_jwt()
        accepted, offered = reach.url_answer()
        if offered is not None and not accepted:
            return render(offered)
        if offered is not None:  # 2026-07-28: the human opened the link we offered; wait for them
            return render(await self.tools.run_connect(arguments, _shown(token, ctx)))
        first = await self.tools.run_connect(arguments, CallContext(user_token=token))
        if not reach.can_url or not isinstance(first, ConnectResultOut) or first.status != "pending":
            return render(first)
        question = reach.offer_url(provider, first)
        if question is not None:
            return question
        elicitation_id = await reach.open_url(provider, first)
        if elicitation_id is None:
            return render(first)
        result = await self.tools.run_connect(arguments, _shown(token, ctx))
        if isinstance(result, ConnectResultOut) and result.status == "connected":
            await reach.completed(elicitation_id)
        return render(result)


def _package_version() -> str:
    """`serverInfo.version`: the installed alter-agents release."""
    try:
        return version("alter-agents")
    except PackageNotFoundError:
        return "0+unknown"


def render(result: BaseModel) -> CallToolResult:
    """`structuredContent` and the same JSON as text; `isError` for the error payload."""
    data = result.model_dump(mode="json", by_alias=True, exclude_none=isinstance(result, ToolErrorPayload))
    text = json.dumps(data, ensure_ascii=False)
    return CallToolResult(content=[TextContent(type="text", text=text)], structured_content=data,
                          is_error=isinstance(result, ToolErrorPayload))


def _grant_annotations(extra: GrantTool) -> ToolAnnotations:
    return ToolAnnotations(title=extra.name.replace("_", " ").capitalize(), read_only_hint=extra.read_only,
                           destructive_hint=not extra.read_only, open_world_hint=True)


def _shown(token: str | None, ctx: Context[Any, Any]) -> CallContext:
    """A call whose human already has the connect link: it waits for them, reporting progress."""
    return CallContext(user_token=token, progress=_progress(ctx), link_shown=True)


def _correlation(ctx: Context[Any, Any]) -> Correlation:
    """The MCP session and request ids, and the W3C trace context a 2026-07-28 request carries in `_meta`."""
    headers = ctx.headers or {}
    meta = ctx.request_context.meta
    return Correlation(surface="mcp", session_id=headers.get("mcp-session-id"), request_id=ctx.request_id,
                       traceparent=traceparent_from(meta if isinstance(meta, dict) else None))


def _progress(ctx: Context[Any, Any]) -> Callable[[float, float | None, str], Awaitable[None]]:
    async def report(done: float, total: float | None, message: str) -> None:
        await ctx.report_progress(done, total, message)

    return report


class _RawArgumentsTool(Tool):
    """A tool that hands the client's arguments, as sent, to our own validation.

    The SDK's argument model would drop an undeclared argument silently and JSON-decode strings; our
    models refuse the first with `invalid_arguments` (e.g. `data` instead of `json`), and a text `body`
    stays text.
    """

    async def run(self, arguments: dict[str, Any], context: Context[Any, Any], convert_result: bool = False) -> Any:
        result = await self.fn(ctx=context, arguments=arguments)
        return self.fn_metadata.convert_result(result) if convert_result else result


def _tool(name: str, description: str, annotations: ToolAnnotations, arguments: type[BaseModel],
          result: type[BaseModel], body: _Body) -> Tool:
    """A tool whose flat input schema is `arguments`' fields and whose output admits result or error."""

    async def call(ctx: Context[Any, Any], arguments: dict[str, Any] | None = None) -> ToolReturn:
        return await body({k: v for k, v in (arguments or {}).items() if v is not None}, ctx)

    call.__name__ = name
    call.__annotations__ = {**call.__annotations__, "return": Annotated[CallToolResult, result] | InputRequiredResult}
    tool = _RawArgumentsTool.from_function(call, name=name, description=description, annotations=annotations)
    tool.fn_metadata.output_schema = output_schema(result)
    # The model sees the real schema, every constraint included.
    tool.parameters = arguments.model_json_schema(by_alias=True)
    return tool
