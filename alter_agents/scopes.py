"""Missing-permission detection: does an upstream answer say the grant lacks a scope, and which?

RFC 6750 §3.1 (`WWW-Authenticate: Bearer error="insufficient_scope", scope="…"` on 401/403) is read for
every provider. Providers that signal it their own way declare how in the catalogue (`scope_signals`),
so no provider is special-cased in code: GitHub compares `X-Accepted-OAuth-Scopes` with `X-OAuth-Scopes`,
Google names `ACCESS_TOKEN_SCOPE_INSUFFICIENT` in its error body, Slack answers `missing_scope` with the
`needed` scopes.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

_CHALLENGE_PARAM = re.compile(r'([A-Za-z_][\w-]*)\s*=\s*(?:"((?:[^"\\]|\\.)*)"|([^\s,]+))')
_SPLIT = re.compile(r"[\s,]+")


class ScopeSignals(BaseModel):
    """How one provider says a token lacks a permission (a catalogue entry's `scope_signals` table)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    statuses: tuple[int, ...] = Field((401, 403), description="Statuses that can carry the signal.")
    granted_header: str | None = Field(None, description="Header listing the token's scopes (GitHub: X-OAuth-Scopes).")
    accepted_header: str | None = Field(
        None, description="Header listing scopes the endpoint accepts (GitHub: X-Accepted-OAuth-Scopes)."
    )
    body_markers: tuple[str, ...] = Field(
        (), description="Strings whose presence in a JSON error body means a missing scope "
                        "(Google: ACCESS_TOKEN_SCOPE_INSUFFICIENT)."
    )
    error_field: str | None = Field(None, description="JSON field holding an error code (Slack: error).")
    error_values: tuple[str, ...] = Field(
        (), description="Error codes that mean a missing scope (Slack: missing_scope)."
    )
    required_field: str | None = Field(None, description="JSON field listing the needed scopes (Slack: needed).")
    granted_field: str | None = Field(None, description="JSON field listing the granted scopes (Slack: provided).")


@dataclass(frozen=True, slots=True)
class ScopeShortfall:
    """The upstream said the call needs more permission than the grant has."""

    status: int
    required: tuple[str, ...] | None
    granted: tuple[str, ...] | None


def detect(
    status: int, headers: Mapping[str, str], body: bytes, signals: ScopeSignals | None = None
) -> ScopeShortfall | None:
    """Read a response for a missing-scope signal; None when it says nothing of the kind."""
    if status not in (401, 403) and (signals is None or status not in signals.statuses):
        return None  # most responses: nothing to read
    lowered = {k.lower(): v for k, v in headers.items()}
    granted_hdr = _header_scopes(lowered, signals.granted_header if signals else None)
    if status in (401, 403):
        challenge = _bearer_challenge(lowered.get("www-authenticate", ""))
        if challenge.get("error") == "insufficient_scope":
            required = _split(challenge.get("scope"))
            return ScopeShortfall(status, required, granted_hdr)
    if signals is None or status not in signals.statuses:
        return None
    accepted = _header_scopes(lowered, signals.accepted_header)
    if accepted and granted_hdr is not None and not set(accepted) & set(granted_hdr) and status != 200:
        return ScopeShortfall(status, accepted, granted_hdr)
    data = _json(body) if (signals.body_markers or signals.error_field) else None
    if data is None:
        return None
    marked = bool(signals.body_markers) and _contains(data, signals.body_markers)
    errored = bool(signals.error_field) and _field(data, signals.error_field) in signals.error_values
    if not (marked or errored):
        return None
    required = _split(_field(data, signals.required_field)) if signals.required_field else None
    granted = _split(_field(data, signals.granted_field)) if signals.granted_field else None
    return ScopeShortfall(status, required, granted if granted is not None else granted_hdr)


def _bearer_challenge(header: str) -> dict[str, str]:
    """The parameters of the `Bearer` challenge in a WWW-Authenticate value (RFC 6750 §3)."""
    at = header.lower().find("bearer")
    if at < 0:
        return {}
    return {m.group(1).lower(): (m.group(2) if m.group(2) is not None else m.group(3))
            for m in _CHALLENGE_PARAM.finditer(header[at + len("bearer"):])}


def _header_scopes(headers: Mapping[str, str], name: str | None) -> tuple[str, ...] | None:
    if not name or name.lower() not in headers:
        return None
    return _split(headers[name.lower()]) or ()


def _split(value: Any) -> tuple[str, ...] | None:
    if value is None:
        return None
    if isinstance(value, list):
        return tuple(str(v) for v in value if str(v))
    return tuple(s for s in _SPLIT.split(str(value)) if s)


def _json(body: bytes) -> Any:
    try:
        return json.loads(body)
    except ValueError:
        return None


def _field(data: Any, path: str | None) -> Any:
    """A dotted path into a JSON value (`error.status`), None when absent."""
    for part in (path or "").split("."):
        if not isinstance(data, dict):
            return None
        data = data.get(part)
    return data


def _contains(data: Any, markers: tuple[str, ...]) -> bool:
    """True when any string value anywhere in `data` is one of `markers`."""
    if isinstance(data, str):
        return data in markers
    if isinstance(data, dict):
        return any(_contains(v, markers) for v in data.values())
    if isinstance(data, list):
        return any(_contains(v, markers) for v in data)
    return False
