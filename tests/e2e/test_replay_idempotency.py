"""Replays stay idempotent: the idempotency recipe of docs/writing-plugins.md, taken from
the page as it stands, applies an event once however often an operator delivers it again
(``rapid-objection replay --to-plugin``, ``rapid-objection dlq redrive``, a re-drive of
a replayed copy), on a real Redis."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import ModuleType
from typing import Any

import anyio
import pytest

from rapid_objection.bus import AppRegistered, Bus, ConnectionInfo, Envelope, Publisher
from rapid_objection.bus.testing import drained
from rapid_objection.plugin_workers.testing import running_worker
from tests.test_docs import files

from . import run_cli

pytestmark = pytest.mark.anyio

PLUGIN = "mailer"
"""The name the documented ``Mailer`` gives itself."""

REGISTRY = "reg-replays"


def documented_recipe(directory: Path) -> ModuleType:
    """``my_plugins.py`` as docs/writing-plugins.md shows it, imported."""
    source = files(("writing-plugins.md",))["my_plugins.py"]
    assert "run_once" in source, "the recipe no longer uses run_once"
    path = directory / "my_plugins.py"
    path.write_text(source)
    spec = importlib.util.spec_from_file_location(f"docs_recipe_{directory.name}", path)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


class Smtp:
    """The mail server behind ``send_mail``: down until told otherwise, then it keeps
    what it was asked to send."""

    def __init__(self) -> None:
        self.up = False
        self.sent: list[tuple[str, str]] = []

    def send(self, app_name: str, event_id: str) -> None:
        if not self.up:
            raise ConnectionError("smtp down")
        self.sent.append((app_name, event_id))


async def cli(bus: Bus, url: str, *args: str) -> str:
    code, out, err = await run_cli(*args, "--bus-url", url, "--namespace", bus.namespace)
    assert code == 0, out + err
    return out


async def dead_letters(bus: Bus, count: int) -> list[str]:
    """The dead-letter entry ids once there are ``count`` of them."""
    with anyio.fail_after(10):
        while len(entries := await bus.redis.xrange(bus.keys.dlq, "-", "+", count=100)) < count:
            await anyio.sleep(0.02)
    return [entry_id for entry_id, _ in entries]


async def copies(bus: Bus) -> list[Envelope]:
    """The copies (replays and re-drives) in the stream, oldest first."""
    return [
        entry.envelope
        for entry in (await bus.history.page(size=100)).entries
        if entry.envelope.replaces is not None
    ]


class TestDocumentedRecipe:
    async def test_replays_and_redrives_apply_an_event_once(
        self, redis_bus: Bus, redis_url: str, tmp_path: Path
    ) -> None:
        """The event fails and is dead-lettered; a replay of it fails and is dead-lettered
        too. Then the mail server is up: re-driving the replay's dead letter sends the mail
        (under the original event's id), and re-driving the event's own dead letter and
        replaying the event again send nothing more. Every copy names the original."""
        bus, smtp = redis_bus, Smtp()
        mailer: Any = documented_recipe(tmp_path).Mailer()
        mailer.send_mail = smtp.send
        async with running_worker(mailer, bus, consumer="m-1", max_deliveries=1):
            publisher = Publisher(bus, REGISTRY)
            event, _ = await publisher.publish(
                AppRegistered(connection=ConnectionInfo(dialect="sqlite")), app="shop"
            )
            (event_letter,) = await dead_letters(bus, 1)
            replay = ("replay", "--to-plugin", PLUGIN, "--app", "shop", "--execute")
            await cli(bus, redis_url, *replay)
            replay_letter = (await dead_letters(bus, 2))[1]

            smtp.up = True
            await cli(bus, redis_url, "dlq", "redrive", replay_letter)
            await drained(bus, PLUGIN)
            after_first = list(smtp.sent)
            await cli(bus, redis_url, "dlq", "redrive", event_letter)
            await cli(bus, redis_url, *replay)
            await drained(bus, PLUGIN)
            made = await copies(bus)

        assert after_first == [("shop", event.id)]
        assert smtp.sent == [("shop", event.id)], "a replayed or re-driven copy mailed again"
        assert len(made) == 4  # the replay, its re-drive, the event's re-drive, the replay
        assert {copy.replaces for copy in made} == {event.id}
        assert len({copy.id for copy in made} | {event.id}) == 5
