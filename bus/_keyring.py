"""A loaded keyring: seals what this process publishes and checks what it reads.

* An event published by a registry (a process holding the whole ring) carries one
  HMAC tag by the registries' key (what an auditor checks) and one per key of every
  plugin (what that plugin's workers check: they hold no registry key, and no other
  plugin's). A plugin's worker can therefore recognise a registry's event, yet cannot
  make one that another plugin's worker would take.
* An event a plugin publishes itself (``custom``, through ``registry.emit``) carries an
  Ed25519 signature by that plugin: every plugin can check it, none can forge it.
* An ack entry carries an HMAC tag by its plugin's key, which the registries hold.

The file is read again when it changes (checked at most once a second), so a rotation
needs no restart: ``keys rotate`` adds a key that signs from then on while the old one
still verifies; ``keys rotate --retire`` removes the old ones.
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass
from typing import Final, Literal

from ._errors import KeyringError
from ._keyfile import REGISTRY, KeyFile
from ._signatures import (
    Tagger,
    decode_signatures,
    encode_signatures,
    sign,
    signature_matches,
)

log = logging.getLogger("rapid_objection.bus")

ENV_KEYRING: Final = "RAPID_OBJECTION_KEYRING"
"""The keyring file of a registry or worker when its configuration names none."""

RELOAD_CHECK: Final = 1.0
"""Seconds between two looks at the keyring file's modification time."""


@dataclass(frozen=True, slots=True)
class Verdict:
    """Who signed an entry; ``signer`` None means it does not verify (``reason`` says why)."""

    signer: str | None
    """``registry`` or a plugin's name."""
    key: str = ""
    reason: str = ""
    status: Literal["ok", "altered", "forged"] = "ok"
    """For an audit: ``altered`` when a key we know signed something else."""


class Keyring:
    """The keys of this process (a whole ring, or one plugin's export)."""

    def __init__(self, keys: KeyFile, path: str | os.PathLike[str] | None = None) -> None:
        self.path = None if path is None else os.fspath(path)
        self._stamp = self._stat()
        self._checked = time.monotonic()
        self._use(keys)

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> Keyring:
        return cls(KeyFile.load(path), path)

    @property
    def keys(self) -> KeyFile:
        self._fresh()
        return self._keys

    @property
    def plugin(self) -> str | None:
        """The plugin of an export; None for a whole ring."""
        return self._keys.plugin

    def describe(self) -> str:
        source = f" {self.path}" if self.path else ""
        if self._keys.plugin is not None:
            return f"keyring{source} (export of plugin {self._keys.plugin!r})"
        return f"keyring{source} ({len(self._keys.plugins)} plugins)"

    # -- events ---------------------------------------------------------------------------

    def seal_event(self, data: bytes) -> bytes:
        """The ``s`` field of an event this process publishes."""
        self._fresh()
        if self._keys.kind == "ring":
            return encode_signatures({kid: tagger(data) for kid, tagger in self._sealing})
        assert self._own_signing is not None
        kid, private = self._own_signing
        return encode_signatures({kid: sign(private, data)})

    def check_event(self, plugin: str, data: bytes, signatures: bytes | None) -> Verdict:
        """Whether ``plugin``'s workers may take this event: tagged for ``plugin`` by a
        registry (signer ``registry``), or signed by a plugin (signer: its name; the
        caller checks that it is a ``custom`` event of that plugin)."""
        self._fresh()
        found = decode_signatures(signatures)
        if not found:
            return Verdict(None, reason="the event carries no signature")
        for kid, tagger in self._plugin_taggers.get(plugin, ()):
            claimed = found.get(kid)
            if claimed is not None and tagger.matches(data, claimed):
                return self._by_registry[kid]
        return self._plugin_signature(data, found) or Verdict(
            None, reason=self._why(found, f"plugin {plugin!r}")
        )

    def audit_event(self, data: bytes, signatures: bytes | None) -> Verdict:
        """For ``replay --verify`` (a whole ring): who signed it, or altered/forged."""
        self._fresh()
        found = decode_signatures(signatures)
        registry_kid = self._registry_tag(data, found)
        if registry_kid is not None:
            return Verdict(REGISTRY, registry_kid)
        signed = self._plugin_signature(data, found)
        if signed is not None:
            return signed
        known = sorted(set(found) & self._known_ids, key=lambda k: self._owner[k] != REGISTRY)
        if known:
            kid = known[0]
            return Verdict(
                None,
                kid,
                f"its signature does not match its content (key {kid} of {self._owner[kid]})",
                "altered",
            )
        return Verdict(None, reason=self._why(found, "this keyring"), status="forged")

    def _registry_tag(self, data: bytes, found: dict[str, bytes]) -> str | None:
        """The id of the registries' key among ``found`` that tagged ``data``; None when
        none did."""
        for kid, tagger in self._registry_taggers:
            claimed = found.get(kid)
            if claimed is not None and tagger.matches(data, claimed):
                return kid
        return None

    def _plugin_signature(self, data: bytes, found: dict[str, bytes]) -> Verdict | None:
        for kid, signature in found.items():
            owner = self._public.get(kid)
            if owner is not None and signature_matches(owner[1], data, signature):
                return Verdict(owner[0], kid)
        return None

    def _why(self, found: dict[str, bytes], holder: str) -> str:
        if not found:
            return "the event carries no signature"
        if set(found) & self._known_ids:
            return "its signature does not match its content"
        return f"it is signed by no key that {holder} knows"

    # -- acks -----------------------------------------------------------------------------

    def seal_acks(self, plugin: str, data: bytes) -> bytes:
        """The ``s`` field of an ack entry of ``plugin``'s worker."""
        self._fresh()
        keys = self._plugin_taggers.get(plugin)
        if not keys:
            raise KeyringError(f"{self.describe()} holds no key of plugin {plugin!r}")
        kid, tagger = keys[0]
        return encode_signatures({kid: tagger(data)})

    def ack_signer(self, data: bytes, signatures: bytes | None) -> str | None:
        """The plugin whose key tagged this ack entry; None when no key of ours did."""
        self._fresh()
        for kid, claimed in decode_signatures(signatures).items():
            owner = self._hmac.get(kid)
            if owner is not None and owner[1].matches(data, claimed):
                return owner[0]
        return None

    # -- operators' requests -------------------------------------------------------------

    def seal_request(self, data: bytes) -> bytes:
        """The ``s`` field of a request or an answer: tagged by the registries' key, which
        a whole ring holds (a registry, an operator) and a plugin's export does not."""
        self._fresh()
        if not self._registry_taggers:
            raise KeyringError(f"{self.describe()} holds no registry key: it cannot sign requests")
        kid, tagger = self._registry_taggers[0]
        return encode_signatures({kid: tagger(data)})

    def request_genuine(self, data: bytes, signatures: bytes | None) -> bool:
        """Whether a registries' key tagged this request or answer."""
        self._fresh()
        return self._registry_tag(data, decode_signatures(signatures)) is not None

    # -- loading --------------------------------------------------------------------------

    def _use(self, keys: KeyFile) -> None:
        self._keys = keys
        self._registry_taggers = [(k.id, Tagger(k.secret)) for k in keys.registry if k.secret]
        self._plugin_taggers = {
            name: [(k.id, Tagger(k.secret)) for k in plugin_keys if k.secret]
            for name, plugin_keys in keys.plugins.items()
        }
        self._hmac = {
            kid: (name, tagger)
            for name, pairs in self._plugin_taggers.items()
            for kid, tagger in pairs
        }
        self._public = {
            k.id: (name, k.public)
            for name, plugin_keys in keys.plugins.items()
            for k in plugin_keys
            if k.public
        }
        self._owner = {k.id: REGISTRY for k in keys.registry} | {
            k.id: name for name, plugin_keys in keys.plugins.items() for k in plugin_keys
        }
        self._known_ids = set(self._owner)
        # The verdict of the hot path made once per key, not once per event.
        self._by_registry = {kid: Verdict(REGISTRY, kid) for kid in self._hmac}
        # A registry tags every event with its newest key, and with every key of every
        # plugin: a worker still holding the previous export keeps taking events during
        # a rotation.
        self._sealing = self._registry_taggers[:1] + [
            pair for pairs in self._plugin_taggers.values() for pair in pairs
        ]
        own = keys.plugins.get(keys.plugin or "", ())
        self._own_signing = next(((k.id, k.signing) for k in own if k.signing), None)

    def _stat(self) -> tuple[int, int] | None:
        if self.path is None:
            return None
        try:
            info = os.stat(self.path)
        except OSError:
            return None
        return (info.st_mtime_ns, info.st_size)

    def _fresh(self) -> None:
        """Read the file again if it changed since it was loaded (at most once a second)."""
        if self.path is None:
            return
        now = time.monotonic()
        if now - self._checked < RELOAD_CHECK:
            return
        self._checked = now
        stamp = self._stat()
        if stamp is None or stamp == self._stamp:
            return
        try:
            keys = KeyFile.load(self.path)
        except KeyringError as exc:
            log.error("keeping the keys loaded before: %s", exc)
            return
        self._stamp = stamp
        self._use(keys)
        log.info("reloaded %s", self.describe())
