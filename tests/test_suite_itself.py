"""The test suite's own promises: a database of its own per run, and no silent skips in CI."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import fresh_postgres, make_url_database

ROOT = Path(__file__).resolve().parent.parent


async def test_every_import_of_the_conftest_uses_this_runs_own_database() -> None:
    """pytest's `conftest` and the tests' `tests.conftest` are two modules; both must name this run's database."""
    url = await fresh_postgres()
    assert make_url_database(url).startswith("alter_test_")
    import conftest  # type: ignore[import-not-found]  # the module object pytest itself loaded

    assert url == conftest.PG_URL


@pytest.mark.parametrize(("ci", "exit_code", "summary"), [("true", 1, "1 failed"), ("", 0, "1 skipped")])
def test_a_skipped_test_fails_the_run_in_ci(tmp_path: Path, ci: str, exit_code: int, summary: str) -> None:
    (tmp_path / "test_skips.py").write_text("import pytest\n\ndef test_needs_a_tool():\n"
                                            "    pytest.skip('the tool is not installed')\n", "utf-8")
    env = {k: v for k, v in os.environ.items() if not k.startswith("ALTER_TEST_PG_RUN")} | {"CI": ci}
    done = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-p", "tests.conftest",
                           "--rootdir", str(tmp_path), str(tmp_path / "test_skips.py")],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == exit_code, done.stdout + done.stderr
    assert summary in done.stdout
    if ci:
        assert "skipped in CI, where every test must run: the tool is not installed" in done.stdout
