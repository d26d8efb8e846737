"""Connecting from a machine without a browser: the device flow through App and the CLI, stored like any grant."""

from __future__ import annotations

import asyncio
import os
import re
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import anyio
import httpx
import pytest

from alter_agents import ConnectDeniedError, ConnectStart, ConnectTimeoutError, Settings
from tests.conftest import Deployment

CLI = str(Path(sys.executable).with_name("alter-agents"))


@pytest.fixture
def device_deployment(sqlite_deployment: Deployment) -> Deployment:
    """The usual deployment, with github and google offering device sign-in at the test authorization server."""
    d = sqlite_deployment
    path = Path(d.env["ALTER_PROVIDERS_FILE"])
    text = path.read_text("utf-8").replace(
        f'token_url = "{d.oauth.url}/token"\n',
        f'token_url = "{d.oauth.url}/token"\ndevice_authorization_url = "{d.oauth.device_authorization_url}"\n',
    )
    assert text.count("device_authorization_url") == 2
    device_file = path.with_name("providers-device.toml")
    device_file.write_text(text, "utf-8")
    env = {**d.env, "ALTER_PROVIDERS_FILE": str(device_file)}
    d.oauth.device_interval = 0.1
    return Deployment(Settings.from_env(env), env, d.idp, d.oauth, d.upstream)


async def _type_code(d: Deployment, start: ConnectStart, user: str, *, approve: bool = True) -> None:
    """The person opens the verification URI on another device and types the code."""
    assert start.method == "device" and start.user_code and start.verification_uri
    async with httpx.AsyncClient() as person:
        page = await person.get(start.verification_uri)
        assert page.status_code == 200
        await person.post(start.verification_uri, data={"user_code": start.user_code, "user": user,
                                                        "confirm": "yes" if approve else "no"})


async def test_app_connect_by_device_code_stores_a_usable_grant(device_deployment: Deployment) -> None:
    d = device_deployment.local()
    d.oauth.device_interval = 0.1
    shown: list[ConnectStart] = []

    async def show(start: ConnectStart) -> None:
        shown.append(start)
        asyncio.get_running_loop().create_task(_type_code(d, start, "octo-ssh"))

    async with d.app() as app:
        [result] = await app.connect(["github"], method="device", on_url=show, label="ssh", timeout=20)
        assert result.account == "octo-ssh" and result.label == "ssh" and result.operation == "creation"
        [start] = shown
        assert start.verification_uri == f"{d.oauth.url}/device" and re.fullmatch(r"[A-Z]{4}-[A-Z]{4}",
                                                                                    start.user_code or "")
        response = await app.request("GET", d.upstream.echo_url("who"), grant_id=result.grant_id)
        assert response.status == 200 and response.json_body()["account"] == "octo-ssh"
        [grant] = await app.grants(provider="github")
        assert grant.grant_id == result.grant_id and grant.owner == "app"
        connects = [e for e in await app.vault.audit(limit=50) if e.action == "connect"]  # type: ignore[attr-defined]
        assert [e.grant_id for e in connects] == [result.grant_id]


async def test_user_owned_device_connect_and_reauth_update_the_same_grant(device_deployment: Deployment) -> None:
    d = device_deployment
    d.oauth.device_interval = 0.1
    alice = d.idp.issue("alice")

    async def show(start: ConnectStart) -> None:
        asyncio.get_running_loop().create_task(_type_code(d, start, "alice-gh"))

    async with d.app() as app:
        [first] = await app.connect(["github"], method="device", on_url=show, user_token=alice, timeout=20)
        [again] = await app.connect(["github"], method="device", on_url=show, user_token=alice, timeout=20)
        assert again.grant_id == first.grant_id and again.operation == "reauth"
        [grant] = await app.grants(user_token=alice)
        assert grant.owner == "user:alice"


async def test_denied_and_expired_device_sign_ins_are_typed(device_deployment: Deployment) -> None:
    d = device_deployment.local()
    d.oauth.device_interval = 0.1

    async def deny(start: ConnectStart) -> None:
        asyncio.get_running_loop().create_task(_type_code(d, start, "x", approve=False))

    async with d.app() as app:
        with pytest.raises(ConnectDeniedError):
            await app.connect(["github"], method="device", on_url=deny, timeout=20)
        d.oauth.device_expires_in = 1
        with pytest.raises(ConnectTimeoutError):
            await app.connect(["github"], method="device", on_url=lambda _s: None, timeout=20)
        assert await app.grants() == []


async def test_a_stopped_process_ends_its_pending_device_flow_with_a_typed_outcome(
    device_deployment: Deployment
) -> None:
    d = device_deployment.local()
    d.oauth.device_interval = 0.1
    async with d.app() as first:
        start = await first.vault.start_connect("github", headless=True, method="device")
        assert (await first.vault.connect_status(start.session_id)).status == "pending"
    async with d.app() as other:  # another process reading the shared store after the first one stopped
        status = await other.vault.connect_status(start.session_id)
        assert status.status == "expired" and status.error and "stopped" in status.error
        with pytest.raises(ConnectTimeoutError, match="call connect again"):
            await other.vault.wait_connect(start.session_id, 1)


def test_cli_connect_device_prints_the_code_and_finishes_when_the_person_approves(
    device_deployment: Deployment
) -> None:
    d = device_deployment.local()
    d.oauth.device_interval = 0.1
    env = {**os.environ, **d.env, "HOME": str(Path(d.env["ALTER_DATA_DIR"]).parent)}
    with subprocess.Popen([CLI, "connect", "github", "--device", "--label", "box"], env=env, text=True,
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL) as proc:
        assert proc.stderr is not None
        lines: list[str] = []
        deadline = time.monotonic() + 30
        code = None
        while code is None and time.monotonic() < deadline:
            line = proc.stderr.readline()
            lines.append(line)
            found = re.fullmatch(r"\s+([A-Z]{4}-[A-Z]{4})\s*", line)
            code = found.group(1) if found else None
        assert code, lines
        assert any(f"open {d.oauth.url}/device" in line for line in lines)
        with httpx.Client() as person:
            person.post(f"{d.oauth.url}/device", data={"user_code": code, "user": "box-user", "confirm": "yes"})
        out, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err
    assert re.search(r"Connected github account box-user \(grant [0-9a-f-]{36}\)", out)


def test_cli_refuses_no_browser_with_device(device_deployment: Deployment) -> None:
    d = device_deployment.local()
    done = subprocess.run([CLI, "connect", "github", "--device", "--no-browser"], env={**os.environ, **d.env},
                          capture_output=True, text=True, timeout=60)
    assert done.returncode != 0 and "--no-browser does not apply to --device" in done.stderr
    assert "Traceback" not in done.stderr


async def test_the_connect_tool_uses_the_device_flow_where_no_browser_can_reach_this_machine(
    device_deployment: Deployment, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Over SSH with no public callback: `pending` at once with the code; after the person approves, connected."""
    from alter_agents import AlterTools, LocalSession

    monkeypatch.setenv("SSH_CONNECTION", "10.0.0.1 50000 10.0.0.2 22")  # only read, never dialled
    d = device_deployment.local()
    async with d.app() as app:
        tools = AlterTools(app, LocalSession(), connect_wait=10)
        with anyio.fail_after(5):
            pending = await tools.connect({"provider": "github"})
        assert pending.status == "pending" and pending.user_code and pending.verification_uri
        assert pending.verification_uri == f"{d.oauth.url}/device" and pending.user_code in pending.message
        again = await tools.connect({"provider": "github"})
        assert (again.status, again.user_code) == ("pending", pending.user_code)  # the same code until it expires
        async with httpx.AsyncClient() as person:
            await person.post(pending.verification_uri, data={"user_code": pending.user_code, "user": "ssh-octo",
                                                              "confirm": "yes"})
        with anyio.fail_after(10):
            while (done := await tools.connect({"provider": "github"})).status == "pending":
                await anyio.sleep(0.1)
        assert done.grant is not None and done.grant.account == "ssh-octo" and done.grant_id
        call = await tools.request({"url": f"{d.upstream.url}/reflect", "provider": "github"})
        assert call.body["account"] == "ssh-octo"


async def test_with_a_browser_or_a_public_callback_the_tool_keeps_the_browser_flow(
    device_deployment: Deployment, monkeypatch: pytest.MonkeyPatch
) -> None:
    from alter_agents import AlterTools, LocalSession

    monkeypatch.delenv("SSH_CONNECTION", raising=False)
    monkeypatch.delenv("SSH_TTY", raising=False)
    monkeypatch.setenv("DISPLAY", ":0")
    d = device_deployment.local()
    async with d.app() as app:
        pending = await AlterTools(app, LocalSession(), connect_wait=0).connect({"provider": "github"})
    assert pending.status == "pending" and pending.user_code is None
    assert pending.connect_url and pending.connect_url.startswith(f"{d.oauth.url}/authorize")


@pytest.mark.parametrize("mode", ["auto", "legacy"])
async def test_mcp_url_elicitation_carries_the_verification_uri_and_the_code(
    device_deployment: Deployment, mode: str
) -> None:
    from mcp import Client
    from mcp_types import ElicitRequestURLParams, ElicitResult

    from alter_agents import LocalSession
    from mcp_server import build_server
    from tests.mcp_support import payload

    d = replace(device_deployment.local(),
                settings=replace(device_deployment.local().settings, connect_method="device"))
    offered: list[ElicitRequestURLParams] = []
    async with d.app() as app, anyio.create_task_group() as people:

        async def human(_ctx: object, params: object) -> ElicitResult:
            assert isinstance(params, ElicitRequestURLParams)
            offered.append(params)
            code = params.message.split("enter the code ")[1].rstrip(".")

            async def type_it() -> None:
                await anyio.sleep(0.3)
                async with httpx.AsyncClient() as person:
                    await person.post(f"{d.oauth.url}/device", data={"user_code": code, "user": "mcp-dev",
                                                                      "confirm": "yes"})

            people.start_soon(type_it)
            return ElicitResult(action="accept")

        async with Client(build_server(app, LocalSession(), connect_wait=10), mode=mode,
                          elicitation_callback=human) as client:
            with anyio.fail_after(30):
                result = await client.call_tool("connect", {"provider": "github"})
                while payload(result).get("status") == "pending":  # 2026-07-28: the client comes back
                    await anyio.sleep(0.2)
                    result = await client.call_tool("connect", {"provider": "github"})
    assert payload(result)["grant"]["account"] == "mcp-dev"
    assert offered and offered[0].url.startswith(f"{d.oauth.url}/device?user_code=")
    assert f"{d.oauth.url}/device" in offered[0].message
