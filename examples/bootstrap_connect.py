"""Headless bootstrap: link an account once, then call the API by the grant id that comes back.

    pip install -e '.[examples]'                   # once, from the repository root
    python examples/bootstrap_connect.py          # open the printed URL and approve in your browser
    python examples/bootstrap_connect.py --auto   # a scripted "browser" approves for you

This is how a script or a scheduled agent with no end user gets its credential: `App.connect` prints
(or opens) the sign-in URL, waits for the redirect on a loopback port, stores an app-owned grant and
returns its id. Later calls name that grant id — here directly, and through a `request` tool pinned to
it, whose schema has no provider or account for a model to change. Runs offline against a local demo
provider started by the script, with a throwaway vault in a temporary directory.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _demo_provider import DemoProvider, approve

from alter_agents import AlterError, App, GrantSession, Settings
from alter_agents.models import ConnectStart
from alter_agents.tools import AlterTools, RequestResult


async def bootstrap(demo: DemoProvider, settings: Settings, auto: bool) -> None:
    async def show(start: ConnectStart) -> None:
        print(f"Open this URL to connect {start.provider}:\n  {start.connect_url}", flush=True)
        if auto:
            await approve(start.connect_url, "robot@demo.test")

    async with App(settings=settings) as app:
        [grant] = await app.connect(["demo"], open_browser=False, on_url=show, timeout=30 if auto else 300)
        print(f"connected {grant.provider} account {grant.account}: grant_id={grant.grant_id}")

        response = await app.request("GET", f"{demo.url}/api/inbox", grant_id=grant.grant_id)
        response.raise_for_status()
        print(f"App.request by grant id -> {response.status_code} {response.json()['account']} "
              f"(grant {response.grant.grant_id}, account {response.grant.account})")

        pinned = AlterTools(app, GrantSession(grant.grant_id))
        print("pinned request tool arguments:", sorted(pinned.request_args_model.model_json_schema()["properties"]))
        result = await pinned.run_request({"url": f"{demo.url}/api/inbox"})
        if not isinstance(result, RequestResult) or result.status != 200:
            raise SystemExit(f"pinned request failed: {result}")
        print("pinned tool result:", json.dumps(result.model_dump(mode="json"))[:300])
        print(f"OK grant_id={grant.grant_id} account={result.grant.account}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--auto", action="store_true", help="approve the consent without a human")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp, DemoProvider() as demo:
        settings = Settings.from_env(demo.configure(Path(tmp)))
        try:
            asyncio.run(bootstrap(demo, settings, args.auto))
        except AlterError as exc:  # e.g. the sign-in was denied or timed out
            raise SystemExit(f"error: {exc.message}") from None


if __name__ == "__main__":
    main()
