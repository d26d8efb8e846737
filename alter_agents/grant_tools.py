"""Grant-scoped custom tools: write a provider-specific tool once, serve it on every surface.

    @grant_tool(provider="github", read_only=True)
    async def list_my_issues(ctx: GrantContext, repo: str) -> dict:
        '''List open issues assigned to me in a repository (owner/name).'''
        r = await ctx.request("GET", f"https://api.github.com/repos/{repo}/issues", query={"assignee": "@me"})
        return {"account": ctx.account, "issues": [i["title"] for i in r.json()]}

The function's own parameters become the tool schema; `ctx` never appears in it, and an `account`
argument is added so the model can answer an ambiguity (unless the tool is pinned to one labelled
account with `label=`, or the session to one grant). Every call goes through `AlterTools.request`,
so resolution, elicitation, host binding, redaction and the error shape are the generic tool's own.
"""

from __future__ import annotations

import copy
import importlib
import importlib.util
import inspect
import sys
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, get_type_hints

from pydantic import BaseModel, ConfigDict, Field, RootModel, TypeAdapter, create_model
from pydantic.errors import PydanticSchemaGenerationError

from alter_agents.errors import AmbiguousGrantError, InvalidArgumentsError, NotConnectedError
from alter_agents.models import ApiResponse, ToolErrorPayload
from alter_agents.telemetry import Correlation
from alter_agents.tools import AlterTools, CallContext, shielded, validate_args

__all__ = ["GrantContext", "GrantTool", "grant_tool", "load_grant_tools"]

ACCOUNT_DESCRIPTION = "Which connected account to use (identifier or label), when several are connected."


class GrantContext:
    """What a custom tool's body receives: `request` bound to the session and the tool's provider.

    `account` is the account the model asked for (or the tool's label) until the first call
    resolves it; from then on it is the account identifier every later call in the body uses.
    """

    def __init__(self, tools: AlterTools, provider: str, account: str | None, call: CallContext | None,
                 label: str | None = None) -> None:
        if label is not None:
            # A labelled tool's fixed choice must not become the session's remembered account.
            tools = copy.copy(tools)
            tools.remember_account = False
        self._tools = tools
        self.provider = provider
        self.label = label
        self.account: str | None = label if label is not None else account
        self._call = call

    async def request(
        self,
        method: str,
        url: str,
        *,
        query: Mapping[str, Any] | None = None,
        headers: Mapping[str, str] | None = None,
        json: Any = None,
        body: str | None = None,
    ) -> ApiResponse:
        """Call the provider's API as the session's user; raises the same typed errors as `request`.

        Returns what `App.request` returns: an `httpx.Response` with the redacted body (`json()`,
        `text`, `status_code`) and `grant` naming the account that acted.
        """
        args: dict[str, Any] = {"method": method.upper(), "url": url, "query": query, "headers": headers,
                                "json": json, "body": body}
        if not self._tools.pinned:
            args.update(provider=self.provider, account=self.account)
        result, _note = await self._tools.respond(args, self._call)
        if result.grant.provider != self.provider:
            raise InvalidArgumentsError(
                f"This tool works with {self.provider}, but the session's grant is for {result.grant.provider}.",
                retryable=False, user_action="none",
            )
        self.account = result.grant.account
        return result


ToolBody = Callable[..., Awaitable[Any]]


@dataclass(frozen=True)
class GrantTool:
    """A decorated function plus the schemas derived from it."""

    func: ToolBody
    provider: str
    name: str
    description: str
    args_model: type[BaseModel]
    pinned_args_model: type[BaseModel]
    result_model: type[BaseModel]
    wraps_result: bool | None  # True: {"result": value}; None: decided per value (no return annotation)
    label: str | None = None
    read_only: bool = False

    def takes_account(self, tools: AlterTools) -> bool:
        """Whether the model may name the account: not for pinned sessions or labelled tools."""
        return not tools.pinned and self.label is None

    def schema_model(self, tools: AlterTools) -> type[BaseModel]:
        return self.args_model if self.takes_account(tools) else self.pinned_args_model

    async def __call__(self, ctx: GrantContext, *args: Any, **kwargs: Any) -> Any:
        """The undecorated function, for direct use and unit tests."""
        return await self.func(ctx, *args, **kwargs)

    async def run(self, tools: AlterTools, args: BaseModel | Mapping[str, Any],
                  call: CallContext | None = None) -> Any:
        """Run the body; raises typed errors."""
        parsed = validate_args(self.schema_model(tools), dict(args) if isinstance(args, Mapping) else args)
        values = parsed.model_dump(by_alias=False)
        account = values.pop("account", None)
        base = call or CallContext()
        named = replace(base, correlation=(base.correlation or Correlation(surface="tools")).with_(tool=self.name))
        ctx = GrantContext(tools, self.provider, account, named, label=self.label)
        try:
            return await self.func(ctx, **values)
        except (AmbiguousGrantError, NotConnectedError) as exc:
            raise self._retargeted(exc) from None

    async def run_shielded(self, tools: AlterTools, args: BaseModel | Mapping[str, Any],
                           call: CallContext | None = None) -> Any | ToolErrorPayload:
        """Run the body; failures come back as the tool-error payload, never raised."""
        return await shielded(self.run(tools, args, call))

    async def run_structured(self, tools: AlterTools, args: BaseModel | Mapping[str, Any],
                             call: CallContext | None = None) -> BaseModel | ToolErrorPayload:
        """Like `run_shielded`, with the result as `result_model` (a JSON object), for surfaces that need one."""

        async def structured() -> BaseModel:
            return self.structured(await self.run(tools, args, call))

        return await shielded(structured())

    def structured(self, value: Any) -> BaseModel:
        """`value` validated as `result_model`; raises if the body broke its own return annotation."""
        if isinstance(value, self.result_model):
            return value
        wrap = self.wraps_result if self.wraps_result is not None else not isinstance(value, Mapping | BaseModel)
        if isinstance(value, BaseModel) and not wrap:
            value = value.model_dump(mode="json", by_alias=True)
        return self.result_model.model_validate({"result": value} if wrap else value)

    def _retargeted(self, exc: AmbiguousGrantError | NotConnectedError) -> Exception:
        """The generic messages say "call request again"; the model must call this tool again."""
        exc.message = exc.message.replace("call request again", f"call {self.name} again")
        if isinstance(exc, AmbiguousGrantError) and self.label is not None:
            exc.message = (f"{len(exc.accounts)} {exc.provider} accounts are labelled {self.label!r}; "
                           "relabel one of them or use the request tool with account set.")
            exc.user_action = "none"  # type: ignore[assignment,misc]
        if isinstance(exc, NotConnectedError) and self.label is not None:
            exc.message = (f"No {exc.provider} account labelled {self.label!r} is connected. Call connect with "
                           f"provider={exc.provider!r} and label={self.label!r}, ask the user to finish in the "
                           f"browser, then call {self.name} again.")
        exc.args = (exc.message,)
        return exc


def grant_tool(
    provider: str,
    *,
    name: str | None = None,
    description: str | None = None,
    label: str | None = None,
    read_only: bool = False,
) -> Callable[[ToolBody], GrantTool]:
    """Turn `async def f(ctx: GrantContext, ...)` into a tool scoped like `request` to `provider`.

    `label` pins the tool to the session user's account with that label (no `account` argument);
    `read_only` tells clients the tool changes nothing (MCP `readOnlyHint`).
    """

    def wrap(func: ToolBody) -> GrantTool:
        if not inspect.iscoroutinefunction(func):
            raise TypeError(f"{func.__name__} must be an async function")
        params = list(inspect.signature(func).parameters.values())
        if not params:
            raise TypeError(f"{func.__name__} must take the GrantContext as its first parameter")
        hints = get_type_hints(func, include_extras=True)
        fields: dict[str, Any] = {}
        for param in params[1:]:
            if param.kind in (param.VAR_POSITIONAL, param.VAR_KEYWORD):
                raise TypeError(f"{func.__name__}: *args/**kwargs cannot become tool arguments")
            if param.name == "account":
                raise TypeError(f"{func.__name__}: `account` is added for you")
            annotation = hints.get(param.name, Any)
            default = ... if param.default is inspect.Parameter.empty else param.default
            fields[param.name] = (annotation, default)
        config = ConfigDict(extra="forbid")
        tool_name = name or func.__name__
        pinned = create_model(f"{tool_name}_args_pinned", __config__=config, **fields)
        full = create_model(
            f"{tool_name}_args", __config__=config, **fields,
            account=(str | None, Field(None, description=ACCOUNT_DESCRIPTION)),
        )
        result_model, wraps = _result_model(tool_name, hints.get("return", Any))
        text = description or inspect.getdoc(func) or f"{tool_name} ({provider})"
        return GrantTool(func=func, provider=provider, name=tool_name, description=text, args_model=full,
                         pinned_args_model=pinned, result_model=result_model, wraps_result=wraps, label=label,
                         read_only=read_only)

    return wrap


def _result_model(tool_name: str, returns: Any) -> tuple[type[BaseModel], bool | None]:
    """A model of the JSON object the tool returns: objects as they are, anything else as {"result": ...}."""
    if returns is Any or returns is inspect.Parameter.empty:
        return RootModel[dict[str, Any]], None
    if isinstance(returns, type) and issubclass(returns, BaseModel):
        return returns, False
    try:
        schema = TypeAdapter(returns).json_schema()
    except PydanticSchemaGenerationError:
        raise TypeError(f"{tool_name}: its return annotation {returns!r} has no JSON schema") from None
    if schema.get("type") == "object":
        root: type[BaseModel] = RootModel[returns]  # type: ignore[valid-type]
        return root, False
    wrapped: type[BaseModel] = create_model(f"{tool_name}_result", result=(returns, ...))
    return wrapped, True


def load_grant_tools(spec: str) -> list[GrantTool]:
    """Load the tools named by `module:attr` or `path/to/file.py:attr` (a GrantTool or a sequence of them)."""
    target, _, attr = spec.rpartition(":")
    if not target or not attr:
        raise ValueError(f"{spec!r}: expected module:attr or path/to/file.py:attr")
    module = _import(target)
    try:
        found = getattr(module, attr)
    except AttributeError:
        raise ValueError(f"{spec!r}: {target} has no attribute {attr!r}") from None
    items = [found] if isinstance(found, GrantTool) else list(found) if isinstance(found, Sequence) else [found]
    wrong = [repr(item) for item in items if not isinstance(item, GrantTool)]
    if wrong:
        raise ValueError(f"{spec!r}: not @grant_tool functions: {', '.join(wrong)}")
    return items


def _import(target: str) -> Any:
    if not target.endswith(".py"):
        return importlib.import_module(target)
    path = Path(target).resolve()
    name = f"_alter_tools_{path.stem}"
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None or not path.is_file():
        raise ValueError(f"{target}: no such Python file")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses and pydantic resolve annotations through sys.modules
    spec.loader.exec_module(module)
    return module
