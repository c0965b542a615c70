"""``python -m tests.e2e.traced_worker SPANS.json worker ...``: the worker command line with
the OpenTelemetry SDK set up, every finished span written to SPANS.json (a list of the
SDK's JSON form of each span) when the process exits, as an operator's exporter would
send them to a collector."""

from __future__ import annotations

import atexit
import json
import sys
from pathlib import Path

from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter


def main() -> None:
    out = Path(sys.argv[1])
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    trace.set_tracer_provider(provider)

    @atexit.register
    def dump() -> None:
        spans = [json.loads(span.to_json()) for span in exporter.get_finished_spans()]
        out.write_text(json.dumps(spans))

    from rapid_objection.core._cli import main as cli

    sys.exit(cli(sys.argv[2:]))


if __name__ == "__main__":
    main()
