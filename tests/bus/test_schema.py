"""The generated references: committed docs match the code, and the schema fits real messages."""

from __future__ import annotations

import importlib.util
import inspect
import json
import subprocess
import sys
import time
import types
from pathlib import Path
from typing import Any, get_args

import msgspec
import pytest

from rapid_objection.bus import (
    EVENT_TYPES,
    HOOK_METHODS,
    HOOK_TYPES,
    SCHEMA_VERSIONS,
    AppRegistered,
    AppRegistrationStarted,
    AppRollbackCompleted,
    AppRollbackStarted,
    AppUnregistered,
    AppUnregistrationStarted,
    AutoOperationsCompleted,
    AutoOperationsStarted,
    ConnectionCreated,
    ConnectionInfo,
    ConnectionShutdown,
    Custom,
    Envelope,
    EventType,
    HealthCheck,
    OperationFailed,
    OperationResult,
    Payload,
    new_event_id,
)
from rapid_objection.bus._contract import encode, payload_type
from rapid_objection.plugin_workers import PluginInterface

ROOT = Path(__file__).resolve().parents[2]


def load_generator() -> types.ModuleType:
    """``docs/generate.py``, a development tool outside the package, loaded by its path."""
    spec = importlib.util.spec_from_file_location("docs_generate", ROOT / "docs" / "generate.py")
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # msgspec and dataclasses look their module up
    spec.loader.exec_module(module)
    return module


schema = load_generator()
DOCUMENT: dict[str, Any] = json.loads(schema.render_schema())
DEFS: dict[str, Any] = DOCUMENT["$defs"]
DELETE = object()
"""A field value meaning "remove the field"."""


def all_structs() -> dict[str, type[msgspec.Struct]]:
    """Every Struct that goes on the wire: the schema roots, the payloads and what they carry."""
    found: dict[str, type[msgspec.Struct]] = {}

    def visit(tp: Any) -> None:
        if isinstance(tp, type) and issubclass(tp, msgspec.Struct):
            if tp.__name__ in found:
                return
            found[tp.__name__] = tp
            for field in msgspec.structs.fields(tp):
                visit(field.type)
        for arg in get_args(tp):
            visit(arg)

    for root in schema.SCHEMA_ROOTS:
        visit(root)
    return dict(sorted(found.items()))


STRUCTS = all_structs()


def _is(instance: Any, kind: str) -> bool:
    checks: dict[str, Any] = {
        "object": lambda v: isinstance(v, dict),
        "array": lambda v: isinstance(v, list),
        "string": lambda v: isinstance(v, str),
        "integer": lambda v: isinstance(v, int) and not isinstance(v, bool),
        "number": lambda v: isinstance(v, int | float) and not isinstance(v, bool),
        "boolean": lambda v: isinstance(v, bool),
        "null": lambda v: v is None,
    }
    return bool(checks[kind](instance))


def violations(instance: Any, node: dict[str, Any], path: str = "$") -> list[str]:
    """Where ``instance`` breaks the schema ``node``: the subset of JSON Schema msgspec emits."""
    if "$ref" in node:
        return violations(instance, DEFS[node["$ref"].removeprefix("#/$defs/")], path)
    if "anyOf" in node:
        tried = [violations(instance, option, path) for option in node["anyOf"]]
        if any(not errors for errors in tried):
            return []
        return [f"{path}: matches no alternative", *min(tried, key=len)]
    if "enum" in node and instance not in node["enum"]:
        return [f"{path}: {instance!r} is not one of {node['enum']}"]
    kind = node.get("type")
    if kind is not None and not _is(instance, kind):
        return [f"{path}: expected {kind}, got {type(instance).__name__}"]
    errors: list[str] = []
    if kind == "object":
        errors += [
            f"{path}: missing {name}" for name in node.get("required", ()) if name not in instance
        ]
        properties = node.get("properties")
        for name, value in instance.items():
            if properties is None:
                continue
            if name not in properties:
                errors.append(f"{path}: unknown property {name}")
            else:
                errors += violations(value, properties[name], f"{path}.{name}")
    if kind == "array" and "items" in node:
        for index, item in enumerate(instance):
            errors += violations(item, node["items"], f"{path}[{index}]")
    return errors


def as_json(message: msgspec.Struct) -> Any:
    """A message as it is on the wire, decoded without types, then as JSON would carry it."""
    untyped = msgspec.msgpack.decode(encode(message))
    return json.loads(msgspec.json.encode(untyped))


def envelope(payload: Payload) -> Envelope:
    event_type = payload_type(payload)
    return Envelope(
        id=new_event_id(),
        type=event_type,
        version=SCHEMA_VERSIONS[event_type],
        registry="reg-a",
        app="shop",
        time=time.time(),
        seq=3,
        required=("audit",),
        deadline=time.time() + 5,
        payload=payload,
        trace="00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
    )


def payloads() -> dict[EventType, Payload]:
    """A payload per event type, with nested Structs, lists and maps in it."""
    connection = ConnectionInfo(dialect="sqlite", url="sqlite:///shop.db", apps=("shop",))
    steps = (OperationResult(operation="seeds", success=True, items=("u",), details={"n": 2}),)
    options = {"rollback": True, "force": False}
    found: dict[EventType, Payload] = {
        "app_registration_started": AppRegistrationStarted(config={"echo": True}),
        "connection_created": ConnectionCreated(connection=connection, reused=True),
        "auto_operations_started": AutoOperationsStarted(connection=connection),
        "auto_operations_completed": AutoOperationsCompleted(operations=steps, success=False),
        "app_registered": AppRegistered(connection=connection, config={"echo": True}),
        "app_unregistration_started": AppUnregistrationStarted(options=options),
        "app_rollback_started": AppRollbackStarted(connection=connection, options=options),
        "app_rollback_completed": AppRollbackCompleted(steps=steps),
        "connection_shutdown": ConnectionShutdown(connection=connection, shared=True),
        "app_unregistered": AppUnregistered(options=options),
        "operation_failed": OperationFailed(
            operation="register_app", error_type="OSError", error_message="no", context={"a": 1}
        ),
        "health_check": HealthCheck(health={"status": "ok"}),
        "custom": Custom(name="cache.flush", data=[1, "two", None], source="cache"),
    }
    assert set(found) == set(EVENT_TYPES)
    return found


class TestCommittedDocs:
    @pytest.mark.parametrize(
        "relative", [schema.SCHEMA_FILE, schema.HOOKS_FILE], ids=lambda path: path.name
    )
    def test_committed_file_is_current(self, relative: Path) -> None:
        """The committed generated file is exactly what the code generates now."""
        path = ROOT / relative
        committed = path.read_bytes().decode("utf-8") if path.is_file() else None
        assert committed == schema.generated()[relative], (
            f"{relative.as_posix()} is stale: run `python docs/generate.py` and commit the result"
        )

    def test_generation_is_deterministic(self) -> None:
        """Two generations in a row are identical, byte for byte."""
        assert schema.generated() == schema.generated()

    def test_check_passes_on_the_committed_tree(self) -> None:
        """``python docs/generate.py --check`` exits 0 on the committed docs."""
        done = subprocess.run(
            [sys.executable, "docs/generate.py", "--check"],
            cwd=ROOT,
            capture_output=True,
            text=True,
            check=False,
        )
        assert done.returncode == 0, done.stderr


class TestCommand:
    def test_writes_both_files(self, tmp_path: Path) -> None:
        """Without ``--check`` the command writes every generated file under the root."""
        assert schema.main(["--root", str(tmp_path)]) == 0
        for relative, text in schema.generated().items():
            assert (tmp_path / relative).read_bytes().decode("utf-8") == text

    @pytest.mark.parametrize(
        "relative", [schema.SCHEMA_FILE, schema.HOOKS_FILE], ids=lambda path: path.name
    )
    @pytest.mark.parametrize("damage", ["edited", "missing"])
    def test_check_names_the_stale_file(
        self, tmp_path: Path, capsys: pytest.CaptureFixture[str], relative: Path, damage: str
    ) -> None:
        """``--check`` exits 1 and names the stale file and the command that fixes it."""
        schema.main(["--root", str(tmp_path)])
        capsys.readouterr()
        path = tmp_path / relative
        if damage == "edited":
            path.write_text(path.read_text(encoding="utf-8") + "\nhand edit\n", encoding="utf-8")
        else:
            path.unlink()
        assert schema.main(["--check", "--root", str(tmp_path)]) == 1
        err = capsys.readouterr().err
        command = "python docs/generate.py"
        assert err == f"{relative.as_posix()} is stale: run `{command}`\n"
        assert path.exists() == (damage == "edited")

    def test_check_is_silent_when_current(
        self, tmp_path: Path, capsys: pytest.CaptureFixture[str]
    ) -> None:
        """``--check`` on freshly generated files exits 0 and prints nothing."""
        schema.main(["--root", str(tmp_path)])
        capsys.readouterr()
        assert schema.main(["--check", "--root", str(tmp_path)]) == 0
        assert capsys.readouterr() == ("", "")


class TestSchemaDocument:
    def test_carries_the_schema_versions(self) -> None:
        """The document's x-schema-versions is the contract's SCHEMA_VERSIONS."""
        assert DOCUMENT["x-schema-versions"] == SCHEMA_VERSIONS

    def test_carries_the_hook_methods(self) -> None:
        """The document's x-hook-methods is the contract's HOOK_METHODS."""
        assert DOCUMENT["x-hook-methods"] == HOOK_METHODS

    def test_roots_are_the_wire_messages(self) -> None:
        """The document matches any of the messages that go on the bus, and nothing else."""
        roots = [ref["$ref"].removeprefix("#/$defs/") for ref in DOCUMENT["anyOf"]]
        assert roots == [cls.__name__ for cls in schema.SCHEMA_ROOTS]

    @pytest.mark.parametrize("name", list(STRUCTS))
    def test_every_struct_field_is_a_property(self, name: str) -> None:
        """Each Struct's fields, and its tag, are the properties of its definition."""
        cls = STRUCTS[name]
        definition = DEFS[name]
        fields = msgspec.structs.fields(cls)
        expected = {field.encode_name for field in fields}
        tag_field = cls.__struct_config__.tag_field
        if tag_field is not None:
            expected.add(tag_field)
        assert set(definition["properties"]) == expected
        required = {field.encode_name for field in fields if field.required}
        assert set(definition.get("required", ())) - {tag_field} == required

    def test_envelope_types_and_discriminator_cover_the_catalogue(self) -> None:
        """Every event type is a valid envelope type and selects its own payload definition."""
        properties = DEFS["Envelope"]["properties"]
        assert set(properties["type"]["enum"]) == set(EVENT_TYPES)
        mapping = properties["payload"]["discriminator"]["mapping"]
        assert mapping == {
            event_type: f"#/$defs/{cls.__name__}" for event_type, cls in schema.PAYLOADS.items()
        }

    @pytest.mark.parametrize("event_type", EVENT_TYPES)
    def test_real_envelope_conforms(self, event_type: EventType) -> None:
        """An encoded envelope of each type, turned into JSON, fits the schema."""
        instance = as_json(envelope(payloads()[event_type]))
        assert instance["payload"]["type"] == event_type
        assert violations(instance, {"$ref": "#/$defs/Envelope"}) == []
        assert violations(instance, DOCUMENT) == []

    @pytest.mark.parametrize(
        ("field", "value"),
        [
            pytest.param("seq", DELETE, id="missing-seq"),
            pytest.param("type", "app_exploded", id="unknown-type"),
            pytest.param("version", "1", id="version-as-string"),
            pytest.param("surprise", 1, id="unknown-field"),
        ],
    )
    def test_broken_envelope_does_not_conform(self, field: str, value: Any) -> None:
        """The structural check is not vacuous: a damaged envelope is reported."""
        instance = as_json(envelope(payloads()["app_registered"]))
        if value is DELETE:
            del instance[field]
        else:
            instance[field] = value
        assert violations(instance, {"$ref": "#/$defs/Envelope"}) != []


class TestHooksReference:
    @pytest.mark.parametrize("event_type", HOOK_TYPES)
    def test_names_each_hook_three_ways(self, event_type: EventType) -> None:
        """Each hook appears with its seed name, its plugin method and its event type."""
        text = schema.generated()[schema.HOOKS_FILE]
        assert f"## `{HOOK_METHODS[event_type]}`" in text
        assert f"`{schema.seed_hook(event_type)}(" in text
        assert f"`{event_type}`" in text

    @pytest.mark.parametrize(
        ("event_type", "seed"),
        [
            ("app_registered", "onAppRegistered"),
            ("app_registration_started", "onAppRegistrationStarted"),
            ("health_check", "onHealthCheck"),
        ],
    )
    def test_seed_hook_names_are_camel_case(self, event_type: EventType, seed: str) -> None:
        """Seed hook names are ``on`` plus the event type in CamelCase."""
        assert schema.seed_hook(event_type) == seed

    @pytest.mark.parametrize("event_type", HOOK_TYPES)
    def test_shows_the_signature_and_docstring(self, event_type: EventType) -> None:
        """Each hook section quotes the interface's signature and docstring."""
        method = getattr(PluginInterface, HOOK_METHODS[event_type])
        text = schema.generated()[schema.HOOKS_FILE]
        assert schema.signature(method) in text
        doc = inspect.getdoc(method)
        assert doc is not None
        assert doc in text
        assert schema.signature(method).startswith(f"async def {method.__name__}(self, app_name:")

    def test_documents_custom_events(self) -> None:
        """The ``custom`` event has its own section with ``emit``, ``on`` and its payload."""
        text = schema.generated()[schema.HOOKS_FILE]
        custom = text[text.index("## `custom`") :]
        assert "async def emit(self, name: str, data: Any = None) -> str" in custom
        assert "def on(self, name: str, handler: Callable[..., Any]) -> None" in custom
        assert "| `name` | `str` | required |" in custom

    def test_union_types_do_not_break_tables(self) -> None:
        """A ``|`` inside a type is escaped so that the Markdown table keeps its columns."""
        text = schema.generated()[schema.HOOKS_FILE]
        assert "| `host` | `str \\| None` | `None` |" in text
