"""The outgoing call: the credential goes only to its provider's hosts, in the spec's form, and never
comes back in what the model sees."""

from __future__ import annotations

import base64
import logging
import urllib.parse
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest

from alter_agents import (
    App,
    HostNotAllowedError,
    InvalidArgumentsError,
    Settings,
    UpstreamTimeoutError,
    UpstreamUnreachableError,
)
from alter_agents.models import APP
from alter_agents.upstream import REDACTED, Upstream, check_destination
from tests.conftest import Deployment, connect_as
from tests.fixtures import AsyncBrowser, UpstreamAPI

SECRET = "sk_live_7d1f0b9e2c4a4e6b8a0f"


@pytest.fixture
async def app(sqlite_deployment: Deployment) -> AsyncIterator[App]:
    """Local mode with one managed secret per injection style, all for account `acct-1`."""
    d = sqlite_deployment.local()
    d.upstream.add_secret(SECRET, "acct-1")
    async with d.app() as app:
        for provider in ("keyed", "queried", "basic", "stripe"):
            await app.vault.add_secret(provider, SECRET, owner=APP, account="acct-1")
        yield app


def _url(upstream: UpstreamAPI, path: str, **query: str) -> str:
    return f"{upstream.url}/{path}" + (f"?{urllib.parse.urlencode(query)}" if query else "")


# -- destinations -------------------------------------------------------------------------------

@pytest.mark.parametrize(("url", "hosts", "allow_http", "reason"), [
    ("https://api.acme.com/v1", ["api.acme.com"], False, None),
    ("https://eu.cdn.acme.com/x", ["*.cdn.acme.com"], False, None),
    ("https://API.ACME.COM./v1", ["api.acme.com"], False, None),
    ("https://api.acme.com:443/v1", ["api.acme.com"], False, None),
    ("https://api.acme.com:8443/v1", ["api.acme.com:8443"], False, None),
    ("https://api.acme.com:8443/v1", ["api.acme.com"], False, "not one of"),
    ("http://127.0.0.1:8000/v1", ["127.0.0.1:8000"], True, None),
    ("http://127.0.0.1:8001/v1", ["127.0.0.1:8000"], True, "not one of"),
    ("http://127.0.0.1:8000/v1", ["127.0.0.1"], True, "not one of"),
    ("http://localhost/v1", ["localhost"], True, None),
    ("http://api.acme.com/v1", ["api.acme.com"], False, "only https"),
    ("http://api.acme.com/v1", ["api.acme.com"], True, "only https"),  # http only for loopback
    ("http://127.0.0.1/v1", ["127.0.0.1"], False, "only https"),
    ("ftp://api.acme.com/v1", ["api.acme.com"], False, "only https"),
    ("https://api.acme.com.evil.com/v1", ["api.acme.com"], False, "not one of"),
    ("https://evil.com/cdn.acme.com", ["*.cdn.acme.com"], False, "not one of"),
    ("https://cdn.acme.com/x", ["*.cdn.acme.com"], False, "not one of"),
    ("https://user:pw@api.acme.com/v1", ["api.acme.com"], False, "user info"),
    ("not a url", ["api.acme.com"], False, "https"),
])
def test_a_credential_may_only_go_to_its_providers_hosts(
    url: str, hosts: list[str], allow_http: bool, reason: str | None
) -> None:
    if reason is None:
        check_destination(url, "acme", hosts, allow_http)
        return
    with pytest.raises(HostNotAllowedError, match=reason) as info:
        check_destination(url, "acme", hosts, allow_http)
    assert info.value.payload().error.code == "host_not_allowed"


async def test_a_foreign_host_never_sees_the_credential(app: App, foreign: UpstreamAPI) -> None:
    with pytest.raises(HostNotAllowedError):
        await app.request("GET", foreign.echo_url("x", host="localhost"), provider="keyed")
    assert foreign.seen_credentials == [] and foreign.requests == []


async def test_a_redirect_to_a_foreign_host_is_refused_before_it_is_followed(
    app: App, sqlite_deployment: Deployment, foreign: UpstreamAPI
) -> None:
    upstream = sqlite_deployment.upstream
    for to in (foreign.echo_url("stolen", host="localhost"), upstream.echo_url("stolen", host="localhost")):
        upstream.reset_records()
        with pytest.raises(HostNotAllowedError, match="redirected to localhost") as info:
            await app.request("GET", _url(upstream, "redirect", to=to), provider="keyed")
        assert info.value.payload().error.code == "host_not_allowed"
        assert [path for _m, path, _a in upstream.requests] == ["/redirect"]
    assert foreign.seen_credentials == []


async def test_a_redirect_to_plain_http_on_a_non_loopback_host_is_refused_for_its_scheme(
    sqlite_deployment: Deployment, tmp_path: Path
) -> None:
    """`allow_http` covers loopback only. 0.0.0.0 is one of this provider's hosts and is not a loopback
    address, yet a connection to it stays on this machine, so a broken guard would leak nothing off it."""
    d = sqlite_deployment.local()
    d.upstream.add_secret(SECRET, "acct-1")
    port = httpx.URL(d.upstream.url).port
    providers = tmp_path / "lan.toml"
    providers.write_text(f'[providers.lan]\nkind = "secret"\nhosts = ["127.0.0.1:{port}", "0.0.0.0:{port}"]\n'
                         'allow_http = true\ninject = { header = "X-Api-Key", format = "{token}" }\n', "utf-8")
    async with App(settings=Settings.from_env({**d.env, "ALTER_PROVIDERS_FILE": str(providers)})) as app:
        await app.vault.add_secret("lan", SECRET, owner=APP, account="acct-1")
        # The same host over https passes the destination check (and then fails the TLS handshake).
        with pytest.raises(UpstreamUnreachableError):
            await app.request("GET", _url(d.upstream, "redirect", to=f"https://0.0.0.0:{port}/echo/tls"),
                              provider="lan")
        d.upstream.reset_records()
        with pytest.raises(HostNotAllowedError) as info:
            await app.request("GET", _url(d.upstream, "redirect", to=f"http://0.0.0.0:{port}/echo/plain"),
                              provider="lan")
    assert info.value.payload().error.code == "host_not_allowed"
    assert [path for _m, path, _a in d.upstream.requests] == ["/redirect"]
    assert d.upstream.seen_credentials == [SECRET]  # only the first, allowed, hop carried it


async def test_redirects_within_the_providers_hosts_are_followed(app: App, sqlite_deployment: Deployment) -> None:
    upstream = sqlite_deployment.upstream
    response = await app.request("GET", _url(upstream, "redirect", to="/echo/next?page=2"), provider="keyed")
    assert response.status == 200
    assert response.json_body()["path"] == "next" and response.json_body()["query"] == {"page": "2"}
    assert response.json_body()["account"] == "acct-1"

    kept = await app.request("POST", _url(upstream, "redirect", to="/echo/kept", status="307"), provider="keyed",
                             json={"a": 1})
    assert (kept.json_body()["method"], kept.json_body()["json"]) == ("POST", {"a": 1})
    seen = await app.request("POST", _url(upstream, "redirect", to="/echo/seen", status="303"), provider="keyed",
                             json={"a": 1})
    assert (seen.json_body()["method"], seen.json_body()["body"]) == ("GET", "")


def _chain(upstream: UpstreamAPI, hops: int) -> str:
    url = "/echo/end"
    for _ in range(hops):
        url = "/redirect?" + urllib.parse.urlencode({"to": url})
    return upstream.url + url


async def test_at_most_five_redirects_are_followed(app: App, sqlite_deployment: Deployment) -> None:
    upstream = sqlite_deployment.upstream
    response = await app.request("GET", _chain(upstream, 5), provider="keyed")
    assert response.json_body()["path"] == "end"
    upstream.reset_records()
    with pytest.raises(UpstreamUnreachableError, match="more than 5"):
        await app.request("GET", _chain(upstream, 6), provider="keyed")
    assert len(upstream.requests) == 6


# -- injection ----------------------------------------------------------------------------------

async def test_each_provider_injects_its_credential_its_own_way(app: App, sqlite_deployment: Deployment) -> None:
    upstream = sqlite_deployment.upstream
    expected = {
        "keyed": f"X-Api-Key: {SECRET}",
        "queried": f"api_key={SECRET}",
        "basic": "Authorization: Basic " + base64.b64encode(f"{SECRET}:".encode()).decode(),
        "stripe": f"Authorization: Bearer {SECRET}",
    }
    for provider, wire in expected.items():
        upstream.reset_records()
        response = await app.request("GET", upstream.echo_url("who"), provider=provider, query={"q": "1"})
        assert response.json_body()["account"] == "acct-1", provider
        assert response.json_body()["query"] == {"q": "1"}
        assert upstream.received_anywhere(wire), provider
        assert upstream.seen_credentials == [SECRET], provider


async def test_a_credential_sent_as_a_query_parameter_never_reaches_the_logs(
    app: App, sqlite_deployment: Deployment, caplog: pytest.LogCaptureFixture
) -> None:
    upstream = sqlite_deployment.upstream
    with caplog.at_level(logging.DEBUG):
        response = await app.request("GET", upstream.echo_url("who"), provider="queried", query={"q": "1"})
    assert response.json_body()["account"] == "acct-1"
    assert any("HTTP Request" in r.getMessage() for r in caplog.records)  # httpx did log the call
    assert SECRET not in caplog.text
    assert all(SECRET not in r.getMessage() for r in caplog.records)


async def test_the_callers_own_auth_header_is_refused_before_anything_is_sent(
    app: App, sqlite_deployment: Deployment
) -> None:
    upstream = sqlite_deployment.upstream
    upstream.reset_records()
    with pytest.raises(InvalidArgumentsError, match="Authorization"):
        await app.request("GET", upstream.echo_url("x"), provider="stripe",
                          headers={"Authorization": "Bearer something-else", "X-Trace": "t1"})
    assert upstream.requests == []
    response = await app.request("GET", upstream.echo_url("x"), provider="stripe", headers={"X-Trace": "t1"})
    assert response.json_body()["account"] == "acct-1"
    assert response.json_body()["headers"]["x-trace"] == "t1"


# -- what comes back ----------------------------------------------------------------------------

async def test_the_credential_is_redacted_from_the_body_and_headers(app: App, sqlite_deployment: Deployment) -> None:
    upstream = sqlite_deployment.upstream
    for provider in ("keyed", "queried", "basic", "stripe"):
        response = await app.request("GET", _url(upstream, "reflect"), provider=provider)
        assert response.json_body() == {"account": "acct-1", "token_seen": REDACTED}
        assert SECRET.encode() not in response.content
    leaky = _url(upstream, "redirect", status="300", to=f"https://elsewhere.example/?k={SECRET}")
    response = await app.request("GET", leaky, provider="keyed")
    assert response.status == 300
    assert SECRET not in str(response.headers) and REDACTED in response.headers["location"]


async def test_an_oauth_access_token_is_redacted_too(sqlite_deployment: Deployment, abrowser: AsyncBrowser) -> None:
    d = sqlite_deployment
    async with d.app() as app:
        alice = d.idp.issue("alice")
        await connect_as(app, abrowser, "github", "alice-gh", alice)
        response = await app.request("GET", _url(d.upstream, "reflect"), provider="github", user_token=alice)
    assert response.json_body() == {"account": "alice-gh", "token_seen": REDACTED}
    (token,) = d.oauth.tokens_for("alice-gh")
    assert token.access_token not in response.text


async def test_large_responses_are_capped(sqlite_deployment: Deployment) -> None:
    d = sqlite_deployment.local()
    d.upstream.add_secret(SECRET, "acct-1")
    async with d.app(upstream=Upstream(max_response_bytes=1000)) as app:
        await app.vault.add_secret("keyed", SECRET, owner=APP, account="acct-1")
        big = await app.request("GET", _url(d.upstream, "big", n="50000"), provider="keyed")
        small = await app.request("GET", _url(d.upstream, "big", n="999"), provider="keyed")
        binary = await app.request("GET", _url(d.upstream, "binary", n="4096"), provider="keyed")
    assert (len(big.content), big.truncated) == (1000, True)
    assert (len(small.content), small.truncated) == (999, False)
    assert (len(binary.content), binary.truncated) == (1000, True)
    assert binary.content == bytes(i % 256 for i in range(1000))


async def test_upstream_4xx_and_5xx_are_results_not_errors(app: App, sqlite_deployment: Deployment) -> None:
    upstream = sqlite_deployment.upstream
    for code in (404, 500, 204):
        response = await app.request("DELETE", _url(upstream, f"status/{code}"), provider="keyed")
        assert response.status == code


async def test_a_slow_api_times_out_and_a_dropped_connection_is_unreachable(sqlite_deployment: Deployment) -> None:
    d = sqlite_deployment.local()
    d.upstream.add_secret(SECRET, "acct-1")
    async with d.app(upstream=Upstream(timeout=0.3)) as app:
        await app.vault.add_secret("keyed", SECRET, owner=APP, account="acct-1")
        with pytest.raises(UpstreamTimeoutError) as slow:
            await app.request("GET", _url(d.upstream, "slow", s="2"), provider="keyed")
        with pytest.raises(UpstreamUnreachableError) as reset:
            await app.request("GET", _url(d.upstream, "reset"), provider="keyed")
        audit = await app.vault.audit(10)
    for info, code in ((slow, "upstream_timeout"), (reset, "upstream_unreachable")):
        body = info.value.payload().error
        assert (body.code, body.retryable, body.user_action) == (code, True, "retry_later")
    calls = [(e.path, e.status, e.detail) for e in audit if e.action == "call"]
    assert calls == [("/reset", None, "upstream_unreachable"), ("/slow", None, "upstream_timeout")]


async def test_a_refused_destination_does_not_even_refresh_the_token(
    sqlite_deployment: Deployment, abrowser: AsyncBrowser, foreign: UpstreamAPI
) -> None:
    d = sqlite_deployment
    async with d.app() as app:
        alice = d.idp.issue("alice")
        d.oauth.access_token_ttl = 30  # due for refresh
        await connect_as(app, abrowser, "github", "alice-gh", alice)
        with pytest.raises(HostNotAllowedError):
            await app.request("GET", foreign.echo_url("x", host="localhost"), provider="github", user_token=alice)
    assert d.oauth.count("refresh_token") == 0
    assert foreign.seen_credentials == []
