"""A registry in a process of its own, driven line by line on stdin (for tests that
pause it with SIGSTOP).

``python -m tests.core.registry_child CONFIG_JSON APP APP_CONFIG_JSON`` registers the
app, prints ``{"registered": true}``, then answers each command line with one JSON line:
``unregister`` (``{"ok": ..., "error_type": ..., "error": ...}``), ``has``
(``{"has_app": ...}``) or ``events`` (the ``error`` listener events seen so far);
anything else shuts the registry down and exits.
"""

from __future__ import annotations

import json
import sys
from typing import Any

import anyio

from rapid_objection.core import AppRegistry


def say(message: dict[str, Any]) -> None:
    print(json.dumps(message), flush=True)


async def main(config: dict[str, Any], app: str, app_config: dict[str, Any]) -> None:
    events: list[dict[str, Any]] = []
    async with AppRegistry(config) as registry:
        registry.on("error", events.append)
        await registry.register_app(app, app_config)
        say({"registered": True})
        while True:
            command = (await anyio.to_thread.run_sync(sys.stdin.readline)).strip()
            if command == "has":
                say({"has_app": registry.has_app(app)})
            elif command == "unregister":
                try:
                    await registry.unregister_app(app)
                except Exception as exc:
                    say({"ok": False, "error_type": type(exc).__name__, "error": str(exc)})
                else:
                    say({"ok": True})
            elif command == "events":
                say({"events": events})
            else:
                return


if __name__ == "__main__":
    anyio.run(main, json.loads(sys.argv[1]), sys.argv[2], json.loads(sys.argv[3]))
