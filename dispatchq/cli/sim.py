"""`dispatchq sim`: run nomadsim, the development Nomad server, in the foreground."""

from __future__ import annotations

import argparse
from typing import Any


def register(commands: Any) -> None:
    parser: argparse.ArgumentParser = commands.add_parser(
        "sim",
        help="run nomadsim, a Nomad-compatible development server",
        description="Run nomadsim in the foreground; the arguments are nomadsim's own "
        "(see `dispatchq sim -- --help`).",
    )
    parser.add_argument("sim_args", nargs=argparse.REMAINDER, help="arguments for nomadsim")
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from dispatchq.nomadsim.__main__ import main  # noqa: PLC0415  (the server is only loaded here)

    sim_args = [a for a in args.sim_args if a != "--"]
    return main(sim_args)
