"""See what agents did: correlated audit rows, OpenTelemetry spans, /metrics, export, and tamper evidence."""

from __future__ import annotations

import csv
import io
import json
import os
import sqlite3
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx
import pytest
from langchain_core.callbacks import AsyncCallbackHandler
from mcp import Client
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from prometheus_client.parser import text_string_to_metric_families

from alter_agents import App, LocalSession
from alter_agents.langchain import AlterToolkit
from alter_agents.vault.audit_ledger import AuditFilter
from mcp_server import build_server
from tests.conftest import Deployment, LinkTwoGoogleAccounts
from tests.fixtures import AsyncBrowser, OAuthServer
from tests.mcp_support import http_server, link, payload

pytestmark = pytest.mark.timeout(90)

TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
PARENT_SPAN = "00f067aa0ba902b7"
TRACEPARENT = f"00-{TRACE_ID}-{PARENT_SPAN}-01"
CLI = str(Path(sys.executable).with_name("alter-agents"))
_EXPORTER = InMemorySpanExporter()


@pytest.fixture
def spans() -> InMemorySpanExporter:
    """The OpenTelemetry SDK's in-memory exporter, installed once for the process (an application would)."""
    if not isinstance(trace.get_tracer_provider(), TracerProvider):
        provider = TracerProvider()
        provider.add_span_processor(SimpleSpanProcessor(_EXPORTER))
        trace.set_tracer_provider(provider)
    _EXPORTER.clear()
    return _EXPORTER


async def test_spans_are_children_of_the_incoming_trace_and_carry_no_secret(
    sqlite_deployment: Deployment, abrowser: AsyncBrowser, oauth: OAuthServer, spans: InMemorySpanExporter
) -> None:
    d = sqlite_deployment.local()
    oauth.access_token_ttl = 1  # expires at once: the call refreshes first, so the refresh span shows
    async with d.app() as app:
        grant = await link(app, abrowser, "github", "octo", None)
        response = await app.request(
            "GET", f"{d.upstream.url}/reflect?page=2&q=hidden", grant_id=grant.grant_id, traceparent=TRACEPARENT
        )
    assert response.status_code == 200
    ours = {s.name: s for s in spans.get_finished_spans() if s.name.startswith("alter.")}
    assert {"alter.request", "alter.resolve", "alter.refresh", "alter.upstream"} <= set(ours)
    root = ours["alter.request"]
    assert format(root.context.trace_id, "032x") == TRACE_ID and root.parent is not None
    assert format(root.parent.span_id, "016x") == PARENT_SPAN
    for child in ("alter.resolve", "alter.upstream"):
        assert ours[child].parent is not None and ours[child].parent.span_id == root.context.span_id
    assert ours["alter.refresh"].context.trace_id == root.context.trace_id
    attributes = dict(root.attributes or {})
    assert attributes["alter.provider"] == "github" and attributes["alter.account"] == "octo"
    assert attributes["alter.grant_id"] == grant.grant_id and attributes["alter.method"] == "GET"
    assert attributes["alter.host"] == "127.0.0.1" and attributes["alter.status"] == 200
    assert ours["alter.upstream"].attributes["alter.status"] == 200  # type: ignore[index]
    issued = [t.access_token for t in oauth.tokens_for("octo")] + [
        t.refresh_token or "" for t in oauth.tokens_for("octo")
    ]
    every_value = json.dumps([dict(s.attributes or {}) for s in ours.values()], default=str)
    assert "hidden" not in every_value and "page=2" not in every_value  # never a query string
    assert all(secret and secret not in every_value for secret in issued)


class _RunIds(AsyncCallbackHandler):
    def __init__(self) -> None:
        self.tool_runs: list[str] = []

    async def on_tool_start(self, serialized: Any, input_str: str, *, run_id: Any, **kwargs: Any) -> None:
        self.tool_runs.append(str(run_id))


async def test_a_langgraph_runs_ids_and_trace_are_on_the_audit_rows_of_its_calls(
    sqlite_deployment: Deployment, abrowser: AsyncBrowser
) -> None:
    from langchain_core.messages import AIMessage
    from langgraph.graph import START, MessagesState, StateGraph
    from langgraph.prebuilt import ToolNode

    d = sqlite_deployment.local()
    async with d.app() as app:
        await link(app, abrowser, "github", "octo", None)
        graph = StateGraph(MessagesState)
        graph.add_node("tools", ToolNode(AlterToolkit(app, LocalSession()).get_tools()))
        graph.add_edge(START, "tools")
        call = AIMessage(
            "",
            tool_calls=[
                {"id": "c1", "name": "request", "args": {"provider": "github", "url": f"{d.upstream.url}/echo/a"}}
            ],
        )
        runs = _RunIds()
        await graph.compile().ainvoke(
            {"messages": [call]},
            {"callbacks": [runs], "configurable": {"thread_id": "thread-7", "traceparent": TRACEPARENT}},
        )
        [row] = [e for e in await app.vault.audit_query(AuditFilter()) if e.action == "call"]  # type: ignore[attr-defined]
    assert (row.surface, row.tool, row.thread_id, row.trace_id) == ("langchain", "request", "thread-7", TRACE_ID)
    assert row.run_id in runs.tool_runs  # the LangChain run that made the call


async def test_an_mcp_requests_trace_id_and_request_id_are_on_its_audit_row(
    sqlite_deployment: Deployment, abrowser: AsyncBrowser
) -> None:
    d = sqlite_deployment.local()
    async with d.app() as app:
        await link(app, abrowser, "github", "octo", None)
        async with Client(build_server(app, LocalSession()), mode="2026-07-28") as client:
            result = await client.call_tool(
                "request", {"provider": "github", "url": f"{d.upstream.url}/echo/m"}, meta={"traceparent": TRACEPARENT}
            )
        assert not result.is_error
        [row] = [e for e in await app.vault.audit_query(AuditFilter()) if e.action == "call"]  # type: ignore[attr-defined]
    assert (row.surface, row.tool, row.trace_id, row.outcome) == ("mcp", "request", TRACE_ID, "ok")
    assert row.request_id


def _counts(text: str) -> dict[tuple[str, str], float]:
    found: dict[tuple[str, str], float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == "alter_calls_total":
                found[(sample.labels["provider"], sample.labels["outcome"])] = sample.value
    return found


async def test_metrics_count_a_denied_an_ambiguous_and_a_successful_call(
    sqlite_deployment: Deployment, abrowser: AsyncBrowser, alice_google: LinkTwoGoogleAccounts, tmp_path: Path
) -> None:
    policy = tmp_path / "policy.toml"
    policy.write_text('[[policy]]\nprovider = "github"\nmethods = ["DELETE"]\neffect = "deny"\n', "utf-8")
    d = sqlite_deployment.local()
    d = type(d)(
        d.settings.__class__(
            **{**{f: getattr(d.settings, f) for f in d.settings.__dataclass_fields__}, "policy_file": str(policy)}
        ),
        d.env,
        d.idp,
        d.oauth,
        d.upstream,
    )
    async with http_server(d, lambda _s: LocalSession(), local=True) as srv:
        await link(srv.app, abrowser, "github", "octo", None)
        await alice_google(srv.app, None)
        auth = {"Authorization": "Bearer local-test-token"}
        async with httpx.AsyncClient(headers=auth) as scraper:
            before = _counts((await scraper.get(f"{srv.url}/metrics")).text)
            async with srv.client("local-test-token", "2026-07-28") as client:
                ok = await client.call_tool("request", {"provider": "github", "url": f"{d.upstream.url}/echo/ok"})
                denied = await client.call_tool(
                    "request", {"provider": "github", "method": "DELETE", "url": f"{d.upstream.url}/echo/x"}
                )
                ambiguous = await client.call_tool("request", {"provider": "google", "url": f"{d.upstream.url}/echo/g"})
            scraped = await scraper.get(f"{srv.url}/metrics")
            refused = await httpx.AsyncClient().get(f"{srv.url}/metrics")
    assert not ok.is_error and payload(denied)["error"]["code"] == "policy_denied"
    assert payload(ambiguous)["error"]["code"] == "ambiguous_grant"
    assert scraped.status_code == 200 and scraped.headers["content-type"].startswith("text/plain")
    after = _counts(scraped.text)
    for key in (("github", "ok"), ("github", "policy_denied"), ("google", "ambiguous_grant")):
        assert after.get(key, 0) - before.get(key, 0) == 1, key
    assert "alter_upstream_seconds_bucket" in scraped.text and "alter_active_sessions" in scraped.text
    assert refused.status_code == 401  # the local server's bearer protects /metrics too


def test_metrics_on_a_public_interface_need_a_token() -> None:
    from alter_agents.errors import ConfigurationError
    from alter_agents.metrics import metrics_enabled, metrics_endpoint

    assert metrics_enabled(None, "127.0.0.1") and not metrics_enabled(None, "0.0.0.0")
    assert metrics_enabled("on", "0.0.0.0") and not metrics_enabled("off", "127.0.0.1")
    with pytest.raises(ConfigurationError, match="ALTER_METRICS_TOKEN"):
        metrics_endpoint(None, public=True)


def _cli(d: Deployment, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**{k: v for k, v in os.environ.items() if not k.startswith("ALTER_")}, **d.env}
    return subprocess.run([CLI, *args], env=env, capture_output=True, text=True, timeout=60)


async def _three_calls(d: Deployment, browser: AsyncBrowser) -> None:
    async with d.app() as app:
        grant = await link(app, browser, "github", "octo", None)
        for path in ("one", "two", "three"):
            await app.request("GET", f"{d.upstream.url}/echo/{path}", grant_id=grant.grant_id)
        await app.request("GET", f"{d.upstream.url}/status/404", grant_id=grant.grant_id)


async def test_export_round_trips_as_json_lines_and_csv_with_filters(
    sqlite_deployment: Deployment, abrowser: AsyncBrowser
) -> None:
    d = sqlite_deployment.local()
    await _three_calls(d, abrowser)
    lines = _cli(d, "audit", "--format", "jsonl", "--provider", "github", "--since", "1h", "--limit", "100")
    assert lines.returncode == 0, lines.stderr
    rows = [json.loads(line) for line in lines.stdout.splitlines()]
    calls = [r for r in rows if r["action"] == "call"]
    assert sorted(r["path"] for r in calls) == ["/echo/one", "/echo/three", "/echo/two", "/status/404"]
    table = _cli(d, "audit", "--format", "csv", "--provider", "github", "--since", "1h", "--limit", "100")
    parsed = list(csv.DictReader(io.StringIO(table.stdout)))
    assert [(r["seq"], r["path"], r["outcome"]) for r in parsed] == [
        (str(r["seq"]), r["path"] or "", r["outcome"] or "") for r in rows
    ]
    errors = _cli(d, "audit", "--outcome", "error", "--format", "json")
    assert [r["path"] for r in json.loads(errors.stdout)] == ["/status/404"]
    assert json.loads(_cli(d, "audit", "--outcome", "http_404", "--json").stdout)[0]["status"] == 404
    assert _cli(d, "audit", "--user", "bob", "--json").stdout.strip() == "[]"
    assert _cli(d, "audit", "--until", "2000-01-01", "--json").stdout.strip() == "[]"
    bad = _cli(d, "audit", "--since", "yesterday")
    assert bad.returncode != 0 and "--since 'yesterday'" in bad.stderr and "Traceback" not in bad.stderr


def _db(d: Deployment) -> sqlite3.Connection:
    return sqlite3.connect(d.settings.vault_url.split("///", 1)[1])


@pytest.mark.parametrize("tamper", ["edit", "delete", "insert"])
async def test_audit_verify_catches_an_edited_a_deleted_and_an_inserted_row(
    sqlite_deployment: Deployment, abrowser: AsyncBrowser, tamper: str
) -> None:
    d = sqlite_deployment.local()
    await _three_calls(d, abrowser)
    clean = _cli(d, "audit", "verify", "--json")
    assert clean.returncode == 0 and json.loads(clean.stdout)["ok"] is True
    with _db(d) as db:  # someone with write access to the store, but not the vault key
        target = db.execute("SELECT seq FROM alter_audit WHERE path = '/echo/two'").fetchone()[0]
        if tamper == "edit":
            db.execute("UPDATE alter_audit SET status = 500 WHERE seq = ?", (target,))
        elif tamper == "delete":
            db.execute("DELETE FROM alter_audit WHERE seq = ?", (target,))
        else:
            db.execute(
                "INSERT INTO alter_audit (at, action, principal, path, status, seq, prev_hash, hash) "
                "SELECT at, action, principal, '/forged', 200, seq, prev_hash, hash FROM alter_audit "
                "WHERE seq = ?",
                (target,),
            )
    caught = _cli(d, "audit", "verify", "--json")
    report = json.loads(caught.stdout)
    assert caught.returncode == 3 and report["ok"] is False
    expected = {"edit": "changed", "delete": "removed", "insert": "inserted"}[tamper]
    assert (report["problem"], report["seq"]) == (expected, target)
    human = _cli(d, "audit", "verify")
    assert human.returncode == 3 and "TAMPERED" in human.stderr


async def test_prune_keeps_the_rest_verifiable(sqlite_deployment: Deployment, abrowser: AsyncBrowser) -> None:
    d = sqlite_deployment.local()
    await _three_calls(d, abrowser)
    with _db(d) as db:  # the first half of the rows are old
        db.execute("UPDATE alter_audit SET at = at - 100 * 86400 WHERE seq <= 3")
    pruned = _cli(d, "audit", "prune", "--before", "90d", "--json")
    assert pruned.returncode == 0 and json.loads(pruned.stdout)["deleted"] == 3
    assert json.loads(_cli(d, "audit", "verify", "--json").stdout)["ok"] is True
    refused = _cli(d, "audit", "prune")
    assert refused.returncode != 0 and "ALTER_AUDIT_RETENTION_DAYS" in refused.stderr


async def test_the_audit_write_stays_off_the_request_path(
    sqlite_deployment: Deployment, abrowser: AsyncBrowser
) -> None:
    """A call queues its row; nothing is written to the store until the writer's batch (benchmark 1's guard)."""
    d = sqlite_deployment.local()
    async with App(settings=d.settings) as app:
        grant = await link(app, abrowser, "github", "octo", None)
        await app.vault.audit(limit=1)  # type: ignore[attr-defined]  # written so far: the connect
        with _db(d) as db:
            before = db.execute("SELECT COUNT(*) FROM alter_audit").fetchone()[0]
        await app.request("GET", f"{d.upstream.url}/echo/q", grant_id=grant.grant_id)
        with _db(d) as db:
            queued = db.execute("SELECT COUNT(*) FROM alter_audit").fetchone()[0]
        assert queued == before  # the call returned before its row was written
        rows = await app.vault.audit(limit=5)  # type: ignore[attr-defined]
    assert rows[0].path == "/echo/q" and rows[0].seq is not None


async def test_the_vault_server_exports_the_audit_log_to_an_admin_key_only(
    sqlite_deployment: Deployment, abrowser: AsyncBrowser
) -> None:
    from alter_agents.server.signing import sign
    from tests.fixtures.vault_server import VaultServerProcess

    d = sqlite_deployment.local()
    await _three_calls(d, abrowser)
    admin = json.loads(_cli(d, "keys", "create", "--admin", "--name", "auditor", "--json").stdout)["api_key"]
    plain = json.loads(_cli(d, "keys", "create", "--name", "agent", "--json").stdout)["api_key"]
    assert admin.startswith("alter_ak_") and plain.startswith("alter_rk_")
    path = "/sdk/alter/audit/export"
    body = json.dumps({"provider": "github", "outcome": "http_404"}, separators=(",", ":")).encode()
    with VaultServerProcess(d.env) as server:
        async with httpx.AsyncClient(base_url=server.url) as client:
            refused = await client.post(
                path, content=body, headers={"x-api-key": plain, **sign(plain, "POST", path, body)}
            )
            exported = await client.post(
                path, content=body, headers={"x-api-key": admin, **sign(admin, "POST", path, body)}
            )
    assert refused.status_code == 403 and refused.json()["error"] == "forbidden"
    rows = [json.loads(line) for line in exported.text.splitlines()]
    assert exported.status_code == 200 and [(r["path"], r["status"]) for r in rows] == [("/status/404", 404)]


@pytest.mark.parametrize("store_url", ["sqlite", "postgres"], indirect=True)
async def test_the_chain_holds_under_concurrent_writers_in_two_processes_worth_of_vaults(
    deployment: Deployment, abrowser: AsyncBrowser
) -> None:
    """Two vaults (as two replicas would) on one store write batches at once; the chain stays one and verifies."""
    import asyncio

    d = deployment.local()
    async with d.app() as one, d.app() as two:
        await one.vault.open()  # type: ignore[attr-defined]
        await two.vault.open()  # type: ignore[attr-defined]

        async def write(app: App, tag: str) -> None:
            for batch in range(5):
                rows = [
                    {
                        "at": 1.0 + i,
                        "action": "call",
                        "provider": "github",
                        "path": f"/{tag}/{batch}/{i}",
                        "status": 200,
                    }
                    for i in range(20)
                ]
                await app.vault.store.record_many(rows)  # type: ignore[attr-defined]

        await asyncio.gather(write(one, "a"), write(two, "b"), write(one, "c"), write(two, "d"))
        report, legacy = await two.vault.audit_verify()  # type: ignore[attr-defined]
    assert report.ok and report.checked == 400 and legacy == 0


async def test_traceparent_goes_to_a_provider_only_where_its_spec_opts_in(
    sqlite_deployment: Deployment, abrowser: AsyncBrowser, spans: InMemorySpanExporter
) -> None:
    d = sqlite_deployment.local()
    async with d.app() as app:
        grant = await link(app, abrowser, "github", "octo", None)
        quiet = await app.request("GET", f"{d.upstream.url}/echo/t", grant_id=grant.grant_id, traceparent=TRACEPARENT)
        assert "traceparent" not in quiet.json()["headers"]
    providers = Path(d.env["ALTER_PROVIDERS_FILE"])
    providers.write_text(
        providers.read_text().replace("[providers.github]\n", "[providers.github]\npropagate_trace = true\n")
    )
    async with d.app() as app:
        told = await app.request("GET", f"{d.upstream.url}/echo/t", grant_id=grant.grant_id, traceparent=TRACEPARENT)
    sent = told.json()["headers"]["traceparent"]
    assert sent.startswith(f"00-{TRACE_ID}-") and PARENT_SPAN not in sent  # our span, in the caller's trace
