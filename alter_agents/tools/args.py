"""Tool arguments as the model sends them: strict schemas, validated by our models, errors by field."""

from __future__ import annotations

import re
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from alter_agents.errors import InvalidArgumentsError
from alter_agents.models import Injection
from alter_agents.providers.binding import refuse_caller_parts

_HEADER_NAME = re.compile(r"^[!#$%&'*+\-.^_`|~0-9A-Za-z]+$")
_HEADER_VALUE = re.compile(r"^[\t\x20-\x7e]*$")

Method = Literal["GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS"]
QueryValue = str | int | float | bool


class GrantRequestArgs(BaseModel):
    """Arguments of `request` in a pinned-grant session: no provider, no account."""

    model_config = ConfigDict(populate_by_name=True, extra="forbid")

    method: Method = Field("GET", description="HTTP method.")
    url: str = Field(description="Absolute https URL of the API endpoint, e.g. https://api.github.com/user/repos")
    query: dict[str, QueryValue] | None = Field(None, description='Query parameters, e.g. {"per_page": 10}.')
    headers: dict[str, str] | None = Field(
        None, description='Extra headers, e.g. {"Accept": "application/json"}. Never credentials.'
    )
    json_body: dict[str, Any] | list[Any] | None = Field(
        None, alias="json",
        description="JSON request body (an object or an array), sent as application/json; charset=utf-8. Pass "
                    "the value itself: do not pre-serialise it into a string.",
    )
    body: str | None = Field(
        None,
        description="Raw text request body, only when the body is not JSON (give json or body, not both). Sent "
                    "as UTF-8 with Content-Type text/plain; charset=utf-8 unless headers sets another "
                    "Content-Type (e.g. application/x-www-form-urlencoded).",
    )

    @field_validator("method", mode="before")
    @classmethod
    def _upper_method(cls, value: Any) -> Any:
        return value.strip().upper() if isinstance(value, str) else value

    @field_validator("headers")
    @classmethod
    def _plain_headers(cls, value: dict[str, str] | None) -> dict[str, str] | None:
        for name, text in (value or {}).items():
            if not _HEADER_NAME.match(name):
                raise ValueError(f"{name!r} is not a valid header name")
            if not _HEADER_VALUE.match(text):
                raise ValueError(f"the value of {name} must be printable ASCII on one line")
        return value

    @model_validator(mode="after")
    def _one_body(self) -> GrantRequestArgs:
        if self.json_body is not None and self.body is not None:
            raise ValueError("send either json or body, not both")
        return self


class RequestArgs(GrantRequestArgs):
    """Arguments of `request`."""

    provider: str | None = Field(
        None, description="Provider name, e.g. github or google. Optional: inferred from the URL's host."
    )
    account: str | None = Field(
        None, description="Which connected account to use (identifier or label), when several are connected."
    )


class ConnectArgs(BaseModel):
    model_config = ConfigDict(extra="forbid")

    provider: str = Field(description="Provider id to link, as listed by the accounts tool, e.g. github, google.")
    scopes: list[str] | None = Field(None, description="OAuth scopes to ask for; default: the provider's.")
    label: str | None = Field(None, description="A name for this account, e.g. work or personal.")
    account: str | None = Field(
        None, description="An account to re-authorise or upgrade (identifier or label): that same grant is "
                          "renewed, and the sign-in page is pre-filled with it where the provider allows.",
    )



def validate_args(model: type[Any], args: Any) -> Any:
    if isinstance(args, model):
        return args
    try:
        return model.model_validate(args)
    except ValidationError as exc:
        raise arguments_error(exc) from None


def arguments_error(exc: ValidationError) -> InvalidArgumentsError:
    """A schema rejection as the model sees it: each problem by field, never the rejected value."""
    problems = "; ".join(f"{'.'.join(str(p) for p in e['loc']) or 'arguments'}: {e['msg']}" for e in exc.errors())
    return InvalidArgumentsError(f"Invalid arguments: {problems}. Fix them and call again.")



def refuse_credential_headers(headers: dict[str, str] | None, injection: Injection | None = None) -> None:
    """Refuse credential and framing headers before anything is resolved (`binding.refuse_caller_parts`);
    the provider's own injection header is refused again once the grant is known, before sending."""
    refuse_caller_parts(injection, headers)

