"""`dispatchq tracker`: follow every child of an `until` finished request to its end.

Runs `dispatchq.tracker.main.serve`: Prometheus metrics on DISPATCHQ_METRICS_PORT, stops on
SIGTERM. Run one or more: one leads, the others stand by.
"""

from __future__ import annotations

import argparse
from typing import Any

import click

from dispatchq.cli.options import DURATION
from dispatchq.config.settings import load_settings
from dispatchq.tracker.follower import FollowPolicy


@click.command(
    "tracker",
    short_help="follow dispatched children to their end (requests with until=finished)",
)
@click.option("--sweep", type=DURATION, default=FollowPolicy.sweep, show_default=True,
              help="Time between forced checks of a child no event woke (90s, 5m); longer "
                   "past 30,000 children (at most 100 forced checks a second).")
@click.option("--unreachable-after", type=DURATION, default=FollowPolicy.unreachable_after,
              show_default=True,
              help="How long Nomad may fail a child's reads before it ends as unreachable.")
def command(**options: Any) -> int:
    """Follow every child of an `until` finished request to its end: metrics on
    DISPATCHQ_METRICS_PORT, stops on SIGTERM. Run one or more: one leads, the others stand
    by."""
    return run(argparse.Namespace(**options))


def run(args: argparse.Namespace) -> int:
    from dispatchq.tracker.main import serve  # noqa: PLC0415  (the [worker] extra's)

    policy = FollowPolicy(sweep=args.sweep, unreachable_after=args.unreachable_after)
    return serve(load_settings(), policy)
