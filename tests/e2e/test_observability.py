"""What an operator sees of worker processes: their logs and their OpenTelemetry traces."""

from __future__ import annotations

import json
import secrets
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anyio
import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanContext

from rapid_objection.bus import Bus, DeadLetters, Publisher
from rapid_objection.bus._redis_memory import forget_memory_server
from rapid_objection.bus._tracing import step_span, traceparent
from rapid_objection.bus.testing import drained
from rapid_objection.core import AppRegistry
from rapid_objection.core._replay import Selection, redeliver
from rapid_objection.plugin_workers import PluginInterface
from rapid_objection.plugin_workers.testing import running_worker
from tests.core.test_registry import sample_config

from .conftest import WorkerPool
from .plugins import Picky
from .test_workers import registered, required

pytestmark = [pytest.mark.anyio, pytest.mark.slow, pytest.mark.redis_server]


def json_lines(text: str) -> list[dict[str, Any]]:
    """Each line of a worker's output as the JSON object it must be."""
    return [json.loads(line) for line in text.splitlines() if line.strip()]


class TestWorkerLogs:
    async def test_banner_hooks_and_failures_as_json_lines(self, workers: WorkerPool) -> None:
        """With ``--log-level debug --log-format json`` a worker writes only JSON lines: a
        banner saying what it serves, each hook call at debug, each failure at warning
        with its traceback."""
        options = ["--log-level", "debug", "--log-format", "json", "--max-deliveries", "1"]
        options += ["--concurrency", "2"]
        (worker,) = await workers.start(Picky, options=options)
        async with Publisher(workers.bus, "obs-registry", policies=required(Picky.NAME)) as pub:
            good = await pub.emit(registered(), app="good", timeout=10)
            bad = await pub.emit(registered(), app="bad", timeout=10)
        assert good.ok
        assert not bad.ok
        await workers.stop_all()
        lines = json_lines(worker.log())

        (banner,) = [line for line in lines if line.get("hooks") is not None]
        assert banner["level"] == "info"
        assert banner["plugin"] == Picky.NAME
        assert banner["version"] == "1.0.0"
        assert banner["hooks"] == ["app_registered"]
        assert banner["namespace"] == workers.bus.namespace
        assert banner["consumer"] == worker.consumer
        assert banner["concurrency"] == 2
        assert banner["bus_url"] == workers.url
        assert banner["keyring"] is False

        hooks = {line["app"]: line for line in lines if line["logger"] == "rapid_objection.hooks"}
        assert hooks["good"]["level"] == "debug"
        assert hooks["good"]["outcome"] == "ok"
        assert hooks["good"]["event_id"] == good.event_id
        assert hooks["good"]["duration"] >= 0
        assert hooks["bad"]["level"] == "warning"
        assert hooks["bad"]["outcome"] == "error"
        assert hooks["bad"]["event_id"] == bad.event_id
        assert "LookupError: no such customer: bad" in hooks["bad"]["exception"]
        assert "Traceback (most recent call last)" in hooks["bad"]["exception"]
        assert "in work" in hooks["bad"]["exception"]  # the plugin's own frame
        # Its last line says it stopped, and what it did.
        assert lines[-1]["level"] == "info"
        assert lines[-1]["message"] == (
            f"worker {worker.consumer} of plugin {Picky.NAME} stopped: "
            "2 handled (1 failed, 1 dead-lettered)"
        )

    async def test_the_banner_hides_the_password(self, workers: WorkerPool) -> None:
        """The bus URL in the banner (text format) never shows a password."""
        # The test server has no password set: it accepts any for the default user.
        url = workers.url.replace("redis://", "redis://default:s3cret@", 1)
        pool = WorkerPool(workers.bus, url, workers.logs)
        try:
            (worker,) = await pool.start(Picky)
        finally:
            await pool.stop_all()
        text = worker.log()
        assert "s3cret" not in text
        assert f"worker of plugin {Picky.NAME} 1.0.0 started: consumer {worker.consumer}" in text
        assert "keyring off; hooks: app_registered" in text


# --- tracing --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def exporter() -> Iterator[InMemorySpanExporter]:
    """This process's spans (the registry's), kept in memory: the SDK as the global
    tracer provider for this module, shut down after it (a provider is set only once
    per process; shut down, it exports nothing more for the other tests)."""
    memory = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(memory))
    trace.set_tracer_provider(provider)
    if trace.get_tracer_provider() is not provider:
        pytest.fail("another tracer provider was set in this process before this test")
    yield memory
    provider.shutdown()


def hex_ids(span: ReadableSpan) -> tuple[str, str]:
    """(trace id, span id) as the SDK's JSON form writes them."""
    context = span.get_span_context()
    assert context is not None
    return hex_ids_of(context)


def hex_ids_of(context: SpanContext) -> tuple[str, str]:
    return f"0x{context.trace_id:032x}", f"0x{context.span_id:016x}"


class TestTracing:
    async def test_hook_spans_are_children_of_the_registry_step(
        self, workers: WorkerPool, exporter: InMemorySpanExporter, tmp_path: Path
    ) -> None:
        """The registry's step is a span; the worker process runs the hook in a child span
        of it (the trace context travels in the envelope), with the plugin, consumer,
        event type, app and outcome as attributes; the plugin's own spans are children of
        the hook's, and a custom event it emits there carries the trace on."""
        spans_file = tmp_path / "worker-spans.json"
        launcher = [sys.executable, "-m", "tests.e2e.traced_worker", str(spans_file)]
        (worker,) = await workers.start(Picky, launcher=launcher)
        config = {
            "bus": {"url": workers.url, "namespace": workers.bus.namespace, "ack_timeout": 10},
            "plugins": {
                Picky.NAME: {
                    "module": "tests.e2e.plugins:Picky",
                    "mode": "external",
                    "required": True,
                },
            },
        }
        exporter.clear()
        async with AppRegistry(config) as registry:
            await registry.register_app("good", sample_config(tmp_path, "good"))
            await registry.register_app("bad", sample_config(tmp_path, "bad"))
            registry_id = registry.id
        await workers.stop_all()
        with anyio.fail_after(5):
            while not spans_file.exists():
                await anyio.sleep(0.05)

        steps = {
            span.attributes["rapid_objection.app"]: span  # type: ignore[index]
            for span in exporter.get_finished_spans()
            if span.name == "step app_registered"
        }
        assert set(steps) == {"good", "bad"}
        for app, span in steps.items():
            attributes = dict(span.attributes or {})
            assert attributes["rapid_objection.registry"] == registry_id
            assert attributes["rapid_objection.event_type"] == "app_registered"
            assert attributes["rapid_objection.acked"] == (1 if app == "good" else 0)
            assert attributes["rapid_objection.outcome"] == ("ok" if app == "good" else "failed")
        names = {span.name for span in exporter.get_finished_spans()}
        assert {"step app_registration_started", "step connection_created"} <= names

        worker_spans = json.loads(spans_file.read_text())
        hooks = [span for span in worker_spans if span["name"].startswith("hook ")]
        assert {span["name"] for span in hooks} == {"hook app_registered"}, worker_spans
        by_app = {span["attributes"]["rapid_objection.app"]: span for span in hooks}
        assert set(by_app) == {"good", "bad"}
        for app, hook in by_app.items():
            trace_id, span_id = hex_ids(steps[app])
            assert hook["context"]["trace_id"] == trace_id
            assert hook["parent_id"] == span_id
            assert hook["kind"] == "SpanKind.CONSUMER"
            attributes = hook["attributes"]
            assert attributes["rapid_objection.plugin"] == Picky.NAME
            assert attributes["rapid_objection.consumer"] == worker.consumer
            assert attributes["rapid_objection.event_type"] == "app_registered"
            assert (
                attributes["rapid_objection.event_id"]
                == dict(steps[app].attributes or {})["rapid_objection.event_id"]
            )
        # The plugin's own span is the hook span's child; the custom event it emitted
        # there carries that span's context onward (the same trace).
        own = [span for span in worker_spans if span["name"] == "picky lookup"]
        assert sorted(span["parent_id"] for span in own) == sorted(
            hook["context"]["span_id"] for hook in hooks
        )
        picked = [entry.envelope async for entry in workers.bus.history.iterate(types=("custom",))]
        # traceparent: version-trace id-parent span id-flags
        carried = sorted(tuple((envelope.trace or "").split("-")[1:3]) for envelope in picked)
        assert carried == sorted(
            (span["context"]["trace_id"][2:], span["context"]["span_id"][2:]) for span in own
        )
        assert by_app["good"]["attributes"]["rapid_objection.outcome"] == "ok"
        assert by_app["good"]["status"]["status_code"] == "UNSET"
        assert by_app["bad"]["attributes"]["rapid_objection.outcome"] == "error"
        assert by_app["bad"]["status"]["status_code"] == "ERROR"
        assert "no such customer: bad" in by_app["bad"]["status"]["description"]

    async def test_a_replay_and_a_redrive_are_traces_linked_to_the_original(
        self, exporter: InMemorySpanExporter
    ) -> None:
        """A replay to one plugin and a re-drive of a dead letter are spans of their own
        (the copy carries it, so the plugin's hook is its child), each linked to the
        trace of the registry step that published the original event."""

        class Strict(PluginInterface):
            """Registers every app but "bad"."""

            def __init__(self) -> None:
                super().__init__("strict", "1.0.0")

            async def on_app_registered(self, app_name: str, *_: Any) -> None:
                if app_name == "bad":
                    raise PermissionError("bad is refused")

        name = f"traced-copies-{secrets.token_hex(4)}"
        exporter.clear()
        steps: dict[str, ReadableSpan] = {}
        try:
            async with (
                Bus.connect(f"memory://{name}", "ns") as bus,
                running_worker(Strict(), bus, max_deliveries=1),
                Publisher(bus, "reg-traced") as publisher,
            ):
                for app in ("good", "bad"):
                    with step_span("app_registered", app, "reg-traced"):
                        await publisher.publish(registered(), app=app, trace=traceparent())
                await drained(bus, "strict")
                replay = await redeliver(bus, "strict", Selection(app="good"), execute=True)
                [letter] = await DeadLetters(bus).list()
                redriven = await DeadLetters(bus).redrive(letter.id)
                await drained(bus, "strict")
        finally:
            forget_memory_server(name)

        spans = exporter.get_finished_spans()
        for span in spans:
            if span.name == "step app_registered":
                steps[str((span.attributes or {})["rapid_objection.app"])] = span
        hooks = {
            (span.attributes or {})["rapid_objection.event_id"]: span
            for span in spans
            if span.name == "hook app_registered"
        }
        copies = {
            "replay": (replay.redeliveries[0].copy.id, "good"),
            "redrive": (redriven.event_id, "bad"),
        }
        for kind, (copy_id, app) in copies.items():
            [made] = [span for span in spans if span.name == f"{kind} app_registered"]
            assert (made.attributes or {})["rapid_objection.plugin"] == "strict"
            [link] = made.links
            assert hex_ids_of(link.context) == hex_ids(steps[app])
            assert hex_ids(made)[0] != hex_ids(steps[app])[0]  # a trace of its own
            hook = hooks[copy_id]
            assert hook.parent is not None
            assert hex_ids_of(hook.parent) == hex_ids(made)
