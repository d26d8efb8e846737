"""The outgoing call: bind the credential to its provider's hosts, inject it, follow safe redirects.

The destination is checked before the credential is attached, on the first hop and on every
redirect (`providers.binding`); a redirect that leaves the provider's hosts is refused, so the
credential never travels there. What comes back is redacted by `redact` in bytes and headers, cut so
no beginning of the credential is left at the edge, and every call has one overall deadline.
Errors leave this module detached: no `__context__`, no traceback frames holding a request.
"""

from __future__ import annotations

import base64
import json as jsonlib
import logging
import time
from collections.abc import Mapping
from typing import Any

import anyio
import httpx

from alter_agents.deadlines import Deadlines
from alter_agents.errors import AlterError, HostNotAllowedError, UpstreamTimeoutError, UpstreamUnreachableError
from alter_agents.models import ApiResponse, ReleasedCredential
from alter_agents.providers.binding import check_destination, host_of, is_loopback, refuse_caller_parts
from alter_agents.redact import REDACTED, cut, redact_bytes, redact_raw_headers, redact_text

__all__ = ["REDACTED", "Upstream", "check_destination", "is_loopback"]

log = logging.getLogger("alter_agents.upstream")

MAX_REDIRECTS = 5
DEFAULT_MAX_RESPONSE_BYTES = 10 * 1024 * 1024
_REDIRECTS = {301, 302, 303, 307, 308}
_RECOMPUTED = (b"content-encoding", b"content-length")  # the body handed back is decoded, maybe redacted or cut
JSON_CONTENT_TYPE = "application/json; charset=utf-8"


def _detached(exc: AlterError) -> AlterError:
    """The error without what raised it: the httpx exception it replaced holds the credentialed request."""
    exc.__cause__ = exc.__context__ = None
    exc.__suppress_context__ = True
    return exc.with_traceback(None)


class Upstream:
    """One pooled HTTP client shared by every call; `timeout` is each call's overall deadline (met to within
    a tick of `deadlines.Deadlines`, one second at most)."""

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
        self.timeout = timeout
        self.max_response_bytes = max_response_bytes
        self._deadlines = Deadlines(timeout)

    async def aclose(self) -> None:
        self._deadlines.close()
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
        extra_headers: Mapping[str, str] | None = None,
        checked: bool = False,
    ) -> tuple[ApiResponse, float]:
        """Send the call with the credential; returns the redacted response and latency in ms.

        `extra_headers` come from us, not the caller (W3C trace context for providers that opt in), so
        they are added after the caller's headers were checked. `checked` says the caller already refused
        credential and framing parts for this credential's injection (`App` does, before the release).

        The deadline covers connecting, sending, every redirect and reading the whole body."""
        failure: AlterError
        try:
            if not checked:
                refuse_caller_parts(credential.injection, headers, query, url)
            if extra_headers:
                headers = {**(headers or {}), **extra_headers}
            with self._deadlines():
                return await self._exchange(credential, method, url, query, headers, json, content)
        except TimeoutError:
            failure = UpstreamTimeoutError(
                f"{credential.grant.provider} did not answer within {self.timeout:g} s; try again later."
            )
            failure.sent = True  # the deadline may have struck after bytes left: a retry may repeat the call
        except AlterError as exc:
            failure = exc
        except Exception as exc:  # a fault of ours: logged (redacted), and raised without the request it held
            log.exception("the call to %s failed", credential.grant.provider)
            failure = AlterError(f"Internal error ({type(exc).__name__}) while calling {credential.grant.provider}.")
        raise _detached(failure)

    async def _exchange(
        self, credential: ReleasedCredential, method: str, url: str, query: Mapping[str, Any] | None,
        headers: Mapping[str, str] | None, json: Any, content: bytes | str | None,
    ) -> tuple[ApiResponse, float]:
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
        for hop in range(MAX_REDIRECTS + 1):
            response = await self._send(
                self._client.build_request(
                    method, self._inject(target, credential), headers=self._headers(headers, credential),
                    **body_kwargs,
                ),
                credential,
            )
            location = response.headers.get("location")
            if response.status_code not in _REDIRECTS or not location:
                return await self._finish(response, credential, started, redirected=hop > 0)
            await response.aclose()
            next_url = str(target.join(location))
            try:
                target = check_destination(next_url, provider, credential.hosts, credential.allow_http)
            except HostNotAllowedError:
                where = redact_text(host_of(next_url, "an invalid URL"), [credential.token], ignore_case=True)
                reason = f"the API redirected to {where}, outside {provider}'s hosts"
                refused = HostNotAllowedError(url, provider, credential.hosts, reason=reason)
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
        except httpx.HTTPError as exc:
            error = UpstreamUnreachableError(
                f"Could not reach {credential.grant.provider} ({host}): {type(exc).__name__}; try again later."
            )
            error.sent = _may_have_left(exc)
            raise error from None

    async def _finish(
        self, response: httpx.Response, credential: ReleasedCredential, started: float, *, redirected: bool
    ) -> tuple[ApiResponse, float]:
        secrets = (credential.token,)
        limit = self.max_response_bytes
        # Read past the limit by the longest written form of the credential, so one that starts before
        # the limit is read whole and redacted rather than cut into a recognisable beginning.
        margin = 12 * len(credential.token) + 64
        chunks: list[bytes] = []
        size = 0
        truncated = False
        try:
            async for chunk in response.aiter_bytes():
                chunks.append(chunk)
                size += len(chunk)
                if size > limit + margin:
                    truncated = True
                    break
        except httpx.TimeoutException:
            stalled: AlterError = UpstreamTimeoutError(f"{credential.grant.provider} stopped sending its response.")
            stalled.sent = True
            raise stalled from None
        except httpx.DecodingError:
            garbled = UpstreamUnreachableError(
                f"{credential.grant.provider}'s response could not be decoded (its content encoding is broken).",
                retryable=False, user_action="none",
            )
            garbled.sent = True
            raise garbled from None
        except httpx.HTTPError:
            broken = UpstreamUnreachableError(
                f"The connection to {credential.grant.provider} broke while reading its response."
            )
            broken.sent = True
            raise broken from None
        finally:
            if not response.is_closed:  # read to its end, httpx has closed it already
                with anyio.CancelScope(shield=True):  # a call past its deadline still returns its connection
                    await response.aclose()
        content = redact_bytes(b"".join(chunks), secrets)
        if truncated or len(content) > limit:
            content, truncated = cut(content, limit, secrets), True
        headers = [h for h in redact_raw_headers(response.headers.raw, secrets) if h[0] not in _RECOMPUTED]
        headers.append((b"content-length", str(len(content)).encode()))  # of the body as returned: decoded, cut
        api = ApiResponse(
            response.status_code, headers=headers, content=content, truncated=truncated,
            grant=credential.grant.ref(), method=response.request.method,
            url=_public_url(response.request.url, credential, redirected),
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


def _public_url(sent: httpx.URL, credential: ReleasedCredential, redirected: bool) -> httpx.URL | str:
    """The sent URL without a query parameter carrying the credential, and without an echo of it that a
    redirect may have put there. The caller's own URL, sent as it was, is handed back as it is."""
    if not credential.injection.query and not redirected:
        return sent
    url = sent.copy_remove_param(credential.injection.query) if credential.injection.query else sent
    text = str(url)
    clean = redact_text(text, [credential.token])
    return url if clean == text else clean


def _json_bytes(value: Any) -> bytes:
    """JSON as httpx would write it (compact, UTF-8), sent with an explicit charset."""
    return jsonlib.dumps(value, ensure_ascii=False, separators=(",", ":"), allow_nan=False).encode("utf-8")


def _may_have_left(exc: httpx.HTTPError) -> bool:
    """False only when no byte of the request can have reached the provider (no connection was made)."""
    return not isinstance(exc, httpx.ConnectError | httpx.ConnectTimeout | httpx.PoolTimeout)


def _query_value(value: Any) -> Any:
    if isinstance(value, bool):
        return "true" if value else "false"
    return value
