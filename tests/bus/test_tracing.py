"""OpenTelemetry support costs nothing when the package is not installed."""

from __future__ import annotations

import subprocess
import sys
import textwrap

from tests.e2e import REPO_ROOT, subprocess_env

WITHOUT_OPENTELEMETRY = textwrap.dedent(
    """
    import sys
    sys.modules["opentelemetry"] = None  # as on a machine without the extra

    import anyio
    from rapid_objection.bus import Bus
    from rapid_objection.bus import _tracing
    from rapid_objection.plugin_workers import PluginInterface, Worker

    class Plugin(PluginInterface):
        async def on_app_registered(self, app_name, connection, config):
            return None

    async def main():
        async with Bus.connect("memory://no-otel", "ns") as bus:
            worker = Worker(Plugin("p"), bus)
            assert worker.consumer._handler is worker.dispatcher, "a wrapper on the hot path"
        assert _tracing.ENABLED is False
        assert _tracing.traceparent() is None
        with _tracing.step_span("app_registered", "shop", "reg") as span:
            assert span is None
        assert _tracing.step_span("a", "b", "c") is _tracing.step_span("d", "e", "f")
        loaded = [name for name, module in sys.modules.items() if module is not None]
        assert not any(name.startswith("opentelemetry") for name in loaded)
        print("ok")

    anyio.run(main)
    """
)


class TestWithoutOpenTelemetry:
    def test_the_hook_path_is_untouched(self) -> None:
        """Without ``opentelemetry``: the worker's handler is the dispatcher itself (no
        wrapper, no call added per hook), no trace context is made, and a step's span is
        one shared no-op context manager."""
        done = subprocess.run(
            [sys.executable, "-c", WITHOUT_OPENTELEMETRY],
            capture_output=True,
            text=True,
            cwd=REPO_ROOT,
            env=subprocess_env(),
            timeout=60,
            check=False,
        )
        assert done.returncode == 0, done.stderr
        assert done.stdout.strip() == "ok"
