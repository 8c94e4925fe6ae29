"""`dispatchq notifier`: POST completion events to their notify_url
(`dispatchq.notifier.webhooks`)."""

from __future__ import annotations

import argparse
from typing import Any

from dispatchq.config.settings import load_settings
from dispatchq.notifier.main import serve


def register(commands: Any) -> None:
    parser: argparse.ArgumentParser = commands.add_parser(
        "notifier",
        help="deliver completion events to their webhooks (notify_url), signed, retried",
        description="Read the completion event stream (DISPATCHQ_EVENTS_STREAM) in the "
        "consumer group dispatchq-notifier and POST every event that names a notify_url "
        "to it, signed with DISPATCHQ_NOTIFY_SECRET, to hosts in DISPATCHQ_NOTIFY_HOSTS "
        "only; retried for DISPATCHQ_NOTIFY_RETRY_FOR seconds, then dead-lettered. Run "
        "one or more anywhere; they share the work.",
    )
    parser.add_argument("--threads", type=int, default=8, help="POSTs at once (default 8)")
    parser.add_argument(
        "--max-pending", type=int, default=1_000,
        help="events held in memory at most (posting or waiting to retry; default 1000)",
    )  # fmt: skip
    parser.add_argument(
        "--claim-idle", type=float, default=60.0,
        help="seconds after which a dead notifier's unacknowledged events are taken over",
    )  # fmt: skip
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    return serve(load_settings(), threads=args.threads, max_pending=args.max_pending,
                 claim_idle=args.claim_idle)  # fmt: skip
