"""A tiny OAuth 2 provider + API on 127.0.0.1, so the examples run offline.

`DemoProvider` serves, on one random local port:
- `GET/POST /authorize` — a consent page where a person types which account to sign in as and approves
  (authorization code flow, PKCE S256 required);
- `POST /token` — code and refresh-token exchange;
- `GET /api/me` (`{"login": ...}`, how the vault learns the account), `GET /api/inbox`,
  `GET /api/repos/{owner}/{repo}/issues?state=open|closed|all` (the caller's assigned issues) and
  `GET/POST /api/channels/{channel}/messages` (a chat channel), all behind `Authorization: Bearer`.

`DemoProvider.configure(tmp_dir)` writes a providers file and returns the environment for a throwaway
vault that knows the `demo` provider. `approve(connect_url, account)` plays the human in the browser.
Demo only: in-memory, one client, no persistence.
"""

from __future__ import annotations

import base64
import hashlib
import html
import importlib.util
import secrets
import socket
import sys
import threading
import time
import urllib.parse
from dataclasses import dataclass, field
from pathlib import Path

INSTALL = "pip install -e '.[examples]'"


def require(*modules: str) -> None:
    """Exit with the install line, not a traceback, when a package the examples need is missing."""
    missing = [m for m in ("python_multipart", *modules) if importlib.util.find_spec(m) is None]
    if missing:
        sys.exit(f"This example needs packages that are not installed ({', '.join(missing)}). "
                 f"From the repository root: {INSTALL}")


require()

import httpx
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
from starlette.routing import Route

CONSENT = """<!doctype html><meta charset="utf-8"><title>Demo sign-in</title>
<body style="font-family:sans-serif;margin:3em"><h1>Sign in to Demo</h1>
<p>An app asks to read your demo inbox (scopes: {scope}).</p>{problem}
<form method="post" action="{action}">
<label>Account (any name) <input name="account" value="{account}"></label>
<button name="decision" value="approve">Approve</button>
<button name="decision" value="deny">Deny</button>
</form></body>"""
PREFILLED = "alice@demo.test"
NEED_ACCOUNT = '<p style="color:#b00">Type the account to sign in as.</p>'


ISSUES = [("Login page times out on slow networks", "open"), ("Billing email has the wrong logo", "open"),
          ("Crash when the inbox is empty", "closed")]


@dataclass
class _Code:
    account: str
    redirect_uri: str
    challenge: str
    scope: str


@dataclass
class DemoProvider:
    """The provider's state and its server thread. Use as a context manager."""

    client_id: str = field(default_factory=lambda: "demo-client-" + secrets.token_hex(3))
    client_secret: str = field(default_factory=lambda: secrets.token_urlsafe(18))
    codes: dict[str, _Code] = field(default_factory=dict)
    access: dict[str, str] = field(default_factory=dict)  # access token -> account
    refresh: dict[str, str] = field(default_factory=dict)  # refresh token -> account
    messages: list[dict[str, object]] = field(default_factory=list)  # posted chat messages, oldest first
    port: int = 0
    _server: uvicorn.Server | None = None
    _thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def __enter__(self) -> DemoProvider:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.bind(("127.0.0.1", 0))
        self.port = sock.getsockname()[1]
        config = uvicorn.Config(self._app(), log_level="warning", lifespan="off")
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self._server.run, kwargs={"sockets": [sock]}, daemon=True)
        self._thread.start()
        deadline = time.monotonic() + 10
        while not self._server.started:
            if time.monotonic() > deadline:
                raise RuntimeError("the demo provider did not start")
            time.sleep(0.01)
        return self

    def __exit__(self, *exc: object) -> None:
        if self._server is not None and self._thread is not None:
            self._server.should_exit = True
            self._thread.join(timeout=5)

    def configure(self, directory: Path) -> dict[str, str]:
        """Environment for a throwaway local-mode vault in `directory` that knows the `demo` provider."""
        providers = directory / "providers.toml"
        providers.write_text(f"""
[providers.demo]
kind = "oauth2"
display_name = "Demo"
hosts = ["{self.url.removeprefix('http://')}"]
allow_http = true
inject = {{ header = "Authorization", format = "Bearer {{token}}" }}
authorize_url = "{self.url}/authorize"
token_url = "{self.url}/token"
client_id = "{self.client_id}"
client_secret = "{self.client_secret}"
scopes = ["inbox.read"]
account = {{ url = "{self.url}/api/me", field = "login", display_field = "name" }}
""", "utf-8")
        return {
            "ALTER_VAULT_URL": f"sqlite+aiosqlite:///{directory / 'vault.db'}",
            "ALTER_DATA_DIR": str(directory),
            "ALTER_PROVIDERS_FILE": str(providers),
        }

    # -- HTTP -------------------------------------------------------------------------------

    def _app(self) -> Starlette:
        return Starlette(routes=[
            Route("/authorize", self._authorize, methods=["GET", "POST"]),
            Route("/token", self._token, methods=["POST"]),
            Route("/api/me", self._me),
            Route("/api/inbox", self._inbox),
            Route("/api/repos/{owner}/{repo}/issues", self._issues),
            Route("/api/channels/{channel}/messages", self._messages, methods=["GET", "POST"]),
        ])

    async def _authorize(self, request: Request) -> Response:
        q = request.query_params
        redirect_uri = q.get("redirect_uri", "")
        if q.get("client_id") != self.client_id or not redirect_uri.startswith("http://127.0.0.1:"):
            return JSONResponse({"error": "invalid_client"}, status_code=400)
        if q.get("response_type") != "code" or q.get("code_challenge_method") != "S256":
            return JSONResponse({"error": "invalid_request", "error_description": "PKCE S256 required"}, 400)
        action = html.escape(str(request.url.include_query_params()), quote=True)
        page = {"scope": html.escape(q.get("scope", "")), "action": action, "problem": "",
                "account": PREFILLED}
        if request.method == "GET":
            return HTMLResponse(CONSENT.format(**page))
        form = await request.form()
        account = str(form.get("account", "")).strip()
        back = {"state": q.get("state", "")}
        if form.get("decision") == "approve" and not account:
            return HTMLResponse(CONSENT.format(**{**page, "account": "", "problem": NEED_ACCOUNT}), 400)
        if form.get("decision") != "approve":
            back["error"] = "access_denied"
        else:
            code = secrets.token_urlsafe(24)
            self.codes[code] = _Code(account, redirect_uri, q.get("code_challenge", ""), q.get("scope", ""))
            back["code"] = code
        return RedirectResponse(f"{redirect_uri}?{urllib.parse.urlencode(back)}", status_code=302)

    async def _token(self, request: Request) -> Response:
        form = await request.form()
        if form.get("client_id") != self.client_id or form.get("client_secret") != self.client_secret:
            return JSONResponse({"error": "invalid_client"}, status_code=401)
        if form.get("grant_type") == "authorization_code":
            code = self.codes.pop(str(form.get("code", "")), None)
            verifier = str(form.get("code_verifier", ""))
            digest = base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest()).rstrip(b"=").decode()
            if code is None or code.redirect_uri != form.get("redirect_uri") or digest != code.challenge:
                return JSONResponse({"error": "invalid_grant"}, status_code=400)
            account = code.account
        elif form.get("grant_type") == "refresh_token":
            found = self.refresh.pop(str(form.get("refresh_token", "")), None)
            if found is None:
                return JSONResponse({"error": "invalid_grant"}, status_code=400)
            account = found
        else:
            return JSONResponse({"error": "unsupported_grant_type"}, status_code=400)
        access, refresh = secrets.token_urlsafe(24), secrets.token_urlsafe(24)
        self.access[access] = account
        self.refresh[refresh] = account
        return JSONResponse({"access_token": access, "refresh_token": refresh, "token_type": "Bearer",
                             "expires_in": 3600, "scope": "inbox.read"})

    def _account(self, request: Request) -> str | None:
        scheme, _, token = request.headers.get("authorization", "").partition(" ")
        return self.access.get(token) if scheme.lower() == "bearer" else None

    async def _me(self, request: Request) -> Response:
        account = self._account(request)
        if account is None:
            return JSONResponse({"error": "unauthorized"}, status_code=401)
        return JSONResponse({"login": account, "name": account.split("@")[0].title()})

    async def _inbox(self, request: Request) -> Response:
        account = self._account(request)
        if account is None:
            return JSONResponse({"error": "unauthorized"}, status_code=401)
        return JSONResponse({"account": account, "messages": [
            {"from": "ops@demo.test", "subject": f"Welcome, {account}"},
            {"from": "billing@demo.test", "subject": "Your invoice"},
        ]})

    async def _issues(self, request: Request) -> Response:
        account = self._account(request)
        if account is None:
            return JSONResponse({"error": "unauthorized"}, status_code=401)
        repo = f"{request.path_params['owner']}/{request.path_params['repo']}"
        state = request.query_params.get("state", "open")
        issues = [{"number": n, "title": title, "state": status, "assignee": account, "repo": repo}
                  for n, (title, status) in enumerate(ISSUES, start=1)]
        return JSONResponse([i for i in issues if state == "all" or i["state"] == state])

    async def _messages(self, request: Request) -> Response:
        account = self._account(request)
        if account is None:
            return JSONResponse({"error": "unauthorized"}, status_code=401)
        channel = request.path_params["channel"]
        if request.method == "GET":
            return JSONResponse([m for m in self.messages if m["channel"] == channel])
        text = (await request.json()).get("text")
        if not isinstance(text, str) or not text.strip():
            return JSONResponse({"error": "text is required"}, status_code=422)
        message = {"id": len(self.messages) + 1, "channel": channel, "text": text, "author": account}
        self.messages.append(message)
        return JSONResponse(message, status_code=201)


async def approve(connect_url: str, account: str) -> None:
    """Play the human: open the consent page, approve as `account`, follow the redirect home."""
    async with httpx.AsyncClient(follow_redirects=True, timeout=10) as browser:
        page = await browser.get(connect_url)
        page.raise_for_status()
        done = await browser.post(connect_url, data={"account": account, "decision": "approve"})
        done.raise_for_status()
