"""The audit table verified as the stream is (``replay --verify --archive``), and written a
read batch at a time (``prepare_batch``), on SQLite and PostgreSQL."""

from __future__ import annotations

import secrets
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio
import msgspec
import pytest
import sqlalchemy as sa

from rapid_objection.bus import (
    Ack,
    AppUnregistered,
    Bus,
    Delivery,
    HealthCheck,
    Publisher,
    new_event_id,
)
from rapid_objection.bus._contract import encode
from rapid_objection.bus._errors import KeyringError
from rapid_objection.bus._keyfile import KeyFile
from rapid_objection.bus._keyring import Keyring
from rapid_objection.bus._redis_memory import forget_memory_server
from rapid_objection.plugin_workers import Dispatcher, PluginInterface, RegistryView
from rapid_objection.plugin_workers._worker import read_batch
from rapid_objection.plugin_workers.plugins.audit import AuditPlugin, AuditStore, audit_row
from rapid_objection.plugin_workers.plugins.audit_verify import verify_archive
from rapid_objection.plugin_workers.testing import envelope_for, running_worker
from tests.e2e import run_cli

pytestmark = pytest.mark.anyio

RING = KeyFile.generate(["audit"])


@dataclass
class Archive:
    """An embedded bus signed with ``RING``, and the audit table its worker writes."""

    url: str
    sql_url: str
    store: AuditStore

    def connect(self, keys: KeyFile) -> Any:
        return Bus.connect(self.url, "ns", keyring=Keyring(keys))

    async def publish(self, count: int, *, wait: bool = True) -> None:
        """``count`` signed events of one registry; with ``wait``, until a running audit
        worker archived them."""
        async with self.connect(RING) as bus, Publisher(bus, "reg") as publisher:
            for n in range(count):
                await publisher.publish(HealthCheck(health={"n": n}), app="shop")
        if not wait:
            return
        with anyio.fail_after(10):
            while self.store.count() < count:
                await anyio.sleep(0.02)

    def execute(self, statement: Any) -> None:
        with self.store.engine.begin() as connection:
            connection.execute(statement)

    def row_ids(self) -> list[int]:
        with self.store.engine.connect() as connection:
            table = self.store.table
            return list(connection.execute(sa.select(table.c.id).order_by(table.c.id)).scalars())


@pytest.fixture
def bus_name() -> Iterator[str]:
    name = f"t-{secrets.token_hex(6)}"
    yield f"memory://{name}"
    forget_memory_server(name)


@pytest.fixture
async def archive(bus_name: str, sql_url: str) -> AsyncIterator[Archive]:
    """An audit worker with its plugin's export only, archiving into the lane's database."""
    plugin = AuditPlugin({"url": sql_url})
    store = AuditStore(sql_url)
    found = Archive(bus_name, sql_url, store)
    try:
        async with found.connect(RING.export("audit")) as bus, running_worker(plugin, bus):
            yield found
    finally:
        store.close()


def tamper(archive: Archive) -> tuple[int, int]:
    """One byte of the 2nd row's stored event altered, the 4th row deleted; their ids."""
    ids = archive.row_ids()
    table = archive.store.table
    with archive.store.engine.connect() as connection:
        data = connection.execute(
            sa.select(table.c.envelope).where(table.c.id == ids[1])
        ).scalar_one()
    archive.execute(
        table.update()
        .where(table.c.id == ids[1])
        .values(envelope=bytes(data).replace(b"shop", b"shoq"))
    )
    archive.execute(table.delete().where(table.c.id == ids[3]))
    return ids[1], ids[3]


class TestVerifyArchive:
    async def test_untouched_archive_verifies(self, archive: Archive) -> None:
        """Every archived row keeps its signed event, and all of them verify, in one chain."""
        await archive.publish(6)
        audit = verify_archive(archive.store, Keyring(RING))
        assert (audit.ok, audit.checked, audit.verified, audit.chains) == (True, 6, 6, 1)

    async def test_altered_and_deleted_rows_are_named(self, archive: Archive) -> None:
        """A row whose stored event lost one byte is altered; a row deleted from the
        middle is missing, named by the rows around it."""
        await archive.publish(6)
        altered, deleted = tamper(archive)
        audit = verify_archive(archive.store, Keyring(RING))
        assert not audit.ok
        assert ("altered", str(altered)) in {(p.kind, p.entry_id) for p in audit.problems}
        (missing,) = [p for p in audit.problems if p.kind == "missing"]
        assert "(seq 4 of chain" in missing.detail
        assert f"after row {deleted - 1} and before row {deleted + 1}" in missing.detail

    @pytest.mark.parametrize(
        ("column", "value"),
        [
            pytest.param("payload", '{"type":"health_check","health":{"n":99}}', id="payload"),
            pytest.param("app", "other", id="app"),
            pytest.param("time", 1.0, id="time"),
        ],
    )
    async def test_a_column_edited_in_place_is_altered(
        self, archive: Archive, column: str, value: Any
    ) -> None:
        """A column the signed event decides, edited while the stored event is left
        alone, is named as altered."""
        await archive.publish(3)
        first = archive.row_ids()[0]
        table = archive.store.table
        archive.execute(table.update().where(table.c.id == first).values({column: value}))
        audit = verify_archive(archive.store, Keyring(RING))
        (problem,) = audit.problems
        assert (problem.kind, problem.entry_id) == ("altered", str(first))
        assert f"column {column} of the row differ" in problem.detail

    async def test_rows_without_a_signed_event_are_forged(self, archive: Archive) -> None:
        """A row added by hand (its event unsigned) and a row whose stored event was
        emptied are both forged; the emptied one no longer holds its place in the chain."""
        await archive.publish(2)
        ids = archive.row_ids()
        table = archive.store.table
        unsigned = envelope_for(HealthCheck(), app="shop", registry="reg")
        row = audit_row(
            unsigned, consumer="x", attempt=1, plugin="audit", acks=False, data=encode(unsigned)
        )
        archive.store.record(row)
        archive.execute(table.update().where(table.c.id == ids[0]).values(envelope=None))
        audit = verify_archive(archive.store, Keyring(RING))
        kinds = sorted((p.kind, p.event_id or "") for p in audit.problems)
        assert kinds == [("forged", ""), ("forged", unsigned.id), ("missing", "")]

    def test_the_verification_needs_the_whole_ring(self) -> None:
        """A plugin's export cannot verify an archive (it holds no registry key)."""
        with AuditStore("sqlite://") as store, pytest.raises(KeyringError, match="whole keyring"):
            verify_archive(store, Keyring(RING.export("audit")))


class TestUpgrade:
    def test_a_table_of_the_first_version_gets_the_new_columns(self, sql_url: str) -> None:
        """A table made before the stored events existed gets their columns on start; its
        old rows stay, and do not verify."""
        engine = sa.create_engine(sql_url)
        try:
            old = sa.MetaData()
            table = sa.Table("ro_audit", old)
            for column in AuditStore(engine=engine).table.columns:
                if column.name not in ("envelope", "signatures"):
                    table.append_column(column._copy())
            old.create_all(engine)
            with AuditStore(engine=engine) as store:
                store.create()
                columns = {c["name"] for c in sa.inspect(engine).get_columns("ro_audit")}
                assert {"envelope", "signatures"} <= columns
                store.create()  # a second worker: nothing to add
        finally:
            engine.dispose()


class TestCommand:
    async def test_replay_verify_archive_exit_status(
        self, archive: Archive, tmp_path: Path
    ) -> None:
        """``replay --verify --archive URL`` exits 0 on an untouched archive, and 1 naming
        the altered and the missing row once it was tampered with."""
        ring = tmp_path / "ring.json"
        RING.save(ring)
        args = ["replay", "--verify", "--archive", archive.sql_url, "--keyring", str(ring)]
        await archive.publish(6)
        code, out, err = await run_cli(*args)
        assert code == 0, err
        assert "6 events checked, 6 verified, 1 chains: all verified" in out
        altered, deleted = tamper(archive)
        code, out, err = await run_cli(*args)
        assert code == 1, err
        assert f"ALTERED  row {altered}" in out
        assert "MISSING  1 event of registry 'reg' (seq 4 of chain" in out
        assert f"before row {deleted + 1}" in out


class TestPrepareBatch:
    async def test_a_read_batch_is_one_insert(self, bus_name: str, sql_url: str) -> None:
        """Events waiting when the worker reads are written by one INSERT per read batch
        (not one per event), and each hook still answers that its row was new."""
        inserts: list[str] = []

        def count(_conn: Any, _cursor: Any, statement: str, *_args: Any) -> None:
            if statement.lstrip().upper().startswith("INSERT"):
                inserts.append(statement)

        plugin = AuditPlugin({"url": sql_url})
        archive = Archive(bus_name, sql_url, AuditStore(sql_url))
        sa.event.listen(sa.Engine, "before_cursor_execute", count)
        try:
            async with archive.connect(RING.export("audit")) as bus:
                await bus.ensure_group("audit")  # the events wait in the group
                await archive.publish(40, wait=False)
                async with running_worker(plugin, bus) as worker:
                    with anyio.fail_after(10):
                        while worker.consumer.handled < 40:
                            await anyio.sleep(0.02)
        finally:
            sa.event.remove(sa.Engine, "before_cursor_execute", count)
            archive.store.close()
        assert (plugin.recorded, plugin.duplicates) == (40, 0)
        assert 1 <= len(inserts) <= 4  # read batches of up to 100, or as they came

    async def test_a_batch_inserts_only_what_is_new(self, sql_url: str, view: RegistryView) -> None:
        """A batch holding an archived event (a re-delivery) and a copy beside its
        original writes one new row; the hooks answer ``recorded`` true only for it."""
        plugin = AuditPlugin({"url": sql_url})
        await plugin.initialize(view, {})
        try:
            dispatcher = Dispatcher(plugin, "audit", "c", timeout=10)
            old, new = (envelope_for(AppUnregistered(), app="shop") for _ in range(2))
            copy = msgspec.structs.replace(new, id=new_event_id(), replay=True, replaces=new.id)
            first = await dispatcher(Delivery("1-0", old))
            batch = [Delivery("2-0", old, 2), Delivery("3-0", new), Delivery("4-0", copy)]
            await dispatcher.prepare(batch)
            answers = [await dispatcher(delivery) for delivery in batch]
        finally:
            await plugin.shutdown()
        assert isinstance(first, Ack)
        assert first.result == {"event_id": old.id, "recorded": True}
        recorded = [a.result["recorded"] for a in answers if isinstance(a, Ack)]
        assert recorded == [False, True, False]
        with AuditStore(sql_url) as store:
            assert store.count() == 2

    async def test_a_failing_batch_leaves_each_hook_to_do_its_work(
        self, caplog: pytest.LogCaptureFixture
    ) -> None:
        """A ``prepare_batch`` that raises is logged; every hook then runs and acks."""

        class Flaky(PluginInterface):
            def __init__(self) -> None:
                super().__init__("flaky")
                self.seen: list[str] = []

            async def prepare_batch(self, deliveries: list[Delivery]) -> None:
                raise RuntimeError("database away")

            async def on_health_check(self, app_name: str, health_status: dict[str, Any]) -> None:
                self.seen.append(app_name)

        plugin = Flaky()
        dispatcher = Dispatcher(plugin, "flaky", "c", timeout=10)
        batch = [Delivery(f"{n}-0", envelope_for(HealthCheck(), app=f"a{n}")) for n in range(3)]
        await dispatcher.prepare(batch)
        answers = [await dispatcher(delivery) for delivery in batch]
        assert [a.status for a in answers if isinstance(a, Ack)] == ["ok"] * 3
        assert plugin.seen == ["a0", "a1", "a2"]
        assert "prepare_batch of 3 events failed (RuntimeError: database away)" in caplog.text


class TestReadBatch:
    @pytest.mark.parametrize(
        ("plugin", "expected"),
        [
            pytest.param(AuditPlugin(), 500, id="audit"),
            pytest.param(PluginInterface("plain"), 100, id="default"),
        ],
    )
    def test_a_plugin_may_ask_for_larger_reads(self, plugin: object, expected: int) -> None:
        """The audit plugin's worker reads 500 entries at once; other plugins 100."""
        assert read_batch(plugin) == expected

    @pytest.mark.parametrize("wanted", [0, 5000, 2.5, True], ids=["zero", "huge", "float", "bool"])
    def test_an_impossible_read_batch_is_refused(self, wanted: object) -> None:
        """A ``read_batch`` that is not a whole number from 1 to 1000 names the plugin."""
        plugin = type("Odd", (PluginInterface,), {"read_batch": wanted})("odd")
        with pytest.raises(ValueError, match="plugin 'odd': read_batch must be"):
            read_batch(plugin)
