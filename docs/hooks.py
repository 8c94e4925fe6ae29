"""MkDocs hook: the CLI reference page is every command's help, from the commands
themselves (click), `job dispatch`'s from its nomad-style parser."""

from __future__ import annotations

from typing import Any

import click

from dispatchq.cli.job import USAGE
from dispatchq.cli.main import cli

MARKER = "<!-- cli-reference -->"


def _sections(command: click.Command, parent: click.Context | None, name: str) -> list[str]:
    ctx = click.Context(command, info_name=name, parent=parent)
    text = USAGE if ctx.command_path == "dispatchq job dispatch" else command.get_help(ctx)
    out = [f"## `{ctx.command_path}`", "", "```text", text.rstrip(), "```", ""]
    if isinstance(command, click.Group):
        for sub_name, sub in command.commands.items():
            out += _sections(sub, ctx, sub_name)
    return out


def on_page_markdown(markdown: str, **_: Any) -> str:
    if MARKER not in markdown:
        return markdown
    return markdown.replace(MARKER, "\n".join(_sections(cli, None, "dispatchq")))
