"""The official `alter-sdk` client's identity-resolution snippets, run unchanged on our `App`.

Each runs twice: on the embedded vault, and against a real `alter-agents vault serve` found the way the
official client finds it (`ALTER_BASE_URL`, `ALTER_API_KEY`). In the server run the process's own
`ALTER_VAULT_URL` points at an empty store, so a client that silently fell back to the embedded vault
would find no grants.
"""

from __future__ import annotations

import asyncio
import os
import shlex
import subprocess
import sys
import threading
import webbrowser
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import httpx
import pytest

from alter_agents import AmbiguousGrantError, App, ConfigurationError, InvalidArgumentsError
from alter_agents.models import APP
from tests.conftest import Deployment, connect_as
from tests.fixtures import AsyncBrowser
from tests.fixtures.browser import approve
from tests.fixtures.vault_server import VaultServerProcess, mint_key

pytestmark = pytest.mark.timeout(90)
STRIPE_SECRET = "sk_live_snippet_0123456789abcdef"
QUERY_SECRET = "qs_snippet_0123456789abcdef"


@pytest.fixture(params=["embedded", "vault server"])
async def official(request: pytest.FixtureRequest, sqlite_deployment: Deployment, monkeypatch: pytest.MonkeyPatch,
                   tmp_path: os.PathLike[str]) -> AsyncIterator[Deployment]:
    d = sqlite_deployment
    for name in [k for k in os.environ if k.startswith("ALTER_")]:
        monkeypatch.delenv(name)
    for name, value in d.env.items():
        monkeypatch.setenv(name, value)
    if request.param == "embedded":
        yield d
        return
    key = await mint_key(d.settings)
    with VaultServerProcess(d.env) as server:
        monkeypatch.setenv("ALTER_BASE_URL", server.url)
        monkeypatch.setenv("ALTER_API_KEY", key)
        monkeypatch.setenv("ALTER_VAULT_URL", f"sqlite+aiosqlite:///{tmp_path}/not-this-one.db")
        yield d


def _users_browser(account: str) -> Callable[..., bool]:
    """Stands in for the user's browser: whatever URL `webbrowser.open` gets is approved as `account`."""

    def open_(url: str, *args: object, **kwargs: object) -> bool:
        threading.Thread(target=approve, args=(url, account), daemon=True).start()
        return True

    return open_


async def test_the_official_identity_resolution_snippets_run_unchanged(
    official: Deployment, abrowser: AsyncBrowser, monkeypatch: pytest.MonkeyPatch
) -> None:
    d = official
    alice = d.idp.issue("alice")
    async with d.app() as setup:  # the operator's side: Alice linked Google; the app holds a Stripe key
        await connect_as(setup, abrowser, "google", "alice@gmail.com", alice)
        stripe = await setup.vault.add_secret("keyed", STRIPE_SECRET, owner=APP, account="acme-billing")  # type: ignore[attr-defined]
    d.upstream.add_secret(STRIPE_SECRET, "acme-billing")
    monkeypatch.setattr(webbrowser, "open", _users_browser("octocat"))
    url = d.upstream.echo_url("calendar")
    ALTER_API_KEY = os.environ.get("ALTER_API_KEY")
    STRIPE_GRANT_ID = stripe.grant_id

    def get_jwt_from_request() -> str:
        return alice

    # -- the documentation's snippets, unchanged --------------------------------------------------
    app = App(api_key=ALTER_API_KEY, user_token_getter=lambda: get_jwt_from_request())
    response = await app.request("GET", url, provider="google")
    google = (response.status_code, response.json()["account"])
    await app.close()

    app = App(api_key=ALTER_API_KEY)
    response = await app.request("GET", url, grant_id=STRIPE_GRANT_ID)
    billing = (response.status_code, response.json()["account"], response.grant.grant_id)
    results = await app.connect(providers=["github"])
    grant_id = results[0].grant_id
    # ----------------------------------------------------------------------------------------------

    mine = await app.request("GET", d.upstream.echo_url("me"), grant_id=grant_id)
    await app.close()
    assert google == (200, "alice@gmail.com")
    assert billing == (200, "acme-billing", STRIPE_GRANT_ID)
    assert results[0].account == "octocat" and mine.json()["account"] == "octocat"
    assert isinstance(mine, httpx.Response) and mine.grant.provider == "github"


async def test_ambiguous_grant_names_the_accounts_and_grant_ids_to_retry_with(
    official: Deployment, abrowser: AsyncBrowser
) -> None:
    d = official
    alice = d.idp.issue("alice")
    async with d.app() as setup:
        personal = await connect_as(setup, abrowser, "google", "alice@gmail.com", alice)
        work = await connect_as(setup, abrowser, "google", "alice@acme.com", alice, label="work")
    url = d.upstream.echo_url("inbox")
    async with App(api_key=os.environ.get("ALTER_API_KEY"), user_token_getter=lambda: alice) as app:
        with pytest.raises(AmbiguousGrantError) as caught:
            await app.request("GET", url, provider="google")
        e = caught.value
        assert e.provider_id == "google"
        assert sorted(e.account_identifiers) == ["alice@acme.com", "alice@gmail.com"]
        assert {(c.account_identifier, c.grant_id, c.label) for c in e.candidates} == {
            ("alice@gmail.com", personal.grant_id, None), ("alice@acme.com", work.grant_id, "work")}
        by_account = await app.request("GET", url, provider="google", account="alice@acme.com")
        by_grant = await app.request("GET", url, grant_id=personal.grant_id)
    assert by_account.json()["account"] == "alice@acme.com" and by_account.grant.grant_id == work.grant_id
    assert by_grant.json()["account"] == "alice@gmail.com" and by_grant.grant.label is None
    assert "grant_id" not in e.payload().to_json()  # the model chooses by account; ids stay with scripts


async def test_the_official_keyword_names_are_accepted(official: Deployment) -> None:
    d = official
    async with d.app() as setup:
        billing = await setup.vault.add_secret("keyed", STRIPE_SECRET, owner=APP, account="acme-billing")  # type: ignore[attr-defined]
    d.upstream.add_secret(STRIPE_SECRET, "acme-billing")
    app = App(api_key=os.environ.get("ALTER_API_KEY"))
    response = await app.request("POST", d.upstream.echo_url("charges"), grant_id=billing.grant_id,
                                 extra_headers={"X-Trace": "t-1"}, query_params={"limit": 3},
                                 body=b"amount=5", reason="monthly invoice run")
    echoed = response.json()
    assert (echoed["headers"]["x-trace"], echoed["query"], echoed["body"]) == ("t-1", {"limit": "3"}, "amount=5")
    with pytest.raises(InvalidArgumentsError):
        await app.request("GET", d.upstream.echo_url(), grant_id=billing.grant_id, query={"a": 1},
                          query_params={"b": 2})
    await app.close()
    if "ALTER_BASE_URL" not in os.environ:
        async with d.app() as check:
            entries = await check.vault.audit(limit=5)  # type: ignore[attr-defined]
        assert any(e.detail == "reason: monthly invoice run" for e in entries)


def test_an_api_key_without_a_vault_server_is_refused_not_ignored(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("ALTER_BASE_URL", raising=False)
    with pytest.raises(ConfigurationError, match="ALTER_BASE_URL"):
        App(api_key="alter_rk_aaaaaaaaaaaaaaaaaaaaaa_aaaaaa")


async def test_the_response_is_an_httpx_response_with_no_credential_reachable(official: Deployment) -> None:
    d = official
    async with d.app() as setup:
        header = await setup.vault.add_secret("keyed", STRIPE_SECRET, owner=APP, account="hdr")  # type: ignore[attr-defined]
        query = await setup.vault.add_secret("queried", QUERY_SECRET, owner=APP, account="qry")  # type: ignore[attr-defined]
    d.upstream.add_secret(STRIPE_SECRET, "hdr")
    d.upstream.add_secret(QUERY_SECRET, "qry")
    async with App(api_key=os.environ.get("ALTER_API_KEY")) as app:
        seen = [await app.request("GET", d.upstream.echo_url("x"), grant_id=g.grant_id, query={"page": 2})
                for g in (header, query)]
        missing = await app.request("GET", f"{d.upstream.url}/status/404", grant_id=header.grant_id)
    for response, secret in zip(seen, (STRIPE_SECRET, QUERY_SECRET), strict=True):
        assert isinstance(response, httpx.Response) and response.status_code == 200
        assert response.url.params.get("page") == "2" and "api_key" not in response.url.params
        request = response.request
        assert secret not in str(request.url) and secret not in repr(dict(request.headers))
        assert "x-api-key" not in request.headers and "authorization" not in request.headers
        assert secret not in response.text and secret not in repr(vars(response)) and secret not in repr(response)
        response.raise_for_status()
    assert seen[0].grant.account == "hdr" and seen[1].grant.grant_id == query.grant_id
    with pytest.raises(httpx.HTTPStatusError) as failed:
        missing.raise_for_status()
    assert failed.value.response.status_code == 404 and STRIPE_SECRET not in str(failed.value)


def _readme_script() -> str:
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text("utf-8")
    section = readme[readme.index("## Use it from a script"):]
    return section[section.index("```python\n") + 10:section.index("\n```", section.index("```python"))]


async def test_the_readme_script_runs_as_pasted(sqlite_deployment: Deployment) -> None:
    """The README's script, its two URLs pointed at the local API: run in a fresh process, where the
    user's browser (BROWSER) approves the GitHub sign-in."""
    d = sqlite_deployment.local()
    script = _readme_script()
    assert "await" not in "".join(line for line in script.splitlines() if not line.startswith((" ", "\t")))
    script = script.replace("https://api.github.com/user", f"{d.upstream.url}/user").replace(
        "https://gmail.googleapis.com/gmail/v1/users/me/profile", d.upstream.echo_url("profile"))
    clicker = "import sys; from tests.fixtures.browser import approve; approve(sys.argv[1], 'octocat')"
    env = {**{k: v for k, v in os.environ.items() if not k.startswith("ALTER_")}, **d.env,
           "BROWSER": f"{shlex.quote(sys.executable)} -c {shlex.quote(clicker)} %s"}
    root = Path(__file__).resolve().parents[1]
    done = await asyncio.to_thread(subprocess.run, [sys.executable, "-c", script], cwd=root, env=env,
                                   capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.splitlines() == ["200 octocat as octocat",
                                        "No Google account yet: run `alter-agents connect google`."]
