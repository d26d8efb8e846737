"""The OAuth edges an attacker or a flaky provider reaches: a replayed or forged callback, a JWKS that
cannot be fetched, and a token endpoint that takes the client's secret only as HTTP Basic."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator
from dataclasses import replace
from pathlib import Path

import httpx
import pytest

from alter_agents import AlterError, App, Settings, UnauthenticatedError
from alter_agents.models import ConnectStart
from tests.conftest import Deployment
from tests.fixtures import AsyncBrowser, OAuthServer, UpstreamAPI
from tests.fixtures.vault_server import VaultServerProcess, mint_key

pytestmark = pytest.mark.timeout(90)


# -- callbacks --------------------------------------------------------------------------------------

@pytest.fixture
async def remote_app(sqlite_deployment: Deployment) -> AsyncIterator[tuple[App, VaultServerProcess]]:
    """Our App against a real vault server, whose /oauth/callback outlives any one connect."""
    d = sqlite_deployment.local()
    key = await mint_key(d.settings)
    with VaultServerProcess(d.env) as server:
        async with App(base_url=server.url, api_key=key, settings=d.settings) as app:
            yield app, server


async def test_a_replayed_callback_exchanges_no_second_code_and_makes_no_second_grant(
    sqlite_deployment: Deployment, remote_app: tuple[App, VaultServerProcess], abrowser: AsyncBrowser
) -> None:
    d = sqlite_deployment
    app, _server = remote_app
    callbacks: list[str] = []

    async def approve_keeping_the_callback(start: ConnectStart) -> None:
        consent = await abrowser.aapprove(start.connect_url, "octo", follow_callback=False)
        callbacks.append(str(consent.url.join(consent.headers["location"])))
        async with httpx.AsyncClient(timeout=10) as browser:
            genuine = await browser.get(callbacks[0])
        assert genuine.status_code == 200 and "octo" in genuine.text

    [grant] = await app.connect(["github"], on_url=approve_keeping_the_callback, timeout=15)
    assert grant.account == "octo"
    async with httpx.AsyncClient(timeout=10) as browser:
        replayed = await browser.get(callbacks[0])  # the same code and state, a second time
        other_code = await browser.get(str(httpx.URL(callbacks[0]).copy_set_param("code", "attacker-code")))
        unknown_state = await browser.get(str(httpx.URL(callbacks[0]).copy_set_param("state", "forged-state")))
    assert d.oauth.count("authorization_code") == 1  # one exchange, whatever came back later
    assert [g.grant_id for g in await app.grants()] == [grant.grant_id]
    for page in (replayed, other_code):
        assert "already completed" in page.text and "octo" not in page.text
    assert unknown_state.status_code >= 400 and "start connect again" in unknown_state.text


async def test_a_connect_link_opens_only_its_own_provider_and_an_unknown_link_is_refused(
    sqlite_deployment: Deployment, remote_app: tuple[App, VaultServerProcess]
) -> None:
    d = sqlite_deployment
    app, server = remote_app
    start = await app.vault.start_connect("github", headless=True)
    link = httpx.URL(start.connect_url)
    assert link.path.startswith("/connect/")
    link_id = link.path.split("/")[2]
    async with httpx.AsyncClient(timeout=10) as browser:
        other = await browser.get(f"{server.url}/connect/{link_id}/google")
        unknown = await browser.get(f"{server.url}/connect/not-a-link/github")
        own = await browser.get(f"{server.url}/connect/{link_id}/github")
    assert other.status_code == 404 and "unknown or expired" in other.text
    assert unknown.status_code == 404 and "unknown or expired" in unknown.text
    assert own.status_code == 302 and own.headers["location"].startswith(d.oauth.url)


# -- the identity provider's keys -----------------------------------------------------------------

def _closed_port_url() -> str:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}/jwks.json"


@pytest.mark.parametrize("where", ["nothing listens", "not found", "not JSON"])
async def test_when_the_jwks_cannot_be_fetched_the_call_is_refused_as_retryable(
    sqlite_deployment: Deployment, where: str
) -> None:
    d = sqlite_deployment
    jwks_url = {"nothing listens": _closed_port_url(), "not found": f"{d.idp.url}/no-such-jwks.json",
                "not JSON": f"{d.upstream.url}/text"}[where]
    async with App(settings=replace(d.settings, idp_jwks_url=jwks_url)) as app:
        with pytest.raises(UnauthenticatedError) as info:
            await app.grants(user_token=d.idp.issue("alice"))
    body = info.value.payload().error
    assert (body.code, body.retryable) == ("unauthenticated", True)
    assert "signing keys" in body.message


async def test_a_failed_oidc_discovery_is_a_configuration_error_naming_the_url(
    sqlite_deployment: Deployment,
) -> None:
    d = sqlite_deployment
    issuer = f"{d.upstream.url}/not-an-issuer"
    async with App(settings=replace(d.settings, idp_issuer=issuer, idp_jwks_url=None)) as app:
        with pytest.raises(Exception) as info:
            await app.grants(user_token=d.idp.issue("alice", issuer=issuer))
    assert type(info.value).__name__ == "ConfigurationError"
    assert f"{issuer}/.well-known/openid-configuration" in str(info.value)


# -- client authentication at the token endpoint ----------------------------------------------------

def _providers(path: Path, oauth: OAuthServer, upstream: UpstreamAPI, client: tuple[str, str]) -> Path:
    """`basic` sends the client secret as HTTP Basic (RFC 6749 §2.3.1); `posted` in the form."""
    entries = []
    for name, method in (("basic", "client_secret_basic"), ("posted", "client_secret_post")):
        entries.append(f"""
[providers.{name}]
hosts = ["127.0.0.1:{upstream.port}"]
allow_http = true
authorize_url = "{oauth.url}/authorize"
token_url = "{oauth.url}/token"
client_id = "{client[0]}"
client_secret = "{client[1]}"
token_auth_method = "{method}"
scopes = ["read"]
account = {{ url = "{upstream.url}/user", field = "login" }}
""")
    path.write_text("".join(entries), "utf-8")
    return path


async def test_a_provider_set_to_client_secret_basic_connects_and_refreshes_with_basic_auth(
    sqlite_deployment: Deployment, abrowser: AsyncBrowser, tmp_path: Path
) -> None:
    d = sqlite_deployment.local()
    basic_only = d.oauth.register_client(token_endpoint_auth_method="client_secret_basic")
    providers = _providers(tmp_path / "auth.toml", d.oauth, d.upstream, basic_only)
    settings = Settings.from_env({**d.env, "ALTER_PROVIDERS_FILE": str(providers)})

    async def approve(start: ConnectStart) -> None:
        await abrowser.aapprove(start.connect_url, "octo")

    d.oauth.access_token_ttl = 61  # inside the refresh window at once
    async with App(settings=settings) as app:
        [grant] = await app.connect(["basic"], on_url=approve, timeout=15)
        await asyncio.sleep(1.1)
        response = await app.request("GET", d.upstream.echo_url("x"), provider="basic")
        with pytest.raises(AlterError) as refused:  # the same client, its secret in the form: refused by the server
            await app.connect(["posted"], on_url=approve, timeout=15)
        assert refused.value.code == "provider_not_configured"  # RFC 6749 invalid_client: the operator must act
    assert grant.account == "octo" and response.json_body()["account"] == "octo"
    assert d.oauth.count("authorization_code") == 2  # basic succeeded, posted was refused
    assert d.oauth.count("refresh_token") == 1
    statuses = [(r.grant_type, r.status) for r in d.oauth.token_requests]
    assert statuses == [("authorization_code", 200), ("refresh_token", 200), ("authorization_code", 401)]

