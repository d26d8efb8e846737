"""`AlterToolkit`: the `request`, `connect` and `accounts` tools for LangChain agents.

    toolkit = AlterToolkit(app, session=UserSession())
    tools = toolkit.get_tools()
    await tools[0].ainvoke(tool_call, config={"configurable": {"user_token": jwt}})

Every call ends in a `ToolMessage`: the result JSON as content and the result model as artifact, or
`status="error"` with the DESIGN §5 error JSON as content and the `ToolErrorPayload` as artifact —
also for arguments the schema rejects. The user's JWT travels in the run config, never in the
arguments, so a model cannot choose whose grants it acts with. Needs `pip install alter-agents[langchain]`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, NoReturn

from langchain_core.messages import ToolMessage
from langchain_core.runnables import RunnableConfig
from langchain_core.tools import BaseTool, BaseToolkit, StructuredTool, ToolException
from langchain_core.tools.base import ArgsSchema
from pydantic import BaseModel, ConfigDict, PrivateAttr, ValidationError
from pydantic_core import to_json

from alter_agents.app import App
from alter_agents.approval import CHOICES, ApprovalChoice, ApprovalRequest, Approver, pass_through
from alter_agents.errors import InvalidArgumentsError
from alter_agents.grant_tools import GrantTool
from alter_agents.models import ToolErrorPayload
from alter_agents.sessions import GrantSession, Session, UserSession
from alter_agents.telemetry import Correlation
from alter_agents.tools import (
    ACCOUNTS_DESCRIPTION,
    CONNECT_DESCRIPTION,
    AccountsArgs,
    AlterTools,
    CallContext,
    ChooseAccount,
    ConnectArgs,
    OnConnectUrl,
    Progress,
    arguments_error,
    internal_payload,
)

__all__ = ["AlterToolkit", "interrupt_approver", "user_config"]

USER_TOKEN_KEY = "user_token"
_TOOL_RUN_ID = "alter_tool_run_id"


def user_config(user_token: str, **configurable: Any) -> RunnableConfig:
    """The run config that makes a tool call act for the user whose JWT this is."""
    return {"configurable": {USER_TOKEN_KEY: user_token, **configurable}}


async def interrupt_approver(request: ApprovalRequest) -> ApprovalChoice | None:
    """Ask through LangGraph's `interrupt`: the run pauses with the question as its interrupt value, and
    `Command(resume=...)` answers it — `"allow_once"`, `"allow_session"` or `"deny"` (True/False work too).
    Nothing is sent before the answer: on resume the tool call runs again and finds it."""
    from langgraph.types import interrupt

    answer = interrupt({
        "type": "alter_approval", "prompt": request.prompt, "provider": request.provider,
        "account": request.account, "method": request.method, "url": request.url, "rule": request.rule,
        "choices": list(CHOICES),
    })
    if answer is True:
        return "allow_once"
    if isinstance(answer, dict):
        answer = answer.get("decision")
    return answer if answer in CHOICES else "deny"


def _register_interrupts() -> None:
    try:
        from langgraph.errors import GraphBubbleUp
    except ImportError:  # LangGraph is optional: plain LangChain agents use a callback approver
        return
    pass_through(GraphBubbleUp)


_register_interrupts()


class _ToolFailed(ToolException):
    """Carries the error payload from the tool body to the error handler."""

    def __init__(self, payload: ToolErrorPayload) -> None:
        super().__init__(payload.to_json())
        self.payload = payload


class _AlterTool(StructuredTool):
    """A StructuredTool whose error `ToolMessage`s also carry the error payload as artifact.

    Async only: the App's vault and pooled HTTP client belong to the event loop that uses them, so a
    sync `invoke` is refused with a message that says what to call instead.
    """

    @property
    def tool_call_schema(self) -> ArgsSchema:
        """What the model sees: the schema by alias (`json`), which LangChain's field-name copy would lose."""
        schema = self.args_schema
        if isinstance(schema, type) and issubclass(schema, BaseModel):
            return {**schema.model_json_schema(by_alias=True), "description": self.description}
        return super().tool_call_schema

    def _run(self, *args: Any, config: RunnableConfig, run_manager: Any = None, **kwargs: Any) -> NoReturn:
        raise NotImplementedError(
            f"The {self.name!r} tool is async: call `await tool.ainvoke(...)` (or run your agent with "
            "`ainvoke`/`astream`). It shares the App's event loop, so it has no sync `invoke`."
        )

    async def _arun(self, *args: Any, config: RunnableConfig, run_manager: Any = None, **kwargs: Any) -> Any:
        """Hand the body this tool run's id (for the audit row), which LangChain keeps in its run manager."""
        if run_manager is not None:
            metadata = {**(config.get("metadata") or {}), _TOOL_RUN_ID: str(run_manager.run_id)}
            config = {**config, "metadata": metadata}
        return await super()._arun(*args, config=config, run_manager=run_manager, **kwargs)

    async def arun(self, tool_input: Any, *args: Any, **kwargs: Any) -> Any:
        output = await super().arun(tool_input, *args, **kwargs)
        if isinstance(output, ToolMessage) and output.status == "error" and output.artifact is None:
            try:
                output.artifact = ToolErrorPayload.model_validate_json(str(output.content))
            except ValidationError:
                output.artifact = internal_payload("the tool failed without an error payload")
        return output


class AlterToolkit(BaseToolkit):
    """`request`, `connect` and `accounts` as async LangChain tools bound to one session.

    `session` defaults to `UserSession()`: the JWT of each call comes from
    `config["configurable"]["user_token"]` (see `user_config`), so one toolkit can serve many users;
    in local mode (no identity provider) it acts for the machine's single user. The other keyword
    arguments are `AlterTools`'s: `choose_account`, `on_connect_url`, `connect_wait`,
    `max_body_bytes`, `remember_account`; `extra_tools` adds `@grant_tool` functions, scoped alike.
    Without `on_connect_url` (a hook that shows the link to the human) `connect` answers `pending` with
    the link at once, for the model to pass on; with one it waits up to `connect_wait` for the user.
    `approve` answers calls a policy rule puts to a human: any async callback, or `interrupt_approver`
    to pause a LangGraph run (human in the loop) until it is resumed with the decision.
    """

    model_config = ConfigDict(arbitrary_types_allowed=True)

    tools: AlterTools
    _progress: Progress | None = PrivateAttr(default=None)
    _extra: list[GrantTool] = PrivateAttr(default_factory=list)

    def __init__(
        self,
        app: App,
        session: Session | None = None,
        *,
        choose_account: ChooseAccount | None = None,
        on_connect_url: OnConnectUrl | None = None,
        connect_wait: float | None = None,
        max_body_bytes: int | None = None,
        remember_account: bool = True,
        progress: Progress | None = None,
        extra_tools: Sequence[GrantTool] = (),
        approve: Approver | None = None,
    ) -> None:
        options: dict[str, Any] = {"choose_account": choose_account, "on_connect_url": on_connect_url,
                                   "remember_account": remember_account, "approve": approve}
        if connect_wait is not None:
            options["connect_wait"] = connect_wait
        if max_body_bytes is not None:
            options["max_body_bytes"] = max_body_bytes
        tools = AlterTools(app, session if session is not None else UserSession(), **options)
        super().__init__(tools=tools)
        self._progress = progress
        self._extra = list(extra_tools)

    def get_tools(self) -> list[BaseTool]:
        """`[request, connect, accounts]`; a pinned-grant session gets `request` only (no provider, no account)."""
        result: list[BaseTool] = [self._request_tool()]
        if not isinstance(self.tools.session, GrantSession):
            result.append(self._connect_tool())
            result.append(self._accounts_tool())
        result.extend(self._grant_tool(extra) for extra in self._extra)
        return result

    def _call(self, config: RunnableConfig | None, tool: str | None = None) -> CallContext:
        configurable = (config or {}).get("configurable") or {}
        token = configurable.get(USER_TOKEN_KEY)
        return CallContext(user_token=token if isinstance(token, str) and token else None, progress=self._progress,
                           correlation=_correlation(config, tool))

    def _request_tool(self) -> BaseTool:
        tools = self.tools

        async def request(config: RunnableConfig, **arguments: Any) -> tuple[str, BaseModel]:
            return _rendered(await tools.run_request(arguments, self._call(config, "request")))

        return _make_tool(request, "request", tools.request_description, tools.request_args_model)

    def _connect_tool(self) -> BaseTool:
        tools = self.tools

        async def connect(config: RunnableConfig, **arguments: Any) -> tuple[str, BaseModel]:
            return _rendered(await tools.run_connect(arguments, self._call(config, "connect")))

        return _make_tool(connect, "connect", CONNECT_DESCRIPTION, ConnectArgs)

    def _accounts_tool(self) -> BaseTool:
        tools = self.tools

        async def accounts(config: RunnableConfig, **arguments: Any) -> tuple[str, BaseModel]:
            return _rendered(await tools.run_accounts(arguments, self._call(config, "accounts")))

        return _make_tool(accounts, "accounts", ACCOUNTS_DESCRIPTION, AccountsArgs)


    def _grant_tool(self, extra: GrantTool) -> BaseTool:
        tools = self.tools

        async def run(config: RunnableConfig, **arguments: Any) -> tuple[str, Any]:
            outcome = await extra.run_shielded(tools, arguments, self._call(config, extra.name))
            if isinstance(outcome, ToolErrorPayload):
                raise _ToolFailed(outcome)
            if isinstance(outcome, BaseModel):
                return outcome.model_dump_json(exclude_none=True), outcome
            return to_json(outcome, fallback=str).decode(), outcome  # nested models and dates too

        return _make_tool(run, extra.name, extra.description, extra.schema_model(tools))


def _correlation(config: RunnableConfig | None, tool: str | None) -> Correlation:
    """LangChain's ids for the audit row: the run (the config's, else the tool run's own id from its callback
    manager), the LangGraph thread, and a W3C `traceparent` passed in `configurable` or `metadata`."""
    config = config or {}
    configurable = config.get("configurable") or {}
    metadata = config.get("metadata") or {}
    run_id = config.get("run_id") or configurable.get("run_id") or metadata.get("run_id") \
        or metadata.get(_TOOL_RUN_ID) or getattr(config.get("callbacks"), "parent_run_id", None)
    thread_id = configurable.get("thread_id") or metadata.get("thread_id")
    traceparent = configurable.get("traceparent") or metadata.get("traceparent")
    return Correlation(surface="langchain", tool=tool, run_id=str(run_id) if run_id else None,
                       thread_id=str(thread_id) if thread_id else None,
                       traceparent=traceparent if isinstance(traceparent, str) else None)


def _make_tool(coroutine: Any, name: str, description: str, schema: type[BaseModel]) -> BaseTool:
    # The pydantic model is the schema: LangChain validates with it (the model sees its JSON schema,
    # `json` alias included) and a rejection becomes the same error payload as every other tool error.
    return _AlterTool.from_function(
        coroutine=coroutine, name=name, description=description,
        args_schema=schema,
        response_format="content_and_artifact", handle_tool_error=_tool_error_content,
        handle_validation_error=_validation_error_content,
    )


def _rendered(outcome: BaseModel) -> tuple[str, BaseModel]:
    if isinstance(outcome, ToolErrorPayload):
        raise _ToolFailed(outcome)
    return outcome.model_dump_json(exclude_none=True), outcome


def _tool_error_content(error: ToolException) -> str:
    if isinstance(error, _ToolFailed):
        return error.payload.to_json()
    return internal_payload(type(error).__name__).to_json()


def _validation_error_content(error: Any) -> str:
    refused = (arguments_error(error) if isinstance(error, ValidationError)
               else InvalidArgumentsError("Invalid arguments; check them against the tool's schema."))
    refused.sent = False  # refused before anything was sent
    return refused.payload().to_json()
