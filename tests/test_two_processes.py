"""Two processes writing one SQLite file at once: the CLI adding secrets while a script makes calls."""

from __future__ import annotations

import asyncio
import os
import sys
from pathlib import Path

from alter_agents.models import APP
from tests.conftest import Deployment

CLI = str(Path(sys.executable).parent / "alter-agents")
ROUNDS = 6


async def test_the_cli_and_an_app_share_one_sqlite_file_without_locking_errors(
    sqlite_deployment: Deployment,
) -> None:
    d = sqlite_deployment.local()
    d.upstream.add_secret("sk-script-0001", "script-acct")
    env = {**{k: v for k, v in os.environ.items() if not k.startswith("ALTER_")}, **d.env, "CLI": CLI}
    loop = (f'for i in $(seq 1 {ROUNDS}); do printf "sk-cli-secret-$i" | '
            '"$CLI" secrets add keyed --owner app --account "cli-$i" || exit 1; done')
    async with d.app() as app:
        await app.vault.add_secret("stripe", "sk-script-0001", owner=APP, account="script-acct")
        cli = await asyncio.create_subprocess_exec("bash", "-c", loop, env=env, stdout=asyncio.subprocess.PIPE,
                                                   stderr=asyncio.subprocess.PIPE)
        communicate = asyncio.ensure_future(cli.communicate())
        calls = 0
        while not communicate.done():
            batch = await asyncio.gather(*(
                app.request("POST", d.upstream.echo_url(f"n/{calls + i}"), provider="stripe", json={"i": i})
                for i in range(5)
            ))
            assert [r.status for r in batch] == [200] * 5
            calls += 5
            await asyncio.sleep(0)
        out, err = await asyncio.wait_for(communicate, 120)
        assert cli.returncode == 0, err.decode()
        assert b"database is locked" not in out + err
        stored = await app.vault.list_grants(provider="keyed")
        assert sorted(g.account for g in stored) == sorted(f"cli-{i}" for i in range(1, ROUNDS + 1))
        audit = await app.vault.audit(10_000)
    assert calls >= 10
    assert sum(1 for e in audit if e.action == "call" and e.status == 200) == calls
    assert sum(1 for e in audit if e.action == "secret_added") == ROUNDS + 1
