"""The dashboard in a real browser (Debian's headless chromium, driven by Playwright): it
updates live without reloading, refuses actions without the token, re-drives a dead
letter with it, and looks as docs/dashboard.md shows (a screenshot)."""

from __future__ import annotations

import os
import re
import shutil
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from rapid_objection.bus import AppRegistered, ConnectionInfo, DeadLetters, Publisher
from rapid_objection.bus._publisher import PluginPolicy
from rapid_objection.plugin_workers.testing import running_worker
from tests.conftest import IN_CI

from .conftest import APP, FAILING_PLUGIN, OK_PLUGIN, REGISTRY, Answers, Dashboard, Scene

try:
    from playwright.async_api import Browser, Page, expect
except ImportError:  # pragma: no cover - the dev extra installs it
    if IN_CI:
        raise
    pytest.skip("browser lane: playwright is not installed", allow_module_level=True)

pytestmark = [pytest.mark.anyio, pytest.mark.redis_server]

SCREENSHOT_TO = "RAPID_OBJECTION_DASHBOARD_SCREENSHOT"
"""When set, the screenshot test also copies its PNG to this path (docs/img/dashboard.png
is made so: see docs/dashboard.md)."""

INFO = ConnectionInfo(dialect="postgresql", database="shop", host="db")


@pytest.fixture
async def page(browser: Browser) -> AsyncIterator[Page]:
    """A fresh tab (no token stored); fails the test on any script error of the page."""
    context = await browser.new_context(viewport={"width": 1280, "height": 900})
    errors: list[str] = []
    opened = await context.new_page()
    opened.on("pageerror", lambda error: errors.append(str(error)))
    try:
        yield opened
    finally:
        await context.close()
    assert errors == []


async def open_live(page: Page, dashboard: Dashboard) -> None:
    """Open the page and wait until its live feed is connected."""
    await page.goto(dashboard.url)
    await expect(page.locator("#live")).to_have_class(re.compile(r"\bon\b"))


class TestLive:
    async def test_events_outcomes_and_consumers_appear_without_a_reload(
        self, scene: Scene, with_actions: Dashboard, page: Page
    ) -> None:
        """An event published while the page is open appears in the live feed, then its
        plugin's outcome, and a worker that starts appears among the consumers; the page
        is never reloaded."""
        await open_live(page, with_actions)
        await page.evaluate("window.stillTheSamePage = true")
        policies = {OK_PLUGIN: PluginPolicy(required=True)}
        consumer = f"{OK_PLUGIN}-browser"
        async with (
            running_worker(Answers(), scene.bus, consumer=consumer),
            Publisher(scene.bus, REGISTRY, policies=policies) as publisher,
        ):
            await expect(page.locator(f'#plugins tr[data-consumer="{consumer}"]')).to_be_visible()
            result = await publisher.emit(AppRegistered(connection=INFO), app="live-app")
            row = page.locator(f'#feed tr[data-event="{result.event_id}"]')
            await expect(row).to_contain_text("live-app")
            chip = row.locator(f'.chip[data-plugin="{OK_PLUGIN}"]')
            await expect(chip).to_have_attribute("data-status", "ok")
        assert await page.evaluate("window.stillTheSamePage") is True


class TestActions:
    async def test_a_read_only_dashboard_offers_no_action(
        self, read_only: Dashboard, page: Page
    ) -> None:
        """Without ``--allow-actions`` the page says read-only, its re-drive buttons are
        disabled and the replay form is not shown."""
        await open_live(page, read_only)
        await expect(page.locator("#mode")).to_have_text("read-only")
        buttons = page.locator("#dead-letters button.redrive")
        await expect(buttons.first).to_be_disabled()
        await expect(page.locator("#replay-section")).to_be_hidden()

    async def test_an_action_without_the_token_is_refused_on_the_page(
        self, scene: Scene, with_actions: Dashboard, page: Page
    ) -> None:
        """With actions on but no token given, a re-drive is refused (HTTP 401), the page
        says so, and the dead letter stays."""
        await open_live(page, with_actions)
        kept = scene.letters[1]
        letter = page.locator(f'#dead-letters tr[data-letter="{kept.id}"]')
        await letter.locator("button.redrive").click()
        await expect(page.locator("#message")).to_contain_text("HTTP 401")
        await expect(page.locator("#message")).to_contain_text("token")
        await expect(letter).to_be_visible()
        assert kept.id in [entry.id for entry in await DeadLetters(scene.bus).list()]

    async def test_a_dead_letter_is_redriven_with_the_token(
        self, scene: Scene, with_actions: Dashboard, page: Page
    ) -> None:
        """With the token, a re-drive asks for confirmation, then publishes the event
        again for its plugin alone: the letter goes, and the copy appears live."""
        assert with_actions.token is not None
        chosen = scene.letters[0]
        await open_live(page, with_actions)
        await page.fill("#token", with_actions.token)
        await page.click("#token-form button")
        letter = page.locator(f'#dead-letters tr[data-letter="{chosen.id}"]')
        await letter.locator("button.redrive").click()
        await letter.locator("button.confirm").click()
        await expect(page.locator("#message")).to_contain_text(f"re-drove {chosen.id}")
        await expect(letter).to_have_count(0)
        original = chosen.letter.event_id
        copy = page.locator("#feed tr", has_text=f"re-drive of {original} for {FAILING_PLUGIN}")
        await expect(copy).to_have_count(1)
        left = [entry.id for entry in await DeadLetters(scene.bus).list()]
        assert left == [scene.letters[1].id]
        [logged] = [record for record in with_actions.log() if record.get("action") == "redrive"]
        assert (logged["letter_id"], logged["plugin"]) == (chosen.id, FAILING_PLUGIN)


    async def test_a_replay_is_dry_run_then_confirmed_on_the_page(
        self, scene: Scene, with_actions: Dashboard, page: Page
    ) -> None:
        """The replay form first shows what would be re-delivered; its confirmation
        publishes the copies, which the live feed then shows."""
        assert with_actions.token is not None
        await open_live(page, with_actions)
        await page.fill("#token", with_actions.token)
        await page.click("#token-form button")
        form = page.locator("#replay-form")
        await form.locator("select[name=plugin]").select_option(OK_PLUGIN)
        await form.locator("input[name=app]").fill(APP)
        await form.locator("select[name=type]").select_option("app_registered")
        await form.locator("button").click()
        result = page.locator("#replay-result")
        originals = [event.event_id for event in scene.events]
        await expect(result).to_contain_text(f"would re-deliver 2 events to plugin {OK_PLUGIN}")
        for event_id in originals:
            await expect(result.locator(f'tr[data-event="{event_id}"]')).to_have_count(1)
        await result.locator("button.confirm").click()
        await expect(result).to_contain_text(f"Re-delivered 2 events to plugin {OK_PLUGIN}")
        for event_id in originals:
            copy = page.locator("#feed tr", has_text=f"replay of {event_id} for {OK_PLUGIN}")
            await expect(copy).to_have_count(1)


class TestLooks:
    async def test_a_screenshot_of_a_busy_namespace(
        self, scene: Scene, with_actions: Dashboard, page: Page, tmp_path: Path
    ) -> None:
        """The page of a namespace with a live registry owning an app, a live worker,
        events with outcomes, failures and a dead letter renders into a PNG (copied to
        ``$RAPID_OBJECTION_DASHBOARD_SCREENSHOT`` when set)."""
        policies = {OK_PLUGIN: PluginPolicy(required=True)}
        async with (
            running_worker(Answers(), scene.bus, consumer=f"{OK_PLUGIN}-1"),
            Publisher(scene.bus, REGISTRY, policies=policies) as publisher,
        ):
            await scene.bus.directory.claim_app(APP, REGISTRY)
            publisher.apps.add(APP)
            await open_live(page, with_actions)
            result = await publisher.emit(AppRegistered(connection=INFO), app=APP)
            row = page.locator(f'#feed tr[data-event="{result.event_id}"]')
            await expect(row.locator(".chip.ok")).to_have_count(1)
            await expect(page.locator(f'#apps tr[data-app="{APP}"]')).to_contain_text(REGISTRY)
            # The next heartbeats carry the registry's app and the worker's last duration.
            registry = page.locator(f'#registries tr[data-registry="{REGISTRY}"]')
            await expect(registry).to_contain_text(APP)
            worker = page.locator(f'#plugins tr[data-consumer="{OK_PLUGIN}-1"]')
            await expect(worker).to_contain_text(" ms")
            shot = tmp_path / "dashboard.png"
            await page.screenshot(path=shot, full_page=True)
        data = shot.read_bytes()
        assert data.startswith(b"\x89PNG\r\n\x1a\n")
        width, height = int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")
        assert width == 1280
        assert height >= 900
        if target := os.environ.get(SCREENSHOT_TO):
            shutil.copyfile(shot, target)
