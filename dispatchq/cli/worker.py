"""`dispatchq worker`: a Celery worker consuming dispatch requests, in the foreground."""

from __future__ import annotations

import argparse
import os
import sys
from typing import Any

import click

from dispatchq.cli.options import PASSTHROUGH

POOLS = ("threads", "prefork", "gevent", "solo")


@click.command(
    "worker",
    context_settings=PASSTHROUGH,
    short_help="run a dispatch worker (Celery) in the foreground",
)
@click.option("--pool", type=click.Choice(POOLS), default="gevent", show_default=True,
              help="Execution pool (gevent: a request waiting on Nomad costs a greenlet, not a "
              "thread or a process).")
@click.option("--concurrency", "-c", type=int, default=1000, show_default=True,
              help="Requests in flight per process.")
@click.option("--loglevel", default="INFO", show_default=True, help="Celery's own log level.")
@click.argument("celery_args", nargs=-1, type=click.UNPROCESSED)
def command(**options: Any) -> int:
    """Run a Celery worker consuming dispatch requests. Arguments after `--` go to `celery
    worker` unchanged."""
    return run_worker(argparse.Namespace(**options))


def run_worker(args: argparse.Namespace) -> int:
    extra = [a for a in args.celery_args if a != "--"]
    argv = [
        sys.executable, "-m", "celery", "-A", "dispatchq.worker", "worker",
        "--pool", args.pool, "--concurrency", str(args.concurrency),
        "--loglevel", args.loglevel, *extra,
    ]  # fmt: skip
    os.execv(sys.executable, argv)  # noqa: S606  (replaces this process with the worker)
