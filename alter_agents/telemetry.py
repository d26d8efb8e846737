"""Who did what, in which run: correlation for audit rows, OpenTelemetry spans, W3C trace context.

Spans come from the `opentelemetry-api` package, a no-op until the application installs an SDK. Their
attributes name provider, account, grant id, method, host and status — never a secret, never a query
string (a credential may ride in one).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator, Mapping
from contextlib import AbstractContextManager
from dataclasses import dataclass, replace
from typing import Any

from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

_tracer = trace.get_tracer("alter_agents")
_propagator = TraceContextTextMapPropagator()


@dataclass(frozen=True, slots=True)
class Correlation:
    """What ties an audit row to an agent run; every field optional, empty ones are left out."""

    surface: str | None = None  # app | langchain | mcp | the custom tool's name
    tool: str | None = None
    session_id: str | None = None  # MCP session
    request_id: str | None = None  # MCP request (JSON-RPC id)
    run_id: str | None = None  # LangChain / LangGraph run
    thread_id: str | None = None  # LangGraph thread
    traceparent: str | None = None  # W3C trace context of the caller, when one arrived

    def with_(self, **changes: Any) -> Correlation:
        kept = {k: v for k, v in changes.items() if v is not None}
        return replace(self, **kept) if kept else self

    @property
    def trace_id(self) -> str | None:
        """The 32-hex trace id of `traceparent`, or of the span current in this context."""
        if self.traceparent:
            span = trace.get_current_span(_extract(self.traceparent))
            ctx = span.get_span_context()
            if ctx.is_valid:
                return format(ctx.trace_id, "032x")
        current = trace.get_current_span().get_span_context()
        return format(current.trace_id, "032x") if current.is_valid else None

    def audit_fields(self) -> dict[str, str]:
        fields = {k: v for k in _AUDITED if (v := getattr(self, k)) is not None}
        if self.traceparent or tracing():  # the trace id costs a context lookup: only where there is one
            trace_id = self.trace_id
            if trace_id:
                fields["trace_id"] = trace_id
        return fields


_AUDITED = ("surface", "tool", "session_id", "request_id", "run_id", "thread_id")


def tracing() -> bool:
    """True once the application installed an OpenTelemetry SDK; until then spans are skipped outright (the
    API's no-op spans still cost a context switch per span on the hot path). A global tracer provider,
    once set, cannot be replaced, so a True answer is kept."""
    global _traced
    # Asking the API costs an environment lookup that raises and catches a KeyError on every call while no
    # provider is set, so its global is read first (the public call stands in should it ever go away).
    if not _traced and (_ENV_PROVIDER or getattr(trace, "_TRACER_PROVIDER", _ABSENT) is not None):
        _traced = type(trace.get_tracer_provider()) is not trace.ProxyTracerProvider
    return _traced


_traced = False
_ABSENT = object()
_ENV_PROVIDER = "OTEL_PYTHON_TRACER_PROVIDER" in os.environ
_NO_SPAN: contextlib.nullcontext[trace.Span] = contextlib.nullcontext(trace.INVALID_SPAN)


def _extract(traceparent: str, tracestate: str | None = None) -> otel_context.Context:
    carrier = {"traceparent": traceparent}
    if tracestate:
        carrier["tracestate"] = tracestate
    return _propagator.extract(carrier)


def span(name: str, correlation: Correlation | None = None, **attributes: Any) -> AbstractContextManager[trace.Span]:
    """A span as a child of the current span, or, at the top of our work, of the caller's trace (`traceparent`)."""
    return _span(name, correlation, attributes) if tracing() else _NO_SPAN


@contextlib.contextmanager
def _span(name: str, correlation: Correlation | None, attributes: dict[str, Any]) -> Iterator[trace.Span]:
    inside = trace.get_current_span().get_span_context().is_valid
    parent = _extract(correlation.traceparent) if correlation and correlation.traceparent and not inside else None
    clean = {f"alter.{k}": v for k, v in attributes.items() if v is not None}
    with _tracer.start_as_current_span(name, context=parent, attributes=clean) as current:
        yield current


def set_attributes(current: trace.Span, **attributes: Any) -> None:
    if not current.is_recording():
        return
    current.set_attributes({f"alter.{k}": v for k, v in attributes.items() if v is not None})


def outgoing_trace_headers() -> dict[str, str]:
    """`traceparent` (and `tracestate`) of the current span, for providers whose spec opts in."""
    carrier: dict[str, str] = {}
    _propagator.inject(carrier)
    return carrier


def traceparent_from(meta: Mapping[str, Any] | None) -> str | None:
    """The W3C `traceparent` an MCP request carries in `_meta` (2026-07-28), if any and well formed."""
    value = (meta or {}).get("traceparent")
    if isinstance(value, str) and trace.get_current_span(_extract(value)).get_span_context().is_valid:
        return value
    return None
