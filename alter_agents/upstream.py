"""The outgoing call: bind the credential to its provider's hosts, inject it, follow safe redirects.

The destination is checked before the credential is attached, on the first hop and on every
redirect; a redirect that leaves the provider's hosts is refused, so the credential never travels
there. Every occurrence of the credential in what comes back is redacted.
"""

from __future__ import annotations

import base64
import functools
import ipaddress
import json as jsonlib
import logging
import time
import urllib.parse
from collections.abc import Mapping
from typing import Any

import httpx

from alter_agents.errors import AlterError, HostNotAllowedError, UpstreamTimeoutError, UpstreamUnreachableError
from alter_agents.models import ApiResponse, ReleasedCredential
from alter_agents.providers.spec import host_matches

MAX_REDIRECTS = 5
DEFAULT_MAX_RESPONSE_BYTES = 10 * 1024 * 1024
REDACTED = "[REDACTED]"
_REDIRECTS = {301, 302, 303, 307, 308}
JSON_CONTENT_TYPE = "application/json; charset=utf-8"


class _ScrubQueries(logging.Filter):
    """httpx logs each request's full URL at INFO; a credential injected as a query parameter would
    ride along. Every URL it logs loses its query string before any handler sees it."""

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.args, tuple):
            record.args = tuple(
                f"{arg.copy_with(query=None)}?[query hidden]" if isinstance(arg, httpx.URL) and arg.query else arg
                for arg in record.args
            )
        return True


logging.getLogger("httpx").addFilter(_ScrubQueries())


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def check_destination(url: str, provider: str, hosts: tuple[str, ...] | list[str], allow_http: bool) -> httpx.URL:
    """Refuse a URL the credential may not be sent to; return it parsed."""
    return _check_destination(url, provider, tuple(hosts), allow_http)


@functools.lru_cache(maxsize=1024)
def _check_destination(url: str, provider: str, hosts: tuple[str, ...], allow_http: bool) -> httpx.URL:
    """Pure, so an agent's repeated URLs are parsed once; refusals are raised, never cached."""
    try:
        parsed = httpx.URL(url)
    except (httpx.InvalidURL, TypeError) as exc:
        raise HostNotAllowedError(url, provider, hosts, reason=f"it is not a valid URL ({exc})") from None
    host = parsed.host.lower().rstrip(".")
    if parsed.scheme == "http":
        if not (allow_http and is_loopback(host)):
            raise HostNotAllowedError(url, provider, hosts, reason="only https URLs are allowed")
    elif parsed.scheme != "https":
        raise HostNotAllowedError(url, provider, hosts, reason="only https URLs are allowed")
    if parsed.userinfo:
        raise HostNotAllowedError(url, provider, hosts, reason="URLs with user info are not allowed")
    if not host_matches(host, hosts):
        raise HostNotAllowedError(url, provider, hosts)
    return parsed


@functools.lru_cache(maxsize=256)
def _secret_forms(token: str) -> tuple[bytes, ...]:
    """The token as it may appear on the wire or be echoed back."""
    forms = {token, urllib.parse.quote(token, safe=""), urllib.parse.quote_plus(token)}
    forms.add(base64.b64encode(f"{token}:".encode()).decode())
    return tuple(sorted((f.encode() for f in forms if len(f) >= 4), key=len, reverse=True))


def redact(data: bytes, token: str) -> bytes:
    for form in _secret_forms(token):
        data = data.replace(form, REDACTED.encode())
    return data


def redact_text(text: str, token: str) -> str:
    return redact(text.encode(), token).decode("utf-8", errors="replace")


class Upstream:
    """One pooled HTTP client shared by every call."""

    def __init__(
        self,
        client: httpx.AsyncClient | None = None,
        *,
        timeout: float = 30.0,
        max_response_bytes: int = DEFAULT_MAX_RESPONSE_BYTES,
    ) -> None:
        self._client = client or httpx.AsyncClient(
            follow_redirects=False,
            timeout=httpx.Timeout(timeout, connect=min(timeout, 10.0)),
            limits=httpx.Limits(max_connections=200, max_keepalive_connections=64),
        )
        self.max_response_bytes = max_response_bytes

    async def aclose(self) -> None:
        await self._client.aclose()

    async def send(
        self,
        credential: ReleasedCredential,
        method: str,
        url: str,
        *,
        query: Mapping[str, Any] | None = None,
        headers: Mapping[str, str] | None = None,
        json: Any = None,
        content: bytes | str | None = None,
    ) -> tuple[ApiResponse, float]:
        """Send the call with the credential; returns the redacted response and latency in ms."""
        provider = credential.grant.provider
        target = check_destination(url, provider, credential.hosts, credential.allow_http)
        if query:
            target = target.copy_merge_params({k: _query_value(v) for k, v in query.items()})
        method = method.upper()
        body_kwargs: dict[str, Any] = {}
        if json is not None:
            body_kwargs["content"] = _json_bytes(json)
            if not any(name.lower() == "content-type" for name in headers or {}):
                headers = {**(headers or {}), "Content-Type": JSON_CONTENT_TYPE}
        elif content is not None:
            body_kwargs["content"] = content
        started = time.perf_counter()
        for _hop in range(MAX_REDIRECTS + 1):
            request = self._client.build_request(
                method, self._inject(target, credential), headers=self._headers(headers, credential), **body_kwargs
            )
            response = await self._send(request, credential)
            location = response.headers.get("location")
            if response.status_code not in _REDIRECTS or not location:
                return await self._finish(response, credential, started)
            await response.aclose()
            next_url = str(target.join(location))
            try:
                target = check_destination(next_url, provider, credential.hosts, credential.allow_http)
            except HostNotAllowedError:
                refused = HostNotAllowedError(
                    url, provider, credential.hosts,
                    reason=f"the API redirected to {httpx.URL(next_url).host}, outside {provider}'s hosts",
                )
                refused.sent = True  # the first hop reached the provider; the redirect was not followed
                raise refused from None
            if response.status_code == 303 or (response.status_code in (301, 302) and method == "POST"):
                method, body_kwargs = "GET", {}
        too_many = UpstreamUnreachableError(f"{url} redirected more than {MAX_REDIRECTS} times.", retryable=False,
                                            user_action="none")
        too_many.sent = True
        raise too_many

    async def _send(self, request: httpx.Request, credential: ReleasedCredential) -> httpx.Response:
        host = request.url.host
        try:
            return await self._client.send(request, stream=True)
        except httpx.TimeoutException as exc:
            error: AlterError = UpstreamTimeoutError(
                f"{credential.grant.provider} ({host}) did not answer in time; try again later."
            )
            error.sent = _may_have_left(exc)
            raise error from None
        except httpx.TransportError as exc:
            error = UpstreamUnreachableError(
                f"Could not reach {credential.grant.provider} ({host}): {type(exc).__name__}; try again later."
            )
            error.sent = _may_have_left(exc)
            raise error from None

    async def _finish(
        self, response: httpx.Response, credential: ReleasedCredential, started: float
    ) -> tuple[ApiResponse, float]:
        token = credential.token
        limit = self.max_response_bytes
        chunks: list[bytes] = []
        size = 0
        truncated = False
        try:
            async for chunk in response.aiter_bytes():
                chunks.append(chunk)
                size += len(chunk)
                if size > limit + len(token):
                    truncated = True
                    break
        except httpx.TimeoutException:
            stalled: AlterError = UpstreamTimeoutError(f"{credential.grant.provider} stopped sending its response.")
            stalled.sent = True
            raise stalled from None
        except httpx.TransportError:
            broken = UpstreamUnreachableError(
                f"The connection to {credential.grant.provider} broke while reading its response."
            )
            broken.sent = True
            raise broken from None
        finally:
            await response.aclose()
        content = redact(b"".join(chunks), token)
        if len(content) > limit:
            content, truncated = content[:limit], True
        headers = {k.lower(): redact_text(v, token) for k, v in response.headers.items()}
        headers.pop("content-encoding", None)
        headers.pop("content-length", None)
        api = ApiResponse(
            response.status_code, headers=headers, content=content, truncated=truncated,
            grant=credential.grant.ref(), request=_public_request(response.request, credential),
        )
        return api, (time.perf_counter() - started) * 1000

    @staticmethod
    def _inject(url: httpx.URL, credential: ReleasedCredential) -> httpx.URL:
        if credential.injection.query:
            return url.copy_merge_params({credential.injection.query: credential.token})
        return url

    @staticmethod
    def _headers(extra: Mapping[str, str] | None, credential: ReleasedCredential) -> dict[str, str]:
        headers = dict(extra or {})
        injection = credential.injection
        if injection.basic:
            headers["Authorization"] = "Basic " + base64.b64encode(f"{credential.token}:".encode()).decode()
        elif injection.header:
            headers[injection.header] = injection.format.replace("{token}", credential.token)
        return headers


def _public_request(sent: httpx.Request, credential: ReleasedCredential) -> httpx.Request:
    """The sent request's method and URL only: no headers, and no query parameter carrying the credential."""
    url = sent.url.copy_remove_param(credential.injection.query) if credential.injection.query else sent.url
    return httpx.Request(sent.method, url)


def _json_bytes(value: Any) -> bytes:
    """JSON as httpx would write it (compact, UTF-8), sent with an explicit charset."""
    return jsonlib.dumps(value, ensure_ascii=False, separators=(",", ":"), allow_nan=False).encode("utf-8")


def _may_have_left(exc: httpx.TransportError) -> bool:
    """False only when no byte of the request can have reached the provider (no connection was made)."""
    return not isinstance(exc, httpx.ConnectError | httpx.ConnectTimeout | httpx.PoolTimeout)


def _query_value(value: Any) -> Any:
    if isinstance(value, bool):
        return "true" if value else "false"
    return value
