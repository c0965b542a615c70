"""The least-privilege roles: built from what the adapter's methods declare they send, and
each declaration checked against the method's body, so the roles cannot drift from the
code. (The ACL lane, ``tests/faults/test_acl.py``, runs the roles on a real server.)"""

from __future__ import annotations

import ast
import inspect
import textwrap
from collections.abc import Iterator
from typing import Any

import pytest
import redis

from rapid_objection.bus import _redis, _redis_batch
from rapid_objection.bus._acl import pattern, role, setuser, user_name
from rapid_objection.bus._sends import SENT

ADAPTER_CLASSES = (_redis.Redis, _redis_batch.Batch, _redis_batch.Watched)
CALLERS = {"_call": 0, "_call_on": 1, "_group_call": 2, "_add": 0}
"""Adapter helpers that take the redis-py method name, and at which position."""
RENAMED = {"delete": "DEL", "scan_iter": "SCAN", "xpending_range": "XPENDING"}
CONTAINERS = ("xgroup", "xinfo", "client", "cluster", "command", "memory")
NOT_COMMANDS = {"get_random_node", "pipeline", "execute", "aclose"}
"""Attributes of redis-py clients and pipelines that send no command of their own."""
NOT_SENDING = {"_durably"}
"""Helpers whose own command (WAIT, through ``_replicated``) every role is granted."""


def acl_name(method: str) -> str:
    """redis-py's method name as an ACL command name: ``xgroup_create`` -> XGROUP|CREATE."""
    if method in RENAMED:
        return RENAMED[method]
    head, _, tail = method.partition("_")
    return f"{head}|{tail}".upper() if head in CONTAINERS and tail else method.upper()


def _functions(cls: type) -> dict[str, ast.AsyncFunctionDef | ast.FunctionDef]:
    tree = ast.parse(textwrap.dedent(inspect.getsource(cls)))
    (body,) = tree.body
    assert isinstance(body, ast.ClassDef)
    return {
        node.name: node
        for node in body.body
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef)
    }


def _sent_by(
    name: str, functions: dict[str, ast.AsyncFunctionDef | ast.FunctionDef], owner_name: str
) -> set[str]:
    """The commands a method's body sends, through helpers undecorated helpers included."""
    found: set[str] = set()
    for node in ast.walk(functions[name]):
        if not isinstance(node, ast.Call) or not isinstance(node.func, ast.Attribute):
            continue
        attribute, owner = node.func.attr, node.func.value
        position = CALLERS.get(attribute)
        if position is not None and len(node.args) > position:
            argument = node.args[position]
            if isinstance(argument, ast.Constant) and isinstance(argument.value, str):
                found.add(acl_name(argument.value))
        elif attribute == "execute_command" and isinstance(node.args[0], ast.Constant):
            found.add(str(node.args[0].value).replace(" ", "|").upper())
        elif attribute in NOT_COMMANDS:
            continue
        elif _is_client(owner):
            found.add(acl_name(attribute))
        elif isinstance(owner, ast.Name) and owner.id == "self" and attribute in functions:
            if attribute in NOT_SENDING:
                continue
            qualified = f"{owner_name}.{attribute}"
            found |= SENT.get(qualified) or _sent_by(attribute, functions, owner_name)
    return found


def _is_client(owner: ast.expr) -> bool:
    """``self._client.x(...)``, ``self._pipe.x(...)``, ``pipeline.x(...)`` or
    ``pipe.x(...)``: a redis-py command."""
    if isinstance(owner, ast.Attribute):
        return owner.attr in ("_client", "_pipe")
    return isinstance(owner, ast.Name) and owner.id in ("pipeline", "pipe")


def _methods() -> Iterator[tuple[str, str]]:
    for cls in ADAPTER_CLASSES:
        for name, node in _functions(cls).items():
            decorated = any(
                isinstance(d, ast.Call) and getattr(d.func, "id", "") == "sends"
                for d in node.decorator_list
            )
            public_io = isinstance(node, ast.AsyncFunctionDef) and not name.startswith("_")
            if decorated or (public_io and name != "close"):
                yield cls.__name__, name


class TestDeclarations:
    @pytest.mark.parametrize(("owner", "name"), list(_methods()))
    def test_each_adapter_method_declares_what_its_body_sends(self, owner: str, name: str) -> None:
        """A public coroutine method (or a decorated one) declares, with @sends, every
        command its body sends; a new command in a body fails here until declared."""
        functions = _functions(getattr(_redis, owner))
        declared = SENT.get(f"{owner}.{name}")
        assert declared is not None, f"{owner}.{name} has no @sends"
        assert _sent_by(name, functions, owner) <= declared

    def test_the_parser_sees_commands_at_all(self) -> None:
        """A guard on the check above: it finds XADD, XGROUP|CREATE and COMMAND|DOCS."""
        functions = _functions(_redis.Redis)
        assert _sent_by("xadd", functions, "Redis") == {"XADD"}
        assert _sent_by("ensure_group", functions, "Redis") == {"XGROUP|CREATE"}
        assert _sent_by("supports_readgroup_claim", functions, "Redis") == {"COMMAND|DOCS"}
        assert _sent_by("open", functions, "Redis") >= {"INFO", "PING"}
        assert _sent_by("transaction", functions, "Redis") == {"WATCH", "UNWATCH", "MULTI"}


class TestRoles:
    @pytest.mark.parametrize(
        "forbidden", ["XDEL", "XTRIM", "DEL", "UNLINK", "FLUSHALL", "FLUSHDB", "XGROUP|DESTROY"]
    )
    def test_a_worker_cannot_delete(self, forbidden: str) -> None:
        """No worker command removes data: what it may drop is its own idle consumer."""
        assert forbidden not in role("worker", "shop").commands

    def test_a_worker_trims_the_dead_letters_only(self) -> None:
        """XTRIM is a worker's on the dead-letter stream alone: a letter's transaction
        caps that stream by age."""
        worker = role("worker", "shop")
        assert [(worker.only_on(scope), scope.keys) for scope in worker.scoped] == [
            (frozenset({"XTRIM"}), ("ro:{shop}:dlq",))
        ]

    def test_an_operator_reads_only_unless_allowed_to_redrive(self, redis_url: str) -> None:
        """Every command of the operator role is read-only by the server's own COMMAND
        INFO flags; ``allow_redrive`` adds XADD on the event stream and XDEL on the dead
        letters, and write access to those two keys only."""
        plain, redrive = role("operator", "shop"), role("operator", "shop", allow_redrive=True)
        client = redis.Redis.from_url(redis_url)
        try:
            writes = {command for command in plain.commands if b"write" in _flags(client, command)}
        finally:
            client.close()
        assert writes <= {"WAIT"}  # WAIT writes nothing; it waits for replicas
        assert plain.keys == ()
        assert redrive.commands - plain.commands == {"XADD", "XDEL"}
        assert redrive.keys == ("ro:{shop}:events", "ro:{shop}:dlq")

    def test_the_registry_sends_every_declared_command_but_xdel(self) -> None:
        granted = role("registry", "shop").commands
        assert frozenset().union(*SENT.values()) - granted == {"XDEL"}


def _flags(client: Any, command: str) -> set[bytes]:
    name, _, sub = command.lower().partition("|")
    info = client.execute_command("COMMAND", "INFO", f"{name}|{sub}" if sub else name)
    (entry,) = info.values() if isinstance(info, dict) else [info]
    return {flag if isinstance(flag, bytes) else str(flag).encode() for flag in entry["flags"]}


class TestSetuser:
    def test_the_line_keeps_passwords_and_limits_keys_to_the_namespace(self) -> None:
        line = setuser(user_name("shop", "worker", "audit"), role("worker", "shop"))
        words = line.split()
        assert words[:4] == ["ACL", "SETUSER", "ro-shop-worker-audit", "on"]
        assert "resetpass" not in words
        assert "nopass" not in words
        assert "~ro:{shop}:*" in words
        assert line.endswith(' "(+xtrim ~ro:{shop}:dlq)"')  # one argument for redis-cli
        assert "+xreadgroup" in words
        assert "+xdel" not in words

    @pytest.mark.parametrize(
        ("key", "expected"),
        [
            ("ro:{shop}:", "ro:{shop}:"),
            ("ro:{a*b?}:", "ro:{a\\*b\\?}:"),
            ("x[1]\\", "x\\[1\\]\\\\"),
        ],
        ids=["plain", "glob", "brackets"],
    )
    def test_glob_characters_are_escaped(self, key: str, expected: str) -> None:
        assert pattern(key) == expected
