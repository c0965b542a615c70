"""The primitives of signing: ``Tagger`` is HMAC-SHA256 exactly (RFC 2104), whatever
the key's and the data's length."""

from __future__ import annotations

import hmac
import os

import pytest

from rapid_objection.bus._signatures import Tagger


class TestTagger:
    @pytest.mark.parametrize("key_length", [1, 32, 64, 65, 200], ids=lambda n: f"key{n}")
    @pytest.mark.parametrize("data_length", [0, 1, 64, 377, 5000], ids=lambda n: f"data{n}")
    def test_a_tag_is_the_hmac_of_the_standard(self, key_length: int, data_length: int) -> None:
        """The precomputed padded key blocks give the tag ``hmac.digest`` gives (keys
        longer than a block are hashed first, as the standard says)."""
        key, data = os.urandom(key_length), os.urandom(data_length)
        tagger = Tagger(key)
        assert tagger(data) == hmac.digest(key, data, "sha256")
        assert tagger(data) == tagger(data)  # the precomputed state is left untouched

    def test_matches_checks_the_claimed_tag(self) -> None:
        """``matches`` accepts the tag of the data and refuses any other."""
        tagger = Tagger(b"k" * 32)
        tag = tagger(b"event")
        assert tagger.matches(b"event", tag)
        assert not tagger.matches(b"event!", tag)
        assert not tagger.matches(b"event", tag[:-1] + bytes([tag[-1] ^ 1]))
