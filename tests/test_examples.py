"""The examples, run as a person runs them: in a subprocess, approving the consent pages by hand."""

from __future__ import annotations

import ast
import asyncio
import html
import importlib.metadata as md
import re
import sys
import tomllib
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ("bootstrap_connect", "langchain_agent", "custom_tools")
URL = re.compile(r"(http://127\.0\.0\.1:\d+/\S+)")
PREFILLED = re.compile(r'name="account" value="([^"]*)"')

pytestmark = pytest.mark.timeout(120)

Typist = Callable[[str], str]  # the consent page's pre-filled account -> what the person submits


async def _person(url: str, typed: str | None, first_empty: bool) -> None:
    """Open the consent page in a browser, (optionally) submit it empty first, then approve."""
    async with httpx.AsyncClient(follow_redirects=True, timeout=10) as browser:
        page = await browser.get(url)
        page.raise_for_status()
        prefilled = html.unescape(PREFILLED.search(page.text).group(1))  # type: ignore[union-attr]
        if first_empty:
            again = await browser.post(url, data={"account": "  ", "decision": "approve"})
            assert again.status_code == 400 and "Type the account" in again.text
        done = await browser.post(url, data={"account": typed or prefilled, "decision": "approve"})
        done.raise_for_status()


async def _run(example: str, *args: str, typed: list[str] | None = None, first_empty: bool = False,
               prelude: str = "") -> tuple[int, str]:
    """Run an example; each sign-in URL it prints is approved by `_person`. Returns (exit code, output)."""
    code = prelude + f"import runpy, sys; sys.argv = [{example!r}, *{list(args)!r}]; " \
                     f"runpy.run_path({str(ROOT / 'examples' / f'{example}.py')!r}, run_name='__main__')"
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-c", code, cwd=ROOT, stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
    )
    assert proc.stdout is not None
    lines: list[str] = []
    answers = iter(typed or [])
    async with asyncio.timeout(100):
        while line := (await proc.stdout.readline()).decode():
            lines.append(line)
            found = URL.search(line)
            if found and "--auto" not in args and "Open this URL" in "".join(lines[-2:]):
                await _person(found.group(1), next(answers, None), first_empty)
        await proc.wait()
    return proc.returncode or 0, "".join(lines)


async def test_langchain_agent_approving_the_prefilled_account_twice_finishes_with_one_account() -> None:
    code, out = await _run("langchain_agent")
    assert code == 0, out
    assert "Only one demo account is connected (alice@demo.test)" in out
    assert "KeyError" not in out and "OK status=200 account=alice@demo.test" in out


async def test_custom_tools_approving_the_prefilled_account_twice_uses_that_account() -> None:
    code, out = await _run("custom_tools", first_empty=True)
    assert code == 0, out
    assert "post_message -> [success]" in out and '"author":"alice@demo.test"' in out
    assert "OK messages posted: 1" in out


async def test_custom_tools_uses_the_accounts_the_person_typed() -> None:
    code, out = await _run("custom_tools", typed=["bob@example.org", "bob@corp.example"])
    assert code == 0, out
    assert "ambiguous_grant" in out and '"author":"bob@corp.example"' in out
    assert '"account": "bob@example.org"' in out  # the MCP call named the personal account the person typed
    assert "alice@demo.test" not in out


async def test_bootstrap_connect_uses_the_typed_account_and_the_httpx_response() -> None:
    code, out = await _run("bootstrap_connect", typed=["robot@ops.example"])
    assert code == 0, out
    assert re.search(r"App.request by grant id -> 200 robot@ops.example \(grant [0-9a-f-]{36}, account robot", out)
    assert "OK grant_id=" in out


def _closure(extra: str) -> set[str]:
    """Every distribution `pip install -e '.[extra]'` installs: pyproject.toml's own requirements, then
    each dependency's installed metadata, markers and extras followed."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text("utf-8"))["project"]
    names: set[str] = set()
    pending = [Requirement(r) for r in project["dependencies"]]
    extras, todo = set(), [extra]
    while todo:
        name = todo.pop()
        if name not in extras:
            extras.add(name)
            for text in project["optional-dependencies"][name]:
                req = Requirement(text)
                if canonicalize_name(req.name) == canonicalize_name(project["name"]):
                    todo.extend(req.extras)
                else:
                    pending.append(req)
    seen: set[tuple[str, frozenset[str]]] = set()
    while pending:
        req = pending.pop()
        key = (canonicalize_name(req.name), frozenset(req.extras))
        if key in seen:
            continue
        seen.add(key)
        names.add(key[0])
        for text in md.requires(req.name) or []:
            dep = Requirement(text)
            if dep.marker and not any(dep.marker.evaluate({"extra": e}) for e in {"", *req.extras}):
                continue
            pending.append(dep)
    return names


@pytest.mark.parametrize("example", EXAMPLES)
async def test_each_example_runs_with_auto_and_prints_its_install_line(example: str) -> None:
    assert "pip install -e '.[examples]'" in (ROOT / "examples" / f"{example}.py").read_text("utf-8")
    code, out = await _run(example, "--auto")
    assert code == 0, out
    assert re.search(r"^OK ", out, re.MULTILINE), out


def _imported_top_names(path: Path) -> set[str]:
    """Top-level modules a file imports (anywhere in it) or hands to `require(...)`."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text("utf-8"))):
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            names.add(node.module.split(".")[0])
        elif isinstance(node, ast.Call) and getattr(node.func, "id", None) == "require":
            names.update(a.value for a in node.args if isinstance(a, ast.Constant) and isinstance(a.value, str))
        elif isinstance(node, ast.Tuple) and any(isinstance(e, ast.Constant) and e.value == "python_multipart"
                                                 for e in node.elts):
            names.add("python_multipart")
    return names


def test_every_package_the_examples_import_comes_with_the_examples_extra() -> None:
    local = {"_demo_provider", "alter_agents", "mcp_server"}
    imported = set().union(*(_imported_top_names(p) for p in (ROOT / "examples").glob("*.py")))
    third_party = imported - set(sys.stdlib_module_names) - local - {"__future__"}
    found = md.packages_distributions()
    needed = {canonicalize_name(d) for name in third_party for d in found[name]}
    installed = _closure("examples")
    assert {"langchain-core", "mcp", "python-multipart", "httpx", "uvicorn", "starlette"} <= needed
    assert needed - installed == set()
    assert "pip install -e '.[examples]'" in (ROOT / "examples" / "README.md").read_text("utf-8")


def test_a_missing_extra_prints_the_install_line() -> None:
    import subprocess

    hide = "import importlib.util as u; real = u.find_spec; " \
           "u.find_spec = lambda n, *a: None if n == 'langchain_core' else real(n, *a); "
    done = subprocess.run(
        [sys.executable, "-c", hide + "import runpy; runpy.run_path('examples/langchain_agent.py', "
                                      "run_name='__main__')"],
        cwd=ROOT, capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 1
    assert done.stderr.strip() == ("This example needs packages that are not installed (langchain_core). "
                                   "From the repository root: pip install -e '.[examples]'")
