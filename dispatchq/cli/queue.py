"""`dispatchq queue`: the backlog per lane, tenant and batch (fair queueing,
`dispatchq.broker.fetch`)."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

import click
import redis

from dispatchq.cli.options import json_flag
from dispatchq.config.settings import load_settings
from dispatchq.store import lanes


@click.command("queue", short_help="show the backlog per lane, tenant and batch")
@json_flag
def command(**options: Any) -> int:
    """Print the messages waiting in DISPATCHQ_QUEUE's lanes: the interactive lane (requests
    in no batch, taken first) and each batch's lane, by tenant (batches take turns, tenants
    take turns). Messages fetched by a worker and not yet finished are not waiting. Exit
    code 1 if Redis cannot be read."""
    return run(argparse.Namespace(**options))


def run(args: argparse.Namespace) -> int:
    settings = load_settings()
    try:
        client = settings.redis.client(socket_timeout=5)
        backlog = lanes.backlog(client, settings.queue)
    except redis.RedisError as err:
        print(f"Error reading the queue: {err}", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps({"queue": settings.queue, **backlog.to_json()}))
        return 0
    print(f"Queue {settings.queue}: {backlog.total} waiting")
    print(f"{'lane':<12} {'tenant':<20} {'batch':<36} {'waiting':>9}")
    print(f"{lanes.INTERACTIVE:<12} {'':<20} {'':<36} {backlog.interactive:>9}")
    for tenant, batches in sorted(backlog.batches.items()):
        for batch_id, waiting in sorted(batches.items()):
            print(f"{'batch':<12} {tenant:<20} {batch_id:<36} {waiting:>9}")
    for tenant, waiting in sorted(backlog.tenants.items()):
        print(f"{'tenant':<12} {tenant:<20} {'(all its batches)':<36} {waiting:>9}")
    return 0
