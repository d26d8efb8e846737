"""Fast proofs that the fixture servers behave as the SDK tests assume."""

from __future__ import annotations

import base64
import hashlib
import secrets
import socket
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any
from urllib.parse import parse_qs, urlencode, urlsplit

import httpx
import jwt
import pytest

from tests.fixtures import (
    AsyncBrowser,
    BackgroundServer,
    Browser,
    IdentityProvider,
    OAuthServer,
    UpstreamAPI,
)

# -- fixtures (module-scoped here; conftest.py will own these later) ---------


@pytest.fixture(scope="module")
def idp() -> Iterator[IdentityProvider]:
    with IdentityProvider() as server:
        yield server


@pytest.fixture(scope="module")
def oauth() -> Iterator[OAuthServer]:
    with OAuthServer() as server:
        yield server


@pytest.fixture(scope="module")
def upstream(oauth: OAuthServer) -> Iterator[UpstreamAPI]:
    with UpstreamAPI(oauth) as api:
        yield api


@pytest.fixture(scope="module")
def foreign() -> Iterator[UpstreamAPI]:
    with UpstreamAPI(None) as api:
        yield api


@pytest.fixture
def client(oauth: OAuthServer) -> Iterator[tuple[str, str]]:
    oauth.access_token_ttl = 3600
    yield oauth.register_client()
    oauth.access_token_ttl = 3600
    oauth.token_delay = 0
    oauth.fail_next_token_requests(0)


# -- helpers -----------------------------------------------------------------


def pkce_pair() -> tuple[str, str]:
    verifier = secrets.token_urlsafe(48)
    challenge = base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest()).rstrip(b"=").decode()
    return verifier, challenge


def authorize_url(oauth: OAuthServer, client_id: str, redirect_uri: str, challenge: str, state: str) -> str:
    params = {
        "response_type": "code",
        "client_id": client_id,
        "redirect_uri": redirect_uri,
        "scope": "read",
        "state": state,
        "code_challenge": challenge,
        "code_challenge_method": "S256",
    }
    return f"{oauth.authorize_url}?{urlencode(params)}"


def connect(oauth: OAuthServer, upstream: UpstreamAPI, client: tuple[str, str], user: str) -> dict[str, Any]:
    """Whole code+PKCE dance by hand, using the upstream's open echo as the callback."""
    client_id, client_secret = client
    verifier, challenge = pkce_pair()
    redirect_uri = f"{upstream.url}/open/echo/callback"
    url = authorize_url(oauth, client_id, redirect_uri, challenge, "st-1")
    callback = Browser().approve(url, user)
    assert callback.status_code == 200
    query = callback.json()["query"]
    assert query["state"] == "st-1"
    response = httpx.post(
        oauth.token_url,
        data={
            "grant_type": "authorization_code",
            "code": query["code"],
            "redirect_uri": redirect_uri,
            "code_verifier": verifier,
        },
        auth=(client_id, client_secret),
    )
    assert response.status_code == 200, response.text
    token: dict[str, Any] = response.json()
    return token


def refresh(oauth: OAuthServer, client: tuple[str, str], refresh_token: str) -> httpx.Response:
    client_id, client_secret = client
    data = {
        "grant_type": "refresh_token",
        "refresh_token": refresh_token,
        "client_id": client_id,
        "client_secret": client_secret,
    }
    return httpx.post(oauth.token_url, data=data)  # client_secret_post


# -- OAuth server ------------------------------------------------------------


def test_code_flow_with_pkce_reaches_user(oauth: OAuthServer, upstream: UpstreamAPI, client: tuple[str, str]) -> None:
    token = connect(oauth, upstream, client, "alice@gmail.com")
    assert token["token_type"] == "Bearer" and token["expires_in"] == 3600 and token["refresh_token"]
    me = httpx.get(f"{upstream.url}/user", headers={"Authorization": f"Bearer {token['access_token']}"})
    assert me.json() == {"login": "alice@gmail.com", "email": "alice@gmail.com", "name": "alice@gmail.com"}
    assert oauth.lookup(token["access_token"]) == "alice@gmail.com"


def test_pkce_is_mandatory_and_verified(oauth: OAuthServer, client: tuple[str, str]) -> None:
    client_id, client_secret = client
    redirect_uri = "http://127.0.0.1:9/cb"
    no_pkce = httpx.get(
        oauth.authorize_url,
        params={"response_type": "code", "client_id": client_id, "redirect_uri": redirect_uri, "state": "s"},
    )
    assert no_pkce.status_code == 302 and "error=invalid_request" in no_pkce.headers["location"]
    _, challenge = pkce_pair()
    url = authorize_url(oauth, client_id, redirect_uri, challenge, "s")
    redirect = Browser().approve(url, "bob", follow_callback=False)
    code = parse_qs(urlsplit(redirect.headers["location"]).query)["code"][0]
    wrong = httpx.post(
        oauth.token_url,
        data={
            "grant_type": "authorization_code",
            "code": code,
            "redirect_uri": redirect_uri,
            "code_verifier": pkce_pair()[0],
        },
        auth=(client_id, client_secret),
    )
    assert wrong.status_code == 400 and wrong.json()["error"] == "invalid_grant"


def test_foreign_redirect_uri_rejected(oauth: OAuthServer, client: tuple[str, str]) -> None:
    url = authorize_url(oauth, client[0], "https://evil.example/cb", pkce_pair()[1], "s")
    response = httpx.get(url)
    assert response.status_code == 400


async def test_deny_redirects_with_access_denied(oauth: OAuthServer, client: tuple[str, str]) -> None:
    url = authorize_url(oauth, client[0], "http://localhost:9/cb", pkce_pair()[1], "st-d")
    browser = AsyncBrowser()
    response = await browser.adeny(url, follow_callback=False)
    await browser.aclose()
    query = parse_qs(urlsplit(response.headers["location"]).query)
    assert query["error"] == ["access_denied"] and query["state"] == ["st-d"]


def test_refresh_rotates_and_old_token_dies(oauth: OAuthServer, upstream: UpstreamAPI, client: tuple[str, str]) -> None:
    first = connect(oauth, upstream, client, "carol")
    before = oauth.count("refresh_token")
    second = refresh(oauth, client, first["refresh_token"])
    assert second.status_code == 200 and second.json()["refresh_token"] != first["refresh_token"]
    again = refresh(oauth, client, first["refresh_token"])
    assert again.status_code == 400 and again.json()["error"] == "invalid_grant"
    assert oauth.count("refresh_token") == before + 2


def test_invalidate_switch_gives_invalid_grant(
    oauth: OAuthServer, upstream: UpstreamAPI, client: tuple[str, str]
) -> None:
    token = connect(oauth, upstream, client, "dave")
    oauth.invalidate_refresh_tokens()
    response = refresh(oauth, client, token["refresh_token"])
    assert response.status_code == 400 and response.json() == {"error": "invalid_grant"}


def test_fail_next_then_recover(oauth: OAuthServer, upstream: UpstreamAPI, client: tuple[str, str]) -> None:
    token = connect(oauth, upstream, client, "erin")
    oauth.fail_next_token_requests(1, status=503)
    assert refresh(oauth, client, token["refresh_token"]).status_code == 503
    assert refresh(oauth, client, token["refresh_token"]).status_code == 200


def test_zero_ttl_token_is_expired(oauth: OAuthServer, upstream: UpstreamAPI, client: tuple[str, str]) -> None:
    oauth.access_token_ttl = 0
    token = connect(oauth, upstream, client, "frank")
    assert token["expires_in"] == 0
    assert oauth.lookup(token["access_token"]) is None
    me = httpx.get(f"{upstream.url}/user", headers={"Authorization": f"Bearer {token['access_token']}"})
    assert me.status_code == 401


# -- identity provider --------------------------------------------------------


@pytest.mark.parametrize("alg", ["RS256", "ES256"])
def test_jwt_verifies_against_served_jwks(idp: IdentityProvider, alg: str) -> None:
    config = httpx.get(f"{idp.url}/.well-known/openid-configuration").json()
    assert config["issuer"] == idp.issuer and config["jwks_uri"] == idp.jwks_url
    token = idp.issue("user-1", groups=["eng"], alg=alg)
    key = jwt.PyJWKClient(idp.jwks_url).get_signing_key_from_jwt(token)
    claims = jwt.decode(token, key.key, algorithms=[alg], audience=idp.audience, issuer=idp.issuer)
    assert claims["sub"] == "user-1" and claims["groups"] == ["eng"]


def test_bad_tokens_fail(idp: IdentityProvider) -> None:
    jwks = jwt.PyJWKSet.from_dict(idp.jwks())
    rsa_key = next(k for k in jwks.keys if k.key_id == idp.kid("RS256"))
    with pytest.raises(jwt.InvalidSignatureError):
        jwt.decode(idp.forge("x"), rsa_key.key, algorithms=["RS256"], audience=idp.audience)
    with pytest.raises(jwt.InvalidTokenError):
        jwt.decode(idp.none_token("x"), rsa_key.key, algorithms=["RS256"], audience=idp.audience)
    with pytest.raises(jwt.InvalidTokenError):
        jwt.decode(idp.hs256_confusion_token("x"), rsa_key.key, algorithms=["RS256"], audience=idp.audience)
    assert jwt.get_unverified_header(idp.hs256_confusion_token("x"))["alg"] == "HS256"


def test_unpublished_key_then_publish(idp: IdentityProvider) -> None:
    kid = idp.add_unpublished_key()
    assert kid not in {k["kid"] for k in idp.jwks()["keys"]}
    fetches = idp.jwks_fetches
    httpx.get(idp.jwks_url)
    assert idp.jwks_fetches == fetches + 1
    idp.publish(kid)
    token = idp.issue("u", kid=kid)
    assert jwt.PyJWKClient(idp.jwks_url).get_signing_key_from_jwt(token).key_id == kid
    idp.retire(kid)
    assert kid not in {k["kid"] for k in idp.jwks()["keys"]}


# -- upstream ------------------------------------------------------------------


def test_secret_auth_modes(upstream: UpstreamAPI) -> None:
    upstream.add_secret("sk-live-123", "acct-7")
    base = upstream.url
    assert httpx.get(f"{base}/user", headers={"X-Api-Key": "sk-live-123"}).json()["login"] == "acct-7"
    assert httpx.get(f"{base}/user", params={"api_key": "sk-live-123"}).json()["login"] == "acct-7"
    assert httpx.get(f"{base}/user", auth=("sk-live-123", "")).json()["login"] == "acct-7"
    assert httpx.get(f"{base}/user", headers={"Authorization": "Bearer sk-live-123"}).json()["login"] == "acct-7"
    denied = httpx.get(f"{base}/user", headers={"X-Api-Key": "nope"})
    assert denied.status_code == 401 and denied.json() == {"error": "unauthorized"}
    reflect = httpx.get(f"{base}/reflect", headers={"X-Api-Key": "sk-live-123"}).json()
    assert reflect == {"account": "acct-7", "token_seen": "sk-live-123"}


def test_echo_hides_credentials(upstream: UpstreamAPI) -> None:
    upstream.add_secret("sk-e", "acct-e")
    body = httpx.post(
        f"{upstream.url_as('localhost')}/echo/a/b",
        params={"q": "1", "api_key": "sk-e"},
        json={"x": 1},
        headers={"X-Trace": "t"},
    ).json()
    assert body["account"] == "acct-e" and body["path"] == "a/b" and body["query"] == {"q": "1"}
    assert body["json"] == {"x": 1} and body["headers"]["x-trace"] == "t"


def test_redirect_to_foreign_host_records_nothing(upstream: UpstreamAPI, foreign: UpstreamAPI) -> None:
    upstream.add_secret("sk-r", "acct-r")
    foreign.reset_records()
    response = httpx.get(
        f"{upstream.url}/redirect",
        params={"to": f"{foreign.url}/open/echo/x"},
        headers={"X-Api-Key": "sk-r"},
        follow_redirects=True,
    )
    # httpx itself re-sends custom headers cross-origin; only Authorization is stripped.
    assert response.status_code == 200 and foreign.seen_credentials == ["sk-r"]
    assert foreign.received_anywhere("sk-r")


def test_localhost_resolves_to_loopback() -> None:
    assert {info[4][0] for info in socket.getaddrinfo("localhost", 80, type=socket.SOCK_STREAM)} == {"127.0.0.1"}


def test_reset_is_a_transport_error(upstream: UpstreamAPI) -> None:
    upstream.add_secret("sk-x", "acct-x")
    with pytest.raises(httpx.TransportError):
        httpx.get(f"{upstream.url}/reset", headers={"X-Api-Key": "sk-x"})
    assert httpx.get(f"{upstream.url}/text", headers={"X-Api-Key": "sk-x"}).text == "hello acct-x\n"


async def test_sizes_status_and_slow(upstream: UpstreamAPI) -> None:
    upstream.add_secret("sk-s", "acct-s")
    async with httpx.AsyncClient(base_url=upstream.url, headers={"X-Api-Key": "sk-s"}) as http:
        assert len((await http.get("/big", params={"n": 5000})).content) == 5000
        assert (await http.get("/binary", params={"n": 300})).content[:3] == b"\x00\x01\x02"
        assert (await http.get("/status/429", params={"retry_after": "1"})).headers["retry-after"] == "1"
        assert (await http.get("/slow", params={"s": "0.05"})).json()["slept"] is True


async def test_asgi_background_server() -> None:
    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/plain")]})
        await send({"type": "http.response.body", "body": b"ok"})

    with BackgroundServer(app, asgi=True) as server:
        async with httpx.AsyncClient() as http:
            assert (await http.get(server.url_as("localhost"))).text == "ok"


def test_concurrent_refresh_has_one_winner(oauth: OAuthServer, upstream: UpstreamAPI, client: tuple[str, str]) -> None:
    token = connect(oauth, upstream, client, "gina")
    oauth.token_delay = 0.2
    with ThreadPoolExecutor(2) as pool:
        statuses = sorted(pool.map(lambda _: refresh(oauth, client, token["refresh_token"]).status_code, [0, 1]))
    assert statuses == [200, 400]
