"""`dispatchq health`: is a worker consuming the queue? The worker containers' healthcheck."""

from __future__ import annotations

import argparse
import socket
import sys
from typing import Any

import click
import redis

from dispatchq.config.settings import load_settings
from dispatchq.store import keys
from dispatchq.store.liveness import live_workers


@click.command("health", short_help="exit 0 if a worker consumes the queue (a healthcheck)")
@click.option("--local", is_flag=True, help="Only workers on this host (by hostname).")
@click.option("--tracker", is_flag=True,
              help="Instead: exit 0 if a `dispatchq tracker` holds the lease (follows children).")
def command(**options: Any) -> int:
    """Print the workers heard from on DISPATCHQ_QUEUE and exit 0 if there is one, 1 if
    there is none or Redis cannot be read (each worker beats into Redis every second and
    counts for 15 s). With --local only the workers of this host count (Celery names a
    worker <name>@<hostname>): the healthcheck of a worker's container."""
    return run(argparse.Namespace(**options))


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
    with settings.redis.client() as client:
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
