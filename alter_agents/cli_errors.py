"""The CLI's error boundary: every failure leaves as one line on stderr (JSON under `--json`), never a traceback.

A person who mistypes a URL or starts a second server on a taken port should read what to do next, not a
stack of SQLAlchemy frames; scripts that asked for `--json` get `{"error": {"code", "message"}}`.
"""

from __future__ import annotations

import errno
import json
import logging
import socket
import sys
from collections.abc import Sequence
from typing import Any, NoReturn

import click
from sqlalchemy.exc import DBAPIError, SQLAlchemyError

from alter_agents.errors import AlterError

SECRET_OPTIONS = {"--api-key": "ALTER_API_KEY"}  # options whose value is a credential, and their variable
INTERRUPTED = 130  # 128 + SIGINT, what shells report for a command stopped by Ctrl-C

_log = logging.getLogger("alter_agents.cli")


class CliFailure(Exception):
    """A failure the CLI itself detects (bad option combination, ambiguous prefix, ...)."""

    def __init__(self, message: str, *, code: str = "invalid_arguments", exit_code: int = 1) -> None:
        super().__init__(message)
        self.message = message
        self.code = code
        self.exit_code = exit_code


def _joined(text: str) -> str:
    """A message on one line, whatever wrote it."""
    return "; ".join(line.strip() for line in text.splitlines() if line.strip())


def _first_line(text: str) -> str:
    return text.strip().splitlines()[0] if text.strip() else ""


def _os_error(exc: OSError) -> str:
    if isinstance(exc, socket.gaierror):
        return f"That host name does not resolve ({exc.strerror}); use an address such as 127.0.0.1."
    if exc.errno == errno.EADDRINUSE:
        return "That address is already in use (another server is listening there); stop it or choose " \
               "another --port (0 picks a free one)."
    if exc.errno == errno.EACCES and not exc.filename:
        return "Permission denied: ports below 1024 need privileges; choose another --port."
    if exc.errno == errno.EADDRNOTAVAIL:
        return "That --host is not an address of this machine; use 127.0.0.1 (or 0.0.0.0 for every interface)."
    where = f" ({exc.filename})" if exc.filename else ""
    return f"{exc.strerror or type(exc).__name__}{where}."


def describe(exc: BaseException) -> tuple[str, str, int, dict[str, Any] | None]:
    """(code, message, exit status, tool-error payload when there is one) for any exception."""
    if isinstance(exc, AlterError):
        payload = exc.payload().model_dump(mode="json", exclude_none=True)["error"]
        payload["message"] = _joined(exc.message)
        return exc.code, payload["message"], 1, payload
    if isinstance(exc, CliFailure):
        return exc.code, exc.message, exc.exit_code, None
    if isinstance(exc, click.ClickException):
        ctx = getattr(exc, "ctx", None)
        hint = f"; see '{ctx.command_path} --help'" if ctx is not None else ""
        return "invalid_arguments", exc.format_message().rstrip(".") + hint + ".", exc.exit_code, None
    if isinstance(exc, KeyboardInterrupt | click.Abort):
        return "interrupted", "Interrupted.", INTERRUPTED, None
    if isinstance(exc, DBAPIError):
        reason = _first_line(str(exc.orig)) or type(exc.orig).__name__
        return "internal", f"The vault's database refused: {reason.rstrip('.')}. Check ALTER_VAULT_URL.", 1, None
    if isinstance(exc, SQLAlchemyError):
        return "internal", f"The vault's database failed: {_first_line(str(exc)).rstrip('.')}.", 1, None
    if isinstance(exc, OSError):
        return "internal", _os_error(exc), 1, None
    if isinstance(exc, ValueError):
        return "invalid_arguments", _first_line(str(exc)), 2, None
    text = f"{type(exc).__name__}: {_first_line(str(exc))}".rstrip(": ")
    return "internal", f"Unexpected {text} (run with -vv for details).", 1, None


def fail(exc: BaseException, as_json: bool) -> NoReturn:
    """Print `exc` as one line and exit with its status."""
    code, message, status, payload = describe(exc)
    _log.debug("command failed", exc_info=exc)
    if as_json:
        body = payload or {"code": code, "message": message}
        click.echo(json.dumps({"error": body}, separators=(",", ":")), err=True)
    elif code == "interrupted":
        click.echo(message, err=True)
    else:
        click.echo(f"error: {message}", err=True)
    sys.exit(status)


def wants_json(args: Sequence[str]) -> bool:
    """`--json` anywhere before a `--` (the flag is per command; errors can happen before it is parsed)."""
    for arg in args:
        if arg == "--":
            return False
        if arg == "--json":
            return True
    return False


def warn_secret_options(args: Sequence[str]) -> None:
    """A secret on the command line is readable by every local user in /proc/<pid>/cmdline and `ps`."""
    for arg in args:
        if arg == "--":
            break
        option = arg.split("=", 1)[0]
        if option in SECRET_OPTIONS:
            click.echo(f"warning: {option} on the command line is visible to other local users (ps, /proc); "
                       f"set {SECRET_OPTIONS[option]} in the environment instead.", err=True)


class BoundaryGroup(click.Group):
    """A click group whose every failure is one line on stderr."""

    def main(  # type: ignore[override]
        self, args: Sequence[str] | None = None, prog_name: str | None = None,
        complete_var: str | None = None, standalone_mode: bool = True, **extra: Any,
    ) -> Any:
        argv = list(sys.argv[1:] if args is None else args)
        warn_secret_options(argv)
        try:
            result = super().main(argv, prog_name, complete_var, standalone_mode=False, **extra)
        except click.exceptions.NoArgsIsHelpError as exc:  # `alter-agents grants` alone: show its help
            exc.show()
            sys.exit(exc.exit_code)
        except Exception as exc:
            fail(exc, wants_json(argv))
        except KeyboardInterrupt as exc:  # raised outside click's own handler (e.g. during shutdown)
            fail(exc, wants_json(argv))
        if not standalone_mode:
            return result
        sys.exit(result if isinstance(result, int) else 0)
