"""Redaction: no password or secret ever goes on the bus or into a log line."""

from __future__ import annotations

import re
from collections.abc import Mapping
from functools import lru_cache
from typing import Any, Final, TypeVar

import msgspec

S = TypeVar("S", bound=msgspec.Struct)

MASK: Final = "***"

# scheme://user:password@host -> the password; the user name stays (it is not a secret).
# Up to the last "@" of the URL, so a password holding "@" or "/" is masked whole.
_URL_PASSWORD: Final = re.compile(
    r"(?P<head>[a-zA-Z][a-zA-Z0-9+.\-]*://[^:/@\s]*:)\S+?(?=@[^@\s]*(?:\s|$))"
)
# A ":" (or ",", ";", ".") between a value and a space or the end is the message's
# ("cannot connect to URL: reason"), not the value's: masked with it, it would be lost,
# and a message masked twice (an error naming a masked URL, masked again where it is
# logged) would read "password=*** reason". Each value below stops before it, and
# otherwise exactly where it always stopped (the characters a value cannot hold).
_SEPARATOR_THEN_SPACE: Final = r"[:;,.]?(?:\s|$)"
# ?password=... or &client_secret=... inside a URL's query string.
_QUERY_PARAMETER: Final = re.compile(
    r"(?P<head>[?&](?P<name>[^=&\s#]+)=)[^&\s#]*?(?=[&#]|" + _SEPARATOR_THEN_SPACE + ")"
)
# password=hunter2 in a keyword connection string ("host=db user=shop password=...").
_KEYWORD_PARAMETER: Final = re.compile(
    r"(?P<head>(?:^|(?<=\s))(?P<name>[A-Za-z_][A-Za-z0-9_]*)\s*=\s*)"
    r"(?:'[^']*'|[^\s'&]+?(?=['&]|" + _SEPARATOR_THEN_SPACE + "))"
)
_SECRET_KEY: Final = re.compile(
    r"pass(word|wd)?|pwd|secret|token|credential|auth|private|"
    r"(^|[_\-.])key$|apikey|api_key|access_key|dsn_password",
    re.IGNORECASE,
)


def mask_url(url: str) -> str:
    """Return ``url`` with the password and any secret query parameter masked."""
    masked = _URL_PASSWORD.sub(lambda m: m.group("head") + MASK, url)

    def secret_value(match: re.Match[str]) -> str:
        return match.group("head") + MASK if is_secret_key(match.group("name")) else match.group(0)

    masked = _QUERY_PARAMETER.sub(secret_value, masked)
    return _KEYWORD_PARAMETER.sub(secret_value, masked)


@lru_cache(maxsize=4096)  # the same few keys come back in every payload (9% of a publish)
def is_secret_key(key: str) -> bool:
    """Whether a mapping key names something that must not leave the process."""
    return bool(_SECRET_KEY.search(key))


def redact(value: Any) -> Any:
    """Return ``value`` with secret-looking keys and URL passwords masked.

    Walks mappings, lists and tuples; other objects are returned as they are (the
    encoder rejects what it cannot encode, which is the caller's bug to see). The
    argument is never changed: what had to be masked is a copy, and what did not is
    returned as it is (the same object), so that a clean payload costs no copying; a
    tuple comes back as a list, as the encoder writes both alike.
    """
    if isinstance(value, str):
        if "://" in value or "=" in value:
            masked = mask_url(value)
            return value if masked == value else masked
        return value
    if isinstance(value, Mapping):
        copy: dict[Any, Any] = {}
        changed = not isinstance(value, dict)
        for key, item in value.items():
            cleaned = MASK if item and isinstance(key, str) and is_secret_key(key) else redact(item)
            changed = changed or cleaned is not item
            copy[key] = cleaned
        return copy if changed else value
    if isinstance(value, list):
        items = [redact(item) for item in value]
        return value if all(a is b for a, b in zip(items, value, strict=True)) else items
    if isinstance(value, tuple):
        return [redact(item) for item in value]
    return value


def _redact_item(item: Any) -> Any:
    return redact_struct(item) if isinstance(item, msgspec.Struct) else redact(item)


def redact_struct(struct: S) -> S:
    """A copy of a (frozen) Struct with every field passed through ``redact``, or the
    Struct itself when nothing in it had to be masked.

    Applied to each payload before it is published, so a registry that forgot to mask
    a URL or a config value still never puts the secret on the bus.
    """
    changes: dict[str, Any] = {}
    for name in struct.__struct_fields__:
        value = getattr(struct, name)
        cleaned: Any
        if isinstance(value, tuple):
            # A tuple field stays a tuple (its Structs redacted as Structs).
            items = tuple(_redact_item(item) for item in value)
            cleaned = value if all(a is b for a, b in zip(items, value, strict=True)) else items
        else:
            cleaned = _redact_item(value)
        if cleaned is not value:
            changes[name] = cleaned
    return msgspec.structs.replace(struct, **changes) if changes else struct
