"""The dashboard's JSON API over HTTP, from real ``rapid-objection dashboard`` processes:
the same answers as the command line, and actions only with the token."""

from __future__ import annotations

import json
from http.client import HTTPConnection
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import anyio
import pytest

from rapid_objection.bus import AppRegistered, Bus, ConnectionInfo, ConsumerStatus, collect_status
from rapid_objection.core._cli import main
from rapid_objection.core._cli._args import UsageError
from rapid_objection.core._cli._dashboard import read_token
from rapid_objection.plugin_workers.testing import envelope_for, running_worker
from tests.e2e import one_line_error, run_cli

from .conftest import APP, FAILING_PLUGIN, OK_PLUGIN, Answers, Dashboard, Scene, http

pytestmark = [pytest.mark.anyio, pytest.mark.redis_server]

INFO = ConnectionInfo(dialect="sqlite")


def timeless(status: dict[str, Any]) -> dict[str, Any]:
    """A status report without what changes by the clock alone (when it was read, how
    idle consumers are, whose heartbeat is older than the liveness limit by now)."""
    status = json.loads(json.dumps(status))
    status.pop("time")
    for registry in status["registries"]:
        registry.pop("alive")
    for plugin in status["plugins"]:
        for consumer in plugin["consumers"]:
            consumer.pop("idle_ms", None)
            consumer.pop("alive")
    return status


class TestStatus:
    async def test_api_status_is_what_status_json_prints(
        self, scene: Scene, read_only: Dashboard
    ) -> None:
        """``GET /api/status`` answers the object ``rapid-objection status --json``
        prints: registries, plugins and their live consumers (with the last hook's
        duration), failures, dead letters, memory."""
        bus, consumer = scene.bus, f"{OK_PLUGIN}-live"
        async with running_worker(Answers(), bus, consumer=consumer):
            await bus.publish(envelope_for(AppRegistered(connection=INFO), app="elsewhere"))
            with anyio.fail_after(5):  # the worker's next heartbeat carries the duration
                while not [c for c in await consumers(bus) if c.last_duration is not None]:
                    await anyio.sleep(0.05)
            code, out, err = await run_cli(
                "status", "--json", "--bus-url", scene.url, "--namespace", bus.namespace
            )
            status, answer = await http("GET", f"{read_only.url}api/status")
        assert code == 0, err
        assert status == 200
        assert timeless(answer) == timeless(json.loads(out))
        plugins = {plugin["name"]: plugin for plugin in answer["plugins"]}
        assert set(plugins) == {OK_PLUGIN, FAILING_PLUGIN}
        [live] = plugins[OK_PLUGIN]["consumers"]
        assert (live["name"], live["alive"], live["handled"]) == (consumer, True, 1)
        assert 0 < live["last_duration"] < 1
        assert answer["dead_letters"] == await bus.redis.xlen(bus.keys.dlq) > 0
        assert {failure["plugin"] for failure in answer["recent_failures"]} == {FAILING_PLUGIN}


async def consumers(bus: Bus) -> list[ConsumerStatus]:
    report = await collect_status(bus)
    return [c for plugin in report.plugins if plugin.name == OK_PLUGIN for c in plugin.consumers]


class TestHistory:
    async def test_history_selects_what_replay_selects_with_outcomes(
        self, scene: Scene, read_only: Dashboard
    ) -> None:
        """``GET /api/history`` with an app and a type lists the events ``replay`` lists
        for them, each with its plugins' outcomes."""
        code, out, err = await run_cli(
            "replay", "--format", "jsonl", "--app", APP, "--type", "app_registered",
            "--bus-url", scene.url, "--namespace", scene.bus.namespace,
        )
        assert code == 0, err
        status, page = await http(
            "GET", f"{read_only.url}api/history?app={APP}&type=app_registered"
        )
        assert status == 200
        ids = [event["id"] for event in page["events"]]
        assert ids == [json.loads(line)["id"] for line in out.splitlines()]
        originals = [result.event_id for result in scene.events]
        assert ids[: len(originals)] == originals  # then any copies a replay made
        for event in page["events"][: len(originals)]:
            seen = {(outcome["plugin"], outcome["status"]) for outcome in event["outcomes"]}
            assert (OK_PLUGIN, "ok") in seen
            assert (FAILING_PLUGIN, "dead_lettered") in seen

    async def test_outcome_filters_and_newest_first_are_replays(
        self, scene: Scene, read_only: Dashboard
    ) -> None:
        """``plugin`` and ``status`` select as ``replay --plugin --status`` does (only
        events with such an outcome, and only those outcomes); ``order=newest`` with a
        limit is ``--last``."""
        base = ("--format", "jsonl", "--bus-url", scene.url, "--namespace", scene.bus.namespace)
        by_outcome = ("--plugin", FAILING_PLUGIN, "--status", "dead_lettered")
        code, out, err = await run_cli("replay", *by_outcome, *base)
        assert code == 0, err
        status, page = await http(
            "GET", f"{read_only.url}api/history?plugin={FAILING_PLUGIN}&status=dead_lettered"
        )
        assert status == 200
        ids = [event["id"] for event in page["events"]]
        assert ids == [json.loads(line)["id"] for line in out.splitlines()]
        assert ids == [result.event_id for result in scene.events]
        for event in page["events"]:
            assert {(o["plugin"], o["status"]) for o in event["outcomes"]} == {
                (FAILING_PLUGIN, "dead_lettered")
            }
        code, out, err = await run_cli("replay", "--last", "1", *base)
        _, newest = await http("GET", f"{read_only.url}api/history?order=newest&limit=1")
        assert [event["id"] for event in newest["events"]] == [json.loads(out)["id"]]
        assert newest["more"] is True

    @pytest.mark.parametrize(
        ("query", "words"),
        [
            ("since=yesterday", "since"),
            ("limit=0", "limit"),
            ("type=nope", "nope"),
            ("status=fine", "fine"),
            ("order=random", "order"),
        ],
        ids=["since", "limit", "type", "status", "order"],
    )
    async def test_a_bad_query_is_400_naming_it(
        self, read_only: Dashboard, query: str, words: str
    ) -> None:
        """A parameter the history cannot read is refused, saying which."""
        status, answer = await http("GET", f"{read_only.url}api/history?{query}")
        assert status == 400
        assert words in answer["error"]


class TestRefused:
    async def test_a_read_only_dashboard_refuses_every_action(
        self, scene: Scene, read_only: Dashboard
    ) -> None:
        """Without ``--allow-actions``, actions are HTTP 403 whatever the request carries,
        and the dead letter stays."""
        for path, body in (
            ("redrive", {"id": scene.letters[0].id}),
            ("replay", {"plugin": OK_PLUGIN}),
        ):
            status, answer = await http(
                "POST", f"{read_only.url}api/actions/{path}", body, token="anything"  # noqa: S106 - not a secret
            )
            assert status == 403
            assert "--allow-actions" in answer["error"]
        _, letters = await http("GET", f"{read_only.url}api/dead-letters")
        assert scene.letters[0].id in [letter["id"] for letter in letters]

    @pytest.mark.parametrize("token", [None, "wrong-token"], ids=["none", "wrong"])
    async def test_an_action_without_the_token_is_401(
        self, scene: Scene, with_actions: Dashboard, token: str | None
    ) -> None:
        """With actions on, a request without the token printed at start is HTTP 401."""
        body = {"id": scene.letters[0].id}
        url = f"{with_actions.url}api/actions/redrive"
        status, answer = await http("POST", url, body, token=token)
        assert status == 401
        assert "token" in answer["error"]
        refused = [r for r in with_actions.log() if r["message"].startswith("dashboard: refused")]
        assert refused
        assert refused[-1]["level"] == "warning"
        assert refused[-1]["client"].startswith("127.0.0.1:")

    async def test_a_confirmation_must_match_its_dry_run(
        self, scene: Scene, with_actions: Dashboard
    ) -> None:
        """A dry run changes nothing and gives a confirm code; a code that is not its
        own is HTTP 409, and the letter stays."""
        url = f"{with_actions.url}api/actions/redrive"
        token = with_actions.token
        status, plan = await http("POST", url, {"id": scene.letters[0].id}, token=token)
        assert status == 200
        assert plan["dry_run"] is True
        assert plan["letter"]["plugin"] == FAILING_PLUGIN
        forged = {"id": scene.letters[0].id, "confirm": "0" * 64}
        status, answer = await http("POST", url, forged, token=token)
        assert status == 409
        assert "dry-run" in answer["error"]
        _, letters = await http("GET", f"{with_actions.url}api/dead-letters")
        assert scene.letters[0].id in [letter["id"] for letter in letters]


class TestReplay:
    async def test_a_replay_is_a_dry_run_then_copies_in_the_history(
        self, scene: Scene, with_actions: Dashboard
    ) -> None:
        """A replay's dry run lists the events and publishes nothing; its confirmation
        publishes one copy per event for the plugin alone, and the history shows them."""
        url, token = f"{with_actions.url}api/actions/replay", with_actions.token
        selection = {"app": APP, "types": ["app_registered"], "since": "-1h"}
        before = await scene.bus.redis.xlen(scene.bus.keys.events)
        status, plan = await http(
            "POST", url, {"plugin": OK_PLUGIN, "selection": selection}, token=token
        )
        assert status == 200, plan
        originals = [result.event_id for result in scene.events]
        assert (plan["dry_run"], plan["count"]) == (True, 2)
        assert [event["id"] for event in plan["events"]] == originals
        assert await scene.bus.redis.xlen(scene.bus.keys.events) == before
        confirmed = {key: plan[key] for key in ("plugin", "selection", "confirm")}
        status, done = await http("POST", url, confirmed, token=token)
        assert status == 200, done
        assert [copy["original"] for copy in done["copies"]] == originals
        query = f"app={APP}&type=app_registered"
        status, page = await http("GET", f"{with_actions.url}api/history?{query}")
        copies = [event for event in page["events"] if event.get("replay")]
        assert [event["entry_id"] for event in copies] == [c["entry_id"] for c in done["copies"]]
        assert [event["replaces"] for event in copies] == originals
        assert {event["target"] for event in copies} == {OK_PLUGIN}
        assert all(event["provenance"].startswith("replay of") for event in copies)

    async def test_a_plugin_nobody_serves_is_404(self, with_actions: Dashboard) -> None:
        """A replay to a plugin the namespace never saw is refused, naming the known ones."""
        url, token = f"{with_actions.url}api/actions/replay", with_actions.token
        status, answer = await http("POST", url, {"plugin": "nobody"}, token=token)
        assert status == 404
        assert OK_PLUGIN in answer["error"]


class TestBinding:
    async def test_it_listens_on_loopback_and_answers_only_its_own_names(
        self, read_only: Dashboard
    ) -> None:
        """Without ``--host`` it binds 127.0.0.1, and a request addressed to another
        host name (a DNS rebinding page) is refused."""
        assert read_only.url.startswith("http://127.0.0.1:")
        port = urlsplit(read_only.url).port

        def get(host: str) -> int:
            connection = HTTPConnection("127.0.0.1", port, timeout=5)
            try:
                connection.request("GET", "/api/config", headers={"Host": host})
                return connection.getresponse().status
            finally:
                connection.close()

        assert await anyio.to_thread.run_sync(get, f"localhost:{port}") == 200
        assert await anyio.to_thread.run_sync(get, f"attacker.example:{port}") == 400


class TestTokenFile:
    def test_the_first_line_is_the_token(self, tmp_path: Path) -> None:
        """``--token-file`` reads the file's first line, blanks around it dropped."""
        path = tmp_path / "token"
        path.write_text("  s3cret-token-of-the-team  \nsecond line\n")
        assert read_token(str(path)) == "s3cret-token-of-the-team"

    @pytest.mark.parametrize("text", ["", "short\n"], ids=["empty", "short"])
    def test_a_short_token_is_refused(self, tmp_path: Path, text: str) -> None:
        """A token under 16 characters (or none) is a usage error naming the file."""
        path = tmp_path / "token"
        path.write_text(text)
        with pytest.raises(UsageError, match="16 characters"):
            read_token(str(path))


class TestCommandLine:
    def test_a_token_file_without_actions_is_a_usage_error(
        self, capsys: pytest.CaptureFixture[str]
    ) -> None:
        """``--token-file`` alone is refused in one line, exit 2, before anything else."""
        with pytest.raises(SystemExit) as exited:
            main(["dashboard", "--bus-url", "redis://127.0.0.1:1", "--token-file", "/none"])
        out, err = capsys.readouterr()
        code = exited.value.code
        assert code == 2
        assert "--allow-actions" in one_line_error(code, out, err)

    async def test_a_taken_port_is_one_line(self, scene: Scene, read_only: Dashboard) -> None:
        """A port another process listens on is one line naming the address, exit 1."""
        port = str(urlsplit(read_only.url).port)
        code, out, err = await run_cli(
            "dashboard", "--bus-url", scene.url, "--namespace", scene.bus.namespace,
            "--port", port,
        )
        assert code == 1
        assert f"cannot listen on 127.0.0.1:{port}" in one_line_error(code, out, err)
