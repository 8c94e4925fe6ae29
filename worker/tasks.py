"""The dispatch task: validate the message, run the request, store the outcome.

Thin on purpose: the work is `dispatchq.core.service`, the retries are `dispatchq.worker.policy`.
The
outcome is stored in the format and place of Celery's Redis result backend (under the
request ID), by the service, in the same step as the request is marked done
(`dispatchq.worker.runtime` hands it the backend's encoding): one round trip where Celery's own
store would be a second. So the task then tells Celery not to store its return value
(`ignore_result` on this request, read by Celery once the task returns); retries and
failures Celery stores as ever, and so does it the outcome of a message that is not a
valid request.
"""

from __future__ import annotations

from typing import Any

import redis
import structlog
from celery.exceptions import TimeLimitExceeded
from redis.exceptions import NoScriptError

from dispatchq.broker.app import TASK_DISPATCH
from dispatchq.broker.deadletter import dead_letter
from dispatchq.core.outcome import Outcome
from dispatchq.core.request import DispatchRequest, InvalidMessage, request_digest
from dispatchq.core.service import HANDED_OFF, fail_message, failed_outcome
from dispatchq.errors import DispatchqError, RequestRefused
from dispatchq.worker.app import app
from dispatchq.worker.policy import PolicyTask
from dispatchq.worker.runtime import runtime

log = structlog.get_logger(__name__)


# Celery reprs every return value (for the task-succeeded event, what Flower shows), up to
# this many characters: the summary (status, exit code, IDs) fits, the transcript after it
# is not worth 3-5 % of a worker's CPU.
RESULT_REPR_CHARS = 256
SUMMARY = ("exit_code", "status", "error_kind", "timings")
"""What the task returns of an outcome it stored (see `stored` below): what Flower shows as
the task's result, the exit code first. A refused dispatch is a task that succeeded (its
answer is stored; Celery's FAILURE would make a Celery client's `.get()` raise instead of
returning the outcome), so Flower's state column says SUCCESS and its result column says
`'exit_code': 1`."""


HANDED = "handed_off"
"""What the task returns (Flower's result column) for an `until` finished request whose
evaluation is done: the tracker follows its child and stores the outcome."""


class DispatchTask(PolicyTask):
    """The dispatch task's class. A run that Celery itself ends in a failure (its hard time
    limit, an error no code path expected) ends the request too, with an exit-1 outcome
    through its record, so that its batch counts it and its completion event goes out:
    Celery alone would store a FAILURE result and leave the record as it was, so the batch
    would never finish. Nothing is written for a request that is done already, or for a
    message that is not the request its ID names."""

    abstract = True

    def on_failure(
        self, exc: Exception, task_id: str, args: Any, kwargs: Any, einfo: Any
    ) -> None:
        if isinstance(exc, TimeLimitExceeded):
            reason = (f"ran longer than the task time limit ({exc.args[0] if exc.args else '?'} "
                      "s, DISPATCHQ_TASK_TIME_LIMIT)")  # fmt: skip
        else:
            reason = f"the worker's task failed: {type(exc).__name__}: {exc}"
        service = runtime().service
        given = kwargs if isinstance(kwargs, dict) else None
        try:
            fail_message(service.records, service.results, task_id, kind="internal",
                         reason=reason, kwargs=given)  # fmt: skip
        except redis.RedisError as err:  # Celery's FAILURE result stands; logged
            log.error("request.failure_not_recorded", error=str(err)[:200])


@app.task(name=TASK_DISPATCH, bind=True, base=DispatchTask, resultrepr_maxsize=RESULT_REPR_CHARS)
def dispatch(self: DispatchTask, *args: Any, **kwargs: Any) -> dict[str, Any]:
    """Dispatch one request and follow it; returns the outcome's `SUMMARY` (the outcome in
    its stored form for a message that is not a valid request)."""
    structlog.contextvars.clear_contextvars()
    rt = runtime()
    task_id = self.request.id
    structlog.contextvars.bind_contextvars(request_id=task_id, job_id=kwargs.get("job_id"))
    try:
        request = DispatchRequest.from_message(args, kwargs, task_id)
    except InvalidMessage as err:
        dead_letter(rt.redis, reason=str(err), task_id=task_id, args=args, kwargs=kwargs)
        # Its exit-1 outcome, through the record (counted in its batch), unless the record
        # says this message is not that request (`request_digest`).
        self.request.ignore_result = True
        if task_id:
            service = rt.service
            fail_message(service.records, service.results, task_id,
                         kind=err.kind, reason=str(err), kwargs=kwargs)  # fmt: skip
        job_id = kwargs.get("job_id") if isinstance(kwargs.get("job_id"), str) else ""
        return failed_outcome(job_id or "", err).to_stored()

    def stored(outcome: Outcome) -> dict[str, Any]:
        self.request.ignore_result = True  # the service stored it (see the docstring)
        # What Celery reprs on every success (slowly), and `dispatchq.worker.metrics` counts.
        form = outcome.to_stored()
        summary = {key: form[key] for key in SUMMARY if key in form}
        if request.follows_child and outcome.status in HANDED_OFF:
            # not an outcome yet: the tracker stores it when the child ends
            summary = {"status": HANDED, "timings": form["timings"]}
        return summary

    def run() -> dict[str, Any]:
        try:
            return stored(rt.service.run(request, digest=request_digest(kwargs)))
        except RequestRefused as err:  # not this request: its record and outcome untouched
            self.request.ignore_result = True
            dead_letter(rt.redis, reason=str(err), kind="conflict", task_id=task_id,
                        kwargs=kwargs)  # fmt: skip
            return {"refused": str(err)}
        except (redis.ReadOnlyError, NoScriptError) as err:
            # A failover under way, or Redis restarted between loading a script and running
            # it (its script cache starts empty): retried like an outage.
            raise redis.ConnectionError(str(err)) from err
        except (redis.ResponseError, redis.DataError) as err:
            # Redis refused a command of this request (a key of another type, a script
            # error): not worth a retry. Dead-lettered (replayable) with an exit-1 outcome
            # where one can be stored; the worker goes on.
            return refused_by_redis(err)

    def refused_by_redis(err: Exception) -> dict[str, Any]:
        reason = f"Redis refused a command of this request: {str(err)[:300]}"
        log.error("request.store_error", error=reason)
        self.request.ignore_result = True
        dead_letter(rt.redis, reason=reason, kind="store", task_id=task_id, kwargs=kwargs)
        service = rt.service
        try:
            fail_message(service.records, service.results, request.request_id, kind="store",
                         reason=reason, kwargs=kwargs)  # fmt: skip
        except (redis.ResponseError, redis.DataError) as again:
            log.error("request.outcome_not_stored", error=str(again)[:200])
        return {"refused": reason}

    def give_up(err: DispatchqError) -> dict[str, Any]:
        log.error("request.gave_up", retries=self.retries_spent, error=str(err))
        return stored(rt.service.give_up(request, err, self.retries_spent))

    return self.with_retries(run, give_up)
