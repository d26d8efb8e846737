"""Real local servers (identity provider, OAuth server, provider API) and a real store per test."""

from __future__ import annotations

import os
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path

import pytest

from alter_agents import App, Settings
from alter_agents.models import ConnectResult
from alter_agents.vault.crypto import generate_key
from tests.fixtures import AsyncBrowser, Browser, IdentityProvider, OAuthServer, UpstreamAPI
from tests.fixtures.accounts import GoogleAccounts, connect_two_google_accounts

PG_SERVER_URL = os.environ.get("ALTER_TEST_PG_URL", "postgresql+asyncpg://postgres@127.0.0.1:5432/test")
# Each run gets a database of its own (made in `pytest_configure`, dropped at the end), so two suites
# running at once on one server never touch each other's tables.
# pytest loads this file as `conftest`, and tests import it again as `tests.conftest`: the run's database
# reaches both through the environment.
PG_URL = os.environ.get("ALTER_TEST_PG_RUN_URL", PG_SERVER_URL)
_PG_ERROR: str | None = os.environ.get("ALTER_TEST_PG_RUN_ERROR")


def _pg_admin(sql: str) -> None:
    import asyncio

    import asyncpg
    from sqlalchemy.engine import make_url

    url = make_url(PG_SERVER_URL)

    async def run() -> None:
        conn = await asyncpg.connect(user=url.username, password=url.password, host=url.host or "127.0.0.1",
                                     port=url.port or 5432, database=url.database or "postgres", timeout=5)
        try:
            await conn.execute(sql)
        finally:
            await conn.close()

    asyncio.run(run())


def pytest_configure(config: pytest.Config) -> None:
    global PG_URL, _PG_ERROR
    from sqlalchemy.engine import make_url

    PG_URL, _PG_ERROR = PG_SERVER_URL, None  # never a database inherited from an outer run
    os.environ.pop("ALTER_TEST_PG_RUN_URL", None)
    os.environ.pop("ALTER_TEST_PG_RUN_ERROR", None)
    name = f"alter_test_{os.getpid()}_{uuid.uuid4().hex[:8]}"
    try:
        _pg_admin(f'CREATE DATABASE "{name}"')
    except Exception as exc:  # reported by `fresh_postgres` in the tests that need it
        _PG_ERROR = os.environ["ALTER_TEST_PG_RUN_ERROR"] = f"{type(exc).__name__}: {exc}"
        return
    PG_URL = make_url(PG_SERVER_URL).set(database=name).render_as_string(hide_password=False)
    os.environ["ALTER_TEST_PG_RUN_URL"] = PG_URL


def pytest_unconfigure(config: pytest.Config) -> None:
    if PG_URL != PG_SERVER_URL:
        _pg_admin(f'DROP DATABASE IF EXISTS "{make_url_database(PG_URL)}" WITH (FORCE)')


def with_coverage(env: dict[str, str]) -> dict[str, str]:
    """`env` plus coverage.py's subprocess settings, for MCP clients that start servers with a bare environment
    (docs/testing.md: under `coverage run` those servers are measured too)."""
    return {**{k: v for k, v in os.environ.items() if k.startswith("COVERAGE_")}, **env}


def make_url_database(url: str) -> str:
    from sqlalchemy.engine import make_url

    return str(make_url(url).database)


@pytest.fixture
def idp() -> Iterator[IdentityProvider]:
    with IdentityProvider() as server:
        yield server


@pytest.fixture
def oauth() -> Iterator[OAuthServer]:
    with OAuthServer() as server:
        yield server


@pytest.fixture
def oauth_client(oauth: OAuthServer) -> tuple[str, str]:
    return oauth.register_client()


@pytest.fixture
def upstream(oauth: OAuthServer) -> Iterator[UpstreamAPI]:
    with UpstreamAPI(oauth) as api:
        yield api


@pytest.fixture
def foreign() -> Iterator[UpstreamAPI]:
    """A second host: `foreign.seen_credentials == []` proves nothing leaked to it."""
    with UpstreamAPI(None) as api:
        yield api


@pytest.fixture
def browser() -> Iterator[Browser]:
    b = Browser()
    yield b
    b.close()


@pytest.fixture
async def abrowser() -> AsyncIterator[AsyncBrowser]:
    b = AsyncBrowser()
    yield b
    await b.aclose()


def write_providers_file(path: Path, oauth: OAuthServer, upstream: UpstreamAPI, client: tuple[str, str]) -> Path:
    """Point github and google at the local OAuth server and API; stripe is a managed secret there."""
    client_id, client_secret = client
    api = f"127.0.0.1:{upstream.port}"  # a host entry names its port: other loopback services get nothing
    entries = []
    for name, field in (("github", "login"), ("google", "email")):
        entries.append(f"""
[providers.{name}]
hosts = ["{api}"]
allow_http = true
authorize_url = "{oauth.url}/authorize"
token_url = "{oauth.url}/token"
client_id = "{client_id}"
client_secret = "{client_secret}"
scopes = ["read"]
authorize_params = {{}}
account = {{ url = "{upstream.url}/user", field = "{field}", display_field = "name" }}
""")
    entries.append(f"""
[providers.stripe]
hosts = ["{api}"]
allow_http = true

[providers.keyed]
kind = "secret"
hosts = ["{api}"]
allow_http = true
inject = {{ header = "X-Api-Key", format = "{{token}}" }}

[providers.queried]
kind = "secret"
hosts = ["{api}"]
allow_http = true
inject = {{ query = "api_key" }}

[providers.basic]
kind = "secret"
hosts = ["{api}"]
allow_http = true
inject = {{ basic = true }}
""")
    path.write_text("".join(entries), "utf-8")
    return path


async def _reset_postgres(url: str) -> None:
    from sqlalchemy import text
    from sqlalchemy.ext.asyncio import create_async_engine

    engine = create_async_engine(url)
    try:
        async with engine.begin() as conn:
            rows = await conn.execute(text("SELECT tablename FROM pg_tables WHERE tablename LIKE 'alter_%'"))
            for (name,) in rows:
                await conn.execute(text(f'DROP TABLE IF EXISTS "{name}" CASCADE'))
    finally:
        await engine.dispose()


async def fresh_postgres() -> str:
    """The machine's PostgreSQL with no alter tables; in CI its absence fails the test, else skips it."""
    try:
        if _PG_ERROR is not None:
            raise OSError(_PG_ERROR)
        await _reset_postgres(PG_URL)
    except (OSError, ImportError) as exc:
        if os.environ.get("CI"):
            pytest.fail(f"PostgreSQL is required in CI: {exc}")
        pytest.skip(f"no PostgreSQL at {PG_SERVER_URL}: {exc}")
    return PG_URL


@pytest.fixture(params=["sqlite", "postgres"])
async def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A fresh store: a SQLite file, and (same test again) the machine's PostgreSQL."""
    if request.param == "sqlite":
        return f"sqlite+aiosqlite:///{tmp_path / 'vault.db'}"
    return await fresh_postgres()


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    return f"sqlite+aiosqlite:///{tmp_path / 'vault.db'}"


@dataclass
class Deployment:
    """A configured vault: the settings an App uses and the env a subprocess gets."""

    settings: Settings
    env: dict[str, str]
    idp: IdentityProvider
    oauth: OAuthServer
    upstream: UpstreamAPI

    def app(self, **kwargs: object) -> App:
        return App(settings=self.settings, **kwargs)  # type: ignore[arg-type]

    def local(self) -> Deployment:
        """The same vault without an identity provider (local single-user mode)."""
        settings = replace(self.settings, idp_issuer=None, idp_audience=None, idp_jwks_url=None)
        env = {k: v for k, v in self.env.items() if not k.startswith("ALTER_IDP_")}
        return replace(self, settings=settings, env=env)


def make_deployment(
    tmp_path: Path, vault_url: str, idp: IdentityProvider, oauth: OAuthServer, upstream: UpstreamAPI,
    client: tuple[str, str],
) -> Deployment:
    providers_file = write_providers_file(tmp_path / f"providers-{uuid.uuid4().hex[:6]}.toml", oauth, upstream, client)
    key = generate_key()
    env = {
        "ALTER_VAULT_URL": vault_url,
        "ALTER_VAULT_KEY": key,
        "ALTER_PROVIDERS_FILE": str(providers_file),
        "ALTER_IDP_ISSUER": idp.issuer,
        "ALTER_IDP_AUDIENCE": idp.audience,
        "ALTER_IDP_JWKS_URL": idp.jwks_url,
        "ALTER_DATA_DIR": str(tmp_path / "data"),
    }
    return Deployment(Settings.from_env(env), env, idp, oauth, upstream)


@pytest.fixture
def deployment(
    tmp_path: Path, store_url: str, idp: IdentityProvider, oauth: OAuthServer, upstream: UpstreamAPI,
    oauth_client: tuple[str, str],
) -> Deployment:
    """A vault on SQLite and on PostgreSQL, with an identity provider (JWT identity mode)."""
    return make_deployment(tmp_path, store_url, idp, oauth, upstream, oauth_client)


@pytest.fixture
def sqlite_deployment(
    tmp_path: Path, sqlite_url: str, idp: IdentityProvider, oauth: OAuthServer, upstream: UpstreamAPI,
    oauth_client: tuple[str, str],
) -> Deployment:
    """The same on SQLite only, for tests that are not about the store."""
    return make_deployment(tmp_path, sqlite_url, idp, oauth, upstream, oauth_client)


async def connect_as(
    app: App, browser: AsyncBrowser, provider: str, user: str, token: str | None, *, label: str | None = None,
) -> ConnectResult:
    """Start a connect for `token`'s user (app-owned when None), approve it as `user`, return the grant."""
    start = await app.start_connect(provider, user_token=token, label=label, headless=token is None)
    await browser.aapprove(start.connect_url, user)
    status = await app.vault.wait_connect(start.session_id, 10)
    return status.results[0]


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[None]:
    """In CI a skipped test is a failed one: the README's command must run every test on a fresh machine."""
    outcome = yield
    report: pytest.TestReport = outcome.get_result()  # type: ignore[attr-defined]
    if os.environ.get("CI") and report.skipped and not hasattr(report, "wasxfail"):
        reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
        report.outcome = "failed"
        report.longrepr = f"skipped in CI, where every test must run: {reason.removeprefix('Skipped: ')}"


LinkTwoGoogleAccounts = Callable[..., Awaitable[GoogleAccounts]]


@pytest.fixture
def alice_google(abrowser: AsyncBrowser) -> LinkTwoGoogleAccounts:
    """Alice with two Google accounts: `await alice_google(app, token)` connects her personal and her
    work account (labelled "work") in `app` through the consent page (`tests/fixtures/accounts.py`)."""

    async def link(app: App, token: str | None, *, work_label: str | None = "work",
                   personal_label: str | None = None) -> GoogleAccounts:
        return await connect_two_google_accounts(app, abrowser, token, work_label=work_label,
                                                 personal_label=personal_label)

    return link
