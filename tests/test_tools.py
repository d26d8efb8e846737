"""The framework-neutral `request` / `connect` tools against a real vault, OAuth server and API."""

from __future__ import annotations

import asyncio
import dataclasses
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import httpx
import pytest

from alter_agents import App
from alter_agents.errors import ERROR_CODES
from alter_agents.models import APP, AccountRef, ConnectStart, ToolErrorPayload
from alter_agents.sessions import GrantSession, HeadlessSession, LocalSession, UserSession
from alter_agents.tools import AlterTools, CallContext, ConnectResultOut, GrantRequestArgs, RequestArgs, RequestResult
from alter_agents.upstream import Upstream
from alter_agents.vault.crypto import generate_key
from tests.conftest import Deployment, LinkTwoGoogleAccounts, connect_as
from tests.fixtures import AsyncBrowser
from tests.fixtures.accounts import ALICE_PERSONAL, ALICE_WORK


def approving(browser: AsyncBrowser, user: str) -> Any:
    """An `on_connect_url` that plays the human approving the consent as `user`."""

    async def approve(start: ConnectStart) -> None:
        await browser.aapprove(start.connect_url, user)

    return approve


async def ok(tools: AlterTools, args: dict[str, Any]) -> RequestResult:
    result = await tools.run_request(args)
    assert isinstance(result, RequestResult), result
    return result


async def error(tools: AlterTools, args: dict[str, Any]) -> dict[str, Any]:
    result = await tools.run_request(args)
    assert isinstance(result, ToolErrorPayload), result
    return result.error.model_dump(exclude_none=True)


async def test_request_names_the_account_that_acted_and_parses_json(
    deployment: Deployment, abrowser: AsyncBrowser
) -> None:
    app = deployment.app()
    alice = deployment.idp.issue("alice")
    tools = AlterTools(app, UserSession(alice), on_connect_url=approving(abrowser, "alice@gmail.com"))
    connected = await tools.connect({"provider": "google", "label": "personal"})
    assert connected.status == "connected" and connected.grant is not None
    assert connected.grant.account == "alice@gmail.com"

    result = await ok(tools, {"url": deployment.upstream.echo_url("inbox"), "provider": "google",
                              "method": "post", "json": {"q": 1}, "query": {"limit": 5, "all": True}})
    assert result.status == 200
    assert result.body["account"] == "alice@gmail.com"
    assert result.body["json"] == {"q": 1} and result.body["query"] == {"limit": "5", "all": "true"}
    assert result.grant.model_dump() == {"provider": "google", "account": "alice@gmail.com", "label": "personal"}
    assert result.headers["content-type"] == "application/json" and result.truncated is False
    await app.aclose()


async def test_text_is_text_binary_is_summarised_and_big_bodies_are_capped(
    sqlite_deployment: Deployment, abrowser: AsyncBrowser
) -> None:
    d = sqlite_deployment.local()
    app = d.app()
    await connect_as(app, abrowser, "github", "octo", None)
    tools = AlterTools(app, LocalSession())
    url = d.upstream.url

    text = await ok(tools, {"url": f"{url}/text", "provider": "github"})
    assert text.body == "hello octo\n" and not text.truncated

    binary = await ok(tools, {"url": f"{url}/binary?n=3000", "provider": "github"})
    assert binary.body == {"binary": True, "content_type": "application/octet-stream", "size": 3000}

    big = await ok(tools, {"url": f"{url}/big", "query": {"n": 100_000}, "provider": "github"})
    assert big.truncated is True and isinstance(big.body, str) and len(big.body) == 64 * 1024

    small_cap = AlterTools(app, LocalSession(), max_body_bytes=1000)
    capped = await ok(small_cap, {"url": f"{url}/big", "query": {"n": 5000}, "provider": "github"})
    assert capped.truncated is True and len(capped.body) == 1000
    fits = await ok(small_cap, {"url": f"{url}/big", "query": {"n": 900}, "provider": "github"})
    assert fits.truncated is False and isinstance(fits.body, dict)
    await app.aclose()


async def test_an_upstream_error_status_is_a_result_the_model_reads(
    sqlite_deployment: Deployment, abrowser: AsyncBrowser
) -> None:
    d = sqlite_deployment.local()
    app = d.app()
    await connect_as(app, abrowser, "github", "octo", None)
    tools = AlterTools(app, LocalSession())
    result = await ok(tools, {"url": f"{d.upstream.url}/status/429?retry_after=7", "provider": "github"})
    assert result.status == 429 and result.headers["retry-after"] == "7"
    await app.aclose()


async def test_credential_headers_are_refused_before_anything_is_sent(
    sqlite_deployment: Deployment, abrowser: AsyncBrowser
) -> None:
    d = sqlite_deployment.local()
    app = d.app()
    await connect_as(app, abrowser, "github", "octo", None)
    d.upstream.reset_records()
    tools = AlterTools(app, LocalSession())
    for header in ("Authorization", "cookie", "X-Api-Key", "Proxy-Authorization"):
        err = await error(tools, {"url": d.upstream.echo_url(), "provider": "github", "headers": {header: "x"}})
        assert err["code"] == "invalid_arguments" and err["refused_headers"] == [header]
    err = await error(tools, {"url": d.upstream.echo_url(), "provider": "github", "headers": {"X-A": "a\r\nb: c"}})
    assert err["code"] == "invalid_arguments" and "value of X-A" in err["message"]
    assert d.upstream.requests == []
    await app.aclose()


async def test_provider_is_inferred_only_when_one_provider_claims_the_host(sqlite_deployment: Deployment) -> None:
    app = sqlite_deployment.local().app()
    tools = AlterTools(app, LocalSession())
    err = await error(tools, {"url": sqlite_deployment.upstream.echo_url()})
    assert err["code"] == "invalid_arguments" and "github" in err["candidates"] and "google" in err["candidates"]
    err = await error(tools, {"url": "https://slack.com/api/auth.test"})
    assert err["code"] == "not_connected" and err["provider"] == "slack"
    await app.aclose()


@dataclass
class Story:
    """What each error story starts from: a deployment, a browser, Alice's token and tools."""

    d: Deployment
    browser: AsyncBrowser
    alice_google: LinkTwoGoogleAccounts
    app: App

    @property
    def echo(self) -> str:
        return self.d.upstream.echo_url("x")

    def alice(self) -> str:
        return self.d.idp.issue("alice")


Outcome = RequestResult | ConnectResultOut | ToolErrorPayload
ERROR_STORIES: dict[str, Callable[[Story], Awaitable[tuple[Outcome, Callable[[dict[str, Any]], bool]]]]] = {}


def story(code: str) -> Callable[[Any], Any]:
    def register(fn: Any) -> Any:
        ERROR_STORIES[code] = fn
        return fn
    return register


@story("not_connected")
async def _not_connected(s: Story) -> Any:
    outcome = await AlterTools(s.app, UserSession(s.alice())).run_request({"url": s.echo, "provider": "google"})
    # A plain retry cannot succeed (retryable false) and nothing went out (sent false).
    return outcome, lambda e: (e["provider"], e["user_action"], e["retryable"], e["sent"]) == (
        "google", "connect", False, False)


@story("ambiguous_grant")
async def _ambiguous_grant(s: Story) -> Any:
    alice = s.alice()
    await s.alice_google(s.app, alice)
    outcome = await AlterTools(s.app, UserSession(alice)).run_request({"url": s.echo, "provider": "google"})

    def check(e: dict[str, Any]) -> bool:
        accounts = [{k: a.get(k) for k in ("account", "label")} for a in e["accounts"]]
        return (e["user_action"], e["retryable"]) == ("choose_account", False) and sorted(
            accounts, key=str) == sorted([{"account": ALICE_PERSONAL, "label": None},
                                          {"account": ALICE_WORK, "label": "work"}], key=str)
    return outcome, check


@story("grant_not_found")
async def _grant_not_found(s: Story) -> Any:
    bobs = await connect_as(s.app, s.browser, "google", "bob@gmail.com", s.d.idp.issue("bob"))
    outcome = await AlterTools(s.app, GrantSession(bobs.grant_id)).run_request({"url": s.echo}, _as(s.alice()))
    return outcome, lambda e: e["grant_id"] == bobs.grant_id


@story("host_not_allowed")
async def _host_not_allowed(s: Story) -> Any:
    alice = s.alice()
    await connect_as(s.app, s.browser, "google", ALICE_PERSONAL, alice)
    local_host = s.echo.replace("127.0.0.1", "localhost")
    outcome = await AlterTools(s.app, UserSession(alice)).run_request({"url": local_host, "provider": "google"})
    bound = f"127.0.0.1:{s.d.upstream.port}"  # the test provider's host entry names its port
    return outcome, lambda e: e["allowed_hosts"] == [bound] and e["provider"] == "google"


def _policy_app(s: Story, text: str) -> App:
    path = Path(s.d.settings.providers_file or "").with_name("policy-story.toml")
    path.write_text(text, "utf-8")
    return App(settings=dataclasses.replace(s.d.settings, policy_file=str(path)))


@story("policy_denied")
async def _policy_denied(s: Story) -> Any:
    alice = s.alice()
    async with _policy_app(s, '[[policy]]\nprovider = "google"\nmethods = ["DELETE"]\neffect = "deny"\n'
                              'name = "no-deletes"\n') as app:
        await connect_as(app, s.browser, "google", ALICE_PERSONAL, alice)
        outcome = await AlterTools(app, UserSession(alice)).run_request(
            {"url": s.echo, "provider": "google", "method": "DELETE"})
    return outcome, lambda e: (e["rule"], e["sent"], e["decided_by"]) == ("no-deletes", False, "policy")


@story("approval_required")
async def _approval_required(s: Story) -> Any:
    alice = s.alice()
    async with _policy_app(s, '[providers.google]\nread_only = "approve"\n') as app:
        await connect_as(app, s.browser, "google", ALICE_PERSONAL, alice)
        outcome = await AlterTools(app, UserSession(alice)).run_request(
            {"url": s.echo, "provider": "google", "method": "POST", "json": {}})
    return outcome, lambda e: (e["user_action"], e["sent"], e["method"]) == ("approve", False, "POST")


@story("insufficient_scope")
async def _insufficient_scope(s: Story) -> Any:
    alice = s.alice()
    await connect_as(s.app, s.browser, "google", ALICE_PERSONAL, alice)
    outcome = await AlterTools(s.app, UserSession(alice)).run_request(
        {"url": f"{s.d.upstream.url}/scoped/admin", "provider": "google"})
    return outcome, lambda e: (e["required_scopes"], e["granted_scopes"], e["sent"], e["user_action"]) == (
        ["admin"], ["read"], True, "reauthorize")


@story("unknown_provider")
async def _unknown_provider(s: Story) -> Any:
    outcome = await AlterTools(s.app, UserSession(s.alice())).run_request({"url": s.echo, "provider": "gogle"})
    return outcome, lambda e: "google" in e["known_providers"]


@story("invalid_arguments")
async def _invalid_arguments(s: Story) -> Any:
    outcome = await AlterTools(s.app, UserSession(s.alice())).run_request({"method": "FETCH", "url": s.echo})
    return outcome, lambda e: "method" in e["message"] and e["user_action"] == "fix_arguments"


@story("unauthenticated")
async def _unauthenticated(s: Story) -> Any:
    no_token = await AlterTools(s.app, UserSession()).run_request({"url": s.echo, "provider": "google"})
    assert isinstance(no_token, ToolErrorPayload) and no_token.error.code == "unauthenticated"
    forged = AlterTools(s.app, UserSession(s.d.idp.forge("alice")))
    return await forged.run_request({"url": s.echo, "provider": "google"}), lambda e: e["retryable"] is False


@story("upstream_timeout")
async def _upstream_timeout(s: Story) -> Any:
    alice = s.alice()
    async with App(settings=s.d.settings, upstream=Upstream(timeout=0.5)) as app:
        await connect_as(app, s.browser, "google", ALICE_PERSONAL, alice)
        outcome = await AlterTools(app, UserSession(alice)).run_request(
            {"url": f"{s.d.upstream.url}/slow?s=1.5", "provider": "google"})
    # The request reached the API before it stalled: a retry may repeat it.
    return outcome, lambda e: e["retryable"] is True and e["user_action"] == "retry_later" and e["sent"] is True


@story("upstream_unreachable")
async def _upstream_unreachable(s: Story) -> Any:
    alice = s.alice()
    await connect_as(s.app, s.browser, "google", ALICE_PERSONAL, alice)
    outcome = await AlterTools(s.app, UserSession(alice)).run_request(
        {"url": f"{s.d.upstream.url}/reset", "provider": "google"})
    assert s.d.settings.providers_file is not None  # a provider bound to a port nothing listens on
    with Path(s.d.settings.providers_file).open("a", encoding="utf-8") as file:
        file.write('\n[providers.closed]\nkind = "secret"\nhosts = ["127.0.0.1:9"]\nallow_http = true\n')
    async with App(settings=s.d.settings) as app:
        grant = await app.vault.add_secret("closed", "sk-closed-port-0001", owner=APP, account="nobody")
        closed = await AlterTools(app, GrantSession(grant.grant_id)).run_request(
            {"url": "http://127.0.0.1:9/x"})  # no connection at all: nothing left
    assert isinstance(closed, ToolErrorPayload) and (closed.error.code, closed.error.sent) == (
        "upstream_unreachable", False)
    return outcome, lambda e: e["retryable"] is True


@story("connect_timeout")
async def _connect_timeout(s: Story) -> Any:
    waiting = AlterTools(s.app, UserSession(s.alice()), connect_wait=0.2)
    pending = await waiting.run_connect({"provider": "github"})
    assert isinstance(pending, ConnectResultOut) and pending.status == "pending"
    await s.app.vault.store.finish_connect_session(_state(pending), "expired")  # type: ignore[attr-defined]
    outcome = await waiting.run_connect({"provider": "github"})
    return outcome, lambda e: e["provider"] == "github" and e["user_action"] == "connect"


@story("connect_denied")
async def _connect_denied(s: Story) -> Any:
    denying = AlterTools(s.app, UserSession(s.alice()), on_connect_url=lambda st: s.browser.adeny(st.connect_url))
    return await denying.run_connect({"provider": "github"}), lambda e: e["provider"] == "github"


async def _due_for_refresh(s: Story, user: str) -> str:
    """`user`'s GitHub grant with an access token already inside its refresh window."""
    s.d.oauth.access_token_ttl = 61
    token = s.d.idp.issue(user)
    await connect_as(s.app, s.browser, "github", f"{user}-gh", token)
    await asyncio.sleep(1.1)
    return token


@story("rate_limited")
async def _rate_limited(s: Story) -> Any:
    carol = await _due_for_refresh(s, "carol")
    s.d.oauth.fail_next_token_requests(4, status=429)
    outcome = await AlterTools(s.app, UserSession(carol)).run_request({"url": s.echo, "provider": "github"})
    return outcome, lambda e: e["retryable"] is True and e["user_action"] == "retry_later"


@story("reauth_required")
async def _reauth_required(s: Story) -> Any:
    dave = await _due_for_refresh(s, "dave")
    s.d.oauth.invalidate_refresh_tokens()
    outcome = await AlterTools(s.app, UserSession(dave)).run_request({"url": s.echo, "provider": "github"})
    return outcome, lambda e: e["user_action"] == "reauthorize" and e["account"] == "dave-gh"


@story("provider_not_configured")
async def _provider_not_configured(s: Story) -> Any:
    outcome = await AlterTools(s.app, UserSession(s.alice())).run_connect({"provider": "slack"})  # no client here
    return outcome, lambda e: (e["user_action"] == "ask_operator" and e["retryable"] is False
                               and "ALTER_SLACK_CLIENT_ID" in e["message"])


@story("internal")
async def _internal(s: Story) -> Any:
    alice = s.alice()
    await connect_as(s.app, s.browser, "google", ALICE_PERSONAL, alice)
    async with App(settings=replace(s.d.settings, vault_key=generate_key())) as wrong_key:
        outcome = await AlterTools(wrong_key, UserSession(alice)).run_request({"url": s.echo, "provider": "google"})
    return outcome, lambda e: "ALTER_VAULT_KEY" in e["message"]


def test_every_error_story_is_a_documented_code() -> None:
    assert set(ERROR_STORIES) == set(ERROR_CODES)


@pytest.mark.parametrize("code", ERROR_CODES)
async def test_every_documented_error_code_reaches_the_model_with_its_data(
    code: str, sqlite_deployment: Deployment, abrowser: AsyncBrowser, alice_google: LinkTwoGoogleAccounts
) -> None:
    assert code in ERROR_STORIES, f"no story in this file makes the tools return {code!r}"
    async with sqlite_deployment.app() as app:
        outcome, check = await ERROR_STORIES[code](Story(sqlite_deployment, abrowser, alice_google, app))
    assert isinstance(outcome, ToolErrorPayload), outcome
    body = outcome.error.model_dump(exclude_none=True)
    assert set(body) >= {"code", "message", "retryable", "user_action"}
    assert body["code"] == code
    assert check(body), body


def _as(token: str) -> CallContext:
    return CallContext(user_token=token)


def _state(pending: ConnectResultOut) -> str:
    assert pending.connect_url is not None
    return str(httpx.URL(pending.connect_url).params["state"])


async def test_choose_account_asks_the_human_instead_of_the_model(
    sqlite_deployment: Deployment, alice_google: LinkTwoGoogleAccounts
) -> None:
    d = sqlite_deployment
    app = d.app()
    alice = d.idp.issue("alice")
    await alice_google(app, alice)
    asked: list[tuple[str, list[str]]] = []
    answer: list[str | None] = ["work"]

    async def choose(provider: str, accounts: list[AccountRef]) -> str | None:
        asked.append((provider, sorted(a.account for a in accounts)))
        return answer[0]

    tools = AlterTools(app, UserSession(alice), choose_account=choose, remember_account=False)
    result = await ok(tools, {"url": d.upstream.echo_url(), "provider": "google"})
    assert result.body["account"] == "alice@acme.com" and result.note == "Used work, chosen by the user."
    assert asked == [("google", ["alice@acme.com", "alice@gmail.com"])]

    answer[0] = None  # the human dismissed the question: the model gets the choice
    assert (await error(tools, {"url": d.upstream.echo_url(), "provider": "google"}))["code"] == "ambiguous_grant"
    answer[0] = "mallory@evil.example"  # not one of the candidates
    assert (await error(tools, {"url": d.upstream.echo_url(), "provider": "google"}))["code"] == "ambiguous_grant"
    await app.aclose()


async def test_a_chosen_account_sticks_for_the_session_per_user_and_can_be_turned_off(
    sqlite_deployment: Deployment, abrowser: AsyncBrowser, alice_google: LinkTwoGoogleAccounts
) -> None:
    d = sqlite_deployment
    app = d.app()
    alice, bob = d.idp.issue("alice"), d.idp.issue("bob")
    await alice_google(app, alice)
    await connect_as(app, abrowser, "google", "bob@gmail.com", bob)
    await connect_as(app, abrowser, "google", "bob@acme.com", bob)
    echo = {"url": d.upstream.echo_url(), "provider": "google"}

    shared = AlterTools(app, UserSession())  # one toolkit, the JWT arrives with each call
    first = await shared.run_request({**echo, "account": "work"}, _as(alice))
    assert isinstance(first, RequestResult) and first.note is None
    again = await shared.run_request(echo, _as(alice))
    assert isinstance(again, RequestResult) and again.body["account"] == "alice@acme.com"
    assert again.note is not None and "chosen earlier" in again.note
    bobs = await shared.run_request(echo, _as(bob))
    assert isinstance(bobs, ToolErrorPayload) and bobs.error.code == "ambiguous_grant"

    forgetful = AlterTools(app, UserSession(alice), remember_account=False)
    await ok(forgetful, {**echo, "account": "work"})
    assert (await error(forgetful, echo))["code"] == "ambiguous_grant"
    await app.aclose()


async def test_connect_pending_then_a_second_connect_reports_the_outcome(
    sqlite_deployment: Deployment, abrowser: AsyncBrowser
) -> None:
    d = sqlite_deployment
    app = d.app()
    alice = d.idp.issue("alice")
    shown: list[str] = []
    progress: list[tuple[float, float | None, str]] = []

    async def report(done: float, total: float | None, message: str) -> None:
        progress.append((done, total, message))

    tools = AlterTools(app, UserSession(alice), on_connect_url=lambda s: shown.append(s.connect_url),
                       connect_wait=0.6)
    pending = await tools.run_connect({"provider": "github", "label": "oss"}, CallContext(progress=report))
    assert isinstance(pending, ConnectResultOut) and pending.status == "pending"
    assert pending.connect_url == shown[0] and pending.expires_at is not None
    assert progress and progress[-1][1] == 0.6 and all(total == 0.6 for _, total, _ in progress)

    await abrowser.aapprove(shown[0], "alice-gh")
    outcome = await tools.run_connect({"provider": "github"})
    assert isinstance(outcome, ConnectResultOut) and outcome.status == "connected"
    assert outcome.grant is not None and outcome.grant.account == "alice-gh" and outcome.grant.label == "oss"
    assert len(shown) == 1  # the second call checked on the first flow instead of starting another
    result = await ok(tools, {"url": d.upstream.echo_url(), "provider": "github"})
    assert result.grant.account == "alice-gh"
    await app.aclose()


async def test_headless_session_pins_each_grant_it_connects(
    sqlite_deployment: Deployment, abrowser: AsyncBrowser
) -> None:
    d = sqlite_deployment
    app = d.app()
    session = HeadlessSession()
    tools = AlterTools(app, session, on_connect_url=approving(abrowser, "bot-gh"))
    assert (await error(tools, {"url": d.upstream.echo_url(), "provider": "github"}))["code"] == "not_connected"
    connected = await tools.connect({"provider": "github"})
    assert session.pinned == {"github": connected.grant_id}
    # 127.0.0.1 is claimed by several providers, but only github is pinned here.
    result = await ok(tools, {"url": d.upstream.echo_url("repos")})
    assert result.body["account"] == "bot-gh" and result.grant.provider == "github"
    grants = await app.vault.list_grants(everyone=True)  # type: ignore[call-arg]
    assert [g.grant_id for g in grants] == [connected.grant_id] and grants[0].owner == "app"
    await app.aclose()


async def test_a_pinned_grant_session_has_no_provider_or_account_and_reaches_only_its_grant(
    sqlite_deployment: Deployment, abrowser: AsyncBrowser
) -> None:
    d = sqlite_deployment
    app = d.app()
    grant = await connect_as(app, abrowser, "github", "pinned-gh", None)
    await connect_as(app, abrowser, "github", "other-gh", None)
    tools = AlterTools(app, GrantSession(grant.grant_id))
    assert tools.pinned and tools.request_args_model is GrantRequestArgs
    assert "provider" not in GrantRequestArgs.model_json_schema()["properties"]
    assert {"provider", "account"} <= set(RequestArgs.model_json_schema()["properties"])
    result = await ok(tools, {"url": d.upstream.echo_url()})
    assert result.body["account"] == "pinned-gh"
    err = await error(tools, {"url": d.upstream.echo_url(), "account": "other-gh"})
    assert err["code"] == "invalid_arguments"
    err = await error(AlterTools(app, GrantSession(str(uuid.uuid4()))), {"url": d.upstream.echo_url()})
    assert err["code"] == "grant_not_found"
    refused = await tools.run_connect({"provider": "github"})
    assert isinstance(refused, ToolErrorPayload) and refused.error.code == "invalid_arguments"
    await app.aclose()
