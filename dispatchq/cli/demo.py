"""`dispatchq demo`: the one-command tour on an embedded local stack."""

from __future__ import annotations

import argparse
from typing import Any


def register(commands: Any) -> None:
    demo: argparse.ArgumentParser = commands.add_parser(
        "demo",
        help="run a real fan-out on an embedded redis-server, nomadsim and worker",
        description="Start a private redis-server, nomadsim with a `video-encode` "
        "parameterized job and a worker on loopback ports, dispatch encode requests with a "
        "live progress bar, print the outcomes, and stop everything (Ctrl-C included).",
    )
    demo.add_argument("--count", type=int, default=1000, help="requests to fan out")
    demo.add_argument("--workers", type=int, default=1, help="worker processes")
    demo.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from dispatchq.devstack.demo import run_demo  # noqa: PLC0415  (rich and the stack load only here)

    return run_demo(args.count, args.workers)
