"""Grant-scoped custom tools: write a provider-specific tool once, serve it on every surface.

    @grant_tool(provider="github")
    async def list_my_issues(ctx: GrantContext, repo: str) -> dict:
        '''List open issues assigned to me in a repository (owner/name).'''
        r = await ctx.request("GET", f"https://api.github.com/repos/{repo}/issues", query={"assignee": "@me"})
        return {"account": ctx.account, "issues": [i["title"] for i in r.body]}

The function's own parameters become the tool schema; `ctx` never appears in it, and an `account`
argument is added so the model can answer an ambiguity. Every call goes through `AlterTools.request`,
so resolution, elicitation, host binding, redaction and the error shape are the generic tool's own.
"""

from __future__ import annotations

import inspect
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any, get_type_hints

from pydantic import BaseModel, ConfigDict, Field, create_model

from alter_agents.errors import InvalidArgumentsError
from alter_agents.models import ToolErrorPayload
from alter_agents.tools import AlterTools, CallContext, RequestResult, shielded, validate_args

ACCOUNT_DESCRIPTION = "Which connected account to use (identifier or label), when several are connected."


class GrantContext:
    """What a custom tool's body receives: `request` bound to the session and the tool's provider."""

    def __init__(self, tools: AlterTools, provider: str, account: str | None, call: CallContext | None) -> None:
        self._tools = tools
        self.provider = provider
        self.account: str | None = account
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
    ) -> RequestResult:
        """Call the provider's API as the session's user; raises the same typed errors as `request`."""
        args: dict[str, Any] = {"method": method.upper(), "url": url, "query": query, "headers": headers,
                                "json": json, "body": body}
        if not self._tools.pinned:
            args.update(provider=self.provider, account=self.account)
        result = await self._tools.request(args, self._call)
        if result.grant.provider != self.provider:
            raise InvalidArgumentsError(
                f"This tool works with {self.provider}, but the session's grant is for {result.grant.provider}."
            )
        self.account = result.grant.account
        return result


ToolBody = Callable[..., Awaitable[Any]]


@dataclass(frozen=True)
class GrantTool:
    """A decorated function plus the schema derived from it."""

    func: ToolBody
    provider: str
    name: str
    description: str
    args_model: type[BaseModel]
    pinned_args_model: type[BaseModel]

    def schema_model(self, tools: AlterTools) -> type[BaseModel]:
        """Pinned sessions have no `account` argument: the grant is fixed."""
        return self.pinned_args_model if tools.pinned else self.args_model

    async def run(self, tools: AlterTools, args: BaseModel | Mapping[str, Any],
                  call: CallContext | None = None) -> Any:
        """Run the body; raises typed errors."""
        parsed = validate_args(self.schema_model(tools), dict(args) if isinstance(args, Mapping) else args)
        values = parsed.model_dump(by_alias=False)
        account = values.pop("account", None)
        ctx = GrantContext(tools, self.provider, account, call)
        return await self.func(ctx, **values)

    async def run_shielded(self, tools: AlterTools, args: BaseModel | Mapping[str, Any],
                           call: CallContext | None = None) -> Any | ToolErrorPayload:
        """Run the body; failures come back as the tool-error payload, never raised."""
        return await shielded(self.run(tools, args, call))


def grant_tool(
    provider: str, *, name: str | None = None, description: str | None = None
) -> Callable[[ToolBody], GrantTool]:
    """Turn `async def f(ctx: GrantContext, ...)` into a tool scoped like `request` to `provider`."""

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
        text = description or inspect.getdoc(func) or f"{tool_name} ({provider})"
        return GrantTool(func=func, provider=provider, name=tool_name, description=text,
                         args_model=full, pinned_args_model=pinned)

    return wrap
