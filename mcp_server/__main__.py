"""`python -m mcp_server` (also `alter-agents mcp`): stdio by default, `--transport http` for many users.

Options that do not apply to the chosen mode are refused at start, not ignored; every failure is one
line on stderr; Ctrl-C stops either transport at once.
"""

from __future__ import annotations

import errno
import logging
import os
import socket
import sys
import uuid
from dataclasses import replace
from pathlib import Path

import anyio
import click
from click.core import ParameterSource

from alter_agents.app import App
from alter_agents.errors import AlterError
from alter_agents.grant_tools import GrantTool, load_grant_tools
from alter_agents.listen import listening_socket
from alter_agents.sessions import GrantSession, LocalSession, Session, UserSession
from alter_agents.settings import Settings
from alter_agents.tools import DEFAULT_CONNECT_WAIT
from alter_agents.vault.local import LocalVault
from mcp_server.auth import session_jwt
from mcp_server.edges import DEFAULT_SESSIONS_PER_USER, REPLICA_ID
from mcp_server.http import HttpServer, build_http, serve_http
from mcp_server.server import build_server
from mcp_server.stdio import serve_stdio

_LOOPBACK = ("127.0.0.1", "localhost", "::1")
_HTTP_ONLY = {"host": "--host", "port": "--port", "allowed_hosts": "--allowed-host", "allow_remote": "--allow-remote",
              "sessions_per_user": "--max-sessions-per-user", "replica_id": "--replica-id"}


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


class _Refused(click.ClickException):
    """A one-line refusal at start (exit status 2, like a usage error)."""

    exit_code = 2


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
@click.option("--allow-remote", is_flag=True,
              help="HTTP without an identity provider: listen on a non-loopback --host anyway (anyone who "
                   "reaches it with the printed token acts as this machine's user).")
@click.option("--user-token-file", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              envvar="ALTER_USER_TOKEN_FILE", help="stdio: act for the user whose JWT is in this file.")
@click.option("--grant-id", envvar="ALTER_GRANT_ID", help="Pin every call to this one grant.")
@click.option("--allowed-host", "allowed_hosts", multiple=True,
              help="HTTP: another Host header value to accept (behind a proxy), e.g. mcp.example.com.")
@click.option("--max-sessions-per-user", "sessions_per_user", type=click.IntRange(min=1),
              default=DEFAULT_SESSIONS_PER_USER, show_default=True,
              help="HTTP: open 2025-11-25 sessions one user may hold; one more ends their oldest.")
@click.option("--replica-id", envvar="ALTER_MCP_REPLICA_ID",
              help="HTTP behind a balancer: this replica's name, put in front of its session ids (r1.<id>) "
                   "so 2025-11-25 sessions can be routed back to it (docs/mcp.md).")
@click.option("--connect-wait", default=DEFAULT_CONNECT_WAIT, show_default=True,
              help="Seconds `connect` waits for the browser before answering 'pending'.")
@click.option("--vault-url", envvar="ALTER_BASE_URL",
              help="Use a vault server (`alter-agents vault serve`) instead of the embedded vault.")
@click.option("--api-key", envvar="ALTER_API_KEY", help="The vault server's API key (prefer the env variable).")
@click.option("--read-only", type=click.Choice(["deny", "approve"]), is_flag=False, flag_value="deny", default=None,
              help="Every call but GET/HEAD/OPTIONS is refused (--read-only, or =deny) or needs the human's "
                   "approval (--read-only=approve). Same as ALTER_READ_ONLY.")
@click.option("--tools", "tool_specs", multiple=True, envvar="ALTER_MCP_TOOLS",
              help="Also serve @grant_tool functions: module:attr or path/to/file.py:attr (a tool or a list).")
@click.pass_context
def main(ctx: click.Context, transport: str, host: str, port: int, allow_remote: bool,
         user_token_file: Path | None, grant_id: str | None, allowed_hosts: tuple[str, ...],
         sessions_per_user: int, replica_id: str | None, connect_wait: float, vault_url: str | None,
         api_key: str | None, read_only: str | None, tool_specs: tuple[str, ...]) -> None:
    """Serve the `request` and `connect` tools over MCP.

    With no configuration it serves this machine's vault for its single user over stdio. Over HTTP,
    every request must carry a bearer JWT from ALTER_IDP_ISSUER, or, with no identity provider, the
    random token printed at start.
    """
    quiet_libraries()
    settings = Settings.from_env()
    if read_only:
        if vault_url:
            raise _Refused("--read-only applies to the embedded vault; with --vault-url the vault server's "
                           "policy decides (ALTER_POLICY_FILE / ALTER_READ_ONLY where it runs).")
        settings = replace(settings, read_only=read_only)  # type: ignore[arg-type]
    _check_options(ctx, transport, host, allow_remote, user_token_file, grant_id, settings)
    if replica_id is not None and not REPLICA_ID.fullmatch(replica_id):
        raise _Refused(f"--replica-id {replica_id!r}: use 1 to 32 letters, digits, '-' or '_'.")
    extra_tools = _load_tools(tool_specs)
    remote = (vault_url, api_key)
    try:
        if transport == "stdio":
            anyio.run(_serve_stdio, settings, remote, stdio_session(user_token_file, grant_id), connect_wait,
                      extra_tools, grant_id)
            return
        sock = _listen(host, port)
        actual_port = sock.getsockname()[1]
        shown = f"[{host}]" if ":" in host else host
        settings = replace(settings, public_url=settings.public_url or f"http://{shown}:{actual_port}")
        app = _app(settings, remote)
        state_keys = tuple(k.strip() for k in os.environ.get("ALTER_MCP_STATE_KEYS", "").split(",") if k.strip())
        http = build_http(app, http_session(settings, grant_id), host=host, port=actual_port,
                          public_url=settings.public_url or "", allowed_hosts=allowed_hosts,
                          connect_wait=connect_wait, state_keys=state_keys, extra_tools=extra_tools,
                          sessions_per_user=sessions_per_user, replica_id=replica_id)
        anyio.run(_serve_http, http, app, sock, grant_id)
    except KeyboardInterrupt:
        click.echo("alter-agents MCP server stopped.", err=True)
    except AlterError as exc:
        raise click.ClickException(exc.message) from None


def quiet_libraries() -> None:
    """Warnings and our own notices on stderr; no per-request INFO lines from httpx or the SDK.

    Configured before the SDK's own `basicConfig`, which then leaves it alone.
    """
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    logging.getLogger("mcp_server").setLevel(logging.INFO)
    for noisy in ("httpx", "httpcore", "httpx2", "mcp", "uvicorn.error"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def _check_options(ctx: click.Context, transport: str, host: str, allow_remote: bool,
                   user_token_file: Path | None, grant_id: str | None, settings: Settings) -> None:
    def given(name: str) -> bool:
        return ctx.get_parameter_source(name) not in (ParameterSource.DEFAULT, None)

    if transport == "stdio":
        for name, flag in _HTTP_ONLY.items():
            if given(name):
                raise _Refused(f"{flag} applies to --transport http only (this is the stdio server).")
    elif user_token_file is not None:
        raise _Refused("--user-token-file (ALTER_USER_TOKEN_FILE) applies to stdio only: over HTTP each "
                       "request carries its user's own bearer JWT (configure ALTER_IDP_ISSUER).")
    if (transport == "http" and not settings.identity_provider_configured and host not in _LOOPBACK
            and not allow_remote):
        raise _Refused(f"--host {host} without an identity provider would serve this machine's credentials to "
                       "anyone who can reach it; configure ALTER_IDP_ISSUER, or pass --allow-remote if you mean it.")
    if grant_id is not None:
        try:
            uuid.UUID(grant_id)
        except ValueError:
            message = f"--grant-id {grant_id!r} is not a grant id (a UUID; see `alter-agents grants list`)."
            raise _Refused(message) from None


def _listen(host: str, port: int) -> socket.socket:
    try:
        return listening_socket(host, port)
    except OSError as exc:
        if exc.errno == errno.EADDRINUSE:
            reason = f"port {port} is already in use (choose another --port, or 0 for a free one)"
        else:
            reason = exc.strerror or str(exc)
        raise click.ClickException(f"cannot listen on {host}:{port}: {reason}.") from None


def _load_tools(specs: tuple[str, ...]) -> list[GrantTool]:
    """`--tools` values (click splits ALTER_MCP_TOOLS on whitespace into several)."""
    try:
        return [tool for spec in specs for tool in load_grant_tools(spec)]
    except (ImportError, ValueError, TypeError) as exc:
        raise click.BadParameter(str(exc), param_hint="--tools") from exc


def _app(settings: Settings, remote: tuple[str | None, str | None]) -> App:
    vault_url, api_key = remote
    return App(base_url=vault_url, api_key=api_key, settings=settings) if vault_url else App(settings=settings)


async def _check_pinned_grant(app: App, grant_id: str | None) -> None:
    """A pinned grant that does not exist (or was revoked) is refused now, not on every call."""
    if grant_id is None or not isinstance(app.vault, LocalVault):
        return
    grant = await app.vault.get_grant(grant_id)
    if grant is None or grant.status == "revoked":
        state = "was revoked" if grant is not None else "does not exist in this vault"
        raise _Refused(f"--grant-id {grant_id} {state} (see `alter-agents grants list`).")


async def _serve_stdio(settings: Settings, remote: tuple[str | None, str | None], session: Session,
                       connect_wait: float, extra_tools: list[GrantTool], grant_id: str | None) -> None:
    app = _app(settings, remote)
    try:
        await _check_pinned_grant(app, grant_id)
        server = build_server(app, session, connect_wait=connect_wait, extra_tools=extra_tools)
        print(f"alter-agents MCP server on stdio ({_mode(session)}): waiting for an MCP client on stdin. "
              "Press Ctrl-C to stop.", file=sys.stderr, flush=True)
        await serve_stdio(server)
    finally:
        with anyio.CancelScope(shield=True), anyio.move_on_after(5):
            await app.aclose()


async def _serve_http(http: HttpServer, app: App, sock: socket.socket, grant_id: str | None) -> None:
    try:
        await _check_pinned_grant(app, grant_id)
    except BaseException:
        with anyio.CancelScope(shield=True):
            await app.aclose()
        raise
    await serve_http(http, app, sock)


def _mode(session: Session) -> str:
    if isinstance(session, GrantSession):
        return f"pinned to grant {session.grant_id}"
    if isinstance(session, UserSession):
        return "acting for the user in the token"
    return "local mode, this machine's vault"


if __name__ == "__main__":
    main()
