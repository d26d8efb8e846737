"""The `alter-agents` command: connect accounts, manage grants and secrets, run the servers."""

from __future__ import annotations

import asyncio
import functools
import getpass
import json
import sys
from collections.abc import Callable, Coroutine, Sequence
from typing import Any, ParamSpec, TypeVar

import click

from alter_agents.app import App
from alter_agents.errors import AlterError
from alter_agents.models import Principal
from alter_agents.vault.local import LocalVault

P = ParamSpec("P")
T = TypeVar("T")


def _run(func: Callable[P, Coroutine[Any, Any, None]]) -> Callable[P, None]:
    """Run an async command; print a one-line reason and exit non-zero on our errors."""

    @functools.wraps(func)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> None:
        try:
            asyncio.run(func(*args, **kwargs))
        except AlterError as exc:
            click.echo(f"error: {exc.message}", err=True)
            sys.exit(1)
        except ValueError as exc:
            click.echo(f"error: {exc}", err=True)
            sys.exit(2)

    return wrapper


def _table(rows: Sequence[dict[str, Any]], columns: Sequence[str]) -> str:
    if not rows:
        return "(none)"
    cells = [[str(row.get(c) if row.get(c) is not None else "-") for c in columns] for row in rows]
    widths = [max(len(c), *(len(r[i]) for r in cells)) for i, c in enumerate(columns)]
    lines = ["  ".join(c.upper().ljust(w) for c, w in zip(columns, widths, strict=True))]
    lines += ["  ".join(v.ljust(w) for v, w in zip(r, widths, strict=True)) for r in cells]
    return "\n".join(line.rstrip() for line in lines)


def _emit(rows: list[dict[str, Any]], columns: Sequence[str], as_json: bool) -> None:
    click.echo(json.dumps(rows, indent=2, default=str) if as_json else _table(rows, columns))


json_option = click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")


@click.group()
@click.version_option(package_name="alter-agents")
def main() -> None:
    """Give AI agents the right user's API credentials without showing them a token."""


@main.command()
@click.argument("provider")
@click.option("--label", help="A name for this account, e.g. work or personal.")
@click.option("--no-browser", is_flag=True, help="Print the URL instead of opening a browser.")
@click.option("--timeout", default=300.0, show_default=True, help="Seconds to wait for the browser.")
@json_option
@_run
async def connect(provider: str, label: str | None, no_browser: bool, timeout: float, as_json: bool) -> None:
    """Link a PROVIDER account through OAuth in your browser."""

    async def progress(elapsed: float, _message: str) -> None:
        if int(elapsed * 4) % 40 == 0 and elapsed > 1:
            click.echo(f"  still waiting for the browser ({elapsed:.0f}s)...", err=True)

    async with App() as app:
        results = await app.connect([provider], open_browser=not no_browser, timeout=timeout, label=label,
                                    on_progress=progress)
    rows = [r.model_dump() for r in results]
    if as_json:
        click.echo(json.dumps(rows, indent=2))
    else:
        for r in results:
            click.echo(f"Connected {r.provider} account {r.account} (grant {r.grant_id}).")


@main.group()
def grants() -> None:
    """List or revoke stored grants."""


@grants.command("list")
@click.option("--provider", help="Only this provider.")
@json_option
@_run
async def grants_list(provider: str | None, as_json: bool) -> None:
    """Every grant in the vault (never the secrets)."""
    vault = LocalVault()
    try:
        found = await vault.list_grants(provider=provider, everyone=True)
    finally:
        await vault.aclose()
    rows = [g.model_dump(mode="json") for g in found]
    _emit(rows, ["grant_id", "provider", "account", "label", "owner", "status", "scopes"], as_json)


@grants.command("revoke")
@click.argument("grant_id")
@_run
async def grants_revoke(grant_id: str) -> None:
    """Revoke GRANT_ID and wipe its stored credential."""
    vault = LocalVault()
    try:
        grant = await vault.revoke(grant_id)
    finally:
        await vault.aclose()
    click.echo(f"Revoked {grant.provider} account {grant.account} ({grant.grant_id}).")


@main.group()
def secrets() -> None:
    """Store managed secrets (API keys) as grants."""


@secrets.command("add")
@click.argument("provider")
@click.option("--owner", required=True, help="user:SUB, group:NAME or app.")
@click.option("--account", required=True, help="The account identifier the secret belongs to.")
@click.option("--label", help="A name for this account.")
@json_option
@_run
async def secrets_add(provider: str, owner: str, account: str, label: str | None, as_json: bool) -> None:
    """Add a secret for PROVIDER. The value is read from stdin or a hidden prompt, never from argv."""
    principal = Principal.parse(owner)
    value = (getpass.getpass(f"{provider} secret: ") if sys.stdin.isatty() else sys.stdin.read()).strip()
    vault = LocalVault()
    try:
        grant = await vault.add_secret(provider, value, owner=principal, account=account, label=label)
    finally:
        await vault.aclose()
    if as_json:
        click.echo(grant.model_dump_json(indent=2))
    else:
        click.echo(f"Stored {provider} secret for {account} (grant {grant.grant_id}).")


@main.command()
@json_option
@_run
async def providers(as_json: bool) -> None:
    """The providers this vault knows."""
    vault = LocalVault()
    try:
        rows = [
            {"provider": s.name, "kind": s.kind, "hosts": ", ".join(s.hosts),
             "configured": "yes" if s.kind == "secret" or s.client_id else "no client id"}
            for s in vault.providers
        ]
    finally:
        await vault.aclose()
    _emit(rows, ["provider", "kind", "hosts", "configured"], as_json)


@main.command()
@click.option("--limit", default=50, show_default=True)
@click.option("--grant", "grant_id", help="Only this grant.")
@json_option
@_run
async def audit(limit: int, grant_id: str | None, as_json: bool) -> None:
    """Recent credential releases and outgoing calls."""
    vault = LocalVault()
    try:
        entries = await vault.audit(limit, grant_id)
    finally:
        await vault.aclose()
    rows = [
        {"at": e.at.isoformat(timespec="seconds"), "action": e.action, "principal": e.principal,
         "provider": e.provider, "grant_id": e.grant_id, "method": e.method, "host": e.host, "path": e.path,
         "status": e.status, "latency_ms": round(e.latency_ms, 1) if e.latency_ms is not None else None,
         "detail": e.detail}
        for e in entries
    ]
    _emit(rows, ["at", "action", "principal", "provider", "method", "host", "path", "status", "latency_ms"],
          as_json)


@main.group()
def vault() -> None:
    """Run the vault as a service (the alter-sdk wire protocol over HTTP)."""


@vault.command("serve")
@click.option("--host", default="127.0.0.1", show_default=True, help="Interface to listen on.")
@click.option("--port", default=8780, show_default=True, help="Port to listen on (0 picks a free one).")
def vault_serve(host: str, port: int) -> None:
    """Serve the vault to alter-sdk clients and to App(base_url=..., api_key=...)."""
    from alter_agents.server.app import serve

    serve(host, port)


@main.group()
def keys() -> None:
    """Mint, list and revoke the vault server's API keys (only their hashes are stored)."""


async def _with_keys(action: Callable[[Any], Coroutine[Any, Any, T]]) -> T:
    from alter_agents.server.keys import ApiKeys

    local = LocalVault()
    try:
        await local.open()
        return await action(ApiKeys(local.store))
    finally:
        await local.aclose()


def _key_row(info: Any) -> dict[str, Any]:
    return {"key_id": info.key_id, "name": info.name, "hint": info.hint,
            "created_at": info.created_at.isoformat(timespec="seconds"),
            "last_used_at": info.last_used_at.isoformat(timespec="seconds") if info.last_used_at else None,
            "status": "active" if info.active else "revoked"}


@keys.command("create")
@click.option("--name", help="What the key is for, e.g. the service that uses it.")
@json_option
@_run
async def keys_create(name: str | None, as_json: bool) -> None:
    """Mint an API key. It is shown once; the vault keeps only its hash."""
    key, info = await _with_keys(lambda api: api.create(name))
    if as_json:
        click.echo(json.dumps({"api_key": key, **_key_row(info)}, indent=2))
    else:
        click.echo(key)
        click.echo(f"Created API key {info.key_id}; store it now, it cannot be shown again.", err=True)


@keys.command("list")
@json_option
@_run
async def keys_list(as_json: bool) -> None:
    """Every API key (never the key itself)."""
    found = await _with_keys(lambda api: api.list())
    _emit([_key_row(k) for k in found], ["key_id", "name", "hint", "status", "created_at", "last_used_at"], as_json)


@keys.command("revoke")
@click.argument("key_id")
@_run
async def keys_revoke(key_id: str) -> None:
    """Revoke KEY_ID (or a unique prefix of it); requests signed with it are refused at once."""
    info = await _with_keys(lambda api: api.revoke(key_id))
    click.echo(f"Revoked API key {info.key_id} ({info.hint}).")


@main.command(context_settings={"ignore_unknown_options": True, "allow_extra_args": True, "help_option_names": []})
@click.pass_context
def mcp(ctx: click.Context) -> None:
    """Run the MCP server (same options as `python -m mcp_server`; see `alter-agents mcp --help`)."""
    # Imported here: the library never depends on the MCP server package (or the mcp SDK) at import time.
    from mcp_server.__main__ import main as serve_mcp

    serve_mcp.main(args=ctx.args, prog_name="alter-agents mcp", standalone_mode=True)


if __name__ == "__main__":
    main()
