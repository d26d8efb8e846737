"""The `alter-agents` command: connect accounts, manage grants and secrets, run the servers."""

from __future__ import annotations

import errno
import getpass
import json
import logging
import sys
import webbrowser
from collections.abc import Callable, Coroutine, Sequence
from typing import Any, ParamSpec, TypeVar

import anyio
import click

from alter_agents.app import App
from alter_agents.cli_common import cell, emit, json_option, run
from alter_agents.cli_errors import BoundaryGroup, CliFailure
from alter_agents.errors import ConnectTimeoutError
from alter_agents.models import ConnectStart, Principal
from alter_agents.settings import Settings
from alter_agents.vault.local import LocalVault

P = ParamSpec("P")
T = TypeVar("T")

MIN_PREFIX = 8  # characters of an id a prefix must give before it may stand for the whole id


def _configure_logging(verbose: int) -> None:
    """Library loggers (httpx's per-request INFO lines among them) stay quiet unless asked for with -v."""
    level = logging.WARNING if verbose == 0 else logging.INFO if verbose == 1 else logging.DEBUG
    logging.basicConfig(level=level, stream=sys.stderr, format="%(levelname)s %(name)s: %(message)s", force=True)


@click.group(cls=BoundaryGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="alter-agents")
@click.option("-v", "--verbose", count=True, help="Log INFO (-v) or DEBUG (-vv) lines to stderr.")
@click.pass_context
def main(ctx: click.Context, verbose: int) -> None:
    """Give AI agents the right user's API credentials without showing them a token.

    Shell completion: eval "$(_ALTER_AGENTS_COMPLETE=bash_source alter-agents)" (zsh_source, fish_source).
    """
    if ctx.invoked_subcommand != "mcp":  # the MCP server sets up its own logging
        _configure_logging(verbose)


@main.command()
@click.argument("provider")
@click.option("--label", help="A name for this account, e.g. work or personal.")
@click.option("--no-browser", is_flag=True, help="Print the URL instead of opening a browser.")
@click.option("--timeout", default=300.0, show_default=True, type=click.FloatRange(min=0, min_open=True),
              help="Seconds to wait for the browser.")
@click.option("--device", is_flag=True,
              help="Sign in with a code on any other device (SSH, containers, no browser here).")
@json_option
@run
async def connect(provider: str, label: str | None, no_browser: bool, timeout: float, device: bool,
                  as_json: bool) -> None:
    """Link a PROVIDER account through OAuth in your browser (or with --device, from any other device)."""
    if device and no_browser:
        raise click.UsageError("--no-browser does not apply to --device (no browser is opened).")
    waiting_for = "the sign-in on the other device" if device else "the browser"

    async def progress(elapsed: float, _message: str) -> None:
        if int(elapsed * 4) % 40 == 0 and elapsed > 1:
            click.echo(f"  still waiting for {waiting_for} ({elapsed:.0f}s)...", err=True)

    async def show(start: ConnectStart) -> None:
        if device:
            _show_device_code(start)
        elif no_browser or not await anyio.to_thread.run_sync(webbrowser.open, start.connect_url):
            click.echo(f"Open this URL to connect {start.provider}:\n  {start.connect_url}", err=True)
        else:
            click.echo(f"Opened your browser to connect {start.provider}; waiting (Ctrl-C to stop).", err=True)

    try:
        async with App() as app:
            results = await app.connect([provider], timeout=timeout, label=label, on_url=show,
                                        on_progress=progress, method="device" if device else "browser")
    except ConnectTimeoutError:
        # This process's loopback listener (or device poller) is gone with it: start over, not "call again".
        raise CliFailure(f"The sign-in did not finish within {timeout:g}s; run 'alter-agents connect "
                         f"{provider}' again to start over.", code="connect_timeout") from None
    if as_json:
        click.echo(json.dumps([r.model_dump(mode="json") for r in results], indent=2))
    else:
        for r in results:
            click.echo(f"Connected {r.provider} account {r.account} (grant {r.grant_id}).")


@main.command()
@json_option
def where(as_json: bool) -> None:
    """Where the vault, its key and the configuration live (nothing is opened or created)."""
    info = Settings.from_env().locations()
    if as_json:
        click.echo(json.dumps(info, indent=2))
        return
    width = max(len(k) for k in info)
    for name, value in info.items():
        click.echo(f"{name.ljust(width)}  {cell(value)}")


def _show_device_code(start: ConnectStart) -> None:
    """Print where to go and what to type; a QR code of the link too where the terminal can show one."""
    click.echo(f"To connect {start.provider}, open {start.verification_uri} on any device and enter the code:\n"
               f"\n    {start.user_code}\n", err=True)
    if sys.stderr.isatty() and start.connect_url != start.verification_uri:
        import io

        import qrcode

        qr = qrcode.QRCode(border=1)
        qr.add_data(start.connect_url)
        art = io.StringIO()
        qr.print_ascii(out=art, invert=True)
        click.echo(f"or scan:\n{art.getvalue()}", err=True)
    click.echo(f"The code expires at {start.expires_at:%H:%M:%S %Z}. Waiting (Ctrl-C to stop)...", err=True)


@main.group()
def grants() -> None:
    """List or revoke stored grants."""


@grants.command("list")
@click.option("--provider", help="Only this provider.")
@json_option
@run
async def grants_list(provider: str | None, as_json: bool) -> None:
    """Every grant in the vault (never the secrets)."""
    vault = LocalVault()
    try:
        found = await vault.list_grants(provider=provider, everyone=True)
    finally:
        await vault.aclose()
    rows = [g.model_dump(mode="json") for g in found]
    emit(rows, ["grant_id", "provider", "account", "label", "owner", "status", "scopes"], as_json)


def _one_by_prefix(ids: Sequence[str], given: str, what: str) -> str:
    """The one id that `given` names: the whole id, or a unique prefix of at least MIN_PREFIX characters."""
    given = given.strip()
    matches = [i for i in ids if given and i.lower().startswith(given.lower())]
    if exact := [i for i in matches if i.lower() == given.lower()]:
        return exact[0]
    if not matches:
        raise CliFailure(f"{what[:1].upper()}{what[1:]} {given!r} was not found.", code="not_found")
    if len(given) < MIN_PREFIX:
        raise CliFailure(f"{given!r} is too short to name a {what}: give at least {MIN_PREFIX} characters "
                         "of its id.")
    if len(matches) > 1:
        raise CliFailure(f"{given!r} matches {len(matches)} {what}s ({', '.join(matches)}); give more of the id.")
    return matches[0]


@grants.command("revoke")
@click.argument("grant_id")
@run
async def grants_revoke(grant_id: str) -> None:
    """Revoke GRANT_ID (or a unique prefix of it, 8 characters or more) and wipe its stored credential."""
    vault = LocalVault()
    try:
        await vault.open()
        every = {s.grant.grant_id: s.grant for s in await vault.store.list_grants()}
        chosen = every[_one_by_prefix(list(every), grant_id, "grant")]
        if chosen.status == "revoked":
            raise CliFailure(f"Grant {chosen.grant_id} ({chosen.provider} account {chosen.account}) is already "
                             "revoked.", code="already_revoked")
        grant = await vault.revoke(chosen.grant_id)
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
@run
async def secrets_add(provider: str, owner: str, account: str, label: str | None, as_json: bool) -> None:
    """Add a secret for PROVIDER. The value is read from stdin or a hidden prompt, never from argv."""
    principal = Principal.parse(owner)
    vault = LocalVault()
    try:
        spec = vault.providers.get(provider)
        if spec.kind != "secret":
            raise CliFailure(f"{spec.name} is an OAuth provider: link an account with 'alter-agents connect "
                             f"{spec.name}' instead of storing a secret.")
        value = (getpass.getpass(f"{provider} secret: ") if sys.stdin.isatty() else sys.stdin.read()).strip()
        before = await vault.list_grants(provider=spec.name, everyone=True)
        replaced = [g for g in before if g.owner == str(principal) and g.account == account]
        grant = await vault.add_secret(spec.name, value, owner=principal, account=account, label=label)
    finally:
        await vault.aclose()
    if as_json:
        click.echo(json.dumps({**grant.model_dump(mode="json"), "replaced": bool(replaced)}, indent=2))
    elif replaced:
        click.echo(f"Replaced the {spec.name} secret for {account} (grant {grant.grant_id}).")
    else:
        click.echo(f"Stored {spec.name} secret for {account} (grant {grant.grant_id}).")


@secrets.command("list")
@click.option("--provider", help="Only this provider.")
@json_option
@run
async def secrets_list(provider: str | None, as_json: bool) -> None:
    """The stored secrets' grants (never the secrets)."""
    vault = LocalVault()
    try:
        found = [g for g in await vault.list_grants(provider=provider, everyone=True) if g.kind == "secret"]
    finally:
        await vault.aclose()
    rows = [g.model_dump(mode="json") for g in found]
    emit(rows, ["grant_id", "provider", "account", "label", "owner", "status", "updated_at"], as_json)


@main.command()
@json_option
@run
async def providers(as_json: bool) -> None:
    """The providers this vault knows."""
    vault = LocalVault()
    try:
        rows = [
            {"provider": s.name, "kind": s.kind, "hosts": list(s.hosts),
             "configured": s.kind == "secret" or bool(s.client_id)}
            for s in vault.providers
        ]
    finally:
        await vault.aclose()
    if not as_json:
        rows = [{**r, "configured": "yes" if r["configured"] else "no client id"} for r in rows]
    emit(rows, ["provider", "kind", "hosts", "configured"], as_json)


@main.group()
def vault() -> None:
    """Run the vault as a service (the alter-sdk wire protocol over HTTP)."""


@vault.command("serve")
@click.option("--host", default="127.0.0.1", show_default=True, help="Interface to listen on.")
@click.option("--port", default=8780, show_default=True, type=click.IntRange(0, 65535),
              help="Port to listen on (0 picks a free one).")
def vault_serve(host: str, port: int) -> None:
    """Serve the vault to alter-sdk clients and to App(base_url=..., api_key=...). Ctrl-C stops it."""
    from alter_agents.server.app import serve

    try:
        serve(host, port)
    except OSError as exc:
        if exc.errno == errno.EADDRINUSE:
            raise CliFailure(f"Port {port} on {host} is already in use (another server is listening there); stop "
                             "it or choose another --port (0 picks a free one).", code="address_in_use") from None
        raise


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
@click.option("--admin", is_flag=True, help="An admin key: may also export the audit log (alter_ak_…).")
@json_option
@run
async def keys_create(name: str | None, admin: bool, as_json: bool) -> None:
    """Mint an API key. It is shown once; the vault keeps only its hash."""
    key, info = await _with_keys(lambda api: api.create(name, kind="ak" if admin else "rk"))
    if as_json:
        click.echo(json.dumps({"api_key": key, **_key_row(info)}, indent=2))
    else:
        click.echo(key)
        click.echo(f"Created API key {info.key_id}; store it now, it cannot be shown again.", err=True)


@keys.command("list")
@json_option
@run
async def keys_list(as_json: bool) -> None:
    """Every API key (never the key itself)."""
    found = await _with_keys(lambda api: api.list())
    emit([_key_row(k) for k in found], ["key_id", "name", "hint", "status", "created_at", "last_used_at"], as_json)


@keys.command("revoke")
@click.argument("key_id")
@run
async def keys_revoke(key_id: str) -> None:
    """Revoke KEY_ID (or a unique prefix of it, 8 characters or more); its requests are refused at once."""

    async def revoke(api: Any) -> Any:
        every = {k.key_id: k for k in await api.list()}
        chosen = every[_one_by_prefix(list(every), key_id, "API key")]
        if not chosen.active:
            raise CliFailure(f"API key {chosen.key_id} ({chosen.hint}) is already revoked.", code="already_revoked")
        return await api.revoke(chosen.key_id)

    info = await _with_keys(revoke)
    click.echo(f"Revoked API key {info.key_id} ({info.hint}).")


@main.command(context_settings={"ignore_unknown_options": True, "allow_extra_args": True, "help_option_names": []})
@click.pass_context
def mcp(ctx: click.Context) -> None:
    """Run the MCP server (same options as `python -m mcp_server`; see `alter-agents mcp --help`)."""
    # Imported here: the library never depends on the MCP server package (or the mcp SDK) at import time.
    try:
        from mcp_server.__main__ import main as serve_mcp
    except ImportError as exc:
        if (exc.name or "").split(".")[0] not in ("mcp", "mcp_types", "uvicorn", "starlette", "httpx2"):
            raise
        click.echo("error: the MCP server needs the `mcp` extra: pip install 'alter-agents[mcp]'", err=True)
        sys.exit(1)

    serve_mcp.main(args=ctx.args, prog_name="alter-agents mcp", standalone_mode=True)


if __name__ == "__main__":
    main()


def _register_audit() -> None:
    from alter_agents.cli_audit import audit

    main.add_command(audit)


_register_audit()
