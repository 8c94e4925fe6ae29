"""The documentation's references match the code, so that they cannot drift apart.

- Every command's `--help` mentions each flag its parser defines.
- The CLI table of docs/cli.md (`| command | flags | what it does |`) has a row per command whose
  flags cell names each of that command's flags, and no flag the command does not have.
- The configuration table of docs/configuration.md names every setting, and no other.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import click
import pytest

from dispatchq.cli.job import nomad_parser
from dispatchq.cli.main import cli, main
from dispatchq.config.settings import CONFIG_FILE_ENV, Settings
from dispatchq.nomad.config import ENV_NAMES

DOCS = Path(__file__).resolve().parents[2] / "docs"
CLI_TABLE_HEADER = "| command | flags | what it does |"
CONFIG_TABLE_HEADER = "| variable | default | meaning |"
FLAG = re.compile(r"(?<![\w-])--?[A-Za-z][\w-]*")
NOMAD_VARIABLES = ENV_NAMES


def commands(
    group: click.Group, path: tuple[str, ...] = ()
) -> dict[tuple[str, ...], click.Command]:
    """Every runnable command: its words (`("dlq", "replay")`) and its click command."""
    found: dict[tuple[str, ...], click.Command] = {}
    for name, command in group.commands.items():
        if isinstance(command, click.Group):
            found.update(commands(command, (*path, name)))
        else:
            found[(*path, name)] = command
    return found


COMMANDS = commands(cli)


def flags(path: tuple[str, ...]) -> list[set[str]]:
    """The spellings of each option but help (`{"-json", "--json"}`); `job dispatch`'s are
    those of its nomad-style parser."""
    if path == ("job", "dispatch"):
        parser = nomad_parser()
        return [
            set(action.option_strings)
            for action in parser._actions
            if action.option_strings and action.dest != "help"
        ]
    return [
        {*param.opts, *param.secondary_opts}
        for param in COMMANDS[path].params
        if isinstance(param, click.Option) and param.name != "help"
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
    """The walk of the commands finds them (a guard for the tests below)."""
    names = {" ".join(path) for path in COMMANDS}
    assert {"job dispatch", "worker", "dev", "health", "dlq replay", "batch submit"} <= names


@pytest.mark.parametrize("path", sorted(COMMANDS), ids=" ".join)
def test_help_mentions_every_flag(
    path: tuple[str, ...], capsys: pytest.CaptureFixture[str]
) -> None:
    try:
        code = main([*path, "--help"])
    except SystemExit as exited:  # job dispatch's nomad-style parser exits itself
        code = int(exited.code or 0)
    assert code == 0
    shown = set(FLAG.findall(capsys.readouterr().out))
    for spellings in flags(path):
        assert spellings & shown, f"`dispatchq {' '.join(path)} --help` omits {spellings}"


@pytest.mark.parametrize("path", sorted(COMMANDS), ids=" ".join)
def test_readme_documents_the_flags(path: tuple[str, ...]) -> None:
    documented = readme_commands()
    assert path in documented, f"docs/cli.md has no row for {' '.join(path)}"
    mentioned = set(FLAG.findall(documented[path]))
    spellings = flags(path)
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


def test_shell_completion_completes_commands_and_subcommands() -> None:
    env = {**os.environ, "_DISPATCHQ_COMPLETE": "bash_complete", "COMP_CWORD": "2",
           "COMP_WORDS": "dispatchq batch st"}  # fmt: skip
    done = subprocess.run([sys.executable, "-m", "dispatchq.cli"], env=env, capture_output=True,
                          text=True, timeout=60, check=False)  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "plain,status" in done.stdout.splitlines()


def test_a_flag_belongs_to_its_subcommand_only(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["batch", "cancel", "--csv", "b1"]) == 1
    assert "No such option '--csv'" in capsys.readouterr().err
