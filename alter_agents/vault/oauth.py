"""OAuth 2 authorization code flow with PKCE (RFC 7636), token refresh and account lookup.

Token endpoint calls are plain form POSTs (RFC 6749 §4.1.3, §6) with explicit retry rules:
`invalid_grant` is final (the grant needs re-authorization); 5xx, 429 and network failures are
transient and retried with backoff, and never mark the grant.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import anyio
import httpx
from authlib.common.security import generate_token
from authlib.common.urls import add_params_to_uri
from authlib.oauth2.rfc7636 import create_s256_code_challenge

from alter_agents.errors import (
    AlterError,
    ConfigurationError,
    ConnectDeniedError,
    ConnectError,
    InvalidArgumentsError,
    ProviderNotConfiguredError,
    RateLimitedError,
    UpstreamUnreachableError,
)
from alter_agents.providers import ProviderSpec

_RETRY_DELAYS = (0.2, 0.5, 1.0)


class InvalidGrant(Exception):
    """The authorization server refused the refresh token or code for good."""


class OAuthClientRejectedError(ConfigurationError):
    """The authorization server does not accept our OAuth client (id, secret, redirect or grant type)."""

    code = "provider_not_configured"


# RFC 6749 §4.1.2.1 (authorization response) and §5.2 (token response) error codes this vault can act on.
_CLIENT_ERRORS = frozenset({"invalid_client", "unauthorized_client", "unsupported_grant_type",
                            "unsupported_response_type", "invalid_request"})
_TRANSIENT_ERRORS = frozenset({"server_error", "temporarily_unavailable"})
KNOWN_ERRORS = _CLIENT_ERRORS | _TRANSIENT_ERRORS | {"access_denied", "invalid_scope", "invalid_grant"}


def oauth_error(error: str, spec: ProviderSpec) -> AlterError:
    """The typed error for an RFC 6749 error code from `spec`'s authorization server.

    Only the code is used: the server's free text (`error_description`) never reaches the model.
    """
    name = spec.display_name or spec.name
    if error == "access_denied":
        return ConnectDeniedError("The user did not grant access.", provider=spec.name)
    if error == "invalid_scope":
        return InvalidArgumentsError(
            f"{name} refused the requested scopes (invalid_scope); connect again with scopes from: "
            f"{', '.join(spec.requestable_scopes()) or 'none'}.", provider=spec.name)
    if error in _CLIENT_ERRORS:
        return OAuthClientRejectedError(
            f"{name} refused this deployment's OAuth client ({error}); an operator must check the {spec.name} "
            "client id, secret and redirect URI.", provider=spec.name)
    if error in _TRANSIENT_ERRORS:
        return UpstreamUnreachableError(f"{name}'s authorization server is unavailable ({error}); try again later.",
                                        provider=spec.name)
    if error == "invalid_grant":
        return ConnectError(f"{name} refused the authorization code (invalid_grant); start connect again.",
                            provider=spec.name)
    return ConnectError(f"{name} refused the sign-in with an unrecognised error; start connect again.",
                        provider=spec.name)


@dataclass(frozen=True, slots=True)
class TokenSet:
    access_token: str
    refresh_token: str | None
    expires_at: float | None
    scopes: list[str] | None

    @classmethod
    def from_response(cls, data: dict[str, Any]) -> TokenSet:
        access = data.get("access_token")
        if not isinstance(access, str) or not access:
            raise ConnectError("The token endpoint answered without an access_token.")
        expires_in = data.get("expires_in")
        scope = data.get("scope")
        return cls(
            access_token=access,
            refresh_token=data.get("refresh_token") or None,
            expires_at=time.time() + float(expires_in) if expires_in not in (None, "") else None,
            scopes=scope.replace(",", " ").split() if isinstance(scope, str) else None,
        )


def new_state() -> str:
    return str(generate_token(43))


def new_code_verifier() -> str:
    return str(generate_token(64))


def authorization_url(
    spec: ProviderSpec, *, redirect_uri: str, state: str, code_verifier: str, scopes: list[str] | None = None,
    login_hint: str | None = None,
) -> str:
    if not spec.authorize_url or not spec.token_url:
        raise ConfigurationError(f"Provider {spec.name!r} has no OAuth endpoints; add a secret instead.")
    if not spec.client_id:
        raise ProviderNotConfiguredError(spec.name)
    params: list[tuple[str, str]] = [
        ("response_type", "code"),
        ("client_id", spec.client_id),
        ("redirect_uri", redirect_uri),
        ("state", state),
        ("code_challenge", create_s256_code_challenge(code_verifier)),
        ("code_challenge_method", "S256"),
    ]
    wanted = scopes if scopes is not None else spec.scopes
    if wanted:
        params.append(("scope", spec.scope_separator.join(wanted)))
    params.extend(spec.authorize_params.items())
    if login_hint and spec.login_hint:
        params.append((spec.login_hint, login_hint))
    return str(add_params_to_uri(spec.authorize_url, params))


async def _token_request(http: httpx.AsyncClient, spec: ProviderSpec, form: dict[str, str]) -> TokenSet:
    assert spec.token_url and spec.client_id
    auth: httpx.Auth | None = None
    if spec.token_auth_method == "client_secret_basic":
        auth = httpx.BasicAuth(spec.client_id, spec.client_secret.get_secret_value() if spec.client_secret else "")
    else:
        form = {**form, "client_id": spec.client_id}
        if spec.client_secret:
            form["client_secret"] = spec.client_secret.get_secret_value()
    last: str = ""
    for delay in (*_RETRY_DELAYS, None):
        try:
            response = await http.post(
                spec.token_url, data=form, auth=auth or httpx.USE_CLIENT_DEFAULT,
                headers={"Accept": "application/json"}, timeout=20.0,
            )
        except httpx.TransportError as exc:
            last = type(exc).__name__
        else:
            if response.status_code < 500 and response.status_code != 429:
                return _parse_token_response(response, spec)
            last = f"HTTP {response.status_code}"
        if delay is None:
            break
        await anyio.sleep(delay)
    name = spec.display_name or spec.name
    if last == "HTTP 429":
        raise RateLimitedError(f"{name} is rate limiting token requests; try again in a minute.", provider=spec.name)
    raise UpstreamUnreachableError(f"{name}'s token endpoint is unavailable ({last}); try again later.")


def _parse_token_response(response: httpx.Response, spec: ProviderSpec) -> TokenSet:
    try:
        data = response.json()
    except ValueError:
        raise ConnectError(f"The token endpoint answered HTTP {response.status_code} without JSON.") from None
    error = data.get("error") if isinstance(data, dict) else None
    if error or response.status_code >= 400 or (isinstance(data, dict) and data.get("ok") is False):
        if error in ("invalid_grant", "invalid_token", "invalid_code", "expired_token"):
            raise InvalidGrant(str(error))
        if isinstance(error, str) and error in KNOWN_ERRORS:
            raise oauth_error(error, spec)
        raise ConnectError(f"The token endpoint refused the request (HTTP {response.status_code}).")
    return TokenSet.from_response(data)


async def exchange_code(
    http: httpx.AsyncClient, spec: ProviderSpec, *, code: str, redirect_uri: str, code_verifier: str
) -> TokenSet:
    form = {
        "grant_type": "authorization_code",
        "code": code,
        "redirect_uri": redirect_uri,
        "code_verifier": code_verifier,
    }
    try:
        return await _token_request(http, spec, form)
    except InvalidGrant as exc:
        raise ConnectError(f"The authorization code was refused ({exc}); start connect again.") from None


async def refresh(http: httpx.AsyncClient, spec: ProviderSpec, refresh_token: str) -> TokenSet:
    """Raises `InvalidGrant` when the refresh token is dead, `UpstreamUnreachableError` when transient."""
    return await _token_request(http, spec, {"grant_type": "refresh_token", "refresh_token": refresh_token})


async def lookup_account(http: httpx.AsyncClient, spec: ProviderSpec, tokens: TokenSet) -> tuple[str, str | None]:
    """Learn the account identifier (and display name) with the fresh access token."""
    if spec.account is None:
        return f"{spec.name}-account", None
    header = spec.inject.to_injection()
    headers = {"Accept": "application/json"}
    params: dict[str, str] = {}
    if header.query:
        params[header.query] = tokens.access_token
    elif header.header:
        headers[header.header] = header.format.replace("{token}", tokens.access_token)
    try:
        response = await http.get(spec.account.url, headers=headers, params=params, timeout=20.0)
        response.raise_for_status()
        data = response.json()
    except (httpx.HTTPError, ValueError) as exc:
        raise ConnectError(f"Could not learn which {spec.name} account was connected: {type(exc).__name__}.") from None
    account = _field(data, spec.account.field)
    if not account:
        raise ConnectError(f"{spec.name}'s account endpoint did not return {spec.account.field!r}.")
    display = _field(data, spec.account.display_field) if spec.account.display_field else None
    return account, display


def _field(data: Any, path: str | None) -> str | None:
    if not path:
        return None
    for part in path.split("."):
        if not isinstance(data, dict):
            return None
        data = data.get(part)
    return str(data) if data not in (None, "") else None
