"""`dispatchq tracker`: follow every child of an `until` finished request to its end.

Runs `dispatchq.tracker.main.serve`: Prometheus metrics on DISPATCHQ_METRICS_PORT, stops on
SIGTERM. Run one or more: one leads, the others stand by.
"""

from __future__ import annotations

import argparse
from typing import Any

from dispatchq.config.settings import load_settings
from dispatchq.tracker.follower import FollowPolicy


def register(commands: Any) -> None:
    parser = commands.add_parser(
        "tracker",
        help="follow dispatched children to their end (requests with until=finished)",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--sweep", type=float, default=FollowPolicy.sweep,
        help="seconds between forced checks of a child no event woke (default %(default)s)",
    )  # fmt: skip
    parser.add_argument(
        "--unreachable-after", type=float, default=FollowPolicy.unreachable_after,
        help="seconds of Nomad failing a child's reads before it ends as unreachable "
        "(default %(default)s)",
    )  # fmt: skip
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from dispatchq.tracker.main import serve  # noqa: PLC0415  (the [worker] extra's)

    policy = FollowPolicy(sweep=args.sweep, unreachable_after=args.unreachable_after)
    return serve(load_settings(), policy)
