"""The `alter-agents` command, in-process (click's runner) and as a real subprocess."""

from __future__ import annotations

import asyncio
import json
import os
import pty
import select
import subprocess
import sys
import time
from pathlib import Path

import pytest
from click.testing import CliRunner, Result

from alter_agents.cli import main
from tests.conftest import Deployment

SECRET = "sk_test_cli_5e3b9a17f04d2c68"
CLI = str(Path(sys.executable).parent / "alter-agents")


def _env(d: Deployment) -> dict[str, str | None]:
    return {**{k: None for k in os.environ if k.startswith("ALTER_")}, **d.env}


def _invoke(d: Deployment, *args: str, input: str | None = None) -> Result:
    return CliRunner().invoke(main, list(args), input=input, env=_env(d), catch_exceptions=False)


def _run(d: Deployment, *args: str, input: str | None = None) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in {**os.environ, **d.env}.items() if v is not None}
    return subprocess.run([CLI, *args], input=input, env=env, capture_output=True, text=True, timeout=60)


def _grants(d: Deployment) -> list[dict[str, object]]:
    result = _invoke(d, "grants", "list", "--json")
    assert result.exit_code == 0, result.output
    rows: list[dict[str, object]] = json.loads(result.stdout)
    return rows


def test_providers_lists_the_catalogue(sqlite_deployment: Deployment) -> None:
    d = sqlite_deployment
    table = _invoke(d, "providers")
    assert table.exit_code == 0
    assert table.stdout.splitlines()[0].split() == ["PROVIDER", "KIND", "HOSTS", "CONFIGURED"]
    rows = {r["provider"]: r for r in json.loads(_invoke(d, "providers", "--json").stdout)}
    assert {"github", "google", "microsoft", "slack", "notion", "linear", "stripe", "openai"} <= set(rows)
    assert rows["github"]["configured"] is True and rows["stripe"]["kind"] == "secret"
    assert rows["notion"]["configured"] is False


def test_a_secret_is_read_from_stdin_and_never_echoed(sqlite_deployment: Deployment) -> None:
    d = sqlite_deployment
    d.upstream.add_secret(SECRET, "acct-cli")
    result = _invoke(d, "secrets", "add", "keyed", "--owner", "user:alice", "--account", "acct-cli",
                     "--label", "ops", input=SECRET + "\n")
    assert result.exit_code == 0, result.output
    assert SECRET not in result.output
    (row,) = _grants(d)
    assert (row["provider"], row["account"], row["label"], row["owner"], row["kind"]) == (
        "keyed", "acct-cli", "ops", "user:alice", "secret")
    assert SECRET not in json.dumps(row)

    async def call() -> str:
        async with d.app() as app:
            response = await app.request("GET", d.upstream.echo_url("x"), provider="keyed",
                                         user_token=d.idp.issue("alice"))
            return str(response.json_body()["account"])

    assert asyncio.run(call()) == "acct-cli"
    audit = json.loads(_invoke(d, "audit", "--json").stdout)
    assert [(a["action"], a["method"], a["path"], a["status"]) for a in audit][:2] == [
        ("call", "GET", "/echo/x", 200), ("secret_added", None, None, None)]
    assert SECRET not in json.dumps(audit)


def test_grants_revoke_removes_the_grant(sqlite_deployment: Deployment) -> None:
    d = sqlite_deployment
    added = _invoke(d, "secrets", "add", "stripe", "--owner", "app", "--account", "acct_1", "--json",
                    input=SECRET)
    grant_id = json.loads(added.stdout)["grant_id"]
    table = _invoke(d, "grants", "list")
    assert grant_id in table.stdout and "stripe" in table.stdout
    revoked = _invoke(d, "grants", "revoke", grant_id)
    assert revoked.exit_code == 0 and grant_id in revoked.stdout
    assert _grants(d) == []
    assert _invoke(d, "grants", "list").stdout.strip() == "(none)"


@pytest.mark.parametrize(("args", "stdin", "reason"), [
    (("grants", "revoke", "00000000-0000-4000-8000-000000000000"), None, "was not found"),
    (("secrets", "add", "stripe", "--owner", "nobody", "--account", "a"), SECRET, "owner must be"),
    (("secrets", "add", "nosuch", "--owner", "app", "--account", "a"), SECRET, "Unknown provider 'nosuch'"),
    (("secrets", "add", "stripe", "--owner", "app", "--account", "a"), "", "empty"),
])
def test_errors_exit_non_zero_with_a_one_line_reason(
    sqlite_deployment: Deployment, args: tuple[str, ...], stdin: str | None, reason: str
) -> None:
    result = _invoke(sqlite_deployment, *args, input=stdin)
    assert result.exit_code != 0
    assert result.stdout == ""
    (line,) = result.stderr.strip().splitlines()
    assert line.startswith("error: ") and reason in line


def test_a_wrong_vault_key_is_a_clear_error(sqlite_deployment: Deployment) -> None:
    d = sqlite_deployment
    assert _invoke(d, "secrets", "add", "stripe", "--owner", "app", "--account", "a", input=SECRET).exit_code == 0
    from alter_agents.vault.crypto import generate_key

    wrong = CliRunner().invoke(main, ["grants", "list"], env={**_env(d), "ALTER_VAULT_KEY": generate_key()})
    assert wrong.exit_code == 1
    assert wrong.stderr.startswith("error: Cannot decrypt the vault") and len(wrong.stderr.splitlines()) == 1


def test_the_installed_command_works_as_a_subprocess(sqlite_deployment: Deployment) -> None:
    d = sqlite_deployment
    providers = _run(d, "providers", "--json")
    assert providers.returncode == 0, providers.stderr
    assert "github" in {r["provider"] for r in json.loads(providers.stdout)}

    added = _run(d, "secrets", "add", "stripe", "--owner", "group:eng", "--account", "acct_sub", "--json",
                 input=SECRET + "\n")
    assert added.returncode == 0, added.stderr
    assert SECRET not in added.stdout + added.stderr
    grant = json.loads(added.stdout)
    assert (grant["owner"], grant["account"]) == ("group:eng", "acct_sub")

    listed = _run(d, "grants", "list", "--json")
    assert [g["grant_id"] for g in json.loads(listed.stdout)] == [grant["grant_id"]]
    assert SECRET not in listed.stdout
    audit = _run(d, "audit", "--json")
    assert json.loads(audit.stdout)[0]["action"] == "secret_added"

    revoked = _run(d, "grants", "revoke", grant["grant_id"])
    assert revoked.returncode == 0
    again = _run(d, "grants", "revoke", grant["grant_id"])
    assert again.returncode == 1 and again.stdout == ""
    assert again.stderr.startswith("error: ") and len(again.stderr.splitlines()) == 1


def _on_a_terminal(argv: list[str], env: dict[str, str], typed: str) -> tuple[int, str, bytes, bytes]:
    """Run `argv` with a pseudo-terminal as its controlling terminal, as a person at a shell does; type
    `typed` once it prompts. Returns the exit status, everything the terminal showed, and the process's
    own /proc cmdline and environ read while it waited at the prompt."""
    leader, follower = pty.openpty()
    launcher = ("import fcntl, os, sys, termios; fcntl.ioctl(0, termios.TIOCSCTTY, 0); "
                "os.execv(sys.argv[1], sys.argv[1:])")
    proc = subprocess.Popen([sys.executable, "-c", launcher, *argv], stdin=follower, stdout=follower,
                            stderr=follower, env=env, start_new_session=True)
    os.close(follower)
    shown = b""
    deadline = time.monotonic() + 60
    while b"secret:" not in shown and time.monotonic() < deadline:
        ready, _, _ = select.select([leader], [], [], 0.5)
        if ready:
            shown += os.read(leader, 4096)
    cmdline = Path(f"/proc/{proc.pid}/cmdline").read_bytes()
    environ = Path(f"/proc/{proc.pid}/environ").read_bytes()
    os.write(leader, typed.encode() + b"\r")
    while time.monotonic() < deadline:
        try:
            chunk = os.read(leader, 4096)
        except OSError:  # EIO: the command exited and closed the terminal
            break
        if not chunk:
            break
        shown += chunk
    os.close(leader)
    return proc.wait(30), shown.decode(errors="replace"), cmdline, environ


def test_a_secret_typed_at_the_prompt_is_never_shown_and_never_in_the_process_arguments(
    sqlite_deployment: Deployment,
) -> None:
    d = sqlite_deployment
    d.upstream.add_secret(SECRET, "acct-tty")
    env = {k: v for k, v in {**os.environ, **d.env}.items() if v is not None}
    status, shown, cmdline, environ = _on_a_terminal(
        [CLI, "secrets", "add", "keyed", "--owner", "user:alice", "--account", "acct-tty"], env, SECRET)
    assert status == 0, shown
    assert "keyed secret:" in shown and "acct-tty" in shown  # the prompt, then the confirmation
    assert SECRET not in shown  # the terminal did not echo what was typed
    assert b"\0secrets\0add\0keyed\0" in cmdline  # the real process, read while it held the prompt
    assert SECRET.encode() not in cmdline + environ
    store = Path(d.settings.vault_url.split("///", 1)[1]).read_bytes()  # type: ignore[union-attr]
    assert SECRET.encode() not in store  # kept encrypted at rest

    async def call() -> str:  # what was typed is what the vault sends to the provider
        async with d.app() as app:
            response = await app.request("GET", d.upstream.echo_url("x"), provider="keyed",
                                         user_token=d.idp.issue("alice"))
            return str(response.json_body()["account"])

    assert asyncio.run(call()) == "acct-tty"
