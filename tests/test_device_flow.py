"""RFC 8628 device sign-in against a real authorization server (authlib's device-code grant)."""

from __future__ import annotations

import asyncio

import httpx
import pytest

from alter_agents.errors import ConfigurationError, ConnectDeniedError, ConnectTimeoutError
from alter_agents.providers import ProviderSpec
from alter_agents.vault import device
from tests.fixtures import OAuthServer, UpstreamAPI


def _spec(oauth: OAuthServer, client: tuple[str, str], upstream: UpstreamAPI) -> ProviderSpec:
    return ProviderSpec(
        name="github", hosts=["127.0.0.1"], allow_http=True, authorize_url=f"{oauth.url}/authorize",
        token_url=oauth.token_url, device_authorization_url=oauth.device_authorization_url,
        client_id=client[0], client_secret=client[1], scopes=["read"],
    )


class _Clock:
    """Records the intervals the poller waits, and waits a little for real so the server sees time pass."""

    def __init__(self, real: float = 0.02) -> None:
        self.waits: list[float] = []
        self.real = real

    async def sleep(self, seconds: float) -> None:
        self.waits.append(seconds)
        await asyncio.sleep(self.real)


async def _approve_later(oauth: OAuthServer, user_code: str, user: str, after: float = 0.3) -> None:
    await asyncio.sleep(after)
    async with httpx.AsyncClient() as person:  # the person types the code at the verification page
        page = await person.get(f"{oauth.url}/device", params={"user_code": user_code})
        assert page.status_code == 200 and user_code in page.text
        answer = await person.post(f"{oauth.url}/device",
                                   data={"user_code": user_code, "user": user, "confirm": "yes"})
        assert answer.status_code == 200


async def test_approve_returns_tokens_for_the_approving_account(
    oauth: OAuthServer, oauth_client: tuple[str, str], upstream: UpstreamAPI
) -> None:
    oauth.device_interval = 0.1
    spec = _spec(oauth, oauth_client, upstream)
    async with httpx.AsyncClient() as http:
        code = await device.request_code(http, spec)
        assert code.verification_uri == f"{oauth.url}/device" and code.user_code
        assert code.verification_uri_complete and code.user_code in code.verification_uri_complete
        assert code.interval == pytest.approx(0.1)
        approving = asyncio.create_task(_approve_later(oauth, code.user_code, "octo-device"))
        tokens = await device.poll(http, spec, code)
        await approving
    assert oauth.lookup(tokens.access_token) == "octo-device" and tokens.refresh_token
    outcomes = [o for d, o in oauth.device_polls if d == code.device_code]
    assert outcomes[-1] == "token" and set(outcomes[:-1]) <= {"authorization_pending"}


async def test_deny_is_connect_denied(oauth: OAuthServer, oauth_client: tuple[str, str], upstream: UpstreamAPI) -> None:
    oauth.device_interval = 0.1
    spec = _spec(oauth, oauth_client, upstream)
    async with httpx.AsyncClient() as http:
        code = await device.request_code(http, spec)
        oauth.deny_device(code.user_code)
        with pytest.raises(ConnectDeniedError) as caught:
            await device.poll(http, spec, code)
    assert caught.value.code == "connect_denied" and not caught.value.retryable


async def test_expiry_at_the_server_and_locally_is_connect_timeout(
    oauth: OAuthServer, oauth_client: tuple[str, str], upstream: UpstreamAPI
) -> None:
    oauth.device_interval = 0.1
    spec = _spec(oauth, oauth_client, upstream)
    async with httpx.AsyncClient() as http:
        code = await device.request_code(http, spec)
        oauth.expire_devices()  # the server says expired_token
        with pytest.raises(ConnectTimeoutError, match="expired"):
            await device.poll(http, spec, code)
        oauth.device_expires_in = 1  # and a code whose lifetime runs out while pending
        short = await device.request_code(http, spec)
        polls_before = len(oauth.device_polls)
        with pytest.raises(ConnectTimeoutError):
            await device.poll(http, spec, short)
        assert len(oauth.device_polls) > polls_before  # it polled until the lifetime was spent


async def test_slow_down_widens_the_interval_by_five_seconds(
    oauth: OAuthServer, oauth_client: tuple[str, str], upstream: UpstreamAPI
) -> None:
    oauth.device_interval = 1  # the server enforces 1 s; the clock below lets polls come faster
    spec = _spec(oauth, oauth_client, upstream)
    clock = _Clock()
    async with httpx.AsyncClient() as http:
        code = await device.request_code(http, spec)

        async def approve_after_two_slow_downs() -> None:
            while sum(o == "slow_down" for _d, o in oauth.device_polls) < 2:
                await asyncio.sleep(0.01)
            oauth.approve_device(code.user_code, "patient")

        approving = asyncio.create_task(approve_after_two_slow_downs())
        tokens = await device.poll(http, spec, code, sleep=clock.sleep)
        await approving
    assert oauth.lookup(tokens.access_token) == "patient"
    assert clock.waits[:4] == [1.0, 1.0, 6.0, 11.0]  # pending, then two slow_downs: +5 s each


async def test_github_form_encoded_answers(
    oauth: OAuthServer, oauth_client: tuple[str, str], upstream: UpstreamAPI
) -> None:
    oauth.device_interval = 0.1
    oauth.form_encoded_device = True
    spec = _spec(oauth, oauth_client, upstream)
    async with httpx.AsyncClient() as http:
        code = await device.request_code(http, spec)
        approving = asyncio.create_task(_approve_later(oauth, code.user_code, "form-user", after=0.25))
        tokens = await device.poll(http, spec, code)
        await approving
    assert oauth.lookup(tokens.access_token) == "form-user"


async def test_two_users_polling_at_once_each_get_their_own_account(
    oauth: OAuthServer, oauth_client: tuple[str, str], upstream: UpstreamAPI
) -> None:
    oauth.device_interval = 0.1
    spec = _spec(oauth, oauth_client, upstream)
    async with httpx.AsyncClient() as http:
        alice, bob = await device.request_code(http, spec), await device.request_code(http, spec)
        assert alice.user_code != bob.user_code and alice.device_code != bob.device_code
        polls = asyncio.gather(device.poll(http, spec, alice), device.poll(http, spec, bob))
        await asyncio.gather(_approve_later(oauth, bob.user_code, "bob-dev", 0.2),
                             _approve_later(oauth, alice.user_code, "alice-dev", 0.4))
        alice_tokens, bob_tokens = await polls
    assert oauth.lookup(alice_tokens.access_token) == "alice-dev"
    assert oauth.lookup(bob_tokens.access_token) == "bob-dev"


def test_a_token_endpoint_moved_elsewhere_does_not_inherit_the_built_in_device_endpoint(
    oauth: OAuthServer, oauth_client: tuple[str, str], upstream: UpstreamAPI, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A providers file pointing github's token_url at another server must not send its device requests to
    github.com: the device endpoint only counts on the token endpoint's own host."""
    monkeypatch.setenv("SSH_CONNECTION", "10.0.0.1 50000 10.0.0.2 22")  # no browser here: auto would pick device
    moved = _spec(oauth, oauth_client, upstream).model_copy(
        update={"device_authorization_url": "https://github.com/login/device/code"})
    assert not device.supports_device(moved)
    assert device.choose_method("auto", moved, public_callback=False) == "browser"
    assert device.choose_method("auto", _spec(oauth, oauth_client, upstream), public_callback=False) == "device"
    assert device.choose_method("auto", _spec(oauth, oauth_client, upstream), public_callback=True) == "browser"
    with pytest.raises(ConfigurationError, match="no device sign-in"):
        device.choose_method("device", moved, public_callback=False)
