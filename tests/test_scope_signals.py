"""Missing-permission signals: RFC 6750 challenges and the providers' own, as declared in the catalogue."""

from __future__ import annotations

import json

from alter_agents.scopes import ScopeSignals, detect

GITHUB = ScopeSignals(statuses=(403, 404), granted_header="X-OAuth-Scopes", accepted_header="X-Accepted-OAuth-Scopes")
GOOGLE = ScopeSignals(statuses=(403,), body_markers=("ACCESS_TOKEN_SCOPE_INSUFFICIENT",))
SLACK = ScopeSignals(statuses=(200, 403), error_field="error", error_values=("missing_scope",),
                     required_field="needed", granted_field="provided")


def test_rfc6750_challenge_names_the_required_scopes() -> None:
    header = 'Bearer realm="api", error="insufficient_scope", scope="repo admin:org", error_description="more"'
    found = detect(403, {"WWW-Authenticate": header}, b"{}")
    assert found is not None and found.required == ("repo", "admin:org") and found.status == 403


def test_other_bearer_errors_are_not_a_scope_shortfall() -> None:
    assert detect(401, {"www-authenticate": 'Bearer error="invalid_token"'}, b"") is None
    assert detect(200, {"www-authenticate": 'Bearer error="insufficient_scope"'}, b"") is None


def test_github_accepted_vs_granted_headers() -> None:
    headers = {"X-OAuth-Scopes": "read:user, user:email", "X-Accepted-OAuth-Scopes": "repo, public_repo"}
    found = detect(404, headers, b'{"message": "Not Found"}', GITHUB)
    assert found is not None
    assert found.required == ("repo", "public_repo") and found.granted == ("read:user", "user:email")
    assert detect(404, {**headers, "X-OAuth-Scopes": "repo"}, b"{}", GITHUB) is None


def test_google_reason_in_the_error_body() -> None:
    body = json.dumps({"error": {"code": 403, "status": "PERMISSION_DENIED", "details": [
        {"@type": "type.googleapis.com/google.rpc.ErrorInfo", "reason": "ACCESS_TOKEN_SCOPE_INSUFFICIENT"}]}})
    found = detect(403, {}, body.encode(), GOOGLE)
    assert found is not None and found.required is None
    assert detect(403, {}, b'{"error": {"status": "PERMISSION_DENIED"}}', GOOGLE) is None


def test_slack_missing_scope_with_needed_and_provided() -> None:
    body = b'{"ok": false, "error": "missing_scope", "needed": "chat:write", "provided": "channels:read,users:read"}'
    found = detect(200, {}, body, SLACK)
    assert found is not None
    assert found.required == ("chat:write",) and found.granted == ("channels:read", "users:read")
    assert detect(200, {}, b'{"ok": false, "error": "channel_not_found"}', SLACK) is None
    assert detect(200, {}, b"not json", SLACK) is None
