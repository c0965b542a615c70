"""A plugin's worker settings, described once.

``WorkerSettings`` is read from the registry's ``[plugins.<name>]`` table (the
registry's ``PluginConfig`` extends it), handed as is to the worker processes a registry
supervises (``WorkerTable``, by environment), filled from the worker command line's
flags, and taken by ``Worker``. msgspec checks the bounds wherever it is decoded; a
``Worker`` trusts what it is given.
"""

from __future__ import annotations

from typing import Annotated, Any, Final

import msgspec

from rapid_objection.bus._constants import CLAIM_IDLE, DEFAULT_HOOK_TIMEOUT, DEFAULT_MAX_DELIVERIES
from rapid_objection.bus._dlq_bounds import DeadLetterBounds

ENV_WORKER_TABLE: Final = "RAPID_OBJECTION_PLUGIN_TABLE"
"""The environment variable through which a supervising registry hands a worker process
its ``WorkerTable`` (out of sight of ``ps``: the plugin's config may hold secrets)."""

ENV_PARENT_PID: Final = "RAPID_OBJECTION_PARENT_PID"
"""Set by a supervising registry for its workers: a worker stops once that process is
gone (``rapid-objection worker``), so that none outlives its registry."""


class WorkerSettings(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """How a plugin's workers run its hooks."""

    timeout: Annotated[float, msgspec.Meta(gt=0)] = DEFAULT_HOOK_TIMEOUT
    """Seconds a hook may run before it is cancelled and acked as an error; also the
    registry's ack deadline for the plugin."""
    max_deliveries: Annotated[int, msgspec.Meta(ge=1)] = DEFAULT_MAX_DELIVERIES
    """Attempts per event (local retries and re-deliveries alike) before dead-lettering."""
    claim_idle: Annotated[float, msgspec.Meta(gt=0)] = CLAIM_IDLE
    """Seconds before a live worker takes over events held by a dead one (XAUTOCLAIM)."""
    concurrency: Annotated[int, msgspec.Meta(ge=1)] = 1
    """Hooks one worker runs at once (for different apps; one app's events run in order)."""

    def worker_settings(self) -> WorkerSettings:
        """These settings alone (without the fields of a table that extends them)."""
        if type(self) is WorkerSettings:
            return self
        fields = WorkerSettings.__struct_fields__
        return WorkerSettings(**{name: getattr(self, name) for name in fields})


class WorkerTable(WorkerSettings, kw_only=True, forbid_unknown_fields=True):
    """What a supervising registry hands a worker process (``--config-json``): the name
    it gave the plugin, the plugin's configuration and its worker settings."""

    name: str | None = None
    config: dict[str, Any] = {}
    required: bool = False
    """Announce the plugin required (a supervising registry never does: it awaits the
    plugin by its own policy, and the manifest must not impose that on other registries)."""
    dead_letters: DeadLetterBounds | None = None
    """The supervising registry's ``[bus] dlq_*`` bounds, which its workers apply too."""

    @classmethod
    def of(
        cls,
        name: str | None,
        config: dict[str, Any],
        settings: WorkerSettings,
        dead_letters: DeadLetterBounds | None = None,
    ) -> WorkerTable:
        """The table of plugin ``name``, with ``settings`` as they are."""
        fields = msgspec.structs.asdict(settings.worker_settings())
        return cls(name=name, config=config, dead_letters=dead_letters, **fields)

    def encode(self) -> str:
        return msgspec.json.encode(self).decode()

    @classmethod
    def decode(cls, text: str | bytes) -> WorkerTable:
        """Raises ``msgspec.DecodeError`` / ``ValidationError`` naming the key."""
        return msgspec.json.decode(text, type=cls)
