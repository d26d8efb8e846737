"""What the CLI's commands share: running an async command, the --json option, and printing rows."""

from __future__ import annotations

import asyncio
import functools
import json
from collections.abc import Callable, Coroutine, Sequence
from typing import Any, ParamSpec

import click

P = ParamSpec("P")

json_option = click.option("--json", "as_json", is_flag=True, help="Machine-readable output (errors too).")


def run(func: Callable[P, Coroutine[Any, Any, None]]) -> Callable[P, None]:
    """Run an async command; failures (and Ctrl-C) are reported by the group's error boundary."""

    @functools.wraps(func)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> None:
        asyncio.run(func(*args, **kwargs))

    return wrapper


def cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, list | tuple):
        return ",".join(str(v) for v in value) or "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    return str(value)


def table(rows: Sequence[dict[str, Any]], columns: Sequence[str]) -> str:
    if not rows:
        return "(none)"
    cells = [[cell(row.get(c)) for c in columns] for row in rows]
    widths = [max(len(c), *(len(r[i]) for r in cells)) for i, c in enumerate(columns)]
    lines = ["  ".join(c.upper().ljust(w) for c, w in zip(columns, widths, strict=True))]
    lines += ["  ".join(v.ljust(w) for v, w in zip(r, widths, strict=True)) for r in cells]
    return "\n".join(line.rstrip() for line in lines)


def emit(rows: list[dict[str, Any]], columns: Sequence[str], as_json: bool) -> None:
    click.echo(json.dumps(rows, indent=2, default=str) if as_json else table(rows, columns))
