"""Verify end-user JWTs against the identity provider's JWKS.

Only asymmetric algorithms are accepted, and each key only with the algorithms of its own type, so
`alg: none` and HS256-signed-with-the-public-key tokens are refused before any signature check.

A verified token's identity is remembered until its `exp` (never longer) and forgotten whenever the
key set is reloaded, so a session's repeated calls skip the signature check without widening what is
accepted.
"""

from __future__ import annotations

import hashlib
import logging
import time
from dataclasses import dataclass, field
from typing import Any

import anyio
import httpx
import jwt
from jwt import PyJWK, PyJWKSet
from jwt.types import Options

from alter_agents.errors import ConfigurationError, UnauthenticatedError

_ALGORITHMS_BY_KTY: dict[str, tuple[str, ...]] = {
    "RSA": ("RS256", "RS384", "RS512", "PS256", "PS384", "PS512"),
    "EC": ("ES256", "ES384", "ES512"),
    "OKP": ("EdDSA",),
}
LEEWAY_SECONDS = 30
_MIN_REFETCH_INTERVAL = 30.0
_MAX_REMEMBERED = 10_000
_log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Identity:
    """A verified end user: their subject and the groups the JWT says they belong to."""

    sub: str
    groups: tuple[str, ...] = ()
    claims: dict[str, Any] = field(default_factory=dict, compare=False, repr=False)

    def owners(self) -> list[str]:
        """Principals whose grants this user may use: themself and each of their groups."""
        return [f"user:{self.sub}", *(f"group:{g}" for g in self.groups)]


class JWTVerifier:
    """Verifies signature, `exp`/`nbf` (with leeway), `iss` and `aud`; caches the JWKS."""

    def __init__(
        self,
        issuer: str,
        audience: str | None,
        jwks_url: str | None = None,
        groups_claim: str = "groups",
        http: httpx.AsyncClient | None = None,
        *,
        refetch_interval: float = _MIN_REFETCH_INTERVAL,
    ) -> None:
        if not audience:
            raise ConfigurationError(
                "An identity provider needs an audience (ALTER_IDP_AUDIENCE): without one, tokens minted "
                "for any other service would be accepted."
            )
        self.issuer = issuer
        self.audience: str = audience
        self.groups_claim = groups_claim
        self._jwks_url = jwks_url
        self._http = http
        self._keys: dict[str, PyJWK] = {}
        self._refetch_interval = refetch_interval
        self._refetched_at: float | None = None
        self._lock = anyio.Lock()
        self._verified: dict[bytes, tuple[float, Identity]] = {}
        self._last: tuple[str, float, Identity] | None = None

    async def verify(self, token: str) -> Identity:
        last = self._last
        if last is not None and last[0] is token and last[1] > time.time():
            return last[2]  # the very string verified last (an App's token, reused call after call): no hashing
        digest = hashlib.sha256(token.encode()).digest()
        remembered = self._verified.get(digest)
        if remembered is not None and remembered[0] > time.time():
            self._last = (token, remembered[0], remembered[1])
            return remembered[1]
        identity = await self._verify(token)
        self._remember(digest, float(identity.claims["exp"]), identity)
        self._last = (token, float(identity.claims["exp"]), identity)
        return identity

    def _remember(self, digest: bytes, expires_at: float, identity: Identity) -> None:
        if len(self._verified) >= _MAX_REMEMBERED:
            now = time.time()
            self._verified = {k: v for k, v in self._verified.items() if v[0] > now}
            while len(self._verified) >= _MAX_REMEMBERED:
                del self._verified[next(iter(self._verified))]
        self._verified[digest] = (expires_at, identity)

    async def _verify(self, token: str) -> Identity:
        try:
            header = jwt.get_unverified_header(token)
        except jwt.InvalidTokenError:
            raise UnauthenticatedError("The session token is not a well-formed JWT.") from None
        alg = header.get("alg")
        kid = header.get("kid")
        key = await self._key_for(kid)
        allowed = _ALGORITHMS_BY_KTY.get(str(key.key_type), ())
        if alg not in allowed:
            raise UnauthenticatedError(f"The session token's algorithm {alg!r} is not accepted.")
        options: Options = {"require": ["exp", "iss", "sub", "aud"], "verify_aud": True}
        try:
            claims: dict[str, Any] = jwt.decode(
                token,
                key=key.key,
                algorithms=[alg],
                audience=self.audience,
                issuer=self.issuer,
                leeway=LEEWAY_SECONDS,
                options=options,
            )
        except jwt.ExpiredSignatureError:
            raise UnauthenticatedError("The session token has expired; sign in again.") from None
        except jwt.InvalidTokenError as exc:
            raise UnauthenticatedError(f"The session token was rejected: {exc}.") from None
        groups = _groups(claims.get(self.groups_claim), self.groups_claim)
        return Identity(sub=str(claims["sub"]), groups=groups, claims=claims)

    async def _key_for(self, kid: str | None) -> PyJWK:
        if not self._keys:
            await self._refresh(force=True)
        key = self._lookup(kid)
        if key is None:
            await self._refresh(force=False)
            key = self._lookup(kid)
        if key is None:
            raise UnauthenticatedError("The session token was signed by an unknown key.")
        return key

    def _lookup(self, kid: str | None) -> PyJWK | None:
        if kid is None:
            return next(iter(self._keys.values())) if len(self._keys) == 1 else None
        return self._keys.get(kid)

    async def _refresh(self, *, force: bool) -> None:
        """Load the JWKS when empty; on an unknown `kid`, refetch at most once per interval.

        The first load does not count against the interval, so a key rotated in just after it is found.
        """
        async with self._lock:
            if force and self._keys:
                return
            now = time.monotonic()
            if not force:
                if self._refetched_at is not None and now - self._refetched_at < self._refetch_interval:
                    return
                self._refetched_at = now
            url = await self._resolve_jwks_url()
            try:
                response = await self._client().get(url, timeout=10.0)
                response.raise_for_status()
                jwks = PyJWKSet.from_dict(response.json())
            except (httpx.HTTPError, ValueError, jwt.PyJWKSetError) as exc:
                raise UnauthenticatedError(
                    f"Could not load the identity provider's signing keys: {exc}", retryable=True
                ) from None
            self._verified, self._last = {}, None  # verified with keys that may be gone: check again
            self._keys = {k.key_id: k for k in jwks.keys if k.key_id}
            if not self._keys and jwks.keys:
                self._keys = {"": jwks.keys[0]}

    async def _resolve_jwks_url(self) -> str:
        if self._jwks_url:
            return self._jwks_url
        discovery = self.issuer.rstrip("/") + "/.well-known/openid-configuration"
        try:
            response = await self._client().get(discovery, timeout=10.0)
            response.raise_for_status()
            self._jwks_url = str(response.json()["jwks_uri"])
        except (httpx.HTTPError, ValueError, KeyError) as exc:
            raise ConfigurationError(f"OIDC discovery at {discovery} failed: {exc}") from None
        return self._jwks_url

    def _client(self) -> httpx.AsyncClient:
        if self._http is None:
            self._http = httpx.AsyncClient()
        return self._http


def _groups(value: Any, claim: str) -> tuple[str, ...]:
    """Groups only from a JSON array of strings; anything else grants no group (splitting a string would
    turn the group "IT Admins" into "Admins")."""
    if value is None:
        return ()
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        return tuple(value)
    if claim not in _WARNED_CLAIMS:
        _WARNED_CLAIMS.add(claim)
        _log.warning("The JWT claim %r is not a list of strings; such tokens get no groups.", claim)
    return ()


_WARNED_CLAIMS: set[str] = set()
