"""The user docs stay honest: keys, defaults, commands and code are checked against the code.

* every configuration key of the Structs in ``core/_config.py`` has a row in
  ``docs/configuration.md`` with the default the code has, and no row names a key the
  code does not have;
* every command of ``rapid-objection`` is shown in ``docs/operations.md`` or
  ``docs/quickstart.md``, every flag in ``docs/operations.md``, and the docs name no
  command that does not exist;
* every Python block of the docs compiles and every TOML block parses (a
  ``# registry.toml`` block also loads as a registry configuration);
* the quickstart's ``# quickstart:run`` blocks run on the embedded bus and print what
  the page shows; its ``# quickstart:redis`` block runs against a worker process on a
  real Redis; the testing guide's examples pass under pytest.

Code blocks name the file they are saved as with a first line ``# file: name.py``;
blocks naming one file are concatenated, in the order of the pages.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import subprocess
import sys
import time
import tomllib
import typing
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio
import msgspec
import pytest

from rapid_objection.bus import Bus
from rapid_objection.bus.testing import purge
from rapid_objection.core._cli import build_parser
from rapid_objection.core._config import RegistryConfig, load_registry_config
from tests.e2e import REPO_ROOT, subprocess_env

DOCS = REPO_ROOT / "docs"
CLI = str(Path(sys.executable).with_name("rapid-objection"))

OWN_PAGES = (
    "index.md",
    "quickstart.md",
    "architecture.md",
    "writing-plugins.md",
    "testing-plugins.md",
    "operations.md",
    "configuration.md",
)
"""The pages these tests keep honest (hooks.md and events.schema.json are generated and
checked by ``tests/bus/test_schema.py``)."""

CONFIG_SECTIONS = ("registry.", "bus.", "plugin_manager.", "plugins.", "apps.")
UNSET = "(unset)"
"""How configuration.md writes the default of a key that is None by default."""


# --- reading the pages ----------------------------------------------------------------


@dataclass(frozen=True)
class Block:
    """One fenced code block of a page."""

    page: str
    line: int
    """The line of the block's first content line (1-based), for messages."""
    language: str
    text: str

    @property
    def label(self) -> str:
        return f"{self.page}:{self.line}"

    @property
    def file(self) -> str | None:
        """The file name of a first line ``# file: name``, if any."""
        first = self.text.split("\n", 1)[0]
        match = re.fullmatch(r"#\s*file:\s*(\S+)\s*", first)
        return match.group(1) if match else None

    def has_marker(self, marker: str) -> bool:
        return any(line.strip() == f"# {marker}" for line in self.text.splitlines())


def page(name: str) -> str:
    return (DOCS / name).read_text()


def blocks(name: str) -> list[Block]:
    """The fenced code blocks of page ``name``, in order."""
    found: list[Block] = []
    language: str | None = None
    start = 0
    lines: list[str] = []
    for number, line in enumerate(page(name).splitlines(), start=1):
        fence = re.match(r"^```\s*(\S*)\s*$", line)
        if language is None:
            if fence:
                language, start, lines = fence.group(1), number + 1, []
        elif fence and not fence.group(1):
            found.append(Block(name, start, language, "\n".join(lines) + "\n"))
            language = None
        else:
            lines.append(line)
    assert language is None, f"{name}: a code block opened at line {start - 1} is not closed"
    return found


def all_blocks(language: str, pages: tuple[str, ...] = OWN_PAGES) -> list[Block]:
    return [block for name in pages for block in blocks(name) if block.language == language]


def files(pages: tuple[str, ...]) -> dict[str, str]:
    """The ``# file:`` blocks of ``pages``, as file name -> content."""
    saved: dict[str, str] = {}
    for block in all_blocks("python", pages):
        if block.file is not None:
            saved[block.file] = saved.get(block.file, "") + block.text
    return saved


def shown_output(name: str, block: Block) -> list[str]:
    """The lines of the ``text`` block right after ``block`` that a run must print:
    without the command line (``$ ...``), elisions (``...``) and blank lines."""
    following = blocks(name)
    index = following.index(block)
    if index + 1 >= len(following) or following[index + 1].language != "text":
        return []
    return [
        line.rstrip()
        for line in following[index + 1].text.splitlines()
        if line.strip() and "..." not in line and not line.startswith("$")
    ]


def assert_in_order(expected: list[str], printed: str) -> None:
    """Each expected line was printed, in this order (other lines may come between)."""
    lines = [line.rstrip() for line in printed.splitlines()]
    position = 0
    for line in expected:
        assert line in lines[position:], f"{line!r} not printed (in order) in:\n{printed}"
        position = lines.index(line, position) + 1


# --- configuration keys ---------------------------------------------------------------


def _struct(kind: Any) -> type[msgspec.Struct] | None:
    return kind if isinstance(kind, type) and issubclass(kind, msgspec.Struct) else None


def _default(field: msgspec.structs.FieldInfo) -> Any:
    if field.default is not msgspec.NODEFAULT:
        return field.default
    if field.default_factory is not msgspec.NODEFAULT:
        return field.default_factory()
    raise AssertionError(f"config key {field.name!r} has no default")


def config_keys(
    struct: type[msgspec.Struct] = RegistryConfig, prefix: str = ""
) -> Iterator[tuple[str, Any]]:
    """(dotted key, default) of every leaf key, ``plugins.<name>.timeout`` style; a
    section (a Struct, or a table of Structs) is walked into instead."""
    for field in msgspec.structs.fields(struct):
        key = prefix + field.name
        section = _struct(field.type)
        if section is not None:
            yield from config_keys(section, key + ".")
            continue
        if typing.get_origin(field.type) is dict:
            values = _struct(typing.get_args(field.type)[1])
            if values is not None:
                yield from config_keys(values, key + ".<name>.")
                continue
        yield key, _default(field)


def rendered(value: Any) -> str:
    """A default as configuration.md writes it: a TOML literal in backticks."""
    if value is None:
        return UNSET
    if isinstance(value, bool):
        return f"`{str(value).lower()}`"
    if isinstance(value, str):
        return f"`{json.dumps(value)}`"
    return f"`{json.dumps(value)}`" if isinstance(value, dict | list) else f"`{value!r}`"


def documented_keys() -> dict[str, str]:
    """Dotted key -> its default cell, from the rows of configuration.md's tables."""
    rows: dict[str, str] = {}
    for line in page("configuration.md").splitlines():
        cells = [cell.strip() for cell in re.split(r"(?<!\\)\|", line)[1:-1]]
        if len(cells) < 4 or not re.fullmatch(r"`[\w.<>]+`", cells[0]):
            continue
        key = cells[0].strip("`")
        if key.startswith(CONFIG_SECTIONS):
            assert key not in rows, f"configuration.md has two rows for {key}"
            rows[key] = cells[2]
    return rows


class TestConfigurationPage:
    def test_every_key_has_a_row(self) -> None:
        """Every key of the config Structs has a row in configuration.md."""
        missing = sorted(dict(config_keys()).keys() - documented_keys().keys())
        assert missing == [], f"keys missing in docs/configuration.md: {missing}"

    def test_no_row_names_an_unknown_key(self) -> None:
        """configuration.md documents no key that the config Structs do not have."""
        unknown = sorted(documented_keys().keys() - dict(config_keys()).keys())
        assert unknown == [], f"keys in docs/configuration.md that do not exist: {unknown}"

    def test_every_default_is_the_codes(self) -> None:
        """Each row's default column is the default of the key in the code."""
        rows = documented_keys()
        wrong = {
            key: (rows[key], rendered(default))
            for key, default in config_keys()
            if key in rows and rows[key] != rendered(default)
        }
        assert wrong == {}, "defaults in docs/configuration.md (doc, code): " + repr(wrong)

    def test_every_section_is_named(self) -> None:
        """Every section and sub-table of the configuration is named on the page."""
        text = page("configuration.md")
        sections = {key.rsplit(".", 1)[0] for key, _ in config_keys() if "." in key}
        missing = sorted(s for s in sections if f"[{s}]" not in text and f"`{s}" not in text)
        assert missing == []


# --- the command line -----------------------------------------------------------------


def commands(
    parser: argparse.ArgumentParser | None = None, path: tuple[str, ...] = ()
) -> Iterator[tuple[tuple[str, ...], argparse.ArgumentParser]]:
    """(command path, parser) of every leaf command: ``("dlq", "list")``, ``("worker",)``."""
    parser = parser or build_parser()
    subcommands = [
        action for action in parser._actions if isinstance(action, argparse._SubParsersAction)
    ]
    if not subcommands:
        yield path, parser
        return
    for action in subcommands:
        for name, child in action.choices.items():
            yield from commands(child, (*path, name))


COMMANDS = sorted(commands(), key=lambda item: item[0])


class TestCommandLine:
    @pytest.mark.parametrize(
        ("path", "parser"), COMMANDS, ids=[" ".join(path) for path, _ in COMMANDS]
    )
    def test_every_command_is_shown(
        self, path: tuple[str, ...], parser: argparse.ArgumentParser
    ) -> None:
        """Every command appears as ``rapid-objection <command>`` in operations or quickstart."""
        shown = f"rapid-objection {' '.join(path)}"
        assert shown in page("operations.md") + page("quickstart.md")

    @pytest.mark.parametrize(
        ("path", "parser"), COMMANDS, ids=[" ".join(path) for path, _ in COMMANDS]
    )
    def test_every_flag_is_documented(
        self, path: tuple[str, ...], parser: argparse.ArgumentParser
    ) -> None:
        """Every long option of every command is named in operations.md."""
        text = page("operations.md")
        flags = {
            option
            for action in parser._actions
            for option in action.option_strings
            if option.startswith("--") and option != "--help"
        }
        missing = sorted(flag for flag in flags if f"`{flag}" not in text)
        assert missing == [], f"rapid-objection {' '.join(path)}: {missing}"

    def test_the_docs_name_only_real_commands(self) -> None:
        """Every ``rapid-objection <word>`` in a code span or a shell line is a real command."""
        real = {path[0] for path, _ in COMMANDS}
        named = set()
        for name in OWN_PAGES:
            named |= set(re.findall(r"`rapid-objection ([a-z][\w-]*)", page(name)))
            for block in blocks(name):
                if block.language in ("sh", "text"):
                    pattern = r"^\s*(?:\S*/)?rapid-objection ([a-z][\w-]*)"
                    named |= set(re.findall(pattern, block.text, re.M))
        assert named, "no command found: the pattern is broken"
        assert named - real == set()


# --- code blocks ----------------------------------------------------------------------

PYTHON_BLOCKS = all_blocks("python")
TOML_BLOCKS = all_blocks("toml")


class TestCodeBlocks:
    def test_the_guides_have_python(self) -> None:
        """The quickstart and the plugin guide show Python code (so the checks below bite)."""
        pages = {block.page for block in PYTHON_BLOCKS}
        assert {"quickstart.md", "writing-plugins.md", "testing-plugins.md"} <= pages

    @pytest.mark.parametrize("block", PYTHON_BLOCKS, ids=[b.label for b in PYTHON_BLOCKS])
    def test_python_compiles(self, block: Block) -> None:
        """Every Python block of the docs is valid Python."""
        compile(block.text, block.label, "exec")

    @pytest.mark.parametrize("block", TOML_BLOCKS, ids=[b.label for b in TOML_BLOCKS])
    def test_toml_parses(self, block: Block) -> None:
        """Every TOML block parses; a ``# registry.toml`` block is a valid registry file."""
        data = tomllib.loads(block.text)
        if block.text.startswith("# registry.toml"):
            load_registry_config(data)


# --- the quickstart runs --------------------------------------------------------------

QUICKSTART_RUNS = [
    b for b in all_blocks("python", ("quickstart.md",)) if b.has_marker("quickstart:run")
]


def _save(directory: Path, pages: tuple[str, ...]) -> dict[str, str]:
    saved = files(pages)
    for name, text in saved.items():
        (directory / name).write_text(text)
    return saved


class TestQuickstart:
    def test_it_has_runnable_blocks(self) -> None:
        """The quickstart marks its programs; each names the file it is saved as."""
        assert QUICKSTART_RUNS
        assert all(block.file for block in QUICKSTART_RUNS)

    def test_the_programs_run_and_print_what_the_page_shows(self, tmp_path: Path) -> None:
        """Each ``# quickstart:run`` program runs on the embedded bus, in the order of the
        page, in one directory, and prints the output shown after it."""
        _save(tmp_path, ("quickstart.md",))
        for block in QUICKSTART_RUNS:
            assert block.file is not None
            done = subprocess.run(
                [sys.executable, block.file],
                cwd=tmp_path,
                env=subprocess_env(tmp_path),
                capture_output=True,
                text=True,
                timeout=120,
                check=False,
            )
            assert done.returncode == 0, f"{block.label} {block.file} failed:\n{done.stderr}"
            assert_in_order(shown_output("quickstart.md", block), done.stdout)

    @pytest.mark.slow
    def test_the_worker_answers_on_redis(self, tmp_path: Path, redis_url: str) -> None:
        """Step 5: ``rapid-objection worker`` serves the registry of ``# quickstart:redis``
        on a real Redis, and ``status`` shows it."""
        namespace = f"docs-{os.getpid()}-{time.monotonic_ns()}"
        saved = _save(tmp_path, ("quickstart.md",))
        command = "rapid-objection worker hello_plugin:HelloPlugin"
        assert command in page("quickstart.md")
        [block] = [
            b for b in all_blocks("python", ("quickstart.md",)) if b.has_marker("quickstart:redis")
        ]
        assert block.file is not None
        program = saved[block.file]
        for shown, used in (
            ('"redis://127.0.0.1:6379/0"', json.dumps(redis_url)),
            ('"namespace": "quickstart"', f'"namespace": "{namespace}"'),
        ):
            assert shown in program
            program = program.replace(shown, used)
        (tmp_path / block.file).write_text(program)
        env = subprocess_env(tmp_path)
        bus_options = ["--bus-url", redis_url, "--namespace", namespace]
        worker = subprocess.Popen(
            [CLI, *command.split()[1:], *bus_options],
            cwd=tmp_path,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        try:
            done = subprocess.run(
                [sys.executable, block.file],
                cwd=tmp_path,
                env=env,
                capture_output=True,
                text=True,
                timeout=120,
                check=False,
            )
            assert done.returncode == 0, done.stderr
            assert_in_order(shown_output("quickstart.md", block), done.stdout)
            status = subprocess.run(
                [CLI, "status", "--json", *bus_options],
                env=env,
                capture_output=True,
                text=True,
                timeout=60,
                check=True,
            )
            report = json.loads(status.stdout)
            [hello] = [plugin for plugin in report["plugins"] if plugin["name"] == "hello"]
            assert [consumer["alive"] for consumer in hello["consumers"]] == [True]
        finally:
            worker.send_signal(signal.SIGTERM)
            stdout, stderr = worker.communicate(timeout=30)
            anyio.run(_purge, redis_url, namespace)
        assert worker.returncode == 0, stderr
        assert "hello: shop is ready on sqlite" in stdout


async def _purge(url: str, namespace: str) -> None:
    async with Bus.connect(url, namespace) as bus:
        await purge(bus)


# --- the testing guide's examples pass ------------------------------------------------


class TestTestingGuide:
    def test_the_examples_pass(self, tmp_path: Path) -> None:
        """The test files of testing-plugins.md, with the plugins of the quickstart and
        of writing-plugins.md, pass under pytest."""
        saved = _save(tmp_path, ("quickstart.md", "writing-plugins.md", "testing-plugins.md"))
        tests = sorted(name for name in saved if name.startswith("test_"))
        assert len(tests) >= 3
        assert {"conftest.py", "hello_plugin.py", "my_plugins.py"} <= saved.keys()
        done = subprocess.run(
            [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *tests],
            cwd=tmp_path,
            env=subprocess_env(tmp_path),
            capture_output=True,
            text=True,
            timeout=300,
            check=False,
        )
        assert done.returncode == 0, done.stdout + done.stderr
        assert re.search(r"\b\d+ passed\b", done.stdout)


# --- links ----------------------------------------------------------------------------

LINKS = [
    (name, target)
    for name in OWN_PAGES
    for target in re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", page(name))
    if not re.match(r"[a-z]+://", target)
]


class TestLinks:
    @pytest.mark.parametrize(("name", "target"), LINKS, ids=[f"{n}->{t}" for n, t in LINKS])
    def test_relative_links_resolve(self, name: str, target: str) -> None:
        """Every relative link of the pages points to a file or directory of the repository."""
        assert (DOCS / target).exists(), f"{name} links to {target}, which does not exist"

    def test_anchors_resolve(self) -> None:
        """Every ``page.md#anchor`` link (and ``#anchor``) names a heading of that page."""
        broken = []
        for name in OWN_PAGES:
            for target, anchor in re.findall(r"\]\(([\w.-]*\.md|)#([\w-]+)\)", page(name)):
                linked = target or name
                if (DOCS / linked).exists() and anchor not in _anchors(linked):
                    broken.append(f"{name} -> {linked}#{anchor}")
        assert broken == []


def _anchors(name: str) -> set[str]:
    """GitHub's anchors of a page's headings: lower case, punctuation dropped, spaces to -."""
    anchors = set()
    for heading in re.findall(r"^#+ (.+)$", page(name), re.M):
        text = re.sub(r"[^\w\- ]", "", heading.strip().lower())
        anchors.add(text.replace(" ", "-"))
    return anchors
