"""What the vault server checks before it reads a signed call: size, key, signature headers, timestamp,
nonce, body hash, signature; each refusal is a JSON error with its own code, and a refused call costs nothing
(its nonce stays unused, so the genuine request still goes through)."""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import httpx
import pytest

from alter_agents.server.keys import generate_key
from alter_agents.server.limits import MAX_BODY_BYTES
from alter_agents.server.signing import MAX_SKEW_SECONDS, sign
from tests.conftest import make_deployment
from tests.fixtures import IdentityProvider, OAuthServer, UpstreamAPI
from tests.fixtures.vault_server import VaultServerProcess, mint_key

pytestmark = pytest.mark.timeout(90)

PATH = "/sdk/grants/list"
BODY = b'{"limit":10,"offset":0}'


@dataclass
class Served:
    url: str
    key: str

    def post(self, body: bytes | Iterator[bytes], headers: dict[str, str]) -> httpx.Response:
        return self.post_to(self.url, body, headers)

    @staticmethod
    def post_to(url: str, body: bytes | Iterator[bytes], headers: dict[str, str]) -> httpx.Response:
        return httpx.post(f"{url}{PATH}", content=body, timeout=30,
                          headers={"Content-Type": "application/json", **headers})


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    """One vault server for the module: every test signs with fresh nonces, so they cannot disturb each other."""
    tmp = tmp_path_factory.mktemp("guards")
    with IdentityProvider() as idp, OAuthServer() as oauth, UpstreamAPI(oauth) as upstream:
        d = make_deployment(tmp, f"sqlite+aiosqlite:///{tmp / 'vault.db'}", idp, oauth, upstream,
                            oauth.register_client())
        key = asyncio.run(mint_key(d.settings))
        with VaultServerProcess(d.env) as server:
            yield Served(server.url, key)


Tamper = Callable[[str, dict[str, str]], tuple[bytes, dict[str, str]]]


def _without(name: str) -> Tamper:
    return lambda key, h: (BODY, {"x-api-key": key, **{k: v for k, v in h.items() if k != name}})


def _with(name: str, value: str) -> Tamper:
    return lambda key, h: (BODY, {"x-api-key": key, **h, name: value})


def _future() -> str:
    """Read when the test runs, not when the module is collected."""
    return str(int(time.time()) + MAX_SKEW_SECONDS + 60)


def _typo(key: str) -> str:
    return key[:-1] + ("b" if key.endswith("a") else "a")


GUARDS: dict[str, tuple[Tamper, int, str]] = {
    "no API key": (lambda key, h: (BODY, h), 401, "invalid_key"),
    "a mistyped API key": (lambda key, h: (BODY, {"x-api-key": _typo(key), **h}), 401, "invalid_key"),
    "an unknown API key": (lambda key, h: (BODY, {"x-api-key": generate_key(), **h}), 401, "invalid_key"),
    "no signature": (_without("X-Alter-Signature"), 401, "missing_signature"),
    "no timestamp": (_without("X-Alter-Timestamp"), 401, "missing_signature"),
    "no nonce": (_without("X-Alter-Nonce"), 401, "missing_signature"),
    "no content hash": (_without("X-Alter-Content-SHA256"), 401, "missing_signature"),
    "a timestamp that is not a number": (_with("X-Alter-Timestamp", "yesterday"), 401, "stale_request"),
    "a timestamp from the future": (lambda key, h: _with("X-Alter-Timestamp", _future())(key, h), 401,
                                    "stale_request"),
    "a short nonce": (_with("X-Alter-Nonce", "abc"), 401, "invalid_nonce"),
    "a wrong content hash": (_with("X-Alter-Content-SHA256", "0" * 64), 401, "body_hash_mismatch"),
    "a signature that does not verify": (_with("X-Alter-Signature", "f" * 64), 401, "invalid_signature"),
    "a v2 signature that disagrees": (_with("X-Alter-Signature-V2", "e" * 64), 401, "invalid_signature"),
    "a declared body over the limit": (_with("Content-Length", str(MAX_BODY_BYTES + 1)), 413, "payload_too_large"),
}


def _raw_post(url: str, body: bytes, headers: dict[str, str]) -> httpx.Response:
    """POST over a bare socket, sending `headers` exactly as given (Content-Length included)."""
    target = httpx.URL(url)
    lines = [f"POST {PATH} HTTP/1.1", f"Host: {target.host}:{target.port}", "Connection: close",
             *(f"{k}: {v}" for k, v in headers.items())]
    with socket.create_connection((target.host, target.port or 80), timeout=30) as sock:
        sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode() + body)
        reply = b""
        while chunk := sock.recv(65536):
            reply += chunk
    head, _, content = reply.partition(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1])
    return httpx.Response(status, content=content, headers={"Content-Type": "application/json"})


@pytest.mark.parametrize("guard", GUARDS)
def test_each_guard_refuses_its_request_with_its_own_code_and_burns_nothing(served: Served, guard: str) -> None:
    tamper, status, code = GUARDS[guard]
    genuine = sign(served.key, "POST", PATH, BODY)
    body, headers = tamper(served.key, genuine)
    # A lie about the size goes over a bare socket (httpx will not tell it): the server must not wait for the rest.
    send = _raw_post if "Content-Length" in headers else Served.post_to
    response = send(served.url, body, headers)
    assert (response.status_code, response.json()["error"]) == (status, code), response.text
    assert response.json()["message"]
    accepted = served.post(BODY, {"x-api-key": served.key, **genuine})  # same nonce: not used up by the refusal
    assert accepted.status_code == 200, accepted.text


def test_a_streamed_body_over_the_limit_is_refused_without_a_declared_length(served: Served) -> None:
    chunk = b" " * (256 * 1024)
    big = b'{"limit":10}' + chunk * (MAX_BODY_BYTES // len(chunk) + 1)
    headers = {"x-api-key": served.key, **sign(served.key, "POST", PATH, big)}
    response = served.post(iter([big[i:i + len(chunk)] for i in range(0, len(big), len(chunk))]), headers)
    assert (response.status_code, response.json()["error"]) == (413, "payload_too_large")


@pytest.mark.parametrize(("body", "why"), [(b"{not json", "not JSON"), (b"[1, 2]", "JSON object")])
def test_a_signed_body_that_is_not_a_json_object_is_a_400(served: Served, body: bytes, why: str) -> None:
    response = served.post(body, {"x-api-key": served.key, **sign(served.key, "POST", PATH, body)})
    assert (response.status_code, response.json()["error"]) == (400, "invalid_json")
    assert why in response.json()["message"]


def test_a_stale_request_is_refused_even_when_correctly_signed(served: Served) -> None:
    old = sign(served.key, "POST", PATH, BODY, now=time.time() - MAX_SKEW_SECONDS - 60)
    response = served.post(BODY, {"x-api-key": served.key, **old})
    assert (response.status_code, response.json()["error"]) == (401, "stale_request")
