"""`retryable` means only "the same call may succeed later with nothing else changed"; what must change is
`user_action`. Checked on every public error class against the documented codes."""

from __future__ import annotations

from typing import Any

import alter_agents
from alter_agents import AccountRef, AlterError, AlterTools, LocalSession, Principal, ToolErrorPayload
from alter_agents.errors import ERROR_CODES
from alter_agents.upstream import Upstream
from tests.conftest import Deployment

RETRYABLE = {"upstream_timeout", "upstream_unreachable", "rate_limited"}


def _examples() -> list[AlterError]:
    e = alter_agents
    return [
        e.AmbiguousGrantError("google", [AccountRef(account="a"), AccountRef(account="b")]),
        e.NotConnectedError("github"), e.GrantNotFoundError("x"), e.ReauthRequiredError("slack", "me"),
        e.HostNotAllowedError("https://evil.example/", "github", ["api.github.com"]),
        e.UnknownProviderError("gmail", ["google"]), e.ProviderNotConfiguredError("notion"),
        e.InvalidArgumentsError("bad"), e.UnauthenticatedError("no"), e.UpstreamTimeoutError("slow"),
        e.UpstreamUnreachableError("down"), e.ConnectTimeoutError("late"), e.ConnectDeniedError("no"),
        e.RateLimitedError("slow down"), e.ConfigurationError("broken"),
        e.PolicyDeniedError("no", provider="github", rule="r"),
        e.ApprovalRequiredError("github", "POST", "https://api.github.com/x", "r", "octo"),
        e.InsufficientScopeError("github", "octo", 403, ["read"], ["repo"]),
    ]


def test_only_waiting_can_make_the_same_call_succeed_and_the_action_says_what_else_to_do() -> None:
    seen = set()
    for error in _examples():
        body = error.payload().error
        seen.add(body.code)
        assert body.retryable is (body.code in RETRYABLE), body.code
        assert body.user_action == ("retry_later" if body.retryable else body.user_action)
        assert body.user_action != "retry_later" or body.retryable, body.code
    assert seen | {"internal"} == set(ERROR_CODES)
    actions = {e.payload().error.code: e.payload().error.user_action for e in _examples()}
    assert actions["not_connected"] == "connect" and actions["reauth_required"] == "reauthorize"
    assert actions["ambiguous_grant"] == "choose_account" and actions["provider_not_configured"] == "ask_operator"
    assert actions["internal"] == "ask_operator"  # a ConfigurationError: only the operator can fix it


class _BrokenUpstream(Upstream):
    """An upstream layer with a bug: it fails after the credential was released."""

    async def send(self, *args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("bug")


async def test_a_fault_of_ours_mid_request_says_it_may_have_been_sent(sqlite_deployment: Deployment) -> None:
    d = sqlite_deployment.local()
    async with d.app(upstream=_BrokenUpstream()) as app:
        await app.vault.add_secret("keyed", "k-123456", owner=Principal("app"), account="svc")  # type: ignore[attr-defined]
        outcome = await AlterTools(app, LocalSession()).run_request(
            {"url": d.upstream.echo_url(), "provider": "keyed", "method": "POST", "json": {"a": 1}})
    assert isinstance(outcome, ToolErrorPayload)
    assert (outcome.error.code, outcome.error.sent, outcome.error.retryable) == ("internal", True, False)
    assert "may have been sent" in outcome.error.message and "k-123456" not in outcome.to_json()
