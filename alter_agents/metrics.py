"""Prometheus metrics for the HTTP servers (MCP, vault): calls, latency, refreshes, re-authorisation, sessions.

One registry per process (`REGISTRY`), filled by the vault and the tools as calls happen. A server serves
it at `/metrics` only when asked to: on by default on a loopback interface, off on a public one unless
`ALTER_METRICS=on`, and then only to a bearer of `ALTER_METRICS_TOKEN` (a scrape config's
`authorization` credentials). Labels never carry an account, a user or a URL — only provider names and
outcome codes, so cardinality stays bounded and nothing personal leaks into a monitoring system.
"""

from __future__ import annotations

import bisect
import hmac
import itertools
import threading
from collections.abc import Awaitable, Callable, Iterator

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, generate_latest
from prometheus_client.core import CounterMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response

from alter_agents.errors import ConfigurationError

REGISTRY = CollectorRegistry(auto_describe=True)
REFRESHES = Counter("alter_token_refreshes", "Access-token refreshes by provider and outcome (ok, failed, reauth).",
                    ["provider", "outcome"], registry=REGISTRY)
REAUTH_GRANTS = Gauge("alter_grants_needing_reauth", "Grants whose refresh failed for good (needs_reauth).",
                      registry=REGISTRY)
SESSIONS = Gauge("alter_active_sessions", "Open sessions on this server.", ["server"], registry=REGISTRY)
LATENCY_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
_BOUNDS = [*map(str, LATENCY_BUCKETS), "+Inf"]  # `le` labels, written as the client library writes them


_lock = threading.Lock()
_calls: dict[tuple[str, str], int] = {}
_latency: dict[str, list[float]] = {}  # per provider: a count per bucket (+Inf last), then the sum


def count_call(provider: str | None, outcome: str) -> None:
    """One call, by provider and outcome. The client library's counters validate and lock per update, more
    work than the rest of a call's bookkeeping: here a call adds to plain dicts, which `_Calls` hands to
    Prometheus at scrape time."""
    key = (provider or "unknown", outcome)
    with _lock:
        _calls[key] = _calls.get(key, 0) + 1


def observe_latency(provider: str, seconds: float) -> None:
    at = bisect.bisect_left(LATENCY_BUCKETS, seconds)
    with _lock:
        counts = _latency.get(provider)
        if counts is None:
            counts = _latency[provider] = [0.0] * (len(LATENCY_BUCKETS) + 2)
        counts[at] += 1
        counts[-1] += seconds


class _Calls(Collector):
    """`alter_calls_total` and `alter_upstream_seconds`, read from the counts above at scrape time."""

    def collect(self) -> Iterator[Metric]:
        with _lock:
            calls, latency = dict(_calls), {p: list(c) for p, c in _latency.items()}
        total = CounterMetricFamily("alter_calls", "Tool and App calls by provider and outcome (ok, or the error "
                                    "code).", labels=["provider", "outcome"])
        for (provider, outcome), value in sorted(calls.items()):
            total.add_metric([provider, outcome], value)
        yield total
        seconds = HistogramMetricFamily("alter_upstream_seconds", "Upstream call latency, first byte to last, by "
                                        "provider.", labels=["provider"])
        for provider, counts in sorted(latency.items()):
            cumulative = list(itertools.accumulate(counts[:-1]))
            seconds.add_metric([provider], list(zip(_BOUNDS, cumulative, strict=True)), sum_value=counts[-1])
        yield seconds


REGISTRY.register(_Calls())


def metrics_enabled(setting: str | None, host: str) -> bool:
    """`ALTER_METRICS` is on, off, or auto (the default): on only when the server listens on loopback."""
    value = (setting or "auto").strip().lower()
    if value not in ("on", "off", "auto"):
        raise ConfigurationError(f"ALTER_METRICS must be on, off or auto, not {setting!r}.")
    if value == "auto":
        return host in ("127.0.0.1", "::1", "localhost")
    return value == "on"


def metrics_endpoint(
    token: str | None, *, public: bool, before: Callable[[], Awaitable[None]] | None = None
) -> Callable[[Request], Awaitable[Response]]:
    """A Starlette endpoint serving `REGISTRY`; on a public interface a bearer token is required."""
    if public and not token:
        raise ConfigurationError(
            "Metrics on a public interface need ALTER_METRICS_TOKEN (scrapers send it as a bearer token); "
            "set it, or ALTER_METRICS=off."
        )

    async def endpoint(request: Request) -> Response:
        if token:
            sent = request.headers.get("authorization", "")
            scheme, _, value = sent.partition(" ")
            if scheme.lower() != "bearer" or not hmac.compare_digest(value.strip().encode(), token.encode()):
                return PlainTextResponse("metrics need the bearer token", status_code=401,
                                         headers={"WWW-Authenticate": 'Bearer realm="metrics"'})
        if before is not None:
            await before()
        return Response(generate_latest(REGISTRY), media_type=CONTENT_TYPE_LATEST)

    return endpoint


def reauth_gauge(count: Callable[[], Awaitable[int]]) -> Callable[[], Awaitable[None]]:
    """A `before` hook that refreshes the grants-needing-reauthorisation gauge from the store at scrape time."""

    async def update() -> None:
        REAUTH_GRANTS.set(await count())

    return update
