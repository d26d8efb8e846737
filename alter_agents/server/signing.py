"""HMAC request signing of the `alter-sdk` wire protocol: sign (RemoteVault) and verify (vault server).

The signing key is HMAC-SHA256(api_key, "alter-signing-v1"). The string to sign is

    METHOD \\n PATH[?sorted query] \\n TIMESTAMP \\n NONCE \\n SHA256(body) \\n SCOPE-CONSTRAINTS
    [\\n request-rule:RULE] [\\n caller:…] [\\n caller-type:…] [\\n actor-id:…] [\\n actor-context:…]

where the actor lines are present only when the matching `X-Alter-*` headers are sent; a request that
carries any of them must be signed over them (no stripping them to downgrade). A timestamp outside the
skew window, a reused nonce (see `nonces`), or a body whose hash differs from the signed one is refused.
`check_headers` is the part that needs no body, so a server can refuse an unsigned request before reading it.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
import time
from collections.abc import Mapping
from urllib.parse import parse_qsl, unquote, urlencode

SIGNING_CONTEXT = b"alter-signing-v1"
MAX_SKEW_SECONDS = 300
_NONCE = re.compile(r"[A-Za-z0-9_-]{16,128}")
_ACTOR_LINES = (
    ("caller", "x-alter-caller"),
    ("caller-type", "x-alter-caller-type"),
    ("actor-id", "x-alter-actor-id"),
    ("actor-context", "x-alter-context"),
)


class SignatureRejected(Exception):
    """The request's signature, timestamp, nonce or body hash is not acceptable (HTTP 401)."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


def signing_key(api_key: str) -> bytes:
    return hmac.new(api_key.encode(), SIGNING_CONTEXT, hashlib.sha256).digest()


def canonical_path(path: str, query: str = "") -> str:
    """The decoded path plus the query re-encoded sorted, exactly as the official client signs it."""
    if query:
        return f"{unquote(path)}?{urlencode(sorted(parse_qsl(query, keep_blank_values=True, separator='&')))}"
    return unquote(path)


def string_to_sign(
    method: str, path: str, timestamp: str, nonce: str, content_hash: str, headers: Mapping[str, str]
) -> str:
    """`headers` are the request's headers with lower-case names."""
    scope = headers.get("x-alter-scope-constraints", "")
    text = f"{method.upper()}\n{path}\n{timestamp}\n{nonce}\n{content_hash}\n{scope}"
    if rule := headers.get("x-alter-request-rule"):
        text += f"\nrequest-rule:{rule}"
    for label, name in _ACTOR_LINES:
        if value := headers.get(name):
            text += f"\n{label}:{value}"
    return text


def _digest(key: bytes, text: str) -> str:
    return hmac.new(key, text.encode(), hashlib.sha256).hexdigest()


def sign(api_key: str, method: str, path: str, body: bytes, *, now: float | None = None) -> dict[str, str]:
    """The signature headers for one request (no actor headers: we never send them)."""
    timestamp = str(int(time.time() if now is None else now))
    nonce = secrets.token_hex(16)
    content_hash = hashlib.sha256(body).hexdigest()
    path, _, query = path.partition("?")
    text = string_to_sign(method, canonical_path(path, query), timestamp, nonce, content_hash, {})
    return {
        "X-Alter-Timestamp": timestamp,
        "X-Alter-Nonce": nonce,
        "X-Alter-Content-SHA256": content_hash,
        "X-Alter-Signature": _digest(signing_key(api_key), text),
    }


def check_headers(headers: Mapping[str, str], *, now: float | None = None) -> None:
    """The checks that need no body and no key: every signature header present, timestamp, nonce shape."""
    timestamp = headers.get("x-alter-timestamp", "")
    if not (timestamp and headers.get("x-alter-nonce") and headers.get("x-alter-content-sha256")
            and headers.get("x-alter-signature")):
        raise SignatureRejected("missing_signature", "The request is not signed (X-Alter-* headers missing).")
    if not timestamp.isdigit() or abs(int(timestamp) - (time.time() if now is None else now)) > MAX_SKEW_SECONDS:
        raise SignatureRejected("stale_request", f"X-Alter-Timestamp is more than {MAX_SKEW_SECONDS}s off.")
    if not _NONCE.fullmatch(headers.get("x-alter-nonce", "")):
        raise SignatureRejected("invalid_nonce", "X-Alter-Nonce must be 16-128 URL-safe characters.")


def verify(
    api_key: str, method: str, path: str, query: str, headers: Mapping[str, str], body: bytes,
    *, now: float | None = None,
) -> str:
    """Check one request's signature; returns its nonce (to be recorded). `headers`: lower-case names."""
    check_headers(headers, now=now)
    timestamp, nonce = headers["x-alter-timestamp"], headers["x-alter-nonce"]
    content_hash, signature = headers["x-alter-content-sha256"], headers["x-alter-signature"]
    if not hmac.compare_digest(content_hash.lower(), hashlib.sha256(body).hexdigest()):
        raise SignatureRejected("body_hash_mismatch", "The body does not match X-Alter-Content-SHA256.")
    text = string_to_sign(method, canonical_path(path, query), timestamp, nonce, content_hash, headers)
    if not hmac.compare_digest(signature.lower(), _digest(signing_key(api_key), text)):
        raise SignatureRejected("invalid_signature", "The request signature does not verify.")
    v2 = headers.get("x-alter-signature-v2")
    if v2 is not None and not hmac.compare_digest(v2.lower(), signature.lower()):
        raise SignatureRejected("invalid_signature", "X-Alter-Signature-V2 does not match the signature.")
    return nonce
