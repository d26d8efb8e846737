"""The unmodified official `alter-sdk` client (pinned 0.29.0) against a real `alter-agents vault serve`."""

from __future__ import annotations

import asyncio
import hashlib
import json
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass

import alter_sdk
import httpx
import pytest
from alter_sdk import exceptions as sdk_errors

from alter_agents.server.signing import sign
from tests.conftest import Deployment
from tests.fixtures import AsyncBrowser
from tests.fixtures.vault_server import VaultServerProcess, mint_key

pytestmark = pytest.mark.timeout(90)


@dataclass
class Served:
    deployment: Deployment
    server: VaultServerProcess
    key: str

    @property
    def upstream(self) -> str:
        return self.deployment.upstream.url


@pytest.fixture
async def served(sqlite_deployment: Deployment, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[Served]:
    key = await mint_key(sqlite_deployment.settings)
    with VaultServerProcess(sqlite_deployment.env) as server:
        monkeypatch.setenv("ALTER_BASE_URL", server.url)
        yield Served(sqlite_deployment, server, key)


@pytest.fixture
async def sdk(served: Served) -> AsyncIterator[alter_sdk.App]:
    client = alter_sdk.App(api_key=served.key)
    yield client
    await client.close()


async def sdk_connect(sdk: alter_sdk.App, browser: AsyncBrowser, provider: str, account: str,
                      user_token: str | None = None) -> list[alter_sdk.ConnectResult]:
    session = await sdk.create_connect_session(allowed_providers=[provider], user_token=user_token)
    await browser.aapprove(session.connect_url, account)
    results: list[alter_sdk.ConnectResult] = await sdk.poll_connect_session(
        session.session_token, timeout=10, poll_interval=0.1)
    return results


async def test_the_official_client_calls_the_api_as_the_users_only_google_account(
    served: Served, sdk: alter_sdk.App, abrowser: AsyncBrowser
) -> None:
    alice = served.deployment.idp.issue("alice")
    [connected] = await sdk_connect(sdk, abrowser, "google", "alice@gmail.com", alice)
    assert connected.provider_id == "google" and connected.account_identifier == "alice@gmail.com"

    response = await sdk.request("GET", f"{served.upstream}/echo/profile", provider="google", user_token=alice)

    assert response.status_code == 200
    assert response.json()["account"] == "alice@gmail.com"


async def test_two_google_accounts_make_the_official_client_raise_ambiguous_then_account_picks_one(
    served: Served, sdk: alter_sdk.App, abrowser: AsyncBrowser
) -> None:
    alice = served.deployment.idp.issue("alice")
    [personal] = await sdk_connect(sdk, abrowser, "google", "alice@gmail.com", alice)
    [work] = await sdk_connect(sdk, abrowser, "google", "alice@acme.com", alice)

    with pytest.raises(sdk_errors.AmbiguousGrantError) as caught:
        await sdk.request("GET", f"{served.upstream}/echo/x", provider="google", user_token=alice)
    error = caught.value
    assert sorted(error.account_identifiers) == ["alice@acme.com", "alice@gmail.com"]
    assert {c.grant_id: c.account_identifier for c in error.candidates} == {
        personal.grant_id: "alice@gmail.com", work.grant_id: "alice@acme.com"}
    assert error.account_was_provided is False

    response = await sdk.request("GET", f"{served.upstream}/echo/x", provider="google", account="alice@acme.com",
                                 user_token=alice)
    assert response.json()["account"] == "alice@acme.com"
    assert served.deployment.upstream.requests[-1] == ("GET", "/echo/x", "alice@acme.com")


async def test_grant_id_mode_works_and_another_users_grant_id_is_refused_as_not_found(
    served: Served, sdk: alter_sdk.App, abrowser: AsyncBrowser
) -> None:
    idp = served.deployment.idp
    alice, bob = idp.issue("alice"), idp.issue("bob")
    [alices] = await sdk_connect(sdk, abrowser, "github", "alice-gh", alice)

    response = await sdk.request("GET", f"{served.upstream}/echo/repos", grant_id=alices.grant_id)
    assert response.json()["account"] == "alice-gh"
    response = await sdk.request("GET", f"{served.upstream}/echo/repos", grant_id=alices.grant_id, user_token=alice)
    assert response.json()["account"] == "alice-gh"

    before = len(served.deployment.upstream.requests)
    with pytest.raises(sdk_errors.GrantNotFoundError):
        await sdk.request("GET", f"{served.upstream}/echo/repos", grant_id=alices.grant_id, user_token=bob)
    assert len(served.deployment.upstream.requests) == before


async def test_a_destination_outside_the_providers_hosts_is_blocked(
    served: Served, sdk: alter_sdk.App, abrowser: AsyncBrowser
) -> None:
    alice = served.deployment.idp.issue("alice")
    await sdk_connect(sdk, abrowser, "google", "alice@gmail.com", alice)
    elsewhere = served.upstream.replace("127.0.0.1", "localhost")
    with pytest.raises(sdk_errors.BlockedDestinationError):
        await sdk.request("GET", f"{elsewhere}/echo/x", provider="google", user_token=alice)


async def test_headless_connect_of_the_official_client_completes_through_the_browser(
    served: Served, sdk: alter_sdk.App, abrowser: AsyncBrowser, capsys: pytest.CaptureFixture[str]
) -> None:
    connecting = asyncio.ensure_future(sdk.connect(providers=["github"], open_browser=False, timeout=20,
                                                   poll_interval=0.1))
    url = ""
    for _ in range(200):
        printed = capsys.readouterr().out
        if "http" in printed:
            url = printed.strip().rsplit(" ", 1)[-1]
            break
        await asyncio.sleep(0.05)
    assert url.startswith(served.server.url + "/connect/")
    await abrowser.aapprove(url, "octocat")
    [result] = await asyncio.wait_for(connecting, 20)

    assert result.provider_id == "github" and result.account_identifier == "octocat"
    response = await sdk.request("GET", f"{served.upstream}/echo/me", grant_id=result.grant_id)
    assert response.json()["account"] == "octocat"


async def test_list_grants_shows_each_users_accounts(
    served: Served, sdk: alter_sdk.App, abrowser: AsyncBrowser
) -> None:
    idp = served.deployment.idp
    alice, bob = idp.issue("alice"), idp.issue("bob")
    await sdk_connect(sdk, abrowser, "google", "alice@gmail.com", alice)
    await sdk_connect(sdk, abrowser, "google", "bob@gmail.com", bob)

    everyone = await sdk.list_grants()
    alices = await sdk.list_grants(end_user_token=alice)

    assert everyone.total == 2 and {g.account_identifier for g in everyone.grants} == {"alice@gmail.com",
                                                                                        "bob@gmail.com"}
    assert [(g.provider_id, g.account_identifier, g.principal_type) for g in alices.grants] == [
        ("google", "alice@gmail.com", "user")]


async def test_the_official_client_records_every_call_in_the_vault_audit_log(
    served: Served, sdk: alter_sdk.App, abrowser: AsyncBrowser
) -> None:
    [grant] = await sdk_connect(sdk, abrowser, "github", "octocat")
    await sdk.request("GET", f"{served.upstream}/echo/audited", grant_id=grant.grant_id)
    await sdk.close()  # flushes the client's background audit post

    from alter_agents.vault.local import LocalVault

    vault = LocalVault(served.deployment.settings)
    calls = []
    try:
        for _ in range(40):  # the server writes its audit rows in batches, a moment after the call
            calls = [e for e in await vault.audit(20, grant.grant_id) if e.action == "call"]
            if calls:
                break
            await asyncio.sleep(0.05)
    finally:
        await vault.aclose()
    assert calls and calls[0].path == "/echo/audited" and calls[0].status == 200


def _post(served: Served, path: str, body: bytes, headers: dict[str, str]) -> httpx.Response:
    return httpx.post(f"{served.server.url}{path}", content=body,
                      headers={"x-api-key": served.key, "Content-Type": "application/json", **headers})


async def test_a_forged_signature_is_refused_with_a_json_401(served: Served) -> None:
    body = b'{"limit":10,"offset":0}'
    other = await mint_key(served.deployment.settings, "another key")
    forged = sign(other, "POST", "/sdk/grants/list", body)  # signed with the wrong key

    response = _post(served, "/sdk/grants/list", body, forged)

    assert response.status_code == 401
    assert response.json()["error"] == "invalid_signature"


async def test_a_replayed_request_is_refused_and_a_tampered_body_too(served: Served) -> None:
    body = b'{"limit":10,"offset":0}'
    headers = sign(served.key, "POST", "/sdk/grants/list", body)

    assert _post(served, "/sdk/grants/list", body, headers).status_code == 200
    replay = _post(served, "/sdk/grants/list", body, headers)
    assert replay.status_code == 401 and replay.json()["error"] == "replayed_nonce"

    fresh = sign(served.key, "POST", "/sdk/grants/list", body)
    tampered = _post(served, "/sdk/grants/list", b'{"limit":99,"offset":0}', fresh)
    assert tampered.status_code == 401 and tampered.json()["error"] == "body_hash_mismatch"

    old = sign(served.key, "POST", "/sdk/grants/list", body, now=time.time() - 3600)
    stale = _post(served, "/sdk/grants/list", body, old)
    assert stale.status_code == 401 and stale.json()["error"] == "stale_request"


async def test_a_resigned_body_hash_does_not_help_a_forger(served: Served) -> None:
    """Rewriting the body and its hash header without the key breaks the signature."""
    body = b'{"limit":10,"offset":0}'
    headers = sign(served.key, "POST", "/sdk/grants/list", body)
    evil = b'{"limit":1000,"offset":0}'
    headers["X-Alter-Content-SHA256"] = hashlib.sha256(evil).hexdigest()

    response = _post(served, "/sdk/grants/list", evil, headers)

    assert response.status_code == 401 and response.json()["error"] == "invalid_signature"


async def test_unknown_keys_revoked_keys_and_unknown_routes_answer_json_never_404(
    served: Served, sdk: alter_sdk.App
) -> None:
    unknown = _post(served, "/sdk/no/such/route", b"{}", sign(served.key, "POST", "/sdk/no/such/route", b"{}"))
    assert unknown.status_code != 404 and unknown.json()["error"] == "unknown_route"
    assert httpx.get(f"{served.server.url}/nothing").json()["error"] == "unknown_route"

    from alter_agents.server.keys import generate_key

    stranger = generate_key()
    response = httpx.post(f"{served.server.url}/sdk/grants/list", content=b"{}",
                          headers={"x-api-key": stranger, **sign(stranger, "POST", "/sdk/grants/list", b"{}")})
    assert response.status_code == 401 and response.json()["error"] == "invalid_key"

    proc = await asyncio.create_subprocess_exec(
        *_cli(), "keys", "list", "--json", env=_env(served), stdout=asyncio.subprocess.PIPE)
    listed = json.loads((await proc.communicate())[0])
    assert [k["status"] for k in listed] == ["active"] and served.key not in json.dumps(listed)
    proc = await asyncio.create_subprocess_exec(*_cli(), "keys", "revoke", listed[0]["key_id"][:8], env=_env(served))
    assert await proc.wait() == 0
    with pytest.raises(sdk_errors.KeyRevokedError):
        await sdk.list_grants()


def _cli() -> list[str]:
    from tests.fixtures.vault_server import _command

    return _command()


def _env(served: Served) -> dict[str, str]:
    import os

    return {k: v for k, v in os.environ.items() if not k.startswith("ALTER_")} | served.deployment.env


async def test_a_client_that_names_its_caller_signs_over_it_and_cannot_be_stripped(served: Served) -> None:
    named = alter_sdk.App(api_key=served.key, caller="billing-bot")
    try:
        assert (await named.list_grants()).total == 0  # verified over the caller lines (signature v2)
    finally:
        await named.close()

    from alter_agents.server.signing import _digest, signing_key, string_to_sign

    body, ts, nonce = b"{}", str(int(time.time())), "ab" * 16
    actor = {"x-alter-caller": "billing-bot", "x-alter-caller-type": "service"}
    text = string_to_sign("POST", "/sdk/grants/list", ts, nonce, hashlib.sha256(body).hexdigest(), actor)
    signed = {"X-Alter-Timestamp": ts, "X-Alter-Nonce": nonce,
              "X-Alter-Content-SHA256": hashlib.sha256(body).hexdigest(),
              "X-Alter-Signature": _digest(signing_key(served.key), text)}
    stripped = _post(served, "/sdk/grants/list", body, signed)  # actor headers dropped in transit
    assert stripped.status_code == 401 and stripped.json()["error"] == "invalid_signature"
