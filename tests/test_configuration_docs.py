"""docs/configuration.md lists every environment variable the code reads and every provider TOML key."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path
from types import UnionType
from typing import Union, get_args, get_origin

from pydantic import BaseModel

from alter_agents.providers.spec import ProviderSpec

ROOT = Path(__file__).resolve().parent.parent
DOC = (ROOT / "docs" / "configuration.md").read_text("utf-8")
README = (ROOT / "README.md").read_text("utf-8")


def _documented(name: str) -> bool:
    """Named in a table row's first cell, as code."""
    return re.search(rf"^\| `{re.escape(name)}` \|", DOC, re.M) is not None


def _variables_in_code() -> set[str]:
    found: set[str] = set()
    for package in ("alter_agents", "mcp_server"):
        for path in (ROOT / package).rglob("*.py"):
            text = path.read_text("utf-8")
            found |= set(re.findall(r"\bALTER_[A-Z0-9_]*[A-Z0-9]\b", text))
            # f"ALTER_{name}_" + "CLIENT_ID": a per-provider variable, documented as ALTER_<PROVIDER>_...
            if re.search(r"f\"ALTER_\{", text):
                found |= {f"ALTER_<PROVIDER>_{suffix}" for suffix in re.findall(r"\"(CLIENT_[A-Z]+)\"", text)}
    return found


def _model_of(annotation: object) -> type[BaseModel] | None:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    if get_origin(annotation) in (Union, UnionType):
        for arg in get_args(annotation):
            if (model := _model_of(arg)) is not None:
                return model
    return None


def _keys(model: type[BaseModel], prefix: str = "") -> set[str]:
    keys: set[str] = set()
    for name, field in model.model_fields.items():
        keys.add(prefix + name)
        if (nested := _model_of(field.annotation)) is not None:
            keys |= _keys(nested, f"{prefix}{name}.")
    return keys


def test_the_variable_scan_sees_what_the_code_reads() -> None:
    found = _variables_in_code()
    assert {"ALTER_DATA_DIR", "ALTER_VAULT_URL", "ALTER_GRANT_ID", "ALTER_USER_TOKEN_FILE",
            "ALTER_VAULT_KEY_FILE", "ALTER_<PROVIDER>_CLIENT_ID", "ALTER_<PROVIDER>_CLIENT_SECRET"} <= found


def test_every_environment_variable_is_documented() -> None:
    missing = sorted(v for v in _variables_in_code() if not _documented(v))
    assert missing == [], f"add these to docs/configuration.md: {missing}"


def test_every_provider_key_is_documented() -> None:
    keys = _keys(ProviderSpec) - {"name"}  # the table's name, [providers.NAME], is not a key inside it
    assert {"display_name", "allow_http", "client_id", "client_secret", "account.display_field",
            "inject.format"} <= keys
    missing = sorted(k for k in keys if not _documented(k))
    assert missing == [], f"add these to docs/configuration.md: {missing}"


def test_shell_completion_is_documented_and_works() -> None:
    line = 'eval "$(_ALTER_AGENTS_COMPLETE=bash_source alter-agents)"'
    assert line in DOC
    cli = str(Path(sys.executable).parent / "alter-agents")
    script = subprocess.run([cli], env={"_ALTER_AGENTS_COMPLETE": "bash_source", "PATH": ""}, capture_output=True,
                            text=True, timeout=60)
    assert script.returncode == 0 and "complete -o nosort -F _alter_agents_completion alter-agents" in script.stdout


def _python_blocks(text: str) -> list[str]:
    return re.findall(r"```python\n(.*?)```", text, re.S)


def test_readme_python_snippets_compile_as_pasted() -> None:
    """No top-level `await`: a snippet pasted into a file or `python -c` must at least compile."""
    blocks = _python_blocks(README)
    assert blocks
    for block in blocks:
        compile(block, "README.md", "exec")  # a top-level await is a SyntaxError here


def test_readme_keeps_exactly_two_set_up_commands() -> None:
    setup = README.split("## Set-up", 1)[1].split("\n## ", 1)[0]
    commands = [c.strip() for c in re.findall(r"```sh\n(.*?)```", setup, re.S)]
    assert len(commands) == 2 and all("\n" not in c for c in commands), commands
    serve, test = commands
    assert serve.endswith("alter-agents mcp") and "pytest" in test
