"""The policy file: validated at start (one-line errors), first matching rule wins, read-only modes."""

from __future__ import annotations

from pathlib import Path

import pytest

from alter_agents.errors import ConfigurationError
from alter_agents.policy import Policy

RULES = """
[providers.stripe]
read_only = "deny"

[providers.slack]
read_only = true

[[policy]]
provider = "github"
methods = ["delete"]
paths = ["/repos/*/*/hooks*"]
effect = "deny"
name = "no-hook-deletes"

[[policy]]
provider = "github"
owner = "group:interns"
methods = ["POST", "PUT", "PATCH", "DELETE"]
effect = "approve"

[[policy]]
provider = "github"
methods = ["DELETE"]
effect = "allow"
"""


def _policy(tmp_path: Path, text: str = RULES) -> Policy:
    path = tmp_path / "policy.toml"
    path.write_text(text, "utf-8")
    return Policy.load(path, known_providers=["github", "slack", "stripe", "google"])


def test_first_matching_rule_decides_and_names_itself(tmp_path: Path) -> None:
    policy = _policy(tmp_path)
    hooks = policy.decide("github", "DELETE", "/repos/o/r/hooks/1", ["user:alice"])
    assert (hooks.effect, hooks.rule, hooks.audit) == ("deny", "no-hook-deletes", "deny:no-hook-deletes")
    intern = policy.decide("github", "delete", "/repos/o/r", ["user:bob", "group:interns"])
    assert (intern.effect, intern.rule) == ("approve", "policy[1]")
    other = policy.decide("github", "DELETE", "/repos/o/r", ["user:alice"])
    assert (other.effect, other.rule) == ("allow", "policy[2]")


def test_no_match_allows(tmp_path: Path) -> None:
    decision = _policy(tmp_path).decide("google", "POST", "/gmail/v1/users/me/messages/send", ["user:a"])
    assert decision.effect == "allow" and decision.rule is None and decision.audit is None


def test_read_only_provider_and_server(tmp_path: Path) -> None:
    policy = _policy(tmp_path)
    assert policy.decide("stripe", "POST", "/v1/charges", ["app"]).effect == "deny"
    assert policy.decide("stripe", "GET", "/v1/charges", ["app"]).effect == "allow"
    assert policy.decide("slack", "POST", "/api/chat.postMessage", ["app"]).effect == "approve"
    server = Policy().with_server_read_only("deny")
    assert server.decide("google", "PATCH", "/x", ["app"]).effect == "deny"
    assert server.decide("google", "HEAD", "/x", ["app"]).effect == "allow"
    assert Policy().empty and not server.empty


@pytest.mark.parametrize(("text", "says"), [
    ('[[policy]]\nprovider = "github"\nmethods = ["FETCH"]\neffect = "deny"\n', "unknown method 'FETCH'"),
    ('[[policy]]\nprovider = "github"\npaths = ["repos/*"]\neffect = "deny"\n', "must start with '/'"),
    ('[[policy]]\nprovider = "github"\npaths = ["/repos/[a"]\neffect = "deny"\n', "unbalanced"),
    ('[[policy]]\nprovider = "github"\neffect = "maybe"\n', "policy.0.effect"),
    ('[[policy]]\nmethods = ["GET"]\neffect = "deny"\n', "policy.0.provider"),
    ('[[policy]]\nprovider = "github"\nowner = "team:x"\neffect = "deny"\n', "owner must be"),
    ('[[policy]]\nprovider = "gitlab"\neffect = "deny"\n', "unknown provider 'gitlab'"),
    ('[[policy]]\nprovider = "github"\neffect = "deny"\ncolour = "red"\n', "colour"),
    ("[[policy]\n", "cannot be read"),
])
def test_mistakes_are_one_line_configuration_errors(tmp_path: Path, text: str, says: str) -> None:
    with pytest.raises(ConfigurationError) as caught:
        _policy(tmp_path, text)
    assert says in caught.value.message and "\n" not in caught.value.message


def test_a_missing_file_is_named(tmp_path: Path) -> None:
    with pytest.raises(ConfigurationError, match="does not exist"):
        Policy.load(tmp_path / "nope.toml")
