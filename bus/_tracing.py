"""OpenTelemetry tracing, when ``opentelemetry-api`` is installed (``rapid-objection[otel]``).

A registry's step is a span (``step <event type>``), whose W3C ``traceparent`` the
envelope carries (``Envelope.trace``); each worker runs the hook in a child of it
(``hook <event type>``), so that one trace shows the scatter-gather of one event to
every plugin, across processes. Spans go to whatever tracer provider the process set
up (the OpenTelemetry SDK and its exporters); with the API alone they cost nearly
nothing, and without it this module is the only one that knows: the import is tried
once, here, and the worker's hot path stays exactly as it is (``traced`` returns the
handler itself).
"""

from __future__ import annotations

import contextlib
from typing import TYPE_CHECKING, Any, Final

from ._contract import Ack, Custom, Envelope
from ._delivery import Delivery, Handler
from ._retry import Deferred

if TYPE_CHECKING:
    from ._waits import WaitResult

try:
    from opentelemetry import trace as _trace
    from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator
except ImportError:  # the extra is not installed: every function below is a no-op
    _trace = None  # type: ignore[assignment]

ENABLED: Final = _trace is not None
"""Whether ``opentelemetry-api`` could be imported."""

TRACER: Final = "rapid_objection"
"""The instrumentation scope of every span."""

ATTRIBUTE: Final = "rapid_objection."
"""The prefix of this library's span attributes: ``rapid_objection.plugin``, ..."""

_propagator: Any = TraceContextTextMapPropagator() if ENABLED else None
# A proxy until the process sets its tracer provider, then that provider's tracer.
_tracer: Any = _trace.get_tracer(TRACER) if _trace is not None else None
_NO_SPAN: Final[contextlib.AbstractContextManager[None]] = contextlib.nullcontext()


def traceparent() -> str | None:
    """The W3C ``traceparent`` of the current span, or None (no span, no OpenTelemetry)."""
    if _trace is None:
        return None
    carrier: dict[str, str] = {}
    _propagator.inject(carrier)
    return carrier.get("traceparent")


def step_span(event_type: str, app: str, registry: str) -> contextlib.AbstractContextManager[Any]:
    """A registry's step: the span (None without OpenTelemetry) within which the event
    is published and its acks awaited; ``traceparent()`` inside it is the envelope's."""
    if _trace is None:
        return _NO_SPAN  # reused: nothing is built per step
    span: contextlib.AbstractContextManager[Any] = _tracer.start_as_current_span(
        f"step {event_type}",
        kind=_trace.SpanKind.PRODUCER,
        attributes={
            f"{ATTRIBUTE}event_type": event_type,
            f"{ATTRIBUTE}app": app,
            f"{ATTRIBUTE}registry": registry,
        },
    )
    return span


def copy_span(kind: str, original: Envelope, plugin: str) -> contextlib.AbstractContextManager[Any]:
    """A copy of ``original`` for ``plugin`` alone (``kind``: ``replay`` or ``redrive``):
    a span of its own, which the copy's envelope carries (``traceparent()`` inside it),
    so the plugin's hook is its child; linked to the original event's trace, which may
    have ended long ago, rather than a part of it. None without OpenTelemetry."""
    if _trace is None:
        return _NO_SPAN
    links = []
    if original.trace:
        extracted = _propagator.extract({"traceparent": original.trace})
        linked = _trace.get_current_span(extracted).get_span_context()
        if linked.is_valid:
            links.append(_trace.Link(linked))
    span: contextlib.AbstractContextManager[Any] = _tracer.start_as_current_span(
        f"{kind} {_event_name(original)}",
        kind=_trace.SpanKind.PRODUCER,
        links=links,
        attributes={
            f"{ATTRIBUTE}plugin": plugin,
            f"{ATTRIBUTE}event_type": original.type,
            f"{ATTRIBUTE}app": original.app,
            f"{ATTRIBUTE}replaces": original.original_id,
        },
    )
    return span


def step_done(span: Any, result: WaitResult) -> None:
    """Put what the wait found on the step's span: the event id and each kind's count."""
    if span is None:
        return
    span.set_attribute(f"{ATTRIBUTE}event_id", result.event_id)
    for kind in ("acked", "failed", "timed_out", "skipped"):
        span.set_attribute(f"{ATTRIBUTE}{kind}", len(getattr(result, kind)))
    span.set_attribute(f"{ATTRIBUTE}outcome", "ok" if result.ok else "failed")


def traced(handler: Handler, handles: Any, plugin: str, consumer: str) -> Handler:
    """``handler`` running each hook call in a span, the child of the envelope's trace.

    ``handles(envelope)`` tells whether the plugin has a hook for it: events it only
    acknowledges as skipped get no span. Without OpenTelemetry, ``handler`` itself.
    """
    if _trace is None:
        return handler
    tracer = _tracer
    kind, status, failed = _trace.SpanKind.CONSUMER, _trace.Status, _trace.StatusCode.ERROR

    async def run(delivery: Delivery) -> Ack | Deferred:
        envelope = delivery.envelope
        if not handles(envelope):
            return await handler(delivery)
        parent = _propagator.extract({"traceparent": envelope.trace}) if envelope.trace else None
        with tracer.start_as_current_span(
            f"hook {_event_name(envelope)}",
            context=parent,
            kind=kind,
            attributes={
                f"{ATTRIBUTE}plugin": plugin,
                f"{ATTRIBUTE}consumer": consumer,
                f"{ATTRIBUTE}event_type": envelope.type,
                f"{ATTRIBUTE}app": envelope.app,
                f"{ATTRIBUTE}event_id": envelope.id,
                f"{ATTRIBUTE}attempt": delivery.attempt,
            },
        ) as span:
            answer = await handler(delivery)
            if isinstance(answer, Deferred):
                span.set_attribute(f"{ATTRIBUTE}outcome", "deferred")
                return answer
            span.set_attribute(f"{ATTRIBUTE}outcome", answer.status)
            if answer.status == "error":
                # The dispatcher caught the exception; its type and text are in the ack.
                span.add_event(
                    "exception",
                    {
                        "exception.type": answer.error_type or "Exception",
                        "exception.message": answer.error or "",
                    },
                )
                span.set_status(status(failed, answer.error))
            return answer

    return run


def _event_name(envelope: Envelope) -> str:
    payload = envelope.payload
    return f"custom {payload.name}" if isinstance(payload, Custom) else envelope.type
