"""Benchmark 1, counted: instructions per `App.request` call against a bare httpx call (callgrind).

Timing on this small shared machine moves by 10-20% between runs; callgrind's instruction counts
repeat within about 1%. One process (`bench._counted_requests`) makes the calls under valgrind, with
counting on only around N bare calls and then N of ours. Two figures: with the audit rows written
inside the counted window (what throughput pays) and without (what one call's latency pays: the
writer flushes every 0.5 s, off the request path). The local API's own work is in neither count.

    python -m bench.request_instructions [--calls 200]
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import tempfile
from pathlib import Path

from bench._common import ROOT, Bench, env_with, run_counted


def _counts(bench: Bench, calls: int, flush: bool) -> dict[str, float]:
    config = {"url": f"{bench.api_url}/v1/items", "jwt": bench.user_jwt(), "token": bench.api_token,
              "env": json.dumps(bench.env)}
    with tempfile.TemporaryDirectory(prefix="alter-bench-cg-") as tmp:
        out = Path(tmp) / "callgrind.out"
        subprocess.run(
            ["valgrind", "-q", "--tool=callgrind", "--instr-atstart=no", f"--callgrind-out-file={out}",
             sys.executable, "-m", "bench._counted_requests", json.dumps(config), str(calls),
             "flush" if flush else "no-flush"],
            cwd=ROOT, env=env_with({}), check=True,
        )
        counts = {}
        for dump in Path(tmp).glob("callgrind.out.*"):
            text = dump.read_text()
            side = re.search(r"^desc: Trigger: dump (\w+)$", text, re.M)
            total = re.search(r"^totals: (\d+)$", text, re.M)
            if side and total:
                counts[side.group(1)] = int(total.group(1)) / calls
    return counts


def main(bench: Bench, calls: int) -> None:
    print(f"instructions per call (callgrind, {calls} sequential calls per side, one process)")
    print(f"  {'':34}{'bare httpx':>12}{'App.request':>13}{'ours/bare':>11}{'extra':>10}")
    for flush, what in ((True, "audit rows written (throughput)"), (False, "audit flush left out (latency)")):
        counts = _counts(bench, calls, flush)
        bare, ours = counts["bare"], counts["ours"]
        print(f"  {what:34}{bare / 1e3:10.0f} k{ours / 1e3:11.0f} k{ours / bare:11.3f}{(ours - bare) / 1e3:8.0f} k")


if __name__ == "__main__":
    run_counted(__doc__ or "", main, 200)
