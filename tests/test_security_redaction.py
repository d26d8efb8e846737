"""A hostile provider API reflects the credential in every form it can think of; none of them reaches the
model, the caller, an error message or a log, and the credential goes only where its binding says."""

from __future__ import annotations

import contextlib
import html
import io
import json
import logging
import time
import traceback
import urllib.parse
from collections.abc import AsyncIterator, Iterator
from dataclasses import replace
from pathlib import Path

import httpx
import pytest
from flask import Flask, Response, redirect, request
from flask.typing import ResponseReturnValue
from langchain_core.messages import ToolMessage

from alter_agents import App, HostNotAllowedError, Settings, UpstreamTimeoutError, UpstreamUnreachableError
from alter_agents.errors import AlterError, InvalidArgumentsError
from alter_agents.langchain import AlterToolkit
from alter_agents.models import APP
from alter_agents.sessions import LocalSession
from alter_agents.tools import AlterTools, RequestResult
from alter_agents.upstream import Upstream
from alter_agents.vault.crypto import generate_key
from tests.conftest import Deployment
from tests.fixtures import UpstreamAPI
from tests.fixtures.ports import BackgroundServer, ServedApp
from tests.mcp_support import http_server, payload

ACME = "sk_live_Q7f+Z9k~Tq3Xw8Rb2Lm5Vn0P"  # header-name safe, sent as `X-Acme-Token: <token>`
SLASHY = "tok/Q7fZ9kTq3Xw8Rb2+Lm5Vn0P=="  # base64-like, sent as a bearer token
HOSTY = "Hx7Q2kVb9TzR4mWp8Ls3"  # host-name safe and mixed case
JWTISH = "eyJ" + "Q7fZ9kTq3Xw8Rb2Lm5Vn" * 120  # 2,403 characters, a JWT's size
SECRETS = {"acme": ACME, "slashy": SLASHY, "hosty": HOSTY, "jwty": JWTISH, "queryish": "qk_" + HOSTY}


def _escaped(secret: str, style: str) -> str:
    """The secret as various encoders write it."""
    if style == "json-all":
        return "".join(f"\\u{ord(c):04x}" for c in secret)
    if style == "json-some":  # what PHP / .NET write by default
        return secret.replace("/", "\\/").replace("_", "\\u005f").replace("+", "\\u002B")
    if style == "html":
        return "".join(f"&#x{ord(c):x};" if i % 2 else f"&#{ord(c)};" for i, c in enumerate(secret))
    if style == "percent":
        return urllib.parse.quote(secret, safe="")
    raise ValueError(style)


class HostileAPI(ServedApp):
    """Accepts any credential and answers with it: escaped, in header names, in redirects, cut, slowly."""

    def __init__(self) -> None:
        self.received: list[tuple[str, str, dict[str, str], bytes]] = []
        self._server = BackgroundServer(self._build())

    def _build(self) -> Flask:
        app = Flask("hostile-api")

        def credential() -> str:
            auth = request.headers.get("Authorization", "")
            query = next((v for k, v in request.args.items() if k.lower() == "api_key"), "")
            return request.headers.get("X-Acme-Token") or auth.removeprefix("Bearer ") or query

        @app.before_request
        def record() -> None:
            self.received.append((request.method, request.path, dict(request.headers), request.get_data()))

        @app.get("/escaped/<style>")
        def escaped(style: str) -> ResponseReturnValue:
            token = _escaped(credential(), style)
            if style.startswith("json"):
                body = '{"echo": "%s", "%s": 1, "list": ["%s"]}' % (token, token, token)  # noqa: UP031
                return Response(body, mimetype="application/json")
            return Response(f"<p>{token}</p>", mimetype="text/html")

        @app.get("/header-name")
        def header_name() -> ResponseReturnValue:
            return Response('{"ok": true}', mimetype="application/json",
                            headers={f"X-Ratelimit-{credential()}": "1", "X-Echo": credential()})

        @app.get("/redirect-host")
        def redirect_host() -> ResponseReturnValue:
            return redirect(f"http://{credential()}.evil.example/", code=302)

        @app.get("/redirect-echo")
        def redirect_echo() -> ResponseReturnValue:
            return redirect(f"/any?echo={urllib.parse.quote(credential(), safe='')}", code=302)

        @app.get("/echoes")
        def echoes() -> ResponseReturnValue:
            """Full echoes, then (after a pause, in a second write) the rest of the last one."""
            token = credential()
            head = int(request.args["head"])
            body = token * (head // len(token) + 200)

            def stream() -> Iterator[str]:
                yield body[:head]
                time.sleep(0.3)
                yield body[head:]

            return Response(stream(), mimetype="text/plain")

        @app.get("/prefix-at")
        def prefix_at() -> ResponseReturnValue:
            at = int(request.args["at"])
            token = credential()
            return Response("x" * (at - len(token) + 1) + token[:-1] + "y" * 5000, mimetype="text/plain")

        @app.get("/bad-gzip")
        def bad_gzip() -> ResponseReturnValue:
            return Response(b"\x1f\x8b this is not gzip", mimetype="application/json",
                            headers={"Content-Encoding": "gzip"})

        @app.get("/trickle")
        def trickle() -> ResponseReturnValue:
            def stream() -> Iterator[bytes]:
                for _ in range(50):
                    yield b"."
                    time.sleep(0.2)

            return Response(stream(), mimetype="text/plain")

        @app.route("/any", methods=["GET", "POST"])
        def anything() -> ResponseReturnValue:
            return Response('{"ok": true}', mimetype="application/json")

        return app


@pytest.fixture
def hostile() -> Iterator[HostileAPI]:
    with HostileAPI() as api:
        yield api


def _providers_file(path: Path, api: HostileAPI) -> Path:
    bound = f'hosts = ["127.0.0.1:{api.port}"]\nallow_http = true\nkind = "secret"\n'
    path.write_text(
        f'[providers.acme]\n{bound}inject = {{ header = "X-Acme-Token", format = "{{token}}" }}\n'
        f"[providers.slashy]\n{bound}[providers.hosty]\n{bound}[providers.jwty]\n{bound}"
        f'[providers.queryish]\n{bound}inject = {{ query = "Api_Key" }}\n',
        "utf-8",
    )
    return path


@pytest.fixture
def settings(tmp_path: Path, hostile: HostileAPI) -> Settings:
    return Settings(vault_url=f"sqlite+aiosqlite:///{tmp_path / 'vault.db'}", vault_key=generate_key(),
                    providers_file=str(_providers_file(tmp_path / "providers.toml", hostile)))


async def _seed(app: App) -> App:
    for provider, secret in SECRETS.items():
        await app.vault.add_secret(provider, secret, owner=APP, account=f"{provider}-1")
    return app


@pytest.fixture
async def app(settings: Settings) -> AsyncIterator[App]:
    async with App(settings=settings) as app:
        yield await _seed(app)


def _forms(secret: str) -> list[str]:
    return [secret, secret.lower()]


def _leaks(text: str, secret: str) -> bool:
    """True when any rendering of `text` a reader could decode shows the secret (or its first 12 chars)."""
    views = [text, html.unescape(text), urllib.parse.unquote(text), text.lower()]
    with contextlib.suppress(ValueError):
        views.append(json.dumps(json.loads(text), ensure_ascii=False))
    needle = secret[:12]
    return any(needle in view or needle.lower() in view.lower() for view in views)


# -- 2. escapes --------------------------------------------------------------------------------

@pytest.mark.parametrize("style", ["json-all", "json-some", "html", "percent"])
async def test_escaped_echoes_are_redacted_in_every_form_the_caller_and_model_receive(
    app: App, hostile: HostileAPI, style: str
) -> None:
    tools = AlterToolkit(app, session=LocalSession()).get_tools()
    for provider in ("acme", "slashy"):
        secret = SECRETS[provider]
        url = f"{hostile.url}/escaped/{style}"
        response = await app.request("GET", url, provider=provider)
        assert not _leaks(response.text, secret), (provider, response.text)
        if style.startswith("json"):
            parsed = response.json_body()
            assert not _leaks(json.dumps(parsed, ensure_ascii=False), secret)
            assert "[REDACTED]" in parsed and parsed["echo"] == "[REDACTED]"
        message = await tools[0].ainvoke({"type": "tool_call", "id": "c1", "name": "request",
                                          "args": {"url": url, "provider": provider}})
        assert isinstance(message, ToolMessage) and message.status != "error", message
        assert not _leaks(str(message.content), secret), message.content


async def test_a_redirect_that_echoes_the_secret_into_the_url_does_not_show_it_to_the_caller(
    app: App, hostile: HostileAPI
) -> None:
    response = await app.request("GET", f"{hostile.url}/redirect-echo", provider="acme")
    assert response.status_code == 200 and "/any" in str(response.url)
    assert not _leaks(str(response.url), ACME) and not _leaks(repr(response.request), ACME)


# -- 3. header names ---------------------------------------------------------------------------

async def test_a_secret_as_a_response_header_name_reaches_neither_caller_nor_model(
    app: App, hostile: HostileAPI, settings: Settings, sqlite_deployment: Deployment
) -> None:
    url = f"{hostile.url}/header-name"
    response = await app.request("GET", url, provider="acme")
    assert not _leaks(json.dumps(dict(response.headers)), ACME)

    tools = AlterToolkit(app, session=LocalSession()).get_tools()
    message = await tools[0].ainvoke({"type": "tool_call", "id": "c1", "name": "request",
                                      "args": {"url": url, "provider": "acme"}})
    assert not _leaks(str(message.content), ACME) and "x-ratelimit" not in str(message.content)

    d = replace(sqlite_deployment.local(), settings=settings)  # the same store: already seeded
    async with http_server(d, lambda _s: LocalSession(), local=True) as srv, \
            srv.client("local-test-token") as client:
        result = await client.call_tool("request", {"url": url, "provider": "acme"})
    seen = json.dumps(payload(result))
    assert '"status": 200' in seen and not _leaks(seen, ACME)


# -- 4. error messages -------------------------------------------------------------------------

async def test_an_error_message_never_quotes_the_secret_even_as_a_lowercased_host(
    app: App, hostile: HostileAPI
) -> None:
    url = f"{hostile.url}/redirect-host"
    with pytest.raises(HostNotAllowedError) as info:
        await app.request("GET", url, provider="hosty")
    rendered = info.value.payload().to_json() + str(info.value)
    assert "redirected to" in rendered and not _leaks(rendered, HOSTY)

    result = await AlterTools(app, LocalSession()).run_request({"url": url, "provider": "hosty"})
    assert not isinstance(result, RequestResult)
    assert result.error.code == "host_not_allowed" and not _leaks(result.to_json(), HOSTY)


# -- 5. size caps ------------------------------------------------------------------------------

async def test_no_beginning_of_the_secret_survives_the_callers_size_cap(settings: Settings,
                                                                        hostile: HostileAPI) -> None:
    limit = 1000
    async with App(settings=settings, upstream=Upstream(max_response_bytes=limit)) as app:
        await _seed(app)
        for head in (limit + len(ACME) + 20, limit + 3 * len(ACME) + 7, 5 * limit):
            response = await app.request("GET", f"{hostile.url}/echoes?head={head}", provider="acme")
            assert response.truncated and len(response.content) <= limit
            assert ACME[:4].encode() not in response.content, (head, response.content[-40:])


async def test_no_beginning_of_a_jwt_sized_secret_survives_the_models_size_cap(
    app: App, hostile: HostileAPI
) -> None:
    limit = 64 * 1024
    url = f"{hostile.url}/prefix-at?at={limit}"
    result = await AlterTools(app, LocalSession()).run_request({"url": url, "provider": "jwty"})
    assert isinstance(result, RequestResult) and result.truncated
    assert isinstance(result.body, str) and JWTISH[:8] not in result.body
    assert len(result.body) >= limit - len(JWTISH)


# -- 6. the provider's own credential slot -----------------------------------------------------

async def test_the_providers_own_injection_header_and_query_parameter_are_refused(
    app: App, hostile: HostileAPI
) -> None:
    tools = AlterTools(app, LocalSession())
    for headers in ({"x-acme-token": "attacker-key"}, {"X-ACME-TOKEN": "attacker-key"}):
        result = await tools.run_request({"url": f"{hostile.url}/any", "provider": "acme", "headers": headers})
        assert not isinstance(result, RequestResult) and result.error.code == "invalid_arguments", result
    for call in ({"query": {"api_key": "attacker"}}, {"url": f"{hostile.url}/any?API_KEY=attacker"}):
        with pytest.raises(InvalidArgumentsError, match=r"(?i)api_key"):
            await app.request("GET", str(call.get("url", f"{hostile.url}/any")), provider="queryish",
                              query=call.get("query"))  # type: ignore[arg-type]
    grant = next(g for g in await app.grants() if g.provider == "acme")
    with pytest.raises(InvalidArgumentsError):
        await app.request("GET", f"{hostile.url}/any", grant_id=grant.grant_id, headers={"X-Acme-Token": "x"})
    assert hostile.received == []


# -- 9. audit and framing ----------------------------------------------------------------------

@pytest.mark.parametrize("header", ["Content-Length", "transfer-encoding", "Connection", "Upgrade", "Keep-Alive",
                                    "TE", "Trailer", "Expect", "Proxy-Connection", "Host"])
async def test_model_supplied_framing_headers_are_refused_and_nothing_is_sent(
    app: App, hostile: HostileAPI, header: str
) -> None:
    result = await AlterTools(app, LocalSession()).run_request(
        {"url": f"{hostile.url}/any", "provider": "acme", "method": "POST", "headers": {header: "0"}, "body": "hi"})
    assert not isinstance(result, RequestResult) and result.error.code == "invalid_arguments", result
    assert hostile.received == []


async def test_a_credentialed_call_is_audited_even_when_the_response_is_broken(
    app: App, hostile: HostileAPI
) -> None:
    with pytest.raises(UpstreamUnreachableError, match="decoded") as info:
        await app.request("GET", f"{hostile.url}/bad-gzip", provider="acme")
    assert info.value.payload().error.code == "upstream_unreachable"
    calls = [(e.path, e.detail) for e in await app.vault.audit(10) if e.action == "call"]
    assert ("/bad-gzip", "upstream_unreachable") in calls


# -- 10. logs ----------------------------------------------------------------------------------

async def test_no_log_level_of_any_library_writes_a_secret(
    app: App, hostile: HostileAPI, caplog: pytest.LogCaptureFixture
) -> None:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setLevel(logging.DEBUG)
    core = logging.getLogger("httpcore")
    core.addHandler(handler)
    try:
        with caplog.at_level(logging.DEBUG):
            await app.request("GET", f"{hostile.url}/header-name", provider="acme")
            await app.request("GET", f"{hostile.url}/any", provider="queryish")
            logging.getLogger("some.library").debug("echo %s", ACME)
            try:
                raise RuntimeError(f"boom {SLASHY}")
            except RuntimeError:
                logging.getLogger("other.library").exception("failed")
    finally:
        core.removeHandler(handler)
    assert any("receive_response_headers" in r.getMessage() for r in caplog.records)  # httpcore did log
    written = stream.getvalue() + caplog.text
    for secret in (ACME, SLASHY, SECRETS["queryish"]):
        assert secret not in written
        assert all(secret not in r.getMessage() for r in caplog.records)


# -- host binding ------------------------------------------------------------------------------

async def test_a_host_entry_binds_its_port(app: App, hostile: HostileAPI, foreign: UpstreamAPI) -> None:
    with pytest.raises(HostNotAllowedError):
        await app.request("GET", f"http://127.0.0.1:{foreign.port}/echo/x", provider="acme")
    await app.vault.add_secret("github", "ghp_" + HOSTY, owner=APP, account="octo")
    with pytest.raises(HostNotAllowedError, match="not one of"):
        await app.request("GET", "https://api.github.com:8443/user", provider="github")
    assert foreign.seen_credentials == [] and foreign.requests == []
    response = await app.request("GET", f"{hostile.url}/any", provider="acme")
    assert response.status == 200


# -- deadline and detached errors --------------------------------------------------------------

async def test_a_trickling_api_gets_one_overall_deadline_and_the_error_holds_no_request(
    settings: Settings, hostile: HostileAPI
) -> None:
    async with App(settings=settings, upstream=Upstream(timeout=1.0)) as app:
        await _seed(app)
        started = time.monotonic()
        with pytest.raises(UpstreamTimeoutError) as info:
            await app.request("GET", f"{hostile.url}/trickle", provider="acme")
        elapsed = time.monotonic() - started
    assert elapsed < 3.0, elapsed
    _assert_detached(info.value, ACME)


async def test_a_broken_response_error_holds_no_request(app: App, hostile: HostileAPI) -> None:
    with pytest.raises(AlterError) as info:
        await app.request("GET", f"{hostile.url}/bad-gzip", provider="acme")
    _assert_detached(info.value, ACME)


def _assert_detached(exc: BaseException, secret: str) -> None:
    assert exc.__context__ is None and exc.__cause__ is None
    rendered = "".join(traceback.format_exception(exc))
    assert secret not in rendered
    tb = exc.__traceback__
    while tb is not None:
        for name, value in tb.tb_frame.f_locals.items():
            assert not isinstance(value, httpx.Request | httpx.Response | httpx.URL), (tb.tb_frame, name)
            assert not (isinstance(value, str | bytes) and secret in str(value)), (tb.tb_frame, name)
        tb = tb.tb_next


async def test_a_fault_of_ours_during_a_call_is_typed_audited_and_holds_no_request(
    app: App, hostile: HostileAPI
) -> None:
    with pytest.raises(AlterError) as info:
        await app.request("POST", f"{hostile.url}/any", provider="acme", json={"not json": object()})
    assert info.value.payload().error.code == "internal"
    _assert_detached(info.value, ACME)
    assert hostile.received == []
    calls = [(e.path, e.detail) for e in await app.vault.audit(10) if e.action == "call"]
    assert calls == [("/any", "internal")]
