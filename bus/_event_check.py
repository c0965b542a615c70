"""A consumer's check of the events it reads, with a keyring: only a registry (or, for its
own ``custom`` events, a plugin) speaks, and an event runs once per group.

* An entry that fails verification never reaches a hook: it is dead-lettered with reason
  ``unauthenticated`` and no ack is written (the registry it names may be invented, and
  its ack stream read by whoever forged it). The log says so once per claimed source.
* A verified entry whose event id the group took before under another entry id (a
  genuine entry added again) is acknowledged without running anything. The group's
  memory of taken ids (a sorted set, event id -> the entry that took it first; ZADD NX
  then ZMSCORE, in the round trip that asks the group's pending list for per-app
  order, so no round trip of its own) lasts ``SEEN_TTL_MS``;
  a signed event older than that is refused, so that a replay cannot wait for the
  memory to fade.
"""

from __future__ import annotations

import logging
import time

import msgspec

from ._bus import Bus
from ._constants import LOGGED_SOURCES, SEEN_TTL_MS, SIGNATURE_FIELD
from ._contract import Custom, DeadLetter, Envelope, decode_envelope
from ._delivery import Delivery
from ._errors import KeyringError
from ._heads import decode_head
from ._ids import id_key
from ._keyfile import REGISTRY
from ._keyring import Keyring

log = logging.getLogger("rapid_objection.bus")

UNAUTHENTICATED = "unauthenticated"


PRUNE_INTERVAL = 60.0
"""Seconds between two removals of the claims older than ``SEEN_TTL_MS``."""


class EventCheck:
    """Verifies the entries one consumer reads; ``None`` from ``refusal`` means take it."""

    def __init__(self, bus: Bus, keyring: Keyring, plugin: str, consumer: str) -> None:
        self._bus = bus
        self._keyring = keyring
        self._plugin = plugin
        self._consumer = consumer
        if not any(key.secret for key in keyring.keys.plugins.get(plugin, ())):
            # Every event would be refused and no ack could be signed: say so at once.
            raise KeyringError(
                f"{keyring.describe()} holds no key of plugin {plugin!r}: add one with "
                f"`rapid-objection keys init PATH --plugin {plugin}` (and export it)"
            )
        self._logged: set[str] = set()
        self.key = bus.keys.seen(plugin)
        self._pruned = time.monotonic()
        self._scores: dict[str, float] = {}
        """Entry id -> its score, of the deliveries of the last ``claims``."""

    def refusal(
        self, entry_id: str, fields: dict[bytes, bytes], data: bytes, attempt: int
    ) -> DeadLetter | None:
        """The dead letter of an entry that does not verify; None for a genuine one (whose
        age the caller checks with ``too_old`` once it has decoded it)."""
        verdict = self._keyring.check_event(self._plugin, data, fields.get(SIGNATURE_FIELD))
        if verdict.signer == REGISTRY:
            return None  # the hot path: one HMAC, nothing decoded here
        reason = verdict.reason
        if verdict.signer is not None:
            reason = self._plugin_event(verdict.signer, data)
        return self.letter(entry_id, fields, data, attempt, reason) if reason else None

    def too_old(self, envelope: Envelope) -> bool:
        """A signed event older than the group's memory: refused, so that a replay cannot
        wait for the memory to fade."""
        return time.time() - envelope.time > SEEN_TTL_MS / 1000

    def letter(
        self, entry_id: str, fields: dict[bytes, bytes], data: bytes, attempt: int, reason: str
    ) -> DeadLetter:
        """The dead letter of an unauthenticated entry (its source logged once)."""
        head = decode_head(data)
        source = f"registry {head.registry!r}" if head is not None else "an undecodable entry"
        if source not in self._logged and len(self._logged) < LOGGED_SOURCES:
            self._logged.add(source)
            log.warning(
                "plugin %s, consumer %s: dead-lettered an unauthenticated event from %s "
                "(%s); further ones from there are not logged",
                self._plugin,
                self._consumer,
                source,
                reason,
            )
        now = time.time()
        return DeadLetter(
            entry_id=entry_id,
            event_id=head.id if head is not None else None,
            type=head.type if head is not None else None,
            app=head.app if head is not None else "",
            registry=head.registry if head is not None else "",
            plugin=self._plugin,
            consumer=self._consumer,
            attempts=attempt,
            first_error=f"{UNAUTHENTICATED}: {reason}",
            last_error=f"{UNAUTHENTICATED}: {reason}",
            first_time=now,
            last_time=now,
            data=data,
            signature=fields.get(SIGNATURE_FIELD, b""),
            reason=UNAUTHENTICATED,
        )

    @staticmethod
    def _plugin_event(signer: str, data: bytes) -> str:
        """Why an event signed by plugin ``signer`` is refused; empty when it is that
        plugin's own ``custom`` event, the only kind a plugin may publish."""
        try:
            envelope = decode_envelope(data)
        except (msgspec.DecodeError, msgspec.ValidationError, ValueError) as exc:
            return f"undecodable: {exc}"
        payload = envelope.payload
        if not isinstance(payload, Custom):
            return f"plugin {signer!r} signed a {envelope.type!r} event, which only a registry may"
        if payload.source != signer or not envelope.registry.startswith(f"{signer}@"):
            return f"plugin {signer!r} signed an event in the name of {payload.source!r}"
        return ""

    def claims(self, deliveries: list[Delivery]) -> dict[str, float]:
        """Event id -> the score of the entry that takes it (the first of a batch; the
        sorted set keeps the first claim ever made, ZADD NX)."""
        members: dict[str, float] = {}
        self._scores = {d.entry_id: _score(d.entry_id) for d in deliveries}
        for delivery in deliveries:
            members.setdefault(delivery.envelope.id, self._scores[delivery.entry_id])
        return members

    def split(
        self, deliveries: list[Delivery], members: dict[str, float], held: list[float | None]
    ) -> tuple[list[Delivery], list[Delivery]]:
        """(to run, copies): a copy's event id was taken by another entry first.
        ``held``: the scores the group's set holds for ``members`` after the claim."""
        holder = dict(zip(members, held, strict=True))
        fresh: list[Delivery] = []
        copies: list[Delivery] = []
        for delivery in deliveries:
            # Taken by this very entry (now, or before a retry or a reclaim): it runs.
            if holder[delivery.envelope.id] == self._scores[delivery.entry_id]:
                fresh.append(delivery)
            else:
                copies.append(delivery)
        if copies:
            log.warning(
                "plugin %s, consumer %s: %d entries repeat events taken before (first %s); "
                "acknowledged without running",
                self._plugin,
                self._consumer,
                len(copies),
                copies[0].envelope.id,
            )
        return fresh, copies

    def cutoff(self) -> float | None:
        now = time.monotonic()
        if now - self._pruned < PRUNE_INTERVAL:
            return None
        self._pruned = now
        return _score(f"{int((time.time() * 1000) - SEEN_TTL_MS)}-0")


def _score(entry_id: str) -> float:
    """A stream entry id as a sorted-set score, exact in a double: the milliseconds times
    1024 plus the sequence (capped; a copy cannot be added within the millisecond of its
    original, which it has to have read first)."""
    millis, seq = id_key(entry_id)
    return float(millis * 1024 + min(seq, 1023))
