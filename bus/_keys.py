"""Redis key names of one namespace; every key carries the ``{namespace}`` hash tag."""

from __future__ import annotations

import os
import secrets
import socket
from dataclasses import dataclass

from ._constants import KEY_PREFIX
from ._errors import NamespaceError


def check_namespace(namespace: str) -> str:
    """``namespace`` when it fits the key scheme, else ``NamespaceError``."""
    if not namespace or any(char in namespace for char in "{}: "):
        raise NamespaceError(namespace)
    return namespace


def unique_name() -> str:
    """Host, pid and a random suffix: unique per call, and readable in ``status``; the
    default registry id and the default consumer name of a worker."""
    return f"{socket.gethostname()}-{os.getpid()}-{secrets.token_hex(2)}"


@dataclass(frozen=True, slots=True)
class Keys:
    """The keys of namespace ``namespace``: ``ro:{shop}:events`` and its siblings."""

    namespace: str

    @property
    def prefix(self) -> str:
        return f"{KEY_PREFIX}:{{{self.namespace}}}:"

    @property
    def events(self) -> str:
        """The event stream; one consumer group per plugin."""
        return self.prefix + "events"

    def acks(self, registry: str) -> str:
        """The ack stream of one registry: only that registry reads it."""
        return self.prefix + "acks:" + registry

    @property
    def dlq(self) -> str:
        return self.prefix + "dlq"

    @property
    def failures(self) -> str:
        """Stream of failure records."""
        return self.prefix + "failures"

    @property
    def outcomes(self) -> str:
        """Sorted set of outcome records, each scored by its event's stream entry time
        (milliseconds): trimmed with the event stream, read back by a range of events."""
        return self.prefix + "outcomes"

    @property
    def failure_counts(self) -> str:
        """Hash ``plugin|consumer|kind`` -> count."""
        return self.prefix + "failures:count"

    @property
    def plugins(self) -> str:
        """Hash plugin name -> encoded Manifest."""
        return self.prefix + "plugins"

    @property
    def workers(self) -> str:
        """Hash ``plugin|consumer`` -> encoded WorkerInfo (the heartbeat)."""
        return self.prefix + "workers"

    @property
    def registries(self) -> str:
        """Hash registry id -> encoded RegistryInfo (the heartbeat)."""
        return self.prefix + "registries"

    def registry_lease(self, registry: str) -> str:
        """``host|pid`` of the live registry that holds id ``registry`` (expires unless
        its heartbeat renews it): two live processes never share one registry id."""
        return self.prefix + "registry-lease:" + registry

    @property
    def orphans(self) -> str:
        """Hash group -> when retention first found it without a live consumer."""
        return self.prefix + "orphans"

    def dlq_seen(self, entry_id: str) -> str:
        """The plugin that dead-lettered the undecodable entry ``entry_id`` (one dead
        letter per such entry, not one per plugin); expires with ``dlq_max_age``."""
        return f"{self.prefix}dlq-seen:{entry_id}"

    @property
    def retention_lease(self) -> str:
        """The registry trimming the event stream now (a lease shorter than a trim's
        interval): one trim at a time per namespace."""
        return self.prefix + "retention-lease"

    @property
    def load_errors(self) -> str:
        """Hash plugin -> why its last worker could not start (cleared when one does)."""
        return self.prefix + "load-errors"

    @property
    def ack_positions(self) -> str:
        """Hash registry id -> the last ack entry it read (where a restart continues)."""
        return self.prefix + "ackpos"

    def once(self, plugin: str, event_id: str, name: str) -> str:
        """Marker of a "run once per event id" side effect."""
        return f"{self.prefix}once:{plugin}:{event_id}:{name}"

    def seen(self, plugin: str) -> str:
        """With a keyring: sorted set of the event ids ``plugin``'s group took, each scored
        by the stream entry that took it."""
        return f"{self.prefix}seen:{plugin}"

    @property
    def trims(self) -> str:
        """With a keyring: the stream of retention trims (what an audit must not call a gap)."""
        return self.prefix + "trims"

    @property
    def apps(self) -> str:
        """Hash app name -> owning registry id (the app directory)."""
        return self.prefix + "apps"

    def app_lease(self, app: str) -> str:
        """``<token>|<registry>`` of the registry that owns ``app`` (expires unless that
        registry renews it): see ``_owners``."""
        return self.prefix + "app-lease:" + app

    def requests(self, registry: str) -> str:
        """Operators' requests to one registry (migrate, seed): only that registry reads it."""
        return self.prefix + "requests:" + registry

    def answer(self, request: str) -> str:
        """The answer to one request (expires soon after it is written)."""
        return self.prefix + "answer:" + request

    @property
    def app_tokens(self) -> str:
        """Hash app name -> the last fencing token given for it (only ever grows)."""
        return self.prefix + "app-tokens"

    def all_fixed(self) -> tuple[str, ...]:
        """Every key of the namespace that does not depend on a registry id."""
        return (
            self.events,
            self.dlq,
            self.failures,
            self.outcomes,
            self.failure_counts,
            self.plugins,
            self.workers,
            self.registries,
            self.ack_positions,
            self.load_errors,
            self.apps,
            self.app_tokens,
            self.orphans,
            self.retention_lease,
            self.trims,
        )
