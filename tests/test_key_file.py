"""The at-rest key file: made once and atomically, never replaced beside a store that holds secrets."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from alter_agents import App, ConfigurationError, Settings, VaultKeyError
from alter_agents.models import APP
from alter_agents.vault.crypto import load_or_create_key
from tests.conftest import fresh_postgres

ROOT = Path(__file__).resolve().parent.parent
CLI = str(Path(sys.executable).with_name("alter-agents"))

# Each process imports everything, says it is ready, and opens the vault when the go file appears:
# the opens really coincide, however slowly a loaded machine starts the processes.
_OPEN_ON_GO = """
import asyncio, pathlib, sys, time
from alter_agents import App

barrier = pathlib.Path(sys.argv[1])
(barrier / f"ready-{sys.argv[2]}").touch()
while not (barrier / "go").exists():
    time.sleep(0.001)

async def main() -> None:
    async with App() as app:
        await app.grants()

asyncio.run(main())
"""
PROCESSES = 40


def _start_together(tmp_path: Path, envs: list[dict[str, str]]) -> list[tuple[int, str]]:
    """Run one opening process per env, released at once; (exit code, stderr) of each."""
    barrier = tmp_path / "barrier"
    barrier.mkdir()
    procs = [subprocess.Popen([sys.executable, "-c", _OPEN_ON_GO, str(barrier), str(i)], env=env, cwd=ROOT,
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
             for i, env in enumerate(envs)]
    deadline = time.monotonic() + 300
    while len(list(barrier.glob("ready-*"))) < len(procs) and time.monotonic() < deadline:
        time.sleep(0.05)
    (barrier / "go").touch()
    outcomes = []
    for proc in procs:
        _out, err = proc.communicate(timeout=300)
        outcomes.append((proc.returncode, err))
    return outcomes


def _env(tmp_path: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("ALTER_")}
    env.update(HOME=str(tmp_path / "home"), XDG_DATA_HOME=str(tmp_path / "xdg"), **extra)
    return env


@pytest.mark.timeout(600)
def test_processes_starting_together_on_a_fresh_data_dir_share_one_key(tmp_path: Path) -> None:
    data = tmp_path / "data"
    outcomes = _start_together(tmp_path, [_env(tmp_path, ALTER_DATA_DIR=str(data))] * (PROCESSES // 2))
    assert [err.strip().splitlines()[-1:] for code, err in outcomes if code != 0] == []
    assert sorted(p.name for p in data.iterdir() if "key" in p.name) == ["vault.key"]  # no temp files left


def test_threads_racing_at_the_key_file_all_read_one_whole_key(tmp_path: Path) -> None:
    """The race itself, lined up exactly: 30 openers reach the missing key file at the same instant.

    (Processes rarely line up this well on a small machine; this is where a non-atomic create shows
    `FileExistsError` or an empty key.)
    """
    sys.setswitchinterval(1e-6)
    try:
        for trial in range(20):
            key_file = tmp_path / f"trial-{trial}" / "vault.key"
            barrier, keys, errors = threading.Barrier(30), list[str](), list[str]()

            def open_key(path: Path = key_file, barrier: threading.Barrier = barrier,
                         keys: list[str] = keys, errors: list[str] = errors) -> None:
                barrier.wait()
                try:
                    keys.append(load_or_create_key(None, path))
                except Exception as exc:  # collected: the assertion below names them
                    errors.append(repr(exc))

            threads = [threading.Thread(target=open_key) for _ in range(30)]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join()
            assert errors == [] and set(keys) == {key_file.read_text().strip()}, trial
            assert [p.name for p in key_file.parent.iterdir()] == ["vault.key"]
    finally:
        sys.setswitchinterval(0.005)


async def test_a_deleted_key_file_is_not_replaced_beside_a_store_with_secrets(tmp_path: Path) -> None:
    data = tmp_path / "data"
    settings = Settings.from_env({"ALTER_DATA_DIR": str(data)})
    async with App(settings=settings) as app:
        await app.vault.add_secret("stripe", "sk_test_kept", owner=APP, account="acct")  # type: ignore[attr-defined]
    key_file = data / "vault.key"
    key = key_file.read_text()
    key_file.unlink()

    async with App(settings=settings) as app:
        with pytest.raises(VaultKeyError) as info:
            await app.grants()
    assert str(key_file) in info.value.message and "ALTER_VAULT_KEY" in info.value.message
    assert not key_file.exists()  # no new key was made

    result = subprocess.run([CLI, "grants", "list"], env=_env(tmp_path, ALTER_DATA_DIR=str(data)),
                            capture_output=True, text=True, timeout=60)
    assert result.returncode != 0 and "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1 and str(key_file) in result.stderr
    assert not key_file.exists()

    key_file.write_text(key)  # the documented recovery: put the key back
    key_file.chmod(0o600)
    async with App(settings=settings) as app:
        assert [g.account for g in await app.grants()] == ["acct"]


async def test_a_wrong_key_file_is_named_in_the_error(tmp_path: Path) -> None:
    data = tmp_path / "data"
    settings = Settings.from_env({"ALTER_DATA_DIR": str(data)})
    async with App(settings=settings) as app:
        await app.grants()
    from alter_agents.vault.crypto import generate_key

    (data / "vault.key").write_text(generate_key())
    async with App(settings=settings) as app:
        with pytest.raises(VaultKeyError) as info:
            await app.grants()
    assert str(data / "vault.key") in info.value.message


async def test_postgres_without_a_key_writes_no_local_key_file(tmp_path: Path) -> None:
    url = await fresh_postgres()
    env = _env(tmp_path, ALTER_VAULT_URL=url, ALTER_DATA_DIR=str(tmp_path / "data"))
    async with App(settings=Settings.from_env(env)) as app:
        with pytest.raises(ConfigurationError) as info:
            await app.grants()
    assert "ALTER_VAULT_KEY" in info.value.message
    result = subprocess.run([CLI, "grants", "list"], env=env, capture_output=True, text=True, timeout=60)
    assert result.returncode != 0 and "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1 and "ALTER_VAULT_KEY" in result.stderr
    assert [p for p in tmp_path.rglob("*") if p.name.endswith(".key")] == []


async def test_the_data_directory_and_store_files_are_private_whatever_the_umask(tmp_path: Path) -> None:
    data = tmp_path / "data"
    old = os.umask(0o022)
    try:
        async with App(settings=Settings.from_env({"ALTER_DATA_DIR": str(data)})) as app:
            await app.vault.add_secret("stripe", "sk_test_private", owner=APP, account="acct")  # type: ignore[attr-defined]
            files = {p.name: stat.S_IMODE(p.stat().st_mode) for p in data.iterdir()}
    finally:
        os.umask(old)
    assert stat.S_IMODE(data.stat().st_mode) == 0o700
    assert {"vault.db", "vault.db-wal", "vault.db-shm", "vault.key"} <= set(files)
    assert {name: mode for name, mode in files.items() if mode != 0o600} == {}
