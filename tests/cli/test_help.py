"""The documentation's references match the code, so that they cannot drift apart.

- Every command's `--help` mentions each flag its parser defines.
- The CLI table of docs/cli.md (`| command | flags | what it does |`) has a row per command whose
  flags cell names each of that command's flags, and no flag the command does not have.
- The configuration table of docs/configuration.md names every setting, and no other.
"""

from __future__ import annotations

import argparse
import re
from pathlib import Path

import pytest

from dispatchq.cli.main import build_parser, main
from dispatchq.config.settings import CONFIG_FILE_ENV, Settings

DOCS = Path(__file__).resolve().parents[2] / "docs"
CLI_TABLE_HEADER = "| command | flags | what it does |"
CONFIG_TABLE_HEADER = "| variable | default | meaning |"
FLAG = re.compile(r"(?<![\w-])--?[A-Za-z][\w-]*")
NOMAD_VARIABLES = {
    "NOMAD_ADDR", "NOMAD_TOKEN", "NOMAD_REGION", "NOMAD_NAMESPACE", "NOMAD_CACERT",
    "NOMAD_CAPATH", "NOMAD_CLIENT_CERT", "NOMAD_CLIENT_KEY", "NOMAD_TLS_SERVER_NAME",
    "NOMAD_SKIP_VERIFY", "NOMAD_HTTP_AUTH",
}  # fmt: skip


def commands(
    parser: argparse.ArgumentParser, path: tuple[str, ...] = ()
) -> dict[tuple[str, ...], argparse.ArgumentParser]:
    """Every runnable command: its words (`("dlq", "replay")`) and its parser."""
    found: dict[tuple[str, ...], argparse.ArgumentParser] = {}
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                found.update(commands(sub, (*path, name)))
    if not found and path:
        found[path] = parser
    return found


COMMANDS = commands(build_parser())


def flags(parser: argparse.ArgumentParser) -> list[set[str]]:
    """The spellings of each optional argument but help (`{"-json", "--json"}`)."""
    return [
        set(action.option_strings)
        for action in parser._actions
        if action.option_strings
        and not isinstance(action, argparse._HelpAction)
        and action.dest != "help"
    ]


def table_rows(header: str, page: str) -> list[list[str]]:
    """The cells of each row of the table of docs/`page` that starts with `header`."""
    lines = (DOCS / page).read_text().splitlines()
    assert header in lines, f"docs/{page} has no table {header!r}"
    rows = []
    for line in lines[lines.index(header) + 2 :]:
        if not line.startswith("|"):
            break
        cells = re.split(r"(?<!\\)\|", line.strip())[1:-1]
        rows.append([cell.strip() for cell in cells])
    return rows


def readme_commands() -> dict[tuple[str, ...], str]:
    """The CLI table: each command's words and its flags cell."""
    documented: dict[tuple[str, ...], str] = {}
    for command, flag_cell, _what in table_rows(CLI_TABLE_HEADER, "cli.md"):
        words = tuple(re.sub(r"`", "", command).split())
        assert words[0] == "dispatchq", command
        path = max((p for p in COMMANDS if words[1 : 1 + len(p)] == p), key=len, default=None)
        assert path is not None, f"docs/cli.md documents an unknown command: {command}"
        assert path not in documented, f"two docs/cli.md rows for {' '.join(path)}"
        documented[path] = flag_cell
    return documented


def test_every_command_is_found() -> None:
    """The walk of the parser finds the commands (a guard for the tests below)."""
    names = {" ".join(path) for path in COMMANDS}
    assert {"job dispatch", "worker", "dev", "health", "dlq replay", "batch"} <= names


@pytest.mark.parametrize("path", sorted(COMMANDS), ids=" ".join)
def test_help_mentions_every_flag(
    path: tuple[str, ...], capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exited:
        main([*path, "--help"])
    assert exited.value.code == 0
    shown = set(FLAG.findall(capsys.readouterr().out))
    for spellings in flags(COMMANDS[path]):
        assert spellings & shown, f"`dispatchq {' '.join(path)} --help` omits {spellings}"


@pytest.mark.parametrize("path", sorted(COMMANDS), ids=" ".join)
def test_readme_documents_the_flags(path: tuple[str, ...]) -> None:
    documented = readme_commands()
    assert path in documented, f"docs/cli.md has no row for {' '.join(path)}"
    mentioned = set(FLAG.findall(documented[path]))
    spellings = flags(COMMANDS[path])
    for flag in spellings:
        assert flag & mentioned, f"docs/cli.md: `dispatchq {' '.join(path)}` lacks {sorted(flag)}"
    defined = set().union(*spellings) if spellings else set()
    unknown = mentioned - defined
    assert not unknown, f"docs/cli.md: `dispatchq {' '.join(path)}` has no flag {sorted(unknown)}"


def test_readme_documents_every_setting() -> None:
    names = set()
    for cell, _default, _meaning in table_rows(CONFIG_TABLE_HEADER, "configuration.md"):
        names.update(re.findall(r"`((?:DISPATCHQ|NOMAD)_[A-Z_]+)`", cell))
    settings = {f"DISPATCHQ_{field.upper()}" for field in Settings.model_fields}
    expected = settings | {CONFIG_FILE_ENV} | NOMAD_VARIABLES
    assert names - expected == set(), "docs/configuration.md documents settings that do not exist"
    assert expected - names == set(), "settings missing from docs/configuration.md"
