"""`dispatchq flower`: Celery's Flower monitoring dispatchq's workers."""

from __future__ import annotations

import argparse
import importlib.util
import os
import sys
from typing import Any

import click

from dispatchq.cli.options import PASSTHROUGH


@click.command(
    "flower",
    context_settings=PASSTHROUGH,
    short_help="run Flower (Celery's monitor) on dispatchq's queue, workers and outcomes",
)
@click.argument("flower_args", nargs=-1, type=click.UNPROCESSED)
def command(**options: Any) -> int:
    """Run Flower in the foreground with dispatchq's broker, queue and result backend
    (DISPATCHQ_REDIS_URL, DISPATCHQ_QUEUE). Arguments after `--` go to Flower (e.g. --
    --port=5555 --address=127.0.0.1). Workers show their tasks when they send task events:
    `dispatchq worker -- -E` (dispatchq dev and the demo do)."""
    return run(argparse.Namespace(**options))


def run(args: argparse.Namespace) -> int:
    if importlib.util.find_spec("flower") is None:
        raise SystemExit(  # exit code 1, the message on stderr
            "Flower is not installed: pip install 'dispatchq[flower]' (or: pip install flower)"
        )
    extra = [a for a in args.flower_args if a != "--"]
    argv = [sys.executable, "-m", "celery", "-A", "dispatchq.broker.flower", "flower", *extra]
    os.execv(sys.executable, argv)  # noqa: S606  (replaces this process with Flower)
