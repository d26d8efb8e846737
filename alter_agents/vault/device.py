"""The OAuth device authorization grant (RFC 8628): connect from a machine without a browser.

The vault asks the provider for a device code, the person opens the verification URI on any device
and types the user code, and the vault polls the token endpoint at the provider's interval until they
approve, deny, or the code expires. Providers differ in small ways, handled here once: GitHub answers
form-encoded (and with HTTP 200 for errors) unless asked for JSON, Google says `verification_url`.
"""

from __future__ import annotations

import os
import sys
import time
import urllib.parse
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any

import anyio
import httpx

from alter_agents.errors import (
    ConfigurationError,
    ConnectDeniedError,
    ConnectError,
    ConnectTimeoutError,
)
from alter_agents.models import ConnectMethod
from alter_agents.providers import ProviderSpec
from alter_agents.vault.oauth import TokenSet

DEVICE_CODE_GRANT = "urn:ietf:params:oauth:grant-type:device_code"
DEFAULT_INTERVAL = 5.0
SLOW_DOWN_STEP = 5.0  # RFC 8628 §3.5: add 5 seconds to the interval on every `slow_down`
_TRANSIENT_LIMIT = 10

Sleep = Callable[[float], Awaitable[None]]


@dataclass(frozen=True, slots=True)
class DeviceCode:
    """What the person needs (URI and code), and what the vault polls with (the device code)."""

    device_code: str
    user_code: str
    verification_uri: str
    verification_uri_complete: str | None
    expires_at: float
    interval: float


def supports_device(spec: ProviderSpec) -> bool:
    """The provider can sign in with a device code: an endpoint on the same host as its token endpoint
    (a providers file that moves `token_url` elsewhere does not inherit the built-in device endpoint)."""
    if not (spec.device_authorization_url and spec.token_url and spec.client_id):
        return False
    return urllib.parse.urlsplit(spec.device_authorization_url).netloc == urllib.parse.urlsplit(spec.token_url).netloc


def no_local_browser(env: Mapping[str, str] | None = None) -> bool:
    """No browser can reach a loopback callback here: an SSH session, or Linux without a display or $BROWSER."""
    env = os.environ if env is None else env
    if env.get("SSH_CONNECTION") or env.get("SSH_TTY"):
        return True
    headless = sys.platform.startswith("linux") and not (env.get("DISPLAY") or env.get("WAYLAND_DISPLAY"))
    return headless and not env.get("BROWSER")


def choose_method(setting: str, spec: ProviderSpec, *, public_callback: bool) -> ConnectMethod:
    """Which flow links an account: `ALTER_CONNECT_METHOD` decides; `auto` takes the device flow only where
    the browser flow cannot complete (no public callback and no browser on this machine) and the provider
    supports it."""
    if setting == "device":
        if not supports_device(spec):
            raise ConfigurationError(
                f"ALTER_CONNECT_METHOD=device, but {spec.display_name or spec.name} has no device sign-in "
                "configured (device_authorization_url and a client id).", provider=spec.name,
            )
        return "device"
    if setting == "auto" and not public_callback and supports_device(spec) and no_local_browser():
        return "device"
    return "browser"


async def request_code(http: httpx.AsyncClient, spec: ProviderSpec, scopes: list[str] | None = None) -> DeviceCode:
    """Step (A)/(B) of RFC 8628: ask the provider for a device code and a user code."""
    if not spec.device_authorization_url or not spec.token_url or not supports_device(spec):
        raise ConfigurationError(
            f"{spec.display_name or spec.name} does not support sign-in with a device code "
            "(no device_authorization_url); use the browser flow.", provider=spec.name,
        )
    form, auth = _client_form(spec, {})
    wanted = scopes if scopes is not None else spec.scopes
    if wanted:
        form["scope"] = spec.scope_separator.join(wanted)
    try:
        response = await http.post(spec.device_authorization_url, data=form, auth=auth,
                                   headers={"Accept": "application/json"}, timeout=20.0)
    except httpx.TransportError as exc:
        raise ConnectError(f"Could not reach {spec.name}'s device authorization endpoint ({type(exc).__name__}); "
                           "try again later.", provider=spec.name, retryable=True, user_action="retry_later") from None
    data = _parse(response)
    error = data.get("error")
    if error or response.status_code >= 400:
        raise _refusal(spec, str(error or f"HTTP {response.status_code}"))
    uri = data.get("verification_uri") or data.get("verification_url")  # Google says _url
    device_code, user_code = data.get("device_code"), data.get("user_code")
    if not (isinstance(uri, str) and isinstance(device_code, str) and isinstance(user_code, str)):
        raise ConnectError(f"{spec.name}'s device authorization answer lacks device_code, user_code or "
                           "verification_uri.", provider=spec.name)
    complete = data.get("verification_uri_complete")
    return DeviceCode(
        device_code=device_code, user_code=user_code, verification_uri=uri,
        verification_uri_complete=complete if isinstance(complete, str) else None,
        expires_at=time.time() + _number(data.get("expires_in"), 900.0),
        interval=max(_number(data.get("interval"), DEFAULT_INTERVAL), 0.05),
    )


async def poll(
    http: httpx.AsyncClient, spec: ProviderSpec, code: DeviceCode, *, sleep: Sleep = anyio.sleep
) -> TokenSet:
    """Steps (E)/(F): poll the token endpoint at the given interval until the person decides.

    `authorization_pending` waits, `slow_down` widens the interval by 5 s (or to the interval the
    provider names), `access_denied` raises `ConnectDeniedError`, `expired_token` (or the code's own
    expiry) raises `ConnectTimeoutError`; 5xx and network failures are retried until the code expires.
    """
    assert spec.token_url
    interval = code.interval
    transient = 0
    while True:
        if time.time() + interval > code.expires_at:
            raise _expired(spec)
        await sleep(interval)
        form, auth = _client_form(spec, {"grant_type": DEVICE_CODE_GRANT, "device_code": code.device_code})
        try:
            response = await http.post(spec.token_url, data=form, auth=auth,
                                       headers={"Accept": "application/json"}, timeout=20.0)
        except httpx.TransportError:
            transient += 1
            if transient > _TRANSIENT_LIMIT:
                raise ConnectError(f"{spec.name}'s token endpoint stayed unreachable; start connect again.",
                                   provider=spec.name, retryable=True, user_action="retry_later") from None
            continue
        if response.status_code >= 500 or response.status_code == 429:
            transient += 1
            continue
        data = _parse(response)
        error = data.get("error")
        if not error and data.get("access_token"):
            return TokenSet.from_response(data)
        if error == "authorization_pending":
            continue
        if error == "slow_down":
            named = _number(data.get("interval"), 0.0)
            interval = named if named > interval else interval + SLOW_DOWN_STEP
            continue
        if error == "access_denied":
            raise ConnectDeniedError(f"The user declined to connect {spec.display_name or spec.name}.",
                                     provider=spec.name)
        if error == "expired_token":
            raise _expired(spec)
        raise _refusal(spec, str(error or f"HTTP {response.status_code}"))


def _client_form(spec: ProviderSpec, form: dict[str, str]) -> tuple[dict[str, str], Any]:
    """Client authentication as the provider's token endpoint expects it (public clients send only the id)."""
    if not spec.client_id:
        env = f"ALTER_{spec.name.upper().replace('-', '_')}_CLIENT_ID"
        raise ConfigurationError(f"No OAuth client is configured for {spec.name}: set {env}.", provider=spec.name)
    secret = spec.client_secret.get_secret_value() if spec.client_secret else None
    if spec.token_auth_method == "client_secret_basic" and secret:
        return form, httpx.BasicAuth(spec.client_id, secret)
    out = {**form, "client_id": spec.client_id}
    if secret:
        out["client_secret"] = secret
    return out, httpx.USE_CLIENT_DEFAULT


def _parse(response: httpx.Response) -> dict[str, Any]:
    """JSON, or the form-encoded body GitHub sends to clients that do not ask for JSON."""
    try:
        data = response.json()
    except ValueError:
        data = dict(urllib.parse.parse_qsl(response.text))
    return data if isinstance(data, dict) else {}


def _number(value: Any, default: float) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        return default


def _expired(spec: ProviderSpec) -> ConnectTimeoutError:
    return ConnectTimeoutError(
        f"The device code for {spec.display_name or spec.name} expired before the user approved it; "
        "call connect again for a new code.", provider=spec.name,
    )


def _refusal(spec: ProviderSpec, error: str) -> ConnectError:
    return ConnectError(f"{spec.display_name or spec.name} refused the device sign-in ({error}).",
                        provider=spec.name)
