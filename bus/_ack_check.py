"""A registry's check of the acks it reads, with a keyring: only a plugin answers for itself.

An ack entry counts when the key that tagged it is the key of the plugin every ack in it
names. Any other is ignored, and recorded as a ``forged`` failure against the plugin and
consumer it claims (the log says so once per claimed source, not per entry).
"""

from __future__ import annotations

import logging
import time

from ._constants import ACK_FIELD, ACKS_FIELD, LOGGED_SOURCES, SIGNATURE_FIELD
from ._contract import Ack, Failure
from ._keyring import Keyring

log = logging.getLogger("rapid_objection.bus")



class AckCheck:
    """Verifies one registry's ack entries and keeps the failures of those that fail."""

    def __init__(self, keyring: Keyring, registry: str) -> None:
        self._keyring = keyring
        self._registry = registry
        self._logged: set[tuple[str, str]] = set()
        self.forged: list[Failure] = []

    def genuine(self, fields: dict[bytes, bytes], acks: list[Ack]) -> bool:
        """Whether the acks of this entry count; records them as forged when not."""
        data = fields.get(ACKS_FIELD) or fields.get(ACK_FIELD, b"")
        signer = self._keyring.ack_signer(data, fields.get(SIGNATURE_FIELD))
        if all(ack.plugin == signer for ack in acks):
            return True
        why = "signed by no key of this registry" if signer is None else f"signed by {signer!r}"
        for ack in acks:
            source = (ack.plugin, ack.consumer)
            if source not in self._logged and len(self._logged) < LOGGED_SOURCES:
                self._logged.add(source)
                log.warning(
                    "registry %s ignores acks claiming plugin %r, consumer %r: %s",
                    self._registry,
                    ack.plugin,
                    ack.consumer,
                    why,
                )
            self.forged.append(
                Failure(
                    event_id=ack.event_id,
                    type="",
                    app="",
                    plugin=ack.plugin,
                    consumer=ack.consumer,
                    kind="forged",
                    error=f"an {ack.status!r} ack that fails verification ({why})",
                    attempt=ack.attempt,
                    time=time.time(),
                    registry=self._registry,
                )
            )
        return False

    def take(self) -> list[Failure]:
        """The forged failures found since the last call (to record them)."""
        found, self.forged = self.forged, []
        return found
