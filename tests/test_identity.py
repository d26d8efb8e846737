"""JWT identity: what a session token must prove before any grant is chosen (DESIGN §3.1)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable

import httpx
import pytest

from alter_agents import UnauthenticatedError
from alter_agents.vault.identity import JWTVerifier
from tests.conftest import Deployment
from tests.fixtures import IdentityProvider


@pytest.fixture
async def verifier(idp: IdentityProvider) -> AsyncIterator[JWTVerifier]:
    async with httpx.AsyncClient() as http:
        yield JWTVerifier(idp.issuer, idp.audience, idp.jwks_url, http=http)


async def test_a_valid_rs256_token_yields_the_user_and_their_groups(
    verifier: JWTVerifier, idp: IdentityProvider
) -> None:
    identity = await verifier.verify(idp.issue("alice", groups=["eng", "ops"]))
    assert identity.sub == "alice"
    assert identity.owners() == ["user:alice", "group:eng", "group:ops"]


async def test_es256_tokens_are_accepted(verifier: JWTVerifier, idp: IdentityProvider) -> None:
    identity = await verifier.verify(idp.issue("bob", alg="ES256"))
    assert identity.sub == "bob"


async def test_groups_come_from_the_configured_claim(idp: IdentityProvider) -> None:
    async with httpx.AsyncClient() as http:
        verifier = JWTVerifier(idp.issuer, idp.audience, idp.jwks_url, groups_claim="roles", http=http)
        token = idp.issue("carol", groups=["eng"], groups_claim="roles", extra={"groups": ["ignored"]})
        identity = await verifier.verify(token)
    assert identity.groups == ("eng",)


async def test_jwks_is_found_by_oidc_discovery_when_no_url_is_configured(idp: IdentityProvider) -> None:
    async with httpx.AsyncClient() as http:
        verifier = JWTVerifier(idp.issuer, idp.audience, None, http=http)
        assert (await verifier.verify(idp.issue("dave"))).sub == "dave"


# Each bad token differs from a good one in one way, and names the guard that must refuse it.
BAD_TOKENS: dict[str, tuple[Callable[[IdentityProvider], str], str]] = {
    "bad signature": (lambda idp: idp.forge("alice"), r"Signature verification failed"),
    "bad ES256 signature": (lambda idp: idp.forge("alice", alg="ES256"), r"Signature verification failed"),
    "expired": (lambda idp: idp.issue("alice", expires_in=-120), r"expired"),
    "wrong iss": (lambda idp: idp.issue("alice", issuer="https://evil.example"), r"(?i)issuer"),
    "wrong aud": (lambda idp: idp.issue("alice", audience="someone-else"), r"(?i)audience"),
    "alg none": (lambda idp: idp.none_token("alice"), r"algorithm 'none' is not accepted"),
    "HS256 with the public key": (lambda idp: idp.hs256_confusion_token("alice"),
                                  r"algorithm 'HS256' is not accepted"),
    "not yet valid (nbf)": (lambda idp: idp.issue("alice", not_before=300), r"not yet valid"),
    "no exp": (lambda idp: idp.issue("alice", extra={"exp": None}), r'missing the "exp" claim'),
    "no sub": (lambda idp: idp.issue("alice", extra={"sub": None}), r'missing the "sub" claim'),
    "unknown kid": (lambda idp: idp.issue("alice", kid=idp.add_unpublished_key()), r"unknown key"),
    "garbage": (lambda _idp: "not-a-jwt", r"not a well-formed JWT"),
}


@pytest.mark.parametrize("kind", BAD_TOKENS)
async def test_each_kind_of_bad_token_is_refused_by_its_own_guard(
    verifier: JWTVerifier, idp: IdentityProvider, kind: str
) -> None:
    make, reason = BAD_TOKENS[kind]
    await verifier.verify(idp.issue("warm-up"))
    with pytest.raises(UnauthenticatedError, match=reason) as info:
        await verifier.verify(make(idp))
    body = info.value.payload().error
    assert (body.code, body.retryable) == ("unauthenticated", False)


async def test_small_clock_skew_is_tolerated(verifier: JWTVerifier, idp: IdentityProvider) -> None:
    assert (await verifier.verify(idp.issue("alice", expires_in=-5))).sub == "alice"
    assert (await verifier.verify(idp.issue("alice", not_before=5))).sub == "alice"


async def test_a_rotated_signing_key_is_fetched_on_its_first_token(
    verifier: JWTVerifier, idp: IdentityProvider
) -> None:
    await verifier.verify(idp.issue("alice"))
    assert idp.jwks_fetches == 1
    old = idp.kid()
    idp.rotate()
    idp.retire(old)
    assert (await verifier.verify(idp.issue("alice"))).sub == "alice"
    assert idp.jwks_fetches == 2


async def test_unknown_kids_refetch_the_jwks_at_most_once_per_interval(
    verifier: JWTVerifier, idp: IdentityProvider
) -> None:
    await verifier.verify(idp.issue("alice"))
    strangers = [idp.issue("mallory", kid=idp.add_unpublished_key()) for _ in range(30)]
    results = await asyncio.gather(*(verifier.verify(t) for t in strangers), return_exceptions=True)
    assert all(isinstance(r, UnauthenticatedError) for r in results)
    assert idp.jwks_fetches == 2  # the first load, then one refetch for the whole flood


async def test_the_refetch_interval_elapses_and_a_new_key_is_found_again(idp: IdentityProvider) -> None:
    async with httpx.AsyncClient() as http:
        verifier = JWTVerifier(idp.issuer, idp.audience, idp.jwks_url, http=http, refetch_interval=1.0)
        await verifier.verify(idp.issue("alice"))
        late = idp.add_unpublished_key()  # made before the clock starts: key generation is slow on a busy machine
        late_token = idp.issue("alice", kid=late)
        idp.rotate()
        await verifier.verify(idp.issue("alice"))  # refetch 1
        with pytest.raises(UnauthenticatedError, match="unknown key"):
            await verifier.verify(late_token)  # within the interval: no refetch
        assert idp.jwks_fetches == 2
        idp.publish(late)
        await asyncio.sleep(1.05)
        assert (await verifier.verify(idp.issue("alice", kid=late))).sub == "alice"
        assert idp.jwks_fetches == 3


async def test_a_vault_with_an_identity_provider_needs_the_users_token(sqlite_deployment: Deployment) -> None:
    d = sqlite_deployment
    async with d.app() as app:
        with pytest.raises(UnauthenticatedError) as info:
            await app.request("GET", d.upstream.echo_url("x"), provider="github")
        assert "JWT" in info.value.message
        with pytest.raises(UnauthenticatedError):
            await app.request("GET", d.upstream.echo_url("x"), provider="github", user_token=d.idp.forge("alice"))


async def test_local_mode_refuses_a_user_token_it_cannot_verify(sqlite_deployment: Deployment) -> None:
    d = sqlite_deployment.local()
    async with d.app() as app:
        with pytest.raises(UnauthenticatedError, match="no identity provider"):
            await app.request("GET", d.upstream.echo_url("x"), provider="github", user_token=d.idp.issue("alice"))


async def test_the_token_getter_is_called_for_each_request(sqlite_deployment: Deployment) -> None:
    d = sqlite_deployment
    calls = 0

    async def current_token() -> str:
        nonlocal calls
        calls += 1
        return d.idp.issue("alice")

    async with d.app(user_token_getter=current_token) as app:
        assert await app.grants() == []
        assert await app.grants() == []
    assert calls == 2
