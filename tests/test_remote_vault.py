"""Our own App(base_url=..., api_key=...) against a real `alter-agents vault serve`: the same stories."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass

import httpx
import pytest

from alter_agents import App
from alter_agents.errors import (
    AmbiguousGrantError,
    ConfigurationError,
    GrantNotFoundError,
    HostNotAllowedError,
    NotConnectedError,
    UnauthenticatedError,
)
from alter_agents.models import ConnectStart, ToolErrorPayload
from alter_agents.server.keys import generate_key
from alter_agents.sessions import HeadlessSession, UserSession
from alter_agents.tools import AlterTools, CallContext, ConnectResultOut
from alter_agents.vault.remote import RemoteVault
from tests.conftest import Deployment, LinkTwoGoogleAccounts, with_coverage
from tests.fixtures import AsyncBrowser
from tests.fixtures.vault_server import VaultServerProcess, mint_key

pytestmark = pytest.mark.timeout(90)


@dataclass
class Remote:
    deployment: Deployment
    server: VaultServerProcess
    key: str

    def app(self, **kwargs: object) -> App:
        return App(base_url=self.server.url, api_key=self.key, settings=self.deployment.settings,
                   **kwargs)  # type: ignore[arg-type]


async def _served(deployment: Deployment) -> AsyncIterator[Remote]:
    key = await mint_key(deployment.settings)
    with VaultServerProcess(deployment.env) as server:
        yield Remote(deployment, server, key)


@pytest.fixture
async def remote(sqlite_deployment: Deployment) -> AsyncIterator[Remote]:
    async for served in _served(sqlite_deployment):
        yield served


@pytest.fixture
async def local_remote(sqlite_deployment: Deployment) -> AsyncIterator[Remote]:
    """A vault server without an identity provider: the machine's single user."""
    async for served in _served(sqlite_deployment.local()):
        yield served


async def connect(app: App, browser: AsyncBrowser, provider: str, account: str, token: str | None,
                  label: str | None = None) -> str:
    async def approve(start: ConnectStart) -> None:
        await browser.aapprove(start.connect_url, account)

    [result] = await app.connect([provider], user_token=token, label=label, on_url=approve, timeout=15)
    assert result.account == account
    return result.grant_id


async def test_app_with_base_url_calls_as_the_user_and_names_both_accounts_when_ambiguous(
    remote: Remote, abrowser: AsyncBrowser
) -> None:
    upstream = remote.deployment.upstream.url
    alice = remote.deployment.idp.issue("alice")
    async with remote.app() as app:
        assert isinstance(app.vault, RemoteVault)
        await connect(app, abrowser, "google", "alice@gmail.com", alice)
        response = await app.request("GET", f"{upstream}/echo/x", provider="google", user_token=alice)
        assert response.json_body()["account"] == "alice@gmail.com"
        assert response.grant.account == "alice@gmail.com"

        await connect(app, abrowser, "google", "alice@acme.com", alice, label="work")
        with pytest.raises(AmbiguousGrantError) as caught:
            await app.request("GET", f"{upstream}/echo/x", provider="google", user_token=alice)
        assert {(a.account, a.label) for a in caught.value.accounts} == {("alice@gmail.com", None),
                                                                         ("alice@acme.com", "work")}

        by_label = await app.request("GET", f"{upstream}/echo/x", provider="google", account="work",
                                     user_token=alice)
        assert by_label.json_body()["account"] == "alice@acme.com"
        assert [g.account for g in await app.grants(user_token=alice)] == ["alice@gmail.com", "alice@acme.com"]


async def test_the_model_gets_the_same_ambiguity_error_from_a_remote_vault_as_from_the_embedded_one(
    remote: Remote, alice_google: LinkTwoGoogleAccounts
) -> None:
    alice = remote.deployment.idp.issue("alice")
    args = {"url": f"{remote.deployment.upstream.url}/echo/x", "provider": "google"}
    async with remote.app() as app, remote.deployment.app() as embedded:
        await alice_google(app, alice, work_label=None)
        over_http = await AlterTools(app, UserSession(alice)).run_request(args, CallContext())
        in_process = await AlterTools(embedded, UserSession(alice)).run_request(args, CallContext())
    assert over_http == in_process
    assert over_http.error.code == "ambiguous_grant"  # type: ignore[union-attr]


async def test_grant_id_works_for_its_owner_and_is_not_found_for_another_user(
    remote: Remote, abrowser: AsyncBrowser
) -> None:
    upstream = remote.deployment.upstream.url
    idp = remote.deployment.idp
    alice, bob = idp.issue("alice"), idp.issue("bob")
    async with remote.app() as app:
        grant_id = await connect(app, abrowser, "github", "alice-gh", alice)
        own = await app.request("GET", f"{upstream}/echo/r", grant_id=grant_id, user_token=alice)
        assert own.json_body()["account"] == "alice-gh"
        with pytest.raises(GrantNotFoundError):
            await app.request("GET", f"{upstream}/echo/r", grant_id=grant_id, user_token=bob)
        with pytest.raises(NotConnectedError):
            await app.request("GET", f"{upstream}/echo/r", provider="github", user_token=bob)
        with pytest.raises(UnauthenticatedError):
            await app.request("GET", f"{upstream}/echo/r", provider="github",
                              user_token=idp.forge("alice"))
        with pytest.raises(HostNotAllowedError):
            await app.request("GET", f"{upstream.replace('127.0.0.1', 'localhost')}/echo/r", grant_id=grant_id)
    assert remote.deployment.upstream.requests[-1] == ("GET", "/echo/r", "alice-gh")


async def test_a_headless_connect_through_the_tools_pins_the_new_app_grant(
    remote: Remote, abrowser: AsyncBrowser
) -> None:
    upstream = remote.deployment.upstream.url
    async with remote.app() as app:
        async def approve(start: ConnectStart) -> None:
            await abrowser.aapprove(start.connect_url, "octocat")

        session = HeadlessSession()
        tools = AlterTools(app, session, on_connect_url=approve, connect_wait=15)
        connected = await tools.run_connect({"provider": "github"})
        assert connected.status == "connected", connected  # type: ignore[union-attr]
        result = await tools.run_request({"url": f"{upstream}/echo/pinned"})
        assert result.body["account"] == "octocat"  # type: ignore[union-attr]
        [grant] = await app.vault.list_grants(everyone=True)
        assert grant.owner == "app" and session.pinned == {"github": grant.grant_id}


async def test_local_mode_server_resolves_the_machines_accounts_by_provider(
    local_remote: Remote, abrowser: AsyncBrowser
) -> None:
    upstream = local_remote.deployment.upstream.url
    async with local_remote.app() as app:
        await connect(app, abrowser, "github", "me-gh", None)
        response = await app.request("GET", f"{upstream}/echo/mine", provider="github")
        assert response.json_body()["account"] == "me-gh"
        assert [g.account for g in await app.grants()] == ["me-gh"]


async def test_a_wrong_key_is_a_configuration_error_and_a_replayed_request_is_refused(remote: Remote) -> None:
    async with App(base_url=remote.server.url, api_key=generate_key(), settings=remote.deployment.settings) as app:
        with pytest.raises(ConfigurationError, match="invalid_key"):
            await app.grants()
    with pytest.raises(ConfigurationError):
        RemoteVault(remote.server.url, "alter_rk_not_a_key")

    sent: list[httpx.Request] = []

    async def capture(request: httpx.Request) -> None:
        sent.append(request)

    vault = RemoteVault(remote.server.url, remote.key, settings=remote.deployment.settings)
    vault._http.event_hooks["request"].append(capture)
    try:
        assert await vault.list_grants(everyone=True) == []
    finally:
        await vault.aclose()
    original = sent[0]
    async with httpx.AsyncClient() as client:
        replay = await client.post(str(original.url), content=original.content, headers=original.headers)
    assert replay.status_code == 401 and replay.json()["error"] == "replayed_nonce"


async def test_the_mcp_server_can_use_a_vault_server_instead_of_the_embedded_vault(
    remote: Remote, abrowser: AsyncBrowser
) -> None:
    import sys

    from mcp import Client, StdioServerParameters

    d = remote.deployment
    alice = d.idp.issue("alice", expires_in=600)
    async with remote.app() as app:
        await connect(app, abrowser, "github", "alice-gh", alice)
    # The MCP process gets no store of its own: only the vault server's URL and key.
    env = {k: v for k, v in d.env.items() if k not in ("ALTER_VAULT_URL", "ALTER_VAULT_KEY")}
    env |= {"ALTER_BASE_URL": remote.server.url, "ALTER_API_KEY": remote.key, "ALTER_USER_TOKEN": alice}
    params = StdioServerParameters(command=sys.executable, args=["-m", "mcp_server"], env=with_coverage(env))
    async with Client(params) as client:  # type: ignore[arg-type]
        result = await client.call_tool("request", {"url": f"{d.upstream.url}/echo/via-server", "provider": "github"})
    assert not result.is_error, result
    assert result.structured_content is not None
    assert result.structured_content["body"]["account"] == "alice-gh"


async def test_through_a_remote_vault_a_second_connect_returns_the_same_link_and_a_forged_token_none(
    remote: Remote,
) -> None:
    idp = remote.deployment.idp
    async with remote.app() as app:
        tools = AlterTools(app, UserSession())
        alice = CallContext(user_token=idp.issue("alice"))
        first = await tools.run_connect({"provider": "github"}, alice)
        again = await tools.run_connect({"provider": "github"}, alice)
        assert isinstance(first, ConnectResultOut) and first.status == "pending"
        assert isinstance(again, ConnectResultOut) and again.connect_url == first.connect_url
        for forged in (idp.forge("alice"), idp.none_token("alice")):
            stolen = await tools.run_connect({"provider": "github"}, CallContext(user_token=forged))
            assert isinstance(stolen, ToolErrorPayload) and stolen.error.code == "unauthenticated"
