"""One error tree: every error the library raises on purpose is a ``rapid_objection.Error``,
and a missing optional dependency says which extra to install."""

from __future__ import annotations

import ast
import importlib
import inspect
import json
import pkgutil
import socket
import subprocess
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

import rapid_objection
from rapid_objection import Error, PluginInterface
from rapid_objection._errors import __doc__ as TREE_DRAWING  # noqa: N812 - the docstring
from rapid_objection.bus import Bus, PermanentError, RetryLater
from rapid_objection.core import AppRegistry
from rapid_objection.plugin_workers import PluginLoadError, load_plugin_class

PACKAGES = ("rapid_objection.core", "rapid_objection.bus", "rapid_objection.plugin_workers")
SIGNALS: set[type[Exception]] = {RetryLater, PermanentError}
"""A hook raises these to ask the bus for something: not errors, so not under the root."""
INTERNAL = {
    "rapid_objection.bus._redis_failures.SetupRefused": "the Redis adapter makes it BusRefused",
    "rapid_objection.core._cli._args.UsageError": "the CLI turns it into exit status 2",
    "rapid_objection.core._cli._namespace.UnusedNamespace": "the CLI turns it into exit status 3",
    "rapid_objection.core._dashboard._api.RequestError": "the dashboard answers its HTTP status",
    "rapid_objection.core._locks.LockNotTaken": "a runner makes it MigrationFailed, SeedFailed",
    "rapid_objection.core._runners._Discarded": "a runner's atomic batch undone, then reported",
    "rapid_objection.core._tracking.NewerBatch": "a runner makes it a failed undo result",
}
"""Exceptions that never leave the library, with where they end."""
REPOSITORY = Path(__file__).resolve().parent.parent
PRODUCT_FOLDERS = ("core", "bus", "plugin_workers", "src")


def product_modules() -> list[str]:
    """Every module of the distribution (bundled plugins and examples included)."""
    found = pkgutil.walk_packages(rapid_objection.__path__, "rapid_objection.")
    return sorted(m.name for m in found if not m.name.endswith("__main__"))


def defined_exceptions() -> dict[str, type[BaseException]]:
    """Qualified name -> class, for every exception class defined in the product."""
    classes: dict[str, type[BaseException]] = {}
    for name in product_modules():
        for value in vars(importlib.import_module(name)).values():
            if (
                inspect.isclass(value)
                and issubclass(value, BaseException)
                and value.__module__ == name
            ):
                classes[f"{name}.{value.__qualname__}"] = value
    return classes


def drawn_tree() -> dict[str, str | None]:
    """Class name -> parent name, read from the drawing in ``rapid_objection._errors``."""
    assert TREE_DRAWING is not None
    parents: dict[str, str | None] = {}
    stack: list[str] = []
    margin = 0
    for line in TREE_DRAWING.splitlines():
        if line.strip().startswith("Error "):
            stack, margin = ["Error"], line.index("Error")
            parents["Error"] = None
            continue
        for connector in ("├── ", "└── "):
            at = line.find(connector)
            if at >= 0:
                depth = (at - margin) // 4 + 1
                name = line[at + len(connector) :].split()[0]
                del stack[depth:]
                parents[name] = stack[depth - 1]
                stack.append(name)
    return parents


def public_errors() -> dict[str, type[Error]]:
    """The error classes a user can import from a package's ``__all__``."""
    found: dict[str, type[Error]] = {}
    for package in ("rapid_objection", *PACKAGES):
        module = importlib.import_module(package)
        for name in module.__all__:
            value = getattr(module, name)
            if inspect.isclass(value) and issubclass(value, Error):
                found[name] = value
    return found


class TestTree:
    def test_every_exception_is_an_error_a_signal_or_internal(self) -> None:
        """Each exception class of the product is under the root, a hook signal, or stays inside."""
        outside = {
            name
            for name, cls in defined_exceptions().items()
            if not issubclass(cls, Error) and cls not in SIGNALS and name not in INTERNAL
        }
        assert outside == set()

    @pytest.mark.parametrize("signal", [RetryLater, PermanentError], ids=lambda s: s.__name__)
    def test_signals_stay_outside(self, signal: type[Exception]) -> None:
        """A hook's retry or refusal signal is not caught by ``except rapid_objection.Error``."""
        assert not issubclass(signal, Error)

    def test_drawing_is_the_tree(self) -> None:
        """The docstring draws exactly the error classes of the ``_errors`` modules, each
        under its real parent."""
        drawn = drawn_tree()
        real = {
            cls.__name__: cls
            for name, cls in defined_exceptions().items()
            if issubclass(cls, Error) and name.rsplit(".", 2)[-2] == "_errors"
        }
        assert set(drawn) == set(real)
        for name, parent in drawn.items():
            bases = [base.__name__ for base in real[name].__bases__ if issubclass(base, Error)]
            assert bases == ([parent] if parent else []), name

    def test_other_errors_are_private(self) -> None:
        """An error class outside the ``_errors`` modules is a private refinement, not exported."""
        exported = set(public_errors())
        elsewhere = {
            cls.__name__
            for name, cls in defined_exceptions().items()
            if issubclass(cls, Error) and name.rsplit(".", 2)[-2] != "_errors"
        }
        assert elsewhere & exported == set()

    def test_every_exported_error_is_raised(self) -> None:
        """No exported error name is dead: product code uses each (to raise it, or to hand
        it to what raises it) other than in ``except``, or it is the base of one that is."""
        used: set[str] = set()
        for folder in PRODUCT_FOLDERS:
            for path in (REPOSITORY / folder).rglob("*.py"):
                if path.name in {"__init__.py", "_errors.py"}:
                    continue  # where errors are defined and re-exported
                tree = ast.parse(path.read_text())
                caught = {
                    id(name)
                    for handler in ast.walk(tree)
                    if isinstance(handler, ast.ExceptHandler) and handler.type is not None
                    for name in ast.walk(handler.type)
                }
                used |= {
                    node.id
                    for node in ast.walk(tree)
                    if isinstance(node, ast.Name) and id(node) not in caught
                }
        errors = public_errors()
        unused = {
            name
            for name, cls in errors.items()
            if name not in used
            and not any(issubclass(other, cls) and other is not cls for other in errors.values())
        }
        assert unused == set()


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


class Twice(PluginInterface):
    def __init__(self) -> None:
        super().__init__("twice", "1.0.0")


async def bus_without_server() -> Any:
    async with Bus.connect(f"redis://127.0.0.1:{free_port()}/0", "t") as bus:
        return bus


async def registry_without_server() -> Any:
    registry = AppRegistry({"bus": {"url": f"redis://127.0.0.1:{free_port()}/0"}})
    return await registry.initialize()


async def unknown_app() -> Any:
    registry = AppRegistry()
    await registry.initialize()
    try:
        return await registry.unregister_app("nobody")
    finally:
        await registry.shutdown()


async def plugin_loaded_twice() -> Any:
    registry = AppRegistry()
    await registry.initialize()
    try:
        await registry.load_plugin(Twice)
        return await registry.load_plugin(Twice)
    finally:
        await registry.shutdown()


async def unknown_plugin_module() -> Any:
    return load_plugin_class("rapid_objection_tests_nowhere:Plugin")


@pytest.mark.anyio
class TestCatching:
    @pytest.mark.parametrize(
        "failing",
        [
            pytest.param(bus_without_server, id="bus-unavailable"),
            pytest.param(registry_without_server, id="registry-on-a-dead-bus"),
            pytest.param(unknown_app, id="app-not-registered"),
            pytest.param(plugin_loaded_twice, id="plugin-loaded-twice"),
            pytest.param(unknown_plugin_module, id="plugin-module-missing"),
        ],
    )
    async def test_one_except_catches_it(self, failing: Callable[[], Awaitable[Any]]) -> None:
        """``except rapid_objection.Error`` catches a failure of each part of the library."""
        with pytest.raises(Error) as caught:
            await failing()
        assert type(caught.value).__module__.startswith("rapid_objection.")

    async def test_registry_load_failure_is_a_plugin_load_error(self) -> None:
        """``AppRegistry.load_plugin`` fails with a ``PluginLoadError`` naming the plugin."""
        with pytest.raises(PluginLoadError, match="'twice' is already loaded") as caught:
            await plugin_loaded_twice()
        assert caught.value.target == "twice"


def run_without(module: str, statement: str) -> dict[str, Any]:
    """Run ``statement`` in a fresh interpreter where ``module`` cannot be imported; the
    error it raised as ``{"type", "extra", "message", "cause"}``, or ``{}`` if none."""
    probe = (
        "import asyncio, json, sys\n"
        f"sys.modules[{module!r}] = None  # an import of it fails as if not installed\n"
        "from rapid_objection import *\n"
        "from rapid_objection.plugin_workers import *\n"
        "async def main():\n"
        f"    {statement}\n"
        "try:\n"
        "    asyncio.run(main())\n"
        "except Exception as exc:\n"
        "    cause = exc.__cause__ or exc\n"
        "    print(json.dumps({'type': type(exc).__name__, 'message': str(exc),\n"
        "        'extra': getattr(exc, 'extra', None), 'cause': type(cause).__name__,\n"
        "        'cause_extra': getattr(cause, 'extra', None)}))\n"
        "else:\n"
        "    print('{}')\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, check=False, timeout=60
    )
    assert done.returncode == 0, done.stderr
    outcome: dict[str, Any] = json.loads(done.stdout.splitlines()[-1])
    return outcome


REGISTER = (
    "registry = AppRegistry(); await registry.initialize()\n"
    "    try: await registry.register_app('shop', {{'database': {{'url': {url!r}}}}})\n"
    "    finally: await registry.shutdown()"
)


class TestMissingExtra:
    @pytest.mark.parametrize(
        ("module", "url", "extra"),
        [
            pytest.param(
                "psycopg", "postgresql+psycopg://shop@127.0.0.1:9/shop", "postgres", id="postgres"
            ),
            pytest.param("pymysql", "mysql+pymysql://shop@127.0.0.1:9/shop", "mysql", id="mysql"),
        ],
    )
    def test_registry_names_the_extra_of_a_missing_driver(
        self, module: str, url: str, extra: str
    ) -> None:
        """Registering an app whose URL needs a driver that is not installed fails with
        ``MissingExtra`` naming the extra to install."""
        outcome = run_without(module, REGISTER.format(url=url))
        assert outcome["type"] == "MissingExtra"
        assert outcome["extra"] == extra
        assert f"pip install 'rapid-objection[{extra}]'" in outcome["message"]

    def test_worker_engine_names_the_extra(self) -> None:
        """A hook's ``connection.engine()`` for a PostgreSQL app without psycopg names the
        extra."""
        statement = (
            "from rapid_objection.plugin_workers._connection import Engines\n"
            "    url = 'postgresql+psycopg://shop@127.0.0.1:9/shop'\n"
            "    Engines({'databases': {'shop': url}}).engine('shop')"
        )
        outcome = run_without("psycopg", statement)
        assert (outcome["type"], outcome["extra"]) == ("MissingExtra", "postgres")

    def test_metrics_plugin_names_the_extra(self) -> None:
        """Loading the bundled metrics plugin without prometheus-client fails to load with
        a message naming the extra, caused by ``MissingExtra``."""
        outcome = run_without("prometheus_client", "load_plugin_class('metrics')")
        assert outcome["type"] == "PluginLoadError"
        assert "pip install 'rapid-objection[metrics]'" in outcome["message"]
        assert (outcome["cause"], outcome["cause_extra"]) == ("MissingExtra", "metrics")
