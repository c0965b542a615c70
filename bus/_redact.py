"""Redaction: no password or secret ever goes on the bus or into a log line."""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any, Final, TypeVar

import msgspec

S = TypeVar("S", bound=msgspec.Struct)

MASK: Final = "***"

# scheme://user:password@host -> the password; the user name stays (it is not a secret).
# Up to the last "@" of the URL, so a password holding "@" or "/" is masked whole.
_URL_PASSWORD: Final = re.compile(
    r"(?P<head>[a-zA-Z][a-zA-Z0-9+.\-]*://[^:/@\s]*:)\S+?(?=@[^@\s]*(?:\s|$))"
)
# ?password=... or &client_secret=... inside a URL's query string.
_QUERY_PARAMETER: Final = re.compile(r"(?P<head>[?&](?P<name>[^=&\s#]+)=)[^&\s#]*")
# password=hunter2 in a keyword connection string ("host=db user=shop password=...").
_KEYWORD_PARAMETER: Final = re.compile(
    r"(?P<head>(?:^|(?<=\s))(?P<name>[A-Za-z_][A-Za-z0-9_]*)\s*=\s*)(?:'[^']*'|[^\s'&]+)"
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


def is_secret_key(key: str) -> bool:
    """Whether a mapping key names something that must not leave the process."""
    return bool(_SECRET_KEY.search(key))


def redact(value: Any) -> Any:
    """Return a copy of ``value`` with secret-looking keys and URL passwords masked.

    Walks mappings, lists and tuples; other objects are returned as they are (the
    encoder rejects what it cannot encode, which is the caller's bug to see).
    """
    if isinstance(value, str):
        return mask_url(value) if "://" in value or "=" in value else value
    if isinstance(value, Mapping):
        return {
            key: (MASK if isinstance(key, str) and is_secret_key(key) and item else redact(item))
            for key, item in value.items()
        }
    if isinstance(value, list | tuple):
        return [redact(item) for item in value]
    return value


def redact_struct(struct: S) -> S:
    """A copy of a (frozen) Struct with every field passed through ``redact``.

    Applied to each payload before it is published, so a registry that forgot to mask
    a URL or a config value still never puts the secret on the bus.
    """
    changes: dict[str, Any] = {}
    for name in struct.__struct_fields__:
        value = getattr(struct, name)
        cleaned = redact_struct(value) if isinstance(value, msgspec.Struct) else redact(value)
        if isinstance(value, tuple) and isinstance(cleaned, list):
            cleaned = tuple(
                redact_struct(item) if isinstance(item, msgspec.Struct) else item
                for item in cleaned
            )
        if cleaned is not value and cleaned != value:
            changes[name] = cleaned
    return msgspec.structs.replace(struct, **changes) if changes else struct
