"""`dispatchq notifier`: POST completion events to their notify_url
(`dispatchq.notifier.webhooks`)."""

from __future__ import annotations

import argparse
from typing import Any

import click

from dispatchq.config.settings import load_settings
from dispatchq.notifier.main import serve


@click.command(
    "notifier",
    short_help="deliver completion events to their webhooks (notify_url), signed, retried",
)
@click.option("--threads", type=int, default=8, show_default=True, help="POSTs at once.")
@click.option("--max-pending", type=int, default=1_000, show_default=True,
              help="Events held in memory at most (posting or waiting to retry).")
@click.option("--claim-idle", type=float, default=60.0, show_default=True,
              help="Seconds after which a dead notifier's unacknowledged events are taken over.")
def command(**options: Any) -> int:
    """Read the completion event stream (DISPATCHQ_EVENTS_STREAM) in the consumer group
    dispatchq-notifier and POST every event that names a notify_url to it, signed with
    DISPATCHQ_NOTIFY_SECRET, to hosts in DISPATCHQ_NOTIFY_HOSTS only; retried for
    DISPATCHQ_NOTIFY_RETRY_FOR seconds, then dead-lettered. Run one or more anywhere; they
    share the work."""
    return run(argparse.Namespace(**options))


def run(args: argparse.Namespace) -> int:
    return serve(load_settings(), threads=args.threads, max_pending=args.max_pending,
                 claim_idle=args.claim_idle)  # fmt: skip
