"""MkDocs hook: the CLI reference page is every command's `--help`, from the parser itself."""

from __future__ import annotations

import argparse
from typing import Any

from dispatchq.cli.main import build_parser

MARKER = "<!-- cli-reference -->"


def _sections(parser: argparse.ArgumentParser, path: list[str]) -> list[str]:
    out = [f"## `{' '.join(path)}`", "", "```text", parser.format_help().rstrip(), "```", ""]
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                out += _sections(sub, [*path, name])
    return out


def on_page_markdown(markdown: str, **_: Any) -> str:
    if MARKER not in markdown:
        return markdown
    return markdown.replace(MARKER, "\n".join(_sections(build_parser(), ["dispatchq"])))
