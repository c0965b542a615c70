"""The keyring file: the keys of the registries and of each plugin, as written on disk.

A ring (``keys init``) holds every key; an export (``keys export --plugin NAME``) holds
what one plugin's workers need and nothing else: that plugin's own keys, and the public
halves of the other plugins' signing keys (to check their ``custom`` events). Neither
the registries' key nor another plugin's secret is ever in an export.

Each owner (``registry`` or a plugin) has a list of keys, newest first: the first one
signs, all of them verify (two during a rotation). JSON, written with mode 0600.

A key of a plugin has two parts: an HMAC-SHA256 ``secret`` (the registry tags every
event with it for that plugin's workers, and the plugin's workers tag their acks with
it) and an Ed25519 pair (``signing``, ``public``) for the events a plugin publishes
itself (``registry.emit``), which every other plugin must verify but must not be able
to forge. docs/security.md gives the reasons.
"""

from __future__ import annotations

import base64
import json
import os
import secrets
import tempfile
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Final, Literal

from ._errors import KeyringError

FORMAT: Final = "rapid-objection keyring"
VERSION: Final = 1
REGISTRY: Final = "registry"
"""The owner name of the registries' keys (no plugin may take it)."""

Kind = Literal["ring", "export"]


@dataclass(frozen=True, slots=True)
class Key:
    """One key of one owner; an export's keys of other plugins have ``public`` only."""

    id: str
    secret: bytes | None = None
    signing: bytes | None = None
    """Ed25519 private key, 32 raw bytes (plugins only)."""
    public: bytes | None = None
    """Ed25519 public key, 32 raw bytes (plugins only)."""


@dataclass(frozen=True, slots=True)
class KeyFile:
    """The content of a keyring file."""

    kind: Kind
    registry: tuple[Key, ...] = ()
    plugins: dict[str, tuple[Key, ...]] = field(default_factory=dict)
    plugin: str | None = None
    """The plugin an export was made for."""

    @classmethod
    def generate(cls, plugins: list[str]) -> KeyFile:
        """A new ring with one fresh key for the registries and for each plugin."""
        for name in plugins:
            _check_plugin_name(name)
        return cls("ring", (_new_key(plugin=False),), {p: (_new_key(),) for p in plugins})

    def with_plugins(self, plugins: list[str]) -> KeyFile:
        """This ring with a fresh key for each plugin of ``plugins`` it does not have yet."""
        self._ring_only("add plugins")
        added = {p: (_new_key(),) for p in plugins if p not in self.plugins}
        for name in added:
            _check_plugin_name(name)
        return replace(self, plugins={**self.plugins, **added})

    def rotated(self) -> KeyFile:
        """A new key in front of every owner's list: it signs, the old ones still verify."""
        self._ring_only("rotate")
        return replace(
            self,
            registry=(_new_key(plugin=False), *self.registry),
            plugins={name: (_new_key(), *keys) for name, keys in self.plugins.items()},
        )

    def retired(self) -> KeyFile:
        """Only the newest key of every owner: the older ones stop verifying."""
        self._ring_only("retire keys")
        return replace(
            self,
            registry=self.registry[:1],
            plugins={name: keys[:1] for name, keys in self.plugins.items()},
        )

    def export(self, plugin: str) -> KeyFile:
        """What the workers of ``plugin`` need: its own keys, the others' public halves."""
        self._ring_only("export")
        if plugin not in self.plugins:
            known = ", ".join(sorted(self.plugins)) or "none"
            raise KeyringError(
                f"the keyring has no keys for plugin {plugin!r} (it has: {known}); "
                f"add them with `rapid-objection keys init PATH --plugin {plugin}`"
            )
        others = {
            name: tuple(Key(key.id, public=key.public) for key in keys)
            for name, keys in self.plugins.items()
            if name != plugin
        }
        return KeyFile("export", (), {**others, plugin: self.plugins[plugin]}, plugin)

    def _ring_only(self, what: str) -> None:
        if self.kind != "ring":
            raise KeyringError(
                f"cannot {what} with an export of plugin {self.plugin!r}: use the whole keyring"
            )

    # -- on disk --------------------------------------------------------------------------

    def to_json(self) -> dict[str, Any]:
        data: dict[str, Any] = {"format": FORMAT, "version": VERSION, "kind": self.kind}
        if self.plugin is not None:
            data["plugin"] = self.plugin
        data["registry"] = [_key_json(key) for key in self.registry]
        data["plugins"] = {
            name: [_key_json(key) for key in keys] for name, keys in sorted(self.plugins.items())
        }
        return data

    @classmethod
    def from_json(cls, data: Any, source: str) -> KeyFile:
        try:
            if data.get("format") != FORMAT or data.get("version") != VERSION:
                raise ValueError(f"not a {FORMAT} of version {VERSION}")
            kind = data["kind"]
            if kind not in ("ring", "export"):
                raise ValueError(f"unknown kind {kind!r}")
            registry = tuple(_key_from(item) for item in data.get("registry", []))
            plugins = {
                str(name): tuple(_key_from(item) for item in keys)
                for name, keys in data.get("plugins", {}).items()
            }
            plugin = data.get("plugin")
        except (AttributeError, KeyError, TypeError, ValueError) as exc:
            raise KeyringError(f"{source} is not a valid keyring file: {exc}") from None
        if kind == "ring" and not registry:
            raise KeyringError(f"{source} is not a valid keyring file: no registry key")
        if kind == "export" and (plugin is None or plugin not in plugins):
            raise KeyringError(f"{source} is not a valid keyring file: export of no plugin")
        return cls(kind, registry, plugins, plugin)

    def save(self, path: str | os.PathLike[str], *, new: bool = False) -> None:
        """Write atomically with mode 0600; ``new``: refuse to replace an existing file."""
        target = Path(path)
        if new and target.exists():
            raise KeyringError(f"{target} exists already; not replacing a keyring")
        text = json.dumps(self.to_json(), indent=2) + "\n"
        try:
            handle, temporary = tempfile.mkstemp(prefix=".keyring-", dir=target.parent or ".")
            try:
                os.fchmod(handle, 0o600)  # mkstemp makes it 0600; said here, as it is the point
                with os.fdopen(handle, "w", encoding="utf-8") as out:
                    out.write(text)
                os.replace(temporary, target)
            except BaseException:
                Path(temporary).unlink(missing_ok=True)
                raise
        except OSError as exc:
            # A missing directory, a refused permission, a full disk: the operator's to
            # fix, so one line naming the file, as ``load`` says of one it cannot read.
            raise KeyringError(f"cannot write keyring {target}: {exc.strerror or exc}") from None

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> KeyFile:
        source = str(path)
        try:
            text = Path(path).read_text(encoding="utf-8")
        except OSError as exc:
            raise KeyringError(f"cannot read keyring {source}: {exc.strerror or exc}") from None
        try:
            data = json.loads(text)
        except ValueError as exc:
            raise KeyringError(f"{source} is not a valid keyring file: {exc}") from None
        return cls.from_json(data, source)


def _check_plugin_name(name: str) -> None:
    if not name or name == REGISTRY or not name.isprintable():
        raise KeyringError(f"{name!r} cannot be a plugin's name in a keyring")


def _new_key(*, plugin: bool = True) -> Key:
    kid = secrets.token_hex(4)
    if not plugin:
        return Key(kid, secret=secrets.token_bytes(32))
    from ._signatures import new_signing_pair

    signing, public = new_signing_pair()
    return Key(kid, secret=secrets.token_bytes(32), signing=signing, public=public)


def _b64(value: bytes | None) -> str | None:
    return None if value is None else base64.b64encode(value).decode()


def _key_json(key: Key) -> dict[str, str]:
    parts = {"secret": key.secret, "signing": key.signing, "public": key.public}
    return {"id": key.id, **{n: v for n, value in parts.items() if (v := _b64(value))}}


def _key_from(item: dict[str, str]) -> Key:
    def part(name: str) -> bytes | None:
        value = item.get(name)
        return None if value is None else base64.b64decode(value, validate=True)

    return Key(str(item["id"]), part("secret"), part("signing"), part("public"))
