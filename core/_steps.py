"""The registry's step publisher: publish a lifecycle event, await its acks, apply vetoes.

The app lifecycles, the health monitor and the plugin manager get this object instead of
the registry: it is the one place that knows which plugins are awaited and which of them
may veto a step.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable

from rapid_objection.bus import AppSchema, BusError, Payload, Publisher, WaitResult
from rapid_objection.bus import _tracing as tracing
from rapid_objection.bus._contract import payload_type
from rapid_objection.bus._publisher import PluginPolicy

from ._config import PluginConfig
from ._errors import PluginVeto
from ._listeners import Listeners

log = logging.getLogger("rapid_objection.registry")

PolicyOf = Callable[[str], "PluginConfig | None"]
"""The configuration a plugin runs under (as loaded, else as configured), or None."""


class Steps:
    """Publishes one registry's lifecycle steps and holds its plugins' policies."""

    def __init__(self, publisher: Publisher, listeners: Listeners, policy_of: PolicyOf) -> None:
        self.registry_id = publisher.registry_id
        self._publisher = publisher
        self._listeners = listeners
        self._policy_of = policy_of

    async def step(
        self,
        payload: Payload,
        app: str,
        *,
        veto: bool = True,
        required: Iterable[str] | None = None,
        wait: bool = True,
    ) -> WaitResult:
        """Publish one lifecycle event and await its required acks; a required plugin
        with ``on_failure = "abort"`` that failed or timed out raises ``PluginVeto``
        (unless ``veto`` is False: a step that cannot be undone).

        ``wait=False`` publishes without awaiting anyone: the cleanup after a cancelled
        operation, whose caller asked to stop now.
        """
        event_type = payload_type(payload)
        if not wait:
            required = ()
        # The span (OpenTelemetry, when installed) covers the publish, the wait and a veto.
        with tracing.step_span(event_type, app, self.registry_id) as span:
            await self._listeners.emit("step-started", {"app": app, "event": event_type})
            trace = tracing.traceparent()
            result = await self._publisher.emit(payload, app=app, required=required, trace=trace)
            tracing.step_done(span, result)
            await self._listeners.emit("step", {"app": app, "event": result.type, "result": result})
            await self._judge(result, app, veto=veto)
        return result

    async def _judge(self, result: WaitResult, app: str, *, veto: bool) -> None:
        """Warn of each failed or timed-out plugin; raise the veto of an aborting one."""
        for outcome in (*result.failed, *result.timed_out):
            plugin = self._policy_of(outcome.plugin)
            reason = outcome.error or outcome.status
            await self._listeners.emit(
                "warning",
                {
                    "app": app,
                    "event": result.type,
                    "plugin": outcome.plugin,
                    "consumer": outcome.consumer,
                    "status": outcome.status,
                    "error": reason,
                },
            )
            if veto and plugin is not None and plugin.on_failure == "abort":
                raise PluginVeto(app, result.type, outcome.plugin, outcome.consumer, reason)

    def implementers(self, hook: str) -> list[str]:
        """The required plugins of ``hook`` and every plugin whose manifest declares it."""
        awaited = set(self._publisher.required_for(hook))
        manifests = self._publisher.manifests
        awaited |= {plugin for plugin, manifest in manifests.items() if hook in manifest.hooks}
        return sorted(awaited)

    def set_policy(self, name: str, config: PluginConfig, *, starting: bool = False) -> None:
        """Await ``name`` as ``config`` says from the next step on (``starting``: its
        first worker is on its way, so its events wait for it instead of failing at once)."""
        self._publisher.policies[name] = PluginPolicy(
            required=config.required or None, timeout=config.timeout, starting=starting
        )

    def drop_policy(self, name: str) -> None:
        self._publisher.policies.pop(name, None)

    def track_app(self, name: str, registered: bool) -> None:
        """Keep the publisher's list of this registry's apps (its heartbeat shows them)."""
        if registered:
            self._publisher.apps.add(name)
        else:
            self._publisher.apps.discard(name)
            self._publisher.schemas.pop(name, None)

    def track_schema(self, name: str, schema: AppSchema) -> None:
        """Where ``name``'s migrations stand now (the heartbeat shows it)."""
        self._publisher.schemas[name] = schema

    async def refresh(self) -> None:
        """Re-read the plugin manifests now; a bus failure is logged, not raised."""
        try:
            await self._publisher.refresh_directory()
        except BusError as exc:
            log.warning("registry %s could not refresh plugins: %s", self.registry_id, exc)


def policies(configured: dict[str, PluginConfig]) -> dict[str, PluginPolicy]:
    """The publisher's initial policies: every enabled plugin of the configuration."""
    return {
        name: PluginPolicy(required=config.required or None, timeout=config.timeout)
        for name, config in configured.items()
        if config.enabled
    }
