"""A notifier process: reads the completion event stream in the group dispatchq-notifier and
POSTs each event that names a notify_url (`webhooks`), until SIGTERM (`dispatchq notifier`)."""

from __future__ import annotations

import os
import signal
import socket
import sys
import threading

from dispatchq.config.logging import configure_logging, register_secrets
from dispatchq.config.settings import Settings
from dispatchq.notifier.webhooks import Notifier, NotifyPolicy


def serve(settings: Settings, *, threads: int, max_pending: int, claim_idle: float) -> int:
    """Run a notifier until SIGTERM or SIGINT: `dispatchq notifier`."""
    register_secrets(settings.secrets)
    configure_logging(settings.log_format, settings.log_level)
    if not settings.events_stream:
        print("Error: DISPATCHQ_EVENTS_STREAM is empty: no events to deliver", file=sys.stderr)
        return 1
    if threads < 1 or max_pending < 1 or claim_idle <= 0:
        print("Error: --threads and --max-pending must be >= 1, --claim-idle > 0", file=sys.stderr)
        return 1
    policy = NotifyPolicy(
        hosts=frozenset(settings.notify_hosts),
        secret=settings.notify_secret.get_secret_value().encode(),
        retry_for=settings.notify_retry_for,
        timeout=settings.notify_timeout,
    )
    notifier = Notifier(
        settings.redis.client(),
        settings.event_stream,
        policy,
        consumer=f"{socket.gethostname()}-{os.getpid()}",
        threads=threads,
        max_pending=max_pending,
        claim_idle=claim_idle,
    )
    stop = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stop.set())
    print(f"notifier: following {settings.events_stream}", file=sys.stderr, flush=True)
    notifier.run(stop)
    return 0
