"""`alter-agents audit`: read, export, prune and verify the audit log."""

from __future__ import annotations

import csv
import io
import json
import os
import re
import time
from datetime import UTC, datetime
from typing import Any

import click

from alter_agents.cli_common import emit, json_option, run
from alter_agents.cli_errors import CliFailure
from alter_agents.vault.audit_ledger import AuditFilter
from alter_agents.vault.local import LocalVault
from alter_agents.vault.store import AuditEntry

_COLUMNS = ["at", "action", "principal", "provider", "grant_id", "method", "host", "path", "status", "outcome",
            "surface", "tool", "run_id", "thread_id", "session_id", "request_id", "trace_id", "latency_ms", "detail",
            "seq"]
_TABLE = ["at", "action", "principal", "provider", "grant_id", "method", "host", "path", "status", "outcome"]
_RELATIVE = re.compile(r"^(\d+)([smhd])$")


def _moment(text: str | None, option: str) -> float | None:
    """An ISO date/time (UTC unless it says otherwise) or a span back from now: 30m, 12h, 7d."""
    if text is None:
        return None
    if found := _RELATIVE.match(text.strip()):
        unit = {"s": 1, "m": 60, "h": 3600, "d": 86400}[found.group(2)]
        return time.time() - int(found.group(1)) * unit
    try:
        moment = datetime.fromisoformat(text.strip())
    except ValueError:
        raise CliFailure(f"{option} {text!r}: use an ISO date (2026-12-01, 2026-12-01T08:00) or a span (30m, 12h, "
                         "7d).", code="invalid_arguments") from None
    return (moment if moment.tzinfo else moment.replace(tzinfo=UTC)).timestamp()


def _row(entry: AuditEntry) -> dict[str, Any]:
    row = {c: getattr(entry, c, None) for c in _COLUMNS}
    row["at"] = entry.at.isoformat(timespec="milliseconds")
    if entry.latency_ms is not None:
        row["latency_ms"] = round(entry.latency_ms, 1)
    return row


@click.group(invoke_without_command=True)
@click.option("--since", help="From this time: an ISO date/time (UTC) or a span back from now (30m, 12h, 7d).")
@click.option("--until", help="Before this time (same forms).")
@click.option("--user", help="Only this principal: user:SUB, group:NAME, app (a bare SUB means user:SUB).")
@click.option("--provider", help="Only this provider.")
@click.option("--grant", "grant_id", help="Only this grant.")
@click.option("--outcome", help="ok, error, or one code: http_403, policy_denied, upstream_timeout, …")
@click.option("--limit", default=50, show_default=True, type=click.IntRange(min=1))
@click.option("--format", "fmt", type=click.Choice(["table", "json", "jsonl", "csv"]), default=None,
              help="Output: a table (default), JSON, JSON Lines or CSV (for export).")
@json_option
@click.pass_context
def audit(ctx: click.Context, since: str | None, until: str | None, user: str | None, provider: str | None,
          grant_id: str | None, outcome: str | None, limit: int, fmt: str | None, as_json: bool) -> None:
    """Which user's agent did what, with which account, in which run: filter and export the audit log."""
    if ctx.invoked_subcommand is not None:
        return
    if fmt and as_json and fmt != "json":
        raise click.UsageError("--json and --format do not go together; use --format only.")
    principal = user if user is None or ":" in user or user == "app" else f"user:{user}"
    where = AuditFilter(since=_moment(since, "--since"), until=_moment(until, "--until"), principal=principal,
                        provider=provider, grant_id=grant_id, outcome=outcome, limit=limit)
    _list(where, "json" if as_json else (fmt or "table"))


@run
async def _list(where: AuditFilter, fmt: str) -> None:
    vault = LocalVault()
    try:
        rows = [_row(e) for e in await vault.audit_query(where)]
    finally:
        await vault.aclose()
    if fmt == "jsonl":
        for row in rows:
            click.echo(json.dumps(row, default=str))
    elif fmt == "csv":
        out = io.StringIO()
        writer = csv.DictWriter(out, fieldnames=_COLUMNS, lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
        click.echo(out.getvalue(), nl=False)
    else:
        emit(rows, _TABLE, fmt == "json")


@audit.command("prune")
@click.option("--before", help="Delete rows older than this (ISO date/time or a span back from now, e.g. 90d).")
@json_option
@run
async def prune(before: str | None, as_json: bool) -> None:
    """Delete old audit rows (retention); without --before, ALTER_AUDIT_RETENTION_DAYS decides."""
    days = os.environ.get("ALTER_AUDIT_RETENTION_DAYS")
    if before is None and not days:
        raise CliFailure("Say what to keep: --before DATE, or set ALTER_AUDIT_RETENTION_DAYS.",
                         code="invalid_arguments")
    if before is None:
        try:
            cutoff = time.time() - float(days or "") * 86400
        except ValueError:
            raise CliFailure(f"ALTER_AUDIT_RETENTION_DAYS must be a number of days, not {days!r}.",
                             code="invalid_arguments") from None
    else:
        cutoff = _moment(before, "--before") or 0.0
    vault = LocalVault()
    try:
        deleted = await vault.audit_prune(cutoff)
    finally:
        await vault.aclose()
    when = datetime.fromtimestamp(cutoff, UTC).isoformat(timespec="seconds")
    if as_json:
        click.echo(json.dumps({"deleted": deleted, "before": when}))
    else:
        click.echo(f"Deleted {deleted} audit rows older than {when}; the rest still verifies.")


@audit.command("verify")
@json_option
@run
async def verify(as_json: bool) -> None:
    """Check the hash chain: report the first row that was changed, removed or inserted."""
    vault = LocalVault()
    try:
        report, legacy = await vault.audit_verify()
    finally:
        await vault.aclose()
    result = {"ok": report.ok, "checked": report.checked, "head": report.head, "problem": report.problem,
              "seq": report.seq, "detail": report.detail or None, "unchained_legacy_rows": legacy}
    if as_json:
        click.echo(json.dumps(result))
    elif report.ok:
        click.echo(f"ok: {report.checked} rows verified; head {report.head} (keep this hash elsewhere to "
                   "prove later that nothing before it was rewritten)")
    if not report.ok:
        if not as_json:
            click.echo(f"TAMPERED: {report.detail} (row {report.seq}, {report.problem})", err=True)
        raise SystemExit(3)
