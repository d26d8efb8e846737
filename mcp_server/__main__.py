"""`python -m mcp_server` (also `alter-agents mcp`): stdio by default, `--transport http` for many users."""

from __future__ import annotations

import os
from dataclasses import replace
from pathlib import Path

import anyio
import click

from alter_agents.app import App
from alter_agents.grant_tools import GrantTool, load_grant_tools
from alter_agents.sessions import GrantSession, LocalSession, Session, UserSession
from alter_agents.settings import Settings
from alter_agents.tools import DEFAULT_CONNECT_WAIT
from mcp_server.auth import session_jwt
from mcp_server.http import bind, build_http, serve_http
from mcp_server.server import build_server


class TokenFile:
    """Reads the user's JWT from a file, again whenever the file changes (tokens are short-lived)."""

    def __init__(self, path: Path) -> None:
        self.path = anyio.Path(path)
        self._stamp: tuple[int, int] | None = None
        self._token = ""

    async def __call__(self) -> str:
        stat = await self.path.stat()
        stamp = (stat.st_mtime_ns, stat.st_size)
        if stamp != self._stamp:
            self._token = (await self.path.read_text("utf-8")).strip()
            self._stamp = stamp
        return self._token


def stdio_session(token_file: Path | None, grant_id: str | None) -> Session:
    if grant_id:
        return GrantSession(grant_id)
    if token_file is not None:
        return UserSession(TokenFile(token_file))
    if os.environ.get("ALTER_USER_TOKEN"):
        return UserSession(os.environ["ALTER_USER_TOKEN"])
    return LocalSession()


def http_session(settings: Settings, grant_id: str | None) -> Session:
    if grant_id:
        return GrantSession(grant_id)
    if settings.identity_provider_configured:
        return UserSession(session_jwt)
    return LocalSession()


@click.command(name="mcp")
@click.option("--transport", type=click.Choice(["stdio", "http"]), default="stdio", show_default=True)
@click.option("--host", default="127.0.0.1", show_default=True, help="HTTP: interface to listen on.")
@click.option("--port", default=8765, show_default=True, help="HTTP: port (0 picks a free one).")
@click.option("--user-token-file", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              envvar="ALTER_USER_TOKEN_FILE", help="stdio: act for the user whose JWT is in this file.")
@click.option("--grant-id", envvar="ALTER_GRANT_ID", help="Pin every call to this one grant.")
@click.option("--allowed-host", "allowed_hosts", multiple=True,
              help="HTTP: another Host header value to accept (behind a proxy), e.g. mcp.example.com.")
@click.option("--connect-wait", default=DEFAULT_CONNECT_WAIT, show_default=True,
              help="Seconds `connect` waits for the browser before answering 'pending'.")
@click.option("--vault-url", envvar="ALTER_BASE_URL",
              help="Use a vault server (`alter-agents vault serve`) instead of the embedded vault.")
@click.option("--api-key", envvar="ALTER_API_KEY", help="The vault server's API key (prefer the env variable).")
@click.option("--tools", "tool_specs", multiple=True, envvar="ALTER_MCP_TOOLS",
              help="Also serve @grant_tool functions: module:attr or path/to/file.py:attr (a tool or a list).")
def main(transport: str, host: str, port: int, user_token_file: Path | None, grant_id: str | None,
         allowed_hosts: tuple[str, ...], connect_wait: float, vault_url: str | None, api_key: str | None,
         tool_specs: tuple[str, ...]) -> None:
    """Serve the `request` and `connect` tools over MCP.

    With no configuration it serves this machine's vault for its single user over stdio. Over HTTP,
    every request must carry a bearer JWT from ALTER_IDP_ISSUER, or, with no identity provider, the
    random token printed at start.
    """
    settings = Settings.from_env()
    extra_tools = _load_tools(tool_specs)
    remote = (vault_url, api_key)
    if transport == "stdio":
        anyio.run(_serve_stdio, settings, remote, stdio_session(user_token_file, grant_id), connect_wait,
                  extra_tools)
        return
    sock = bind(host, port)
    actual_port = sock.getsockname()[1]
    shown = f"[{host}]" if ":" in host else host
    settings = replace(settings, public_url=settings.public_url or f"http://{shown}:{actual_port}")
    app = _app(settings, remote)
    state_keys = tuple(k.strip() for k in os.environ.get("ALTER_MCP_STATE_KEYS", "").split(",") if k.strip())
    http = build_http(app, http_session(settings, grant_id), host=host, port=actual_port,
                      public_url=settings.public_url or "", allowed_hosts=allowed_hosts, connect_wait=connect_wait,
                      state_keys=state_keys, extra_tools=extra_tools)
    anyio.run(serve_http, http, app, sock)


def _load_tools(specs: tuple[str, ...]) -> list[GrantTool]:
    """`--tools` values (click splits ALTER_MCP_TOOLS on whitespace into several)."""
    try:
        return [tool for spec in specs for tool in load_grant_tools(spec)]
    except (ImportError, ValueError, TypeError) as exc:
        raise click.BadParameter(str(exc), param_hint="--tools") from exc


def _app(settings: Settings, remote: tuple[str | None, str | None]) -> App:
    vault_url, api_key = remote
    return App(base_url=vault_url, api_key=api_key, settings=settings) if vault_url else App(settings=settings)


async def _serve_stdio(settings: Settings, remote: tuple[str | None, str | None], session: Session,
                       connect_wait: float, extra_tools: list[GrantTool]) -> None:
    app = _app(settings, remote)
    try:
        await build_server(app, session, connect_wait=connect_wait, extra_tools=extra_tools).run_stdio_async()
    finally:
        await app.aclose()


if __name__ == "__main__":
    main()
