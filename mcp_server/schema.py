"""Tool output schemas: the result or the error payload, in the form clients validate cheaply.

MCP clients validate every `structuredContent` against the tool's `outputSchema`, and a validator's
cost grows with each subschema and reference it follows (the SDK client's `jsonschema` spends most of
its time there). So the schema pydantic makes is rewritten into an equivalent one: `$ref`s inlined
and `anyOf` of bare types written as a type list. A recursive model keeps its references.
"""

from __future__ import annotations

import contextlib
from typing import Any

from pydantic import BaseModel, TypeAdapter

from alter_agents.models import ToolErrorPayload

_SCHEMA_MAPS = frozenset({"properties", "patternProperties", "dependentSchemas"})  # name -> subschema
_VALUES = frozenset({"default", "examples", "const", "enum"})  # instance data, never rewritten
_DEFS_PREFIX = "#/$defs/"


class _Recursive(Exception):
    """A definition refers to itself; it cannot be inlined."""


def output_schema(result: type[BaseModel]) -> dict[str, Any]:
    """An object schema admitting the result or the error payload (some clients validate errors too)."""
    either: Any = result | ToolErrorPayload
    schema = TypeAdapter(either).json_schema()
    with contextlib.suppress(_Recursive):  # a recursive model keeps its references
        schema = _rewrite(schema, schema.get("$defs", {}), ())
    return {"type": "object", **schema}


def _rewrite(node: Any, defs: dict[str, Any], expanding: tuple[str, ...]) -> Any:
    if isinstance(node, list):
        return [_rewrite(item, defs, expanding) for item in node]
    if not isinstance(node, dict):
        return node
    ref = node.get("$ref")
    if isinstance(ref, str) and ref.startswith(_DEFS_PREFIX):
        name = ref.removeprefix(_DEFS_PREFIX)
        if name in expanding or name not in defs:
            raise _Recursive(name)
        siblings = {k: _rewrite(v, defs, expanding) for k, v in node.items() if k != "$ref"}
        return {**_rewrite(defs[name], defs, (*expanding, name)), **siblings}
    out: dict[str, Any] = {}
    for key, value in node.items():
        if key == "$defs":
            continue
        if key in _SCHEMA_MAPS and isinstance(value, dict):
            out[key] = {name: _rewrite(sub, defs, expanding) for name, sub in value.items()}
        elif key in _VALUES:
            out[key] = value
        else:
            out[key] = _rewrite(value, defs, expanding)
    alternatives = out.get("anyOf")
    if "type" not in out and isinstance(alternatives, list) and alternatives and all(map(_bare_type, alternatives)):
        del out["anyOf"]
        out["type"] = [alternative["type"] for alternative in alternatives]
    return out


def _bare_type(schema: Any) -> bool:
    return isinstance(schema, dict) and schema.keys() == {"type"} and isinstance(schema["type"], str)
