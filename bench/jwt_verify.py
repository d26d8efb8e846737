"""Benchmark 5: JWT verification cost with a warm JWKS cache.

Reports microseconds per verification for our `JWTVerifier` (full check: header, key by `kid`,
algorithm pinned to the key type, signature, `exp`/`nbf`/`iss`/`aud`), for a bare `jwt.decode` with
the key in hand, and for a repeated token (remembered until its `exp`).

    python -m bench.jwt_verify [--n 2000]
"""

from __future__ import annotations

import argparse
import time

import anyio
import jwt

from alter_agents.vault.identity import JWTVerifier
from tests.fixtures import IdentityProvider


def per_call_us(total: float, n: int) -> float:
    return total / n * 1e6


async def main(idp: IdentityProvider, n: int) -> None:
    verifier = JWTVerifier(idp.issuer, idp.audience, idp.jwks_url)
    print(f"JWT verification, warm JWKS cache, {n} verifications each")
    print(f"  {'alg':8}{'bare jwt.decode':>18}{'ours (new token)':>19}{'ratio':>8}{'ours (repeat)':>16}")
    for alg in ("RS256", "ES256"):
        tokens = [idp.issue(f"user{i}", alg=alg, expires_in=600) for i in range(n)]
        await verifier.verify(tokens[0])  # loads the JWKS
        key = idp.key(idp.kid(alg)).private_key.public_key()
        started = time.perf_counter()
        for token in tokens:
            jwt.decode(token, key=key, algorithms=[alg], audience=idp.audience, issuer=idp.issuer)
        bare = per_call_us(time.perf_counter() - started, n)
        started = time.perf_counter()
        for token in tokens[1:]:
            await verifier.verify(token)
        ours = per_call_us(time.perf_counter() - started, n - 1)
        started = time.perf_counter()
        for _ in range(n):
            await verifier.verify(tokens[1])
        repeat = per_call_us(time.perf_counter() - started, n)
        print(f"  {alg:8}{bare:15.1f} us{ours:16.1f} us{ours / bare:8.2f}{repeat:13.1f} us")
    print(f"  JWKS fetches: {idp.jwks_fetches}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=2000)
    args = parser.parse_args()
    with IdentityProvider() as provider:
        anyio.run(main, provider, args.n)
