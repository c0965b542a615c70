"""Errors of the bus: the ``BusError`` branch of the tree drawn in ``rapid_objection._errors``."""

from __future__ import annotations

from rapid_objection._errors import Error

from ._redact import mask_url


class BusError(Error):
    """Root of every error the bus raises."""


class BusUrlError(BusError, ValueError):
    """A bus URL whose scheme or shape the bus does not support."""

    def __init__(self, url: str, reason: str) -> None:
        self.url = mask_url(url)
        self.reason = reason
        super().__init__(f"invalid bus URL {self.url!r}: {reason}")


class BusUnavailable(BusError, ConnectionError):  # noqa: N818 - the contract's name
    """The Redis server behind the bus cannot be reached."""

    def __init__(self, url: str, reason: str) -> None:
        self.url = mask_url(url)
        self.reason = reason
        super().__init__(f"bus unavailable at {self.url}: {reason}")


class GroupMissing(BusError):  # noqa: N818 - reads as the Redis condition it maps
    """The stream or consumer group named in a command does not exist."""

    def __init__(self, stream: str, group: str) -> None:
        self.stream = stream
        self.group = group
        super().__init__(f"no consumer group {group!r} on stream {stream!r}")


class NamespaceError(BusError, ValueError):
    """A namespace that is empty or holds characters that break the key scheme."""

    def __init__(self, namespace: str) -> None:
        self.namespace = namespace
        super().__init__(
            f"invalid namespace {namespace!r}: use a non-empty name without '{{', '}}', ':' "
            "or spaces"
        )


class BusRefused(BusError, PermissionError):  # noqa: N818 - reads as the condition
    """The server refuses the credentials or a command (an ACL without the permission).

    Not an outage: retrying changes nothing until an operator grants the permission.
    """

    def __init__(self, url: str, command: str, reason: str) -> None:
        self.url = mask_url(url)
        self.command = command
        self.reason = reason
        what = f"{command} refused" if command else "refused"
        super().__init__(f"bus at {self.url}: {what}: {reason}")


class RegistryIdTaken(BusError):  # noqa: N818 - reads as the condition
    """Another live process (host or pid) already runs a registry under this id."""

    def __init__(self, registry: str, holder: str) -> None:
        self.registry = registry
        self.holder = holder
        super().__init__(
            f"registry id {registry!r} is taken by a live registry at {holder} "
            "(host|pid); give this registry another id"
        )


class RedriveError(BusError, ValueError):
    """A dead letter that cannot be re-driven (unknown id, or never a valid envelope)."""

    def __init__(self, letter_id: str, reason: str) -> None:
        super().__init__(f"cannot re-drive dead letter {letter_id}: {reason}")
        self.letter_id = letter_id


class KeyringError(BusError, ValueError):
    """A keyring file that cannot be read, is not one, or lacks the key asked for."""
