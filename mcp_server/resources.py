"""`alter://grants`: the session user's connected accounts, so a client can show what is linked."""

from __future__ import annotations

import json

from mcp.server.mcpserver import MCPServer

from alter_agents.app import App
from alter_agents.errors import AlterError
from alter_agents.models import Grant
from alter_agents.sessions import GrantSession, Session, UserSession
from mcp_server.auth import request_jwt

GRANTS_URI = "alter://grants"
_FIELDS = ("provider", "account", "label", "display_name", "scopes", "status")


def add_grants_resource(server: MCPServer, app: App, session: Session) -> None:
    @server.resource(GRANTS_URI, name="connected-accounts", title="Connected accounts",
                     description="Accounts linked for this session's user (never credentials).",
                     mime_type="application/json")
    async def connected_accounts() -> str:
        try:
            grants = await _session_grants(app, session)
        except AlterError as exc:
            return exc.payload().to_json()
        return json.dumps({"grants": [g.model_dump(mode="json", include=set(_FIELDS)) for g in grants]})


async def _session_grants(app: App, session: Session) -> list[Grant]:
    token = request_jwt()
    if token is None and isinstance(session, UserSession):
        token = await session.user_token()
    if isinstance(session, GrantSession):
        if token:  # a pinned grant is shown only to a user who owns it, as `request` enforces
            return [g for g in await app.grants(user_token=token) if g.grant_id == session.grant_id]
        get_grant = getattr(app.vault, "get_grant", None)
        grant = await get_grant(session.grant_id) if get_grant is not None else None
        return [grant] if isinstance(grant, Grant) and grant.status != "revoked" else []
    return await app.grants(user_token=token)
