"""`dispatchq sim`: run nomadsim, the development Nomad server, in the foreground."""

from __future__ import annotations

import argparse
from typing import Any

import click

from dispatchq.cli.options import PASSTHROUGH


@click.command(
    "sim",
    context_settings=PASSTHROUGH,
    short_help="run nomadsim, a Nomad-compatible development server",
)
@click.argument("sim_args", nargs=-1, type=click.UNPROCESSED)
def command(**options: Any) -> int:
    """Run nomadsim in the foreground; the arguments are nomadsim's own (see `dispatchq sim
    -- --help`)."""
    return run(argparse.Namespace(**options))


def run(args: argparse.Namespace) -> int:
    from dispatchq.nomadsim.__main__ import main  # noqa: PLC0415  (the server is only loaded here)

    sim_args = [a for a in args.sim_args if a != "--"]
    return main(sim_args)
