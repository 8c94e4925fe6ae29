"""What the commands share on click: the `-json` flag, Go-style durations, and passing
the arguments after `--` on."""

from __future__ import annotations

from typing import Any

import click

from dispatchq.core.durations import parse_duration

json_flag = click.option("-json", "--json", "json", is_flag=True, help="JSON output for scripts.")
"""`-json` (as nomad spells it) or `--json`: machine-readable output."""

PASSTHROUGH: dict[str, Any] = {"ignore_unknown_options": True, "allow_interspersed_args": False}
"""Context settings of a command whose arguments after `--` go to another program."""


class Duration(click.ParamType[float]):
    """A Go-style duration (`90s`, `5m`, `1h30m`, `500ms`) or plain seconds, in seconds."""

    name = "duration"

    def convert(
        self, value: Any, param: click.Parameter | None, ctx: click.Context | None
    ) -> float:
        if isinstance(value, float | int):
            return float(value)
        try:
            return parse_duration(str(value))
        except ValueError as err:
            self.fail(str(err), param, ctx)


DURATION = Duration()
