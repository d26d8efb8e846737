"""The bare baseline of benchmark 3: one Starlette endpoint doing `/sdk/token`'s HMAC and JSON work.

It checks the API key and the request signature exactly as the vault server does (the same `verify`),
parses the JSON body, and answers a token response of the same shape (a template captured from the
real server, so the client does the same parsing), served by uvicorn the same way `vault serve` is.
No store, no nonce ledger, no resolution: what is left is the floor any such server pays.
`python -m bench._bare_vault TEMPLATE.json` with the key in `BENCH_BARE_KEY`; prints its URL.
"""

from __future__ import annotations

import hmac
import json
import os
import sys
from pathlib import Path

import anyio
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from alter_agents.listen import listening_socket
from alter_agents.server.signing import SignatureRejected, verify


def build(api_key: str, template: dict[str, object]) -> Starlette:
    async def token(request: Request) -> Response:
        headers = {k.lower(): v for k, v in request.headers.items()}
        body = await request.body()
        if not hmac.compare_digest(headers.get("x-api-key", ""), api_key):
            return JSONResponse({"error": "invalid_key"}, status_code=401)
        try:
            verify(api_key, request.method, request.url.path, request.url.query, headers, body)
        except SignatureRejected as exc:
            return JSONResponse({"error": exc.code}, status_code=401)
        data = json.loads(body)
        answer = {**template, "provider_id": data.get("provider_id") or template["provider_id"]}
        return JSONResponse(answer)

    async def health(_request: Request) -> Response:
        return JSONResponse({"status": "ok"})

    return Starlette(routes=[Route("/sdk/token", token, methods=["POST"]), Route("/healthz", health)])


def main() -> None:
    template = json.loads(Path(sys.argv[1]).read_text("utf-8"))
    app = build(os.environ["BENCH_BARE_KEY"], template)
    sock = listening_socket("127.0.0.1", 0)  # as `vault serve` listens: Nagle off
    config = uvicorn.Config(app, log_level="warning", access_log=False, lifespan="on")
    print(f"bare vault listening on http://127.0.0.1:{sock.getsockname()[1]}", flush=True)
    anyio.run(uvicorn.Server(config).serve, [sock])


if __name__ == "__main__":
    main()
