"""The queued path of `dispatchq job dispatch`: enqueue, await the worker's outcome, replay.

The worker records the whole transcript of events in the outcome, so replaying it prints
exactly the lines the direct path prints, with the same exit code. Only the request travels
through the queue: the workers use their own Nomad address and token (NOMAD_* in their
environment); a token given on this command line is never put in a queue message.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable

from config.settings import load_settings
from dispatch.events import Event
from dispatch.liveness import live_workers
from dispatch.outcome import DISPATCHED, Outcome, Timings
from dispatch.request import DispatchRequest
from producer.api import Producer
from producer.enqueue import NewRequest


class NoWorker(Exception):
    """Nothing consumes the queue, so a request would wait forever."""


def _request_id(token: str | None) -> str | None:
    """A user's idempotency token makes the request ID stable, so a repeat is one request."""
    return f"cli-{token}" if token else None


def dispatch_queued(
    request: DispatchRequest,
    *,
    payload: bytes | None,
    idempotency_token: str | None,
    on_event: Callable[[Event], None],
) -> tuple[Outcome, str]:
    """Enqueue `request` (as yet unvalidated: the producer validates it, and its ID is made
    from the idempotency token, or new) and, unless detached, wait for its outcome and
    replay it.

    Returns the outcome and the request ID. Raises NoWorker when no worker has sent a
    heartbeat recently and the caller would have to wait (not detached)."""
    job_id, detach = request.job_id, request.detach
    with Producer(load_settings()) as producer:
        workers = live_workers(producer.redis, producer.settings.queue)
        if not workers and not detach:
            raise NoWorker(
                f'no dispatchq worker is consuming queue "{producer.settings.queue}"; '
                "start one with `dispatchq worker`, or use -direct (dispatch from here) or "
                "-detach (enqueue and return)"
            )
        # -detach returns once the request is queued; the worker still follows it, so
        # that `dispatchq status` and `wait` report how the evaluation ended.
        fields = request.model_dump(exclude={"v", "request_id", "detach"})
        fields["request_id"] = _request_id(idempotency_token)
        [(request_id, _)] = producer.enqueuer.enqueue([NewRequest(payload=payload, **fields)])
        if detach:
            if not workers:
                print(
                    f'Warning: no worker is consuming queue "{producer.settings.queue}" '
                    "yet; the request waits until one starts",
                    file=sys.stderr,
                )
            return Outcome(DISPATCHED, job_id, Timings(started_at=time.time())), request_id
        try:
            status = producer.wait([request_id])[request_id]
        except KeyboardInterrupt:
            print(
                f"Request {request_id} stays queued: `dispatchq status {request_id}`",
                file=sys.stderr,
            )
            raise
    assert status.outcome is not None  # wait() without a timeout returns only when done
    for event in status.outcome.events:
        on_event(event)
    return status.outcome, request_id
