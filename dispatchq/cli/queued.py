"""The queued path of `dispatchq job dispatch`: enqueue, await the worker's outcome, replay.

The worker records the whole transcript of events in the outcome, so replaying it prints
exactly the lines the direct path prints, with the same exit code. Only the request travels
through the queue: the workers use their own Nomad address and token (NOMAD_* in their
environment); a token given on this command line is never put in a queue message.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable
from typing import Any

from dispatchq.config.settings import load_settings
from dispatchq.core.outcome import DISPATCHED, Outcome, Timings
from dispatchq.core.request import DispatchRequest
from dispatchq.core.transcript import Event
from dispatchq.producer.api import Producer
from dispatchq.producer.enqueue import NewRequest
from dispatchq.store import keys
from dispatchq.store.liveness import live_workers
from dispatchq.store.messages import new_request_id
from dispatchq.store.records import with_record
from dispatchq.store.results import outcome_from_meta
from dispatchq.tracker.progress import changes, final_line


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
    on_line: Callable[[str], None] | None = None,
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
        fields["request_id"] = request_id = _request_id(idempotency_token) or new_request_id()
        if request.follows_child and not detach and on_line is not None:
            with producer.redis.pubsub(ignore_subscribe_messages=True) as pubsub:
                # subscribed before the enqueue: no change and no outcome can be missed
                pubsub.subscribe(keys.progress(request_id), keys.celery_result(request_id))
                producer.enqueuer.enqueue([NewRequest(payload=payload, **fields)])
                outcome = _follow_queued(producer, pubsub, request_id, on_event, on_line)
            return outcome, request_id
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


def _follow_queued(
    producer: Producer,
    pubsub: Any,
    request_id: str,
    on_event: Callable[[Event], None],
    on_line: Callable[[str], None],
) -> Outcome:
    """`-wait` through the queue: the seed's lines once the worker handed the request to
    the tracker (the record's outcome so far), then a line per change the tracker
    publishes, then the final line once the outcome is stored (and published)."""
    seed: Outcome | None = None
    view: dict[str, Any] | None = None
    views: list[dict[str, Any]] = []
    outcome: Outcome | None = None
    status = producer.result(request_id)  # a repeat of a request already done
    if status.outcome is not None:
        outcome = status.outcome
    while outcome is None:
        message = pubsub.get_message(timeout=1.0)
        if message is not None and message.get("type") == "message":
            channel = message["channel"].decode()
            data = json.loads(message["data"])
            if channel == keys.progress(request_id):
                views.append(data)
            else:
                outcome = outcome_from_meta(data)
        if seed is None:
            partial = producer.records.load_partial(request_id)
            record = producer.result(request_id).record
            if partial and record is not None:
                seed = Outcome.from_stored(with_record(partial, record))
                for event in seed.events:
                    on_event(event)
        if seed is not None:
            for current in views:
                for line in changes(view, current):
                    on_line(line)
                view = current
            views.clear()
    if seed is None:
        for event in outcome.events:
            on_event(event)
    if outcome.child is not None:
        for line in changes(view, outcome.child):
            on_line(line)
        on_line(final_line(outcome, outcome.dispatched_job_id or ""))
    return outcome
