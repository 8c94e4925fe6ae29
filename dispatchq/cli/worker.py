"""`dispatchq worker`: a Celery worker consuming dispatch requests, in the foreground."""

from __future__ import annotations

import argparse
import os
import sys
from typing import Any

POOLS = ("threads", "prefork", "gevent", "solo")


def register(commands: Any) -> None:
    worker = commands.add_parser(
        "worker",
        help="run a dispatch worker (Celery) in the foreground",
        description="Run a Celery worker consuming dispatch requests. Extra arguments after "
        "`--` go to `celery worker` unchanged.",
    )
    worker.add_argument(
        "--pool",
        choices=POOLS,
        default="gevent",
        help="execution pool (default gevent: a request waiting on Nomad costs a greenlet, "
        "not a thread or a process)",
    )
    worker.add_argument(
        "--concurrency", "-c", type=int, default=1000, help="requests in flight per process"
    )
    worker.add_argument("--loglevel", default="INFO", help="Celery's own log level")
    worker.add_argument("celery_args", nargs=argparse.REMAINDER, help="more `celery worker` args")
    worker.set_defaults(handler=run_worker)


def run_worker(args: argparse.Namespace) -> int:
    extra = [a for a in args.celery_args if a != "--"]
    argv = [
        sys.executable, "-m", "celery", "-A", "dispatchq.worker", "worker",
        "--pool", args.pool, "--concurrency", str(args.concurrency),
        "--loglevel", args.loglevel, *extra,
    ]  # fmt: skip
    os.execv(sys.executable, argv)  # noqa: S606  (replaces this process with the worker)
