"""`dispatchq notifier`: POST completion events to their notify_url
(`dispatchq.notifier.webhooks`)."""

from __future__ import annotations

import argparse
import os
import signal
import socket
import sys
import threading
from typing import Any

import redis

from dispatchq.config.logging import configure_logging, register_secrets
from dispatchq.config.settings import load_settings
from dispatchq.notifier.webhooks import Notifier, NotifyPolicy


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
    settings = load_settings()
    register_secrets(settings.secrets)
    configure_logging(settings.log_format, settings.log_level)
    if not settings.events_stream:
        print("Error: DISPATCHQ_EVENTS_STREAM is empty: no events to deliver", file=sys.stderr)
        return 1
    if args.threads < 1 or args.max_pending < 1 or args.claim_idle <= 0:
        print("Error: --threads and --max-pending must be >= 1, --claim-idle > 0", file=sys.stderr)
        return 1
    policy = NotifyPolicy(
        hosts=frozenset(settings.notify_hosts),
        secret=settings.notify_secret.get_secret_value().encode(),
        retry_for=settings.notify_retry_for,
        timeout=settings.notify_timeout,
    )
    notifier = Notifier(
        redis.Redis.from_url(settings.redis_url.get_secret_value()),
        settings.event_stream,
        policy,
        consumer=f"{socket.gethostname()}-{os.getpid()}",
        threads=args.threads,
        max_pending=args.max_pending,
        claim_idle=args.claim_idle,
    )
    stop = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stop.set())
    print(f"notifier: following {settings.events_stream}", file=sys.stderr, flush=True)
    notifier.run(stop)
    return 0
