"""`retryable` means only "the same call may succeed later with nothing else changed"; what must change is
`user_action`. Checked on every public error class against the documented codes."""

from __future__ import annotations

import alter_agents
from alter_agents import AccountRef, AlterError
from alter_agents.errors import ERROR_CODES

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
