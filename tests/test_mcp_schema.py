"""Output schemas: inlined and flattened for cheap client validation, yet admitting exactly what we send."""

from __future__ import annotations

import json
from typing import Any

import pytest
from jsonschema.validators import validator_for
from pydantic import BaseModel

from alter_agents.errors import AmbiguousGrantError, NotConnectedError
from alter_agents.models import AccountRef, GrantRef
from alter_agents.tools import ConnectResultOut, RequestResult
from mcp_server import output_schema, render


def _errors(schema: dict[str, Any], instance: Any) -> list[str]:
    validator = validator_for(schema)(schema)
    return [error.message for error in validator.iter_errors(instance)]


def _refs(schema: Any) -> list[str]:
    return [m for m in json.dumps(schema).split('"') if m.startswith("#/")]


def test_request_schema_has_no_references_and_admits_results_and_errors() -> None:
    schema = output_schema(RequestResult)
    assert _refs(schema) == [] and "$defs" not in schema
    grant = GrantRef(provider="google", account="me@work.example")
    for result in (
        RequestResult(status=200, headers={"content-type": "application/json"}, body={"a": None}, grant=grant),
        RequestResult(status=200, headers={}, body=None, grant=grant),  # the API answered JSON `null`
        RequestResult(status=200, headers={}, body="ok", grant=grant.model_copy(update={"label": "work"}),
                      note="Used work, chosen by the user."),
        AmbiguousGrantError("google", [AccountRef(account="a@x.example"), AccountRef(account="b@x.example")]).payload(),
        NotConnectedError("google").payload(),
    ):
        data = render(result).structured_content
        assert _errors(schema, data) == [], data
    # Still a real schema: a wrong type or a missing field is refused.
    assert _errors(schema, {"status": "200", "headers": {}, "body": 1, "grant": grant.model_dump()})
    assert _errors(schema, {"status": 200, "headers": {}, "body": 1})


def test_empty_optional_fields_are_left_out_but_a_null_body_is_kept() -> None:
    grant = GrantRef(provider="github", account="octocat")
    data = render(RequestResult(status=200, headers={}, body=None, grant=grant)).structured_content
    assert data == {"status": 200, "headers": {}, "body": None, "truncated": False,
                    "grant": {"provider": "github", "account": "octocat"}}


def test_nullable_fields_become_type_lists() -> None:
    schema = output_schema(ConnectResultOut)
    result = next(branch for branch in schema["anyOf"] if branch["title"] == "ConnectResultOut")
    assert result["properties"]["connect_url"]["type"] == ["string", "null"]
    assert "anyOf" not in result["properties"]["connect_url"]


class _Node(BaseModel):
    name: str
    children: list[_Node] = []


class _Tree(BaseModel):
    root: _Node


@pytest.mark.parametrize("model", [_Tree])
def test_a_recursive_result_keeps_its_references_and_still_validates(model: type[BaseModel]) -> None:
    schema = output_schema(model)
    assert "#/$defs/_Node" in _refs(schema)
    tree = {"root": {"name": "a", "children": [{"name": "b", "children": []}]}}
    assert _errors(schema, tree) == []
    assert _errors(schema, {"root": {"name": 1}})
