"""The policy gate: the one place a call is allowed, denied or put to a human, before its credential is released.

The vault runs it for every release (so the App, LangChain, MCP, custom tools and the vault server all
get the same answer); the surfaces only supply the `Approver` that reaches the human. "Allow for this
session" is remembered in the vault's memory (the store: every replica honours it) under the caller's
verified owner and the session's scope, for calls of the same method to the same provider account under
the same rule. Every decision that is not a plain allow is written to the audit log.
"""

from __future__ import annotations

import httpx

from alter_agents.approval import ApprovalRequest, Approver
from alter_agents.errors import ApprovalRequiredError, PolicyDeniedError
from alter_agents.models import Grant
from alter_agents.policy import Policy
from alter_agents.providers.binding import parse_url
from alter_agents.vault.audit import AuditWriter
from alter_agents.vault.memory import Memory, MemoryKey

SESSION_APPROVAL_SECONDS = 12 * 3600


class PolicyGate:
    def __init__(self, policy: Policy, memory: Memory, audit: AuditWriter, *, remember: bool = True) -> None:
        self.policy = policy
        self._memory = memory
        self._audit = audit
        self.remember = remember

    async def check(self, grant: Grant, *, principals: list[str], principal: str, method: str, url: str,
                    approver: Approver | None, scope: str) -> str | None:
        """Raise when the call may not go; otherwise return what the audit row should say of the decision."""
        target = parse_url(url)
        method = method.upper()
        decision = self.policy.decide(grant.provider, method, target.path, principals)
        if decision.effect == "allow":
            return decision.audit
        shown_url = str(target.copy_with(query=None, fragment=None))
        if decision.effect == "deny":
            self._record(grant, principal, method, target, f"denied:{decision.rule}")
            raise PolicyDeniedError(
                f"The policy refuses {method} {shown_url} for {grant.provider} (rule {decision.rule}). Nothing was "
                "sent; do not retry. Tell the user, who can ask an operator to change the policy.",
                provider=grant.provider, rule=decision.rule,
            )
        request = ApprovalRequest(provider=grant.provider, account=grant.account, method=method, url=shown_url,
                                  rule=decision.rule, principal=principal)
        key = MemoryKey(owner=principal, scope=scope, kind="approval",
                        name=f"{decision.rule}|{grant.grant_id}|{method}")
        if self.remember and await self._memory.recall(key) == "allow_session":
            return f"approved:session:{decision.rule}"
        if approver is None:
            self._record(grant, principal, method, target, f"approval_required:{decision.rule}")
            raise ApprovalRequiredError(grant.provider, method, shown_url, decision.rule, grant.account)
        choice = await approver(request)
        if choice is None:  # the human could not be asked after all (no back channel, no answer)
            self._record(grant, principal, method, target, f"approval_required:{decision.rule}")
            raise ApprovalRequiredError(grant.provider, method, shown_url, decision.rule, grant.account)
        if choice in ("allow_once", "allow_session"):
            if choice == "allow_session" and self.remember:
                await self._memory.remember(key, "allow_session", SESSION_APPROVAL_SECONDS)
            return f"approved:{choice}:{decision.rule} by {principal}"
        self._record(grant, principal, method, target, f"denied_by_user:{decision.rule} by {principal}")
        raise PolicyDeniedError(
            f"The user did not approve {method} {shown_url}. Nothing was sent; do not retry unless they ask to.",
            provider=grant.provider, rule=decision.rule, decided_by="user",
        )

    def _record(self, grant: Grant, principal: str, method: str, target: httpx.URL, detail: str) -> None:
        self._audit.add("policy", principal=principal, grant_id=grant.grant_id, provider=grant.provider,
                        method=method, host=target.host, path=target.path, status=None, latency_ms=None,
                        detail=detail)
