"""`dispatchq health`: is a worker consuming the queue? The worker containers' healthcheck."""

from __future__ import annotations

import argparse
import socket
import sys
from typing import Any

import redis

from dispatchq.config.settings import load_settings
from dispatchq.store import keys
from dispatchq.store.liveness import live_workers


def register(commands: Any) -> None:
    parser: argparse.ArgumentParser = commands.add_parser(
        "health",
        help="exit 0 if a worker consumes the queue (a healthcheck)",
        description="Print the workers heard from on DISPATCHQ_QUEUE (each beats into Redis "
        f"every {keys.WORKER_BEAT:g} s and counts for {keys.WORKER_TTL} s) and exit 0 if "
        "there is one, 1 if there is none or Redis cannot be read. With --local only the "
        "workers of this host count (Celery names a worker <name>@<hostname>): the "
        "healthcheck of a worker's container.",
    )
    parser.add_argument(
        "--local", action="store_true", help="only workers on this host (by hostname)"
    )
    parser.add_argument(
        "--tracker",
        action="store_true",
        help="instead: exit 0 if a `dispatchq tracker` holds the lease (follows children)",
    )
    parser.set_defaults(handler=run)


def _tracker(client: redis.Redis) -> int:
    holder, left = client.get(keys.TRACKER_LEASE), client.pttl(keys.TRACKER_LEASE)
    if not holder:
        print("No tracker holds the lease: children of `until` finished requests wait "
              "(start `dispatchq tracker`)", file=sys.stderr)  # fmt: skip
        return 1
    followed = client.zcard(keys.FOLLOW)
    name = holder.decode() if isinstance(holder, bytes) else str(holder)
    print(f"{name} leads ({left} ms left on its lease), {followed} children followed")
    return 0


def run(args: argparse.Namespace) -> int:
    settings = load_settings()
    with redis.Redis.from_url(settings.redis_url.get_secret_value()) as client:
        if args.tracker:
            return _tracker(client)
        workers = live_workers(client, settings.queue)
    if args.local:
        # Celery's default: socket.gethostname(), also behind a worker's %h.
        suffix = f"@{socket.gethostname()}"
        workers = [name for name in workers if name.endswith(suffix)]
    where = " on this host" if args.local else ""
    if not workers:
        print(f'No worker consumes queue "{settings.queue}"{where}', file=sys.stderr)
        return 1
    for name in sorted(workers):
        print(name)
    return 0
