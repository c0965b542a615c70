"""What each method of the Redis adapter sends to the server, declared beside the method.

``@sends("XADD")`` on an adapter method records the Redis commands (ACL names:
``XGROUP|CREATE`` for a subcommand) that the method may send. The least-privilege roles
(``_acl``) are built from these declarations and the methods each role calls, so a role
grants what the code sends and nothing else; ``tests/bus/test_acl.py`` checks every
declaration against the method's body.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Final, TypeVar

F = TypeVar("F", bound=Callable[..., Any])

SENT: Final[dict[str, frozenset[str]]] = {}
"""Qualified method name (``Redis.xadd``) -> the commands it may send."""


def sends(*commands: str) -> Callable[[F], F]:
    """Declare the Redis commands the decorated adapter method may send (no wrapper:
    the method is returned as it is, so the hot path pays nothing)."""

    def declare(method: F) -> F:
        SENT[method.__qualname__] = frozenset(command.upper() for command in commands)
        return method

    return declare


def commands_of(method: Callable[..., Any]) -> frozenset[str]:
    """The commands ``method`` declared; KeyError names an undeclared one."""
    try:
        return SENT[method.__qualname__]
    except KeyError:
        raise KeyError(f"{method.__qualname__} declares no commands (@sends)") from None
