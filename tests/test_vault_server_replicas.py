"""Two `vault serve` replicas on one PostgreSQL store keep every guarantee the caches could weaken.

A replayed request is refused by every replica; a revoked API key and a revoked grant stop working on
every replica within the stated bounds (docs/vault-server.md): 0.5 s at the server, 1 s through
RemoteVault, whose released-credential cache adds 0.5 s.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from alter_agents import App
from alter_agents.errors import AlterError
from alter_agents.models import Principal
from alter_agents.server.keys import KEY_CACHE_SECONDS, ApiKeys
from alter_agents.server.signing import sign
from alter_agents.vault.cache import GRANT_CACHE_SECONDS
from alter_agents.vault.local import LocalVault
from alter_agents.vault.remote import CREDENTIAL_CACHE_SECONDS
from tests.conftest import Deployment, fresh_postgres, make_deployment
from tests.fixtures import IdentityProvider, OAuthServer, UpstreamAPI
from tests.fixtures.vault_server import VaultServerProcess, mint_key

pytestmark = pytest.mark.timeout(120)
SERVER_BOUND = max(KEY_CACHE_SECONDS, GRANT_CACHE_SECONDS)
CLIENT_BOUND = SERVER_BOUND + CREDENTIAL_CACHE_SECONDS
SLACK = 0.05  # the clock reads on either side of a revocation
ALICE = Principal("user", "alice")


@pytest.fixture
async def pg(tmp_path: Path, idp: IdentityProvider, oauth: OAuthServer, upstream: UpstreamAPI,
             oauth_client: tuple[str, str]) -> Deployment:
    return make_deployment(tmp_path, await fresh_postgres(), idp, oauth, upstream, oauth_client)


@pytest.fixture
def replicas(pg: Deployment) -> Iterator[tuple[VaultServerProcess, VaultServerProcess]]:
    with VaultServerProcess(pg.env) as a, VaultServerProcess(pg.env) as b:
        yield a, b


def _signed(key: str, path: str = "/sdk/grants/list") -> tuple[bytes, dict[str, str]]:
    body = json.dumps({"limit": 10}, separators=(",", ":")).encode()
    return body, {"x-api-key": key, "Content-Type": "application/json", **sign(key, "POST", path, body)}


async def test_a_replayed_request_is_refused_by_every_replica(
    pg: Deployment, replicas: tuple[VaultServerProcess, VaultServerProcess],
) -> None:
    a, b = replicas
    key = await mint_key(pg.settings)
    body, headers = _signed(key)
    async with httpx.AsyncClient(timeout=10) as http:
        first = await http.post(f"{a.url}/sdk/grants/list", content=body, headers=headers)
        assert first.status_code == 200, first.text
        for replica in (b, a):
            replay = await http.post(f"{replica.url}/sdk/grants/list", content=body, headers=headers)
            assert replay.status_code == 401 and replay.json()["error"] == "replayed_nonce", replay.text

        # The same signed request sent to both replicas at once, many times: exactly one answer each time.
        for _ in range(20):
            body, headers = _signed(key)
            answers = await asyncio.gather(*(http.post(f"{r.url}/sdk/grants/list", content=body, headers=headers)
                                             for r in (a, b, a, b)))
            assert sorted(r.status_code for r in answers) == [200, 401, 401, 401]


async def test_a_revoked_api_key_stops_working_on_every_replica_within_the_bound(
    pg: Deployment, replicas: tuple[VaultServerProcess, VaultServerProcess],
) -> None:
    key = await mint_key(pg.settings)
    async with httpx.AsyncClient(timeout=10) as http:
        for replica in replicas:  # both replicas now trust the key from their cache
            body, headers = _signed(key)
            assert (await http.post(f"{replica.url}/sdk/grants/list", content=body, headers=headers)).status_code == 200
        vault = LocalVault(pg.settings)  # another process's revocation, as `alter-agents keys revoke` does it
        try:
            keys = ApiKeys(vault.store)
            [info] = await keys.list()
            await keys.revoke(info.key_id)
        finally:
            await vault.aclose()
        await asyncio.sleep(SERVER_BOUND + SLACK)
        for replica in replicas:
            body, headers = _signed(key)
            refused = await http.post(f"{replica.url}/sdk/grants/list", content=body, headers=headers)
            assert refused.status_code == 401 and refused.json()["error"] == "key_revoked", refused.text


async def test_a_revoked_grant_stops_working_through_every_replica_within_the_bound(
    pg: Deployment, replicas: tuple[VaultServerProcess, VaultServerProcess],
) -> None:
    pg.upstream.add_secret("sk-replicas-0001", "ops")
    key = await mint_key(pg.settings)
    vault = LocalVault(pg.settings)
    try:
        grant = await vault.add_secret("stripe", "sk-replicas-0001", owner=ALICE, account="ops")
        apps = [App(base_url=r.url, api_key=key, settings=pg.settings) for r in replicas]
        try:
            url, alice = pg.upstream.echo_url("replicas"), pg.idp.issue("alice")
            for app in apps:  # warm every cache: the replicas' grant caches and each client's credential cache
                assert (await app.request("GET", url, provider="stripe", user_token=alice)).status == 200
            await vault.revoke(grant.grant_id)
            await asyncio.sleep(CLIENT_BOUND + SLACK)
            for app in apps:
                with pytest.raises(AlterError) as refused:
                    await app.request("GET", url, provider="stripe", user_token=alice)
                assert refused.value.code in ("not_connected", "grant_not_found")
        finally:
            for app in apps:
                await app.aclose()
    finally:
        await vault.aclose()


async def test_calls_through_the_server_are_in_its_audit_log_once_the_app_closes(
    pg: Deployment, replicas: tuple[VaultServerProcess, VaultServerProcess],
) -> None:
    pg.upstream.add_secret("sk-replicas-0002", "audited")
    key = await mint_key(pg.settings)
    vault = LocalVault(pg.settings)
    try:
        grant = await vault.add_secret("stripe", "sk-replicas-0002", owner=ALICE, account="audited")
        alice = pg.idp.issue("alice")
        async with App(base_url=replicas[0].url, api_key=key, settings=pg.settings) as app:
            for i in range(30):
                await app.request("GET", pg.upstream.echo_url(f"audited/{i}"), provider="stripe", user_token=alice)
        # No wait: the batch was written before the server answered the closing App's post.
        calls = [e for e in await vault.store.audit_entries(1000, grant.grant_id) if e.action == "call"]
        assert sorted(e.path for e in calls) == sorted(f"/echo/audited/{i}" for i in range(30))
        assert all(e.status == 200 for e in calls)
    finally:
        await vault.aclose()
