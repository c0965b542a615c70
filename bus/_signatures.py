"""The two primitives: HMAC-SHA256 tags (stdlib) and Ed25519 signatures (``cryptography``).

Ed25519 is only used for what plugins publish themselves (``custom`` events), never on
the lifecycle hot path; ``cryptography`` is imported on first use, so a worker that
never emits pays nothing for it. docs/security.md has the measured costs.
"""

from __future__ import annotations

import hashlib
import hmac
from typing import Final

import msgspec

DIGEST_SIZE: Final = 16
"""Bytes of SHA-256 kept for a chain link: 128 bits, far beyond any collision search."""

_BLOCK: Final = 64
"""SHA-256's block size: the length of HMAC's padded key."""

_sig_encoder: Final = msgspec.msgpack.Encoder()
_sig_decoder: Final = msgspec.msgpack.Decoder(dict[str, bytes])


class Tagger:
    """HMAC-SHA256 under one key, its two padded key blocks hashed once (RFC 2104): a tag
    then costs two SHA-256 copies, the pass over the data and one block more, with no
    ``hmac`` wrapper around them (0.8 µs for an envelope, where ``hmac.digest``, which
    pads the key each time, takes 1.6 and a copied ``hmac.HMAC`` 1.5)."""

    __slots__ = ("_inner", "_outer")

    def __init__(self, secret: bytes) -> None:
        if len(secret) > _BLOCK:
            secret = hashlib.sha256(secret).digest()
        key = secret.ljust(_BLOCK, b"\0")
        self._inner = hashlib.sha256(bytes(byte ^ 0x36 for byte in key))
        self._outer = hashlib.sha256(bytes(byte ^ 0x5C for byte in key))

    def __call__(self, data: bytes) -> bytes:
        inner = self._inner.copy()
        inner.update(data)
        outer = self._outer.copy()
        outer.update(inner.digest())
        return outer.digest()

    def matches(self, data: bytes, claimed: bytes) -> bool:
        return hmac.compare_digest(self(data), claimed)


def tag(secret: bytes, data: bytes) -> bytes:
    """HMAC-SHA256 of ``data``."""
    return hmac.digest(secret, data, "sha256")


def tag_matches(secret: bytes, data: bytes, claimed: bytes) -> bool:
    return hmac.compare_digest(hmac.digest(secret, data, "sha256"), claimed)


def digest(data: bytes) -> bytes:
    """The chain link of an encoded envelope (its predecessor's ``prev``)."""
    return hashlib.sha256(data).digest()[:DIGEST_SIZE]


def encode_signatures(signatures: dict[str, bytes]) -> bytes:
    """The ``s`` field of an entry: key id -> tag or signature."""
    return _sig_encoder.encode(signatures)


def decode_signatures(data: bytes | None) -> dict[str, bytes]:
    """The ``s`` field read back; empty when absent or unreadable (then nothing verifies)."""
    if not data:
        return {}
    try:
        return _sig_decoder.decode(data)
    except (msgspec.DecodeError, msgspec.ValidationError):
        return {}


def new_signing_pair() -> tuple[bytes, bytes]:
    """A fresh Ed25519 key: (private, public), 32 raw bytes each."""
    from cryptography.hazmat.primitives import serialization as ser
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    private = Ed25519PrivateKey.generate()
    return (
        private.private_bytes(ser.Encoding.Raw, ser.PrivateFormat.Raw, ser.NoEncryption()),
        private.public_key().public_bytes(ser.Encoding.Raw, ser.PublicFormat.Raw),
    )


def sign(private: bytes, data: bytes) -> bytes:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    return Ed25519PrivateKey.from_private_bytes(private).sign(data)


def signature_matches(public: bytes, data: bytes, signature: bytes) -> bool:
    from cryptography.exceptions import InvalidSignature
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

    try:
        Ed25519PublicKey.from_public_bytes(public).verify(signature, data)
    except (InvalidSignature, ValueError):
        return False
    return True
