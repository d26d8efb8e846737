"""A newcomer's first hour with `alter-agents`: the real command in a subprocess, one-line errors, no surprises."""

from __future__ import annotations

import json
import os
import re
import selectors
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping
from pathlib import Path

import pytest
from sqlalchemy.engine import make_url

from alter_agents.settings import Settings
from alter_agents.vault.crypto import generate_key
from tests.conftest import Deployment, fresh_postgres
from tests.fixtures.browser import Browser

CLI = str(Path(sys.executable).parent / "alter-agents")
SECRET = "sk_test_newcomer_9d1c3e5f7a"


def _env(tmp_path: Path, extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """A clean user: own HOME and data dir, none of the caller's ALTER_ variables."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("ALTER_")}
    env.update(HOME=str(tmp_path / "home"), ALTER_DATA_DIR=str(tmp_path / "data"))
    env.update(extra or {})
    return env


def _cli(env: Mapping[str, str], *args: str, input: str | None = None,
         timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run([CLI, *args], input=input, env=dict(env), capture_output=True, text=True, timeout=timeout)


def _one_line_error(result: subprocess.CompletedProcess[str]) -> str:
    """The failure contract: non-zero exit, nothing on stdout, exactly one line on stderr, no traceback."""
    assert result.returncode != 0, result.stdout
    assert result.stdout == ""
    assert "Traceback" not in result.stderr
    (line,) = result.stderr.strip().splitlines()
    return line


def _json_error(result: subprocess.CompletedProcess[str]) -> dict[str, object]:
    line = _one_line_error(result)
    error: dict[str, object] = json.loads(line)["error"]
    assert isinstance(error["code"], str) and isinstance(error["message"], str)
    return error


@pytest.fixture
def local(sqlite_deployment: Deployment, tmp_path: Path) -> dict[str, str]:
    """The test deployment in local single-user mode, as a subprocess environment."""
    return _env(tmp_path, sqlite_deployment.local().env)


# -- configuration mistakes --------------------------------------------------------------------------------


@pytest.mark.parametrize(("url", "advice"), [
    ("postgres://alice@127.0.0.1/vault", "use postgresql+asyncpg://alice@127.0.0.1/vault"),
    ("postgresql://alice@127.0.0.1/vault", "use postgresql+asyncpg://alice@127.0.0.1/vault"),
    ("sqlite:////srv/vault.db", "use sqlite+aiosqlite:////srv/vault.db"),
    ("/srv/vault.db", "use sqlite+aiosqlite:////srv/vault.db"),
    ("mysql+aiomysql://db/vault", "unsupported database 'mysql'"),
])
def test_a_wrong_vault_url_is_one_line_naming_the_url_to_use(tmp_path: Path, url: str, advice: str) -> None:
    env = _env(tmp_path, {"ALTER_VAULT_URL": url})
    line = _one_line_error(_cli(env, "grants", "list"))
    assert line.startswith("error: ALTER_VAULT_URL") and advice in line
    error = _json_error(_cli(env, "grants", "list", "--json"))
    assert advice in str(error["message"])


async def test_a_database_that_does_not_exist_is_one_line(tmp_path: Path) -> None:
    url = make_url(await fresh_postgres()).set(database="alter_newcomer_no_such_db")
    env = _env(tmp_path, {"ALTER_VAULT_URL": url.render_as_string(hide_password=False)})
    line = _one_line_error(_cli(env, "grants", "list"))
    assert line.startswith("error: ") and 'database "alter_newcomer_no_such_db" does not exist' in line
    assert "does not exist" in str(_json_error(_cli(env, "audit", "--json"))["message"])


def test_a_wrong_providers_file_is_one_line_naming_each_problem(tmp_path: Path) -> None:
    providers = tmp_path / "providers.toml"
    providers.write_text('[providers.acme]\nhosts = "api.acme.com"\nhost = ["api.acme.com"]\n', "utf-8")
    line = _one_line_error(_cli(_env(tmp_path, {"ALTER_PROVIDERS_FILE": str(providers)}), "providers"))
    assert line == ("error: Provider 'acme' is invalid: hosts: Input should be a valid list; host: unknown key "
                    "(the keys are listed in docs/configuration.md).")


def test_settings_never_print_the_vault_key_or_the_database_password() -> None:
    key = generate_key()
    settings = Settings.from_env({"ALTER_VAULT_KEY": key,
                                  "ALTER_VAULT_URL": "postgresql+asyncpg://alice:hunter2-db@127.0.0.1/vault"})
    for shown in (repr(settings), str(settings), f"{settings}", repr([settings])):
        assert key not in shown and "hunter2-db" not in shown
    assert settings.vault_key is not None and settings.vault_key.get_secret_value() == key


# -- servers: taken ports and Ctrl-C -----------------------------------------------------------------------


@pytest.fixture
def taken_port() -> Iterator[int]:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        yield sock.getsockname()[1]


def test_vault_serve_on_a_taken_port_is_one_line(local: dict[str, str], taken_port: int) -> None:
    line = _one_line_error(_cli(local, "vault", "serve", "--port", str(taken_port)))
    assert line.startswith("error: ") and f"Port {taken_port} on 127.0.0.1 is already in use" in line


def _read_until(proc: subprocess.Popen[str], pattern: str, timeout: float = 30) -> re.Match[str]:
    """Read the child's stderr and stdout until `pattern` shows up."""
    assert proc.stdout is not None and proc.stderr is not None
    seen, deadline = "", time.monotonic() + timeout
    with selectors.DefaultSelector() as sel:
        sel.register(proc.stdout, selectors.EVENT_READ)
        sel.register(proc.stderr, selectors.EVENT_READ)
        while time.monotonic() < deadline:
            if match := re.search(pattern, seen):
                return match
            for key, _ in sel.select(timeout=0.2):
                seen += key.fileobj.readline()  # type: ignore[union-attr]
            if proc.poll() is not None and not re.search(pattern, seen):
                break
    raise AssertionError(f"{pattern!r} never appeared; saw {seen!r}")


def _interrupt(proc: subprocess.Popen[str]) -> tuple[float, str]:
    """Send Ctrl-C's signal; how long the process took to exit, and the rest of its stderr."""
    started = time.monotonic()
    proc.send_signal(signal.SIGINT)
    try:
        _out, err = proc.communicate(timeout=10)
    finally:
        proc.kill()
    return time.monotonic() - started, err


def test_ctrl_c_stops_vault_serve_at_once(local: dict[str, str]) -> None:
    proc = subprocess.Popen([CLI, "vault", "serve", "--port", "0"], env=local, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    _read_until(proc, r"listening on http://127\.0\.0\.1:\d+")
    took, err = _interrupt(proc)
    assert took < 3, f"vault serve took {took:.1f}s to stop"
    assert proc.returncode in (0, 130) and "Traceback" not in err


def test_ctrl_c_stops_connect_while_it_waits_for_the_browser(local: dict[str, str]) -> None:
    proc = subprocess.Popen([CLI, "connect", "github", "--no-browser"], env=local, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    _read_until(proc, r"http://127\.0\.0\.1:\d+/authorize\S+")
    took, err = _interrupt(proc)
    assert took < 3, f"connect took {took:.1f}s to stop"
    assert proc.returncode == 130 and "Traceback" not in err
    assert err.strip().splitlines()[-1] == "Interrupted."


# -- connect -----------------------------------------------------------------------------------------------


def test_connect_links_an_account_without_library_log_lines(local: dict[str, str], browser: Browser) -> None:
    for verbose in ((), ("-v",)):
        proc = subprocess.Popen([CLI, *verbose, "connect", "github", "--no-browser", "--json"], env=local,
                                text=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        url = _read_until(proc, r"http://127\.0\.0\.1:\d+/authorize\S+").group(0)
        browser.approve(url, "octocat" if not verbose else "hubot")
        out, err = proc.communicate(timeout=30)
        assert proc.returncode == 0, err
        assert json.loads(out)[0]["provider"] == "github"
        if verbose:
            assert "INFO httpx: HTTP Request: POST" in err  # -v shows what the library does
        else:
            assert "INFO" not in err and "HTTP Request" not in err
    rows = json.loads(_cli(local, "grants", "list", "--json").stdout)
    assert sorted(r["account"] for r in rows) == ["hubot", "octocat"]
    assert all(r["scopes"] == ["read"] for r in rows)
    table = _cli(local, "grants", "list").stdout
    assert "['read']" not in table and re.search(r"\bactive\s+read$", table, re.M)


def test_connect_refuses_a_timeout_that_is_not_positive(local: dict[str, str]) -> None:
    line = _one_line_error(_cli(local, "connect", "github", "--timeout", "-5"))
    assert "'--timeout'" in line and "-5" in line
    assert "--timeout" in str(_json_error(_cli(local, "connect", "github", "--timeout", "0", "--json"))["message"])


def test_a_connect_timeout_says_to_run_connect_again_not_to_call_it(local: dict[str, str]) -> None:
    result = _cli(local, "connect", "github", "--no-browser", "--timeout", "1")
    assert result.returncode == 1 and result.stdout == "" and "Traceback" not in result.stderr
    *shown, line = result.stderr.strip().splitlines()
    assert shown[0] == "Open this URL to connect github:"  # what came before the failure: the link only
    assert line.startswith("error: The sign-in did not finish within 1s")
    assert "run 'alter-agents connect github' again" in line and "call connect again" not in line


# -- the everyday commands ---------------------------------------------------------------------------------

# The option is set once on the group and inherited; one command per level shows it reaches every level.
COMMANDS = [(), ("where",), ("grants",), ("grants", "revoke"), ("secrets", "list"), ("keys", "create"),
            ("vault", "serve")]


@pytest.mark.parametrize("command", COMMANDS, ids=lambda c: " ".join(c) or "alter-agents")
def test_dash_h_is_help_everywhere(tmp_path: Path, command: tuple[str, ...]) -> None:
    short = _cli(_env(tmp_path), *command, "-h")
    assert short.returncode == 0, short.stderr
    assert short.stdout.startswith(f"Usage: {' '.join(('alter-agents', *command))} [OPTIONS]")
    assert re.search(r"^  -h, --help +Show this message and exit\.$", short.stdout, re.M)


def test_the_help_tells_how_to_turn_on_shell_completion(tmp_path: Path) -> None:
    env = _env(tmp_path)
    assert "_ALTER_AGENTS_COMPLETE=bash_source alter-agents" in _cli(env, "--help").stdout


def test_where_shows_the_vault_the_key_and_the_configuration(tmp_path: Path) -> None:
    providers = tmp_path / "providers.toml"
    env = _env(tmp_path, {"ALTER_PROVIDERS_FILE": str(providers)})
    info = json.loads(_cli(env, "where", "--json").stdout)
    data = tmp_path / "data"
    assert info["vault_url"] == f"sqlite+aiosqlite:///{data / 'vault.db'}"
    assert (info["vault_file"], info["key_file"], info["key_file_exists"]) == (
        str(data / "vault.db"), str(data / "vault.key"), False)
    assert (info["key_source"], info["providers_file"], info["identity_provider"]) == (
        "key_file", str(providers), None)
    assert not data.exists()  # looking does not create a vault or a key
    table = _cli(env, "where").stdout
    assert re.search(rf"^key_file\s+{re.escape(str(data / 'vault.key'))}$", table, re.M)
    keyed = json.loads(_cli({**env, "ALTER_VAULT_KEY": generate_key()}, "where", "--json").stdout)
    assert (keyed["key_source"], keyed["key_file"]) == ("ALTER_VAULT_KEY", None)
    shared = json.loads(_cli({**env, "ALTER_VAULT_URL": "postgresql+asyncpg://alice:pw-9f@db.internal/vault"},
                             "where", "--json").stdout)
    assert shared["vault_url"] == "postgresql+asyncpg://alice:***@db.internal/vault" and shared["vault_file"] is None
    assert shared["key_file"] == str(data / "vault.key")  # ALTER_DATA_DIR holds it, not the platform default


def test_providers_json_has_real_types(local: dict[str, str], sqlite_deployment: Deployment) -> None:
    rows = {r["provider"]: r for r in json.loads(_cli(local, "providers", "--json").stdout)}
    assert rows["github"]["hosts"] == [f"127.0.0.1:{sqlite_deployment.upstream.port}"]
    assert rows["github"]["configured"] is True
    assert rows["notion"]["configured"] is False and rows["stripe"]["configured"] is True
    assert all(isinstance(r["hosts"], list) for r in rows.values())


def test_secrets_list_add_replace_and_refuse_oauth_providers(local: dict[str, str]) -> None:
    assert _cli(local, "secrets", "list").stdout.strip() == "(none)"
    add = ("secrets", "add", "stripe", "--owner", "app", "--account", "acct_1")
    first = _cli(local, *add, input=SECRET)
    assert first.returncode == 0 and first.stdout.startswith("Stored stripe secret for acct_1")
    again = _cli(local, *add, "--json", input=SECRET + "-rotated")
    replaced = json.loads(again.stdout)
    assert replaced["replaced"] is True and replaced["grant_id"] in first.stdout
    assert _cli(local, *add, input=SECRET).stdout.startswith("Replaced the stripe secret for acct_1")
    listed = json.loads(_cli(local, "secrets", "list", "--json").stdout)
    assert [(r["provider"], r["account"], r["kind"]) for r in listed] == [("stripe", "acct_1", "secret")]
    assert SECRET not in json.dumps(listed)

    oauth = _cli(local, "secrets", "add", "github", "--owner", "app", "--account", "octocat", input=SECRET)
    assert "github is an OAuth provider: link an account with 'alter-agents connect github'" in _one_line_error(oauth)
    as_json = _json_error(_cli(local, "secrets", "add", "github", "--owner", "app", "--account", "o", "--json",
                               input=SECRET))
    assert as_json["code"] == "invalid_arguments"
    assert json.loads(_cli(local, "grants", "list", "--json").stdout)[0]["provider"] == "stripe"


def test_audit_shows_which_grant_acted(local: dict[str, str]) -> None:
    added = json.loads(_cli(local, "secrets", "add", "stripe", "--owner", "app", "--account", "a", "--json",
                            input=SECRET).stdout)
    header, row = _cli(local, "audit").stdout.splitlines()[:2]
    assert "GRANT_ID" in header.split() and added["grant_id"] in row.split()


def test_revoke_refuses_short_prefixes_and_says_when_already_revoked(local: dict[str, str]) -> None:
    grant_id = json.loads(_cli(local, "secrets", "add", "stripe", "--owner", "app", "--account", "a", "--json",
                               input=SECRET).stdout)["grant_id"]
    short = _one_line_error(_cli(local, "grants", "revoke", grant_id[0]))
    assert "too short" in short and "at least 8 characters" in short
    assert json.loads(_cli(local, "grants", "list", "--json").stdout)[0]["status"] == "active"

    revoked = _cli(local, "grants", "revoke", grant_id[:8])
    assert revoked.returncode == 0 and grant_id in revoked.stdout
    twice = _one_line_error(_cli(local, "grants", "revoke", grant_id))
    assert f"Grant {grant_id} (stripe account a) is already revoked." in twice
    missing = _one_line_error(_cli(local, "grants", "revoke", "ffffffff-no-such"))
    assert "Grant 'ffffffff-no-such' was not found." in missing


def test_revoking_an_api_key_refuses_short_prefixes_and_says_when_already_revoked(local: dict[str, str]) -> None:
    key_id = json.loads(_cli(local, "keys", "create", "--name", "ci", "--json").stdout)["key_id"]
    json.loads(_cli(local, "keys", "create", "--name", "other", "--json").stdout)
    assert "too short" in _one_line_error(_cli(local, "keys", "revoke", key_id[:1]))
    assert [k["status"] for k in json.loads(_cli(local, "keys", "list", "--json").stdout)] == ["active", "active"]
    assert _cli(local, "keys", "revoke", key_id).returncode == 0
    assert "is already revoked" in _one_line_error(_cli(local, "keys", "revoke", key_id))


def test_an_api_key_on_the_command_line_is_warned_about(local: dict[str, str]) -> None:
    key = "alter_ak_" + "a" * 22 + "_abcdef"
    result = _cli(local, "mcp", "--api-key", key, "--help")
    assert result.returncode == 0
    warning = [line for line in result.stderr.splitlines() if line.startswith("warning:")]
    assert warning == ["warning: --api-key on the command line is visible to other local users (ps, /proc); "
                       "set ALTER_API_KEY in the environment instead."]
    assert "warning" not in _cli({**local, "ALTER_API_KEY": key}, "mcp", "--help").stderr


@pytest.mark.parametrize("args", [("nosuch",), ("grants", "list", "--bogus"), ("grants", "revoke")])
def test_usage_mistakes_are_one_line_and_json_under_json(local: dict[str, str], args: tuple[str, ...]) -> None:
    line = _one_line_error(_cli(local, *args))
    assert line.startswith("error: ") and "--help'" in line
    error = _json_error(_cli(local, *args, "--json"))
    assert error["code"] == "invalid_arguments"


def test_error_messages_end_with_one_full_stop(local: dict[str, str], tmp_path: Path) -> None:
    lines = [
        _one_line_error(_cli(local, "grants", "revoke", "00000000-0000-4000-8000-000000000000")),
        _one_line_error(_cli(local, "connect", "github", "--timeout", "-1")),
        _one_line_error(_cli(local, "secrets", "add", "nosuch", "--owner", "app", "--account", "a", input="x")),
        _one_line_error(_cli(_env(tmp_path, {"ALTER_VAULT_URL": "sqlite:///x.db"}), "providers")),
    ]
    for line in lines:
        assert ".." not in line.replace("...", "") and line.endswith("."), line
