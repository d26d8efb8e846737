"""Benchmark 2, counted: instructions per MCP `request` call, server and client, ours vs the bare server.

Timing on a small shared machine moves by 10-20% between runs; valgrind's callgrind counts the
instructions a process executes, which repeats within about 1%. One client session
(`bench._mcp_client`) makes the measured calls in sequence: first with the server under callgrind,
counting switched on only around those calls; then with the client itself counted the same way.
A sequential call also costs the local API, the same for both sides and left out. The ratio of the
totals, bare over ours, is the throughput ratio to expect when the CPUs are the limit.

Under valgrind a process runs some 50 times slower, so our server's time-based batching (audit flush,
grant cache) is stretched by the same factor (`BENCH_TIME_SCALE`) to keep it per call as in real time.

    python -m bench.instructions [--calls 100]
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
from pathlib import Path

from bench._common import ROOT, Bench, env_with, mcp_server_process, run_counted, verdict

VALGRIND_SLOWDOWN = "50"


def _callgrind(out: Path) -> list[str]:
    return ["valgrind", "-q", "--tool=callgrind", "--instr-atstart=no", f"--callgrind-out-file={out}"]


def _count(pid: int, on: bool) -> None:
    subprocess.run(["callgrind_control", "-i", "on" if on else "off", str(pid)], check=True, capture_output=True)


def _total(out: Path) -> int:
    """Instructions counted, from the `totals:` line callgrind writes at exit."""
    for line in out.read_text().splitlines():
        if line.startswith("totals:"):
            return int(line.split()[1])
    raise RuntimeError(f"no totals in {out}")


def _server_side(bench: Bench, kind: str, token: str | None, calls: int, tmp: Path) -> float:
    out = tmp / f"server-{kind}.out"
    env = {"BENCH_TIME_SCALE": VALGRIND_SLOWDOWN}
    with mcp_server_process(kind, bench, prefix=_callgrind(out), env=env) as (endpoint, pid):
        _count_calls(_client(bench, endpoint, token, calls), counted=pid)
    return _total(out) / calls


def _client_side(bench: Bench, kind: str, token: str | None, calls: int, tmp: Path) -> float:
    out = tmp / f"client-{kind}.out"
    with mcp_server_process(kind, bench) as (endpoint, _):
        _count_calls([*_callgrind(out), *_client(bench, endpoint, token, calls)], counted=None)
    return _total(out) / calls


def _client(bench: Bench, endpoint: str, token: str | None, calls: int) -> list[str]:
    return [sys.executable, "-m", "bench._mcp_client", endpoint, token or "-", bench.api_url, str(calls)]


def _count_calls(command: list[str], counted: int | None) -> None:
    """Run the client `command`; count process `counted` (or the client itself) during its timed calls."""
    proc = subprocess.Popen(command, cwd=ROOT, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                            env=env_with({}))
    assert proc.stdin is not None and proc.stdout is not None
    pid = counted or proc.pid
    try:
        for word, on in (("ready", True), ("done", False)):
            line = proc.stdout.readline().strip()
            if line != word:
                raise RuntimeError(f"client printed {line!r}, expected {word!r}")
            _count(pid, on=on)
            proc.stdin.write("\n")
            proc.stdin.flush()
    finally:
        proc.stdin.close()
        proc.wait(timeout=120)


def main(bench: Bench, calls: int) -> bool:
    jwt = bench.user_jwt()
    counts: dict[str, dict[str, float]] = {"server": {}, "client": {}}
    with tempfile.TemporaryDirectory(prefix="alter-bench-cg-") as tmp:
        for kind, token in (("bare", None), ("ours", jwt)):
            counts["server"][kind] = _server_side(bench, kind, token, calls, Path(tmp))
            counts["client"][kind] = _client_side(bench, kind, token, calls, Path(tmp))
    print(f"instructions per MCP `request` call (callgrind, {calls} sequential calls per side)")
    print(f"  {'':10}{'bare SDK server':>17}{'alter-agents':>15}{'ours/bare':>11}")
    for part in ("server", "client"):
        b, o = counts[part]["bare"], counts[part]["ours"]
        print(f"  {part:10}{b / 1e6:15.3f} M{o / 1e6:13.3f} M{o / b:11.3f}")
    total = {k: counts["server"][k] + counts["client"][k] for k in ("bare", "ours")}
    ratio = total["bare"] / total["ours"]
    print(f"  {'total':10}{total['bare'] / 1e6:15.3f} M{total['ours'] / 1e6:13.3f} M{1 / ratio:11.3f}")
    print(f"  throughput ratio when the CPUs are the limit (bare total / ours total): {ratio:.3f}")
    ok = ratio >= 0.85
    print(f"  target throughput ratio >= 0.85: {verdict(ok)}")
    return ok


if __name__ == "__main__":
    run_counted(__doc__ or "", main, 100)
