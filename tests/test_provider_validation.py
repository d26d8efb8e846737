"""A providers file cannot widen where a credential goes by accident: unsafe entries are refused with one
line, a built-in provider moved to another domain is announced, and OAuth client secrets never print."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest

from alter_agents import App, ConfigurationError, Settings
from alter_agents.providers import Providers

CLI = str(Path(sys.executable).parent / "alter-agents")


def _file(tmp_path: Path, body: str) -> Path:
    path = tmp_path / "providers.toml"
    path.write_text(body, "utf-8")
    return path


@pytest.mark.parametrize(("hosts", "why"), [
    ('["*"]', "not allowed"),
    ('["*.com"]', "too wide"),
    ('["*.co.uk"]', "too wide"),
    ('["api.acme.com", "*.io"]', "too wide"),
    ('["api*.acme.com"]', "not allowed"),
    ('["*.127.0.0.1"]', "too wide"),
    ('["api.acme.com:99999"]', "invalid port"),
])
def test_a_too_wide_or_malformed_host_entry_is_refused_in_one_line(tmp_path: Path, hosts: str, why: str) -> None:
    path = _file(tmp_path, f'[providers.acme]\nkind = "secret"\nhosts = {hosts}\n')
    with pytest.raises(ConfigurationError, match=why) as info:
        Providers.load(path, env={})
    assert "\n" not in str(info.value) and "acme" in str(info.value)


def test_narrow_wildcards_and_ports_are_accepted(tmp_path: Path) -> None:
    hosts = '["*.acme.com", "*.eu.acme.co.uk", "api.other.com:8443", "127.0.0.1:8080", "[::1]:9000"]'
    path = _file(tmp_path, f'[providers.acme]\nkind = "secret"\nhosts = {hosts}\n')
    spec = Providers.load(path, env={}).get("acme")
    assert spec.claims("https://eu.api.acme.com/x") and not spec.claims("https://acme.com/x")
    assert spec.claims("https://api.other.com:8443/x") and not spec.claims("https://api.other.com/x")
    assert spec.claims("http://127.0.0.1:8080/") and not spec.claims("http://127.0.0.1:8081/")
    assert spec.claims("http://[::1]:9000/")


def test_an_injection_format_without_the_token_is_refused(tmp_path: Path) -> None:
    path = _file(tmp_path, '[providers.acme]\nkind = "secret"\nhosts = ["api.acme.com"]\n'
                           'inject = { header = "X-Key", format = "Token static" }\n')
    with pytest.raises(ConfigurationError, match=r"\{token\}") as info:
        Providers.load(path, env={})
    assert "\n" not in str(info.value)


def test_the_cli_reports_a_bad_providers_file_in_one_line(tmp_path: Path) -> None:
    path = _file(tmp_path, '[providers.acme]\nkind = "secret"\nhosts = ["*"]\n')
    env = {k: v for k, v in os.environ.items() if not k.startswith("ALTER_")}
    env.update(ALTER_PROVIDERS_FILE=str(path), ALTER_DATA_DIR=str(tmp_path / "data"))
    done = subprocess.run([CLI, "providers"], env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode != 0
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "'*'" in lines[0] and "Traceback" not in done.stderr, done.stderr


def test_moving_a_builtin_providers_credential_to_another_domain_is_announced(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    moved = _file(tmp_path, '[providers.github]\nhosts = ["api.github.com", "api.evil.example"]\n')
    with caplog.at_level(logging.WARNING, logger="alter_agents.providers"):
        spec = Providers.load(moved, env={}).get("github")
    assert spec.claims("https://api.evil.example/user")
    assert any("github" in r.getMessage() and "api.evil.example" in r.getMessage() for r in caplog.records)

    caplog.clear()
    same = _file(tmp_path, '[providers.github]\nhosts = ["api.github.com", "uploads.github.com:8443"]\n')
    with caplog.at_level(logging.WARNING, logger="alter_agents.providers"):
        Providers.load(same, env={})
    assert caplog.records == []


async def test_an_oauth_client_secret_never_appears_in_a_repr(tmp_path: Path) -> None:
    secret = "cs_9f8e7d6c5b4a39281706"
    spec = Providers.load(None, env={"ALTER_GITHUB_CLIENT_ID": "cid", "ALTER_GITHUB_CLIENT_SECRET": secret}).get(
        "github")
    assert secret not in repr(spec) and secret not in str(spec) and secret not in spec.model_dump_json()
    assert spec.client_secret is not None and spec.client_secret.get_secret_value() == secret
    settings = Settings(vault_url=f"sqlite+aiosqlite:///{tmp_path / 'v.db'}", providers_file=None)
    async with App(settings=settings) as app:
        assert secret not in repr(app.providers.get("github"))


def test_a_loopback_fake_of_a_builtin_provider_is_not_announced(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    local = _file(tmp_path, '[providers.github]\nhosts = ["127.0.0.1:8080", "localhost:8080"]\nallow_http = true\n')
    with caplog.at_level(logging.WARNING, logger="alter_agents.providers"):
        Providers.load(local, env={})
    assert caplog.records == []
