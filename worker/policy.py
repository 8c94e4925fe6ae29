"""The retry policy of every dispatchq task, in one base class.

A task body raises a retryable error (`error.retryable` is true: Nomad unreachable, 429,
a 5xx that is not a validation text, monitoring interrupted); the policy retries it through
Celery with bounded exponential backoff (floor, cap, jitter), which frees the worker slot
while it waits. When the retries are spent, the request ends with an exit-1 outcome that
names the last error, instead of a task failure.

Redis not answering (a restart, a failover) is retried the same way but without a budget:
giving up would store an error outcome for a request that merely waited out an outage, and
the write-ahead record makes every retry safe. While Redis is down even a retry cannot
be published; the message is then handed back for redelivery (`_retry`).

A request held at the backpressure gate for too long (`Throttled`) is requeued at once, and
that retry is free: the message's `THROTTLED_HEADER` counts them, and they are taken off
the retries the budget sees, so a long wait for capacity never ends a request.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from typing import TypeVar

import redis
import structlog
from celery import Task
from celery.exceptions import Reject, Retry

from dispatchq.core.retry import RetryPolicy
from dispatchq.errors import DispatchqError, Throttled
from dispatchq.worker.runtime import runtime

T = TypeVar("T")
log = structlog.get_logger(__name__)

THROTTLED_HEADER = "dispatchq_throttled"


def task_policy() -> RetryPolicy:
    settings = runtime().settings
    return RetryPolicy(
        attempts=settings.retry_max + 1, floor=settings.retry_floor, cap=settings.retry_cap
    )


class PolicyTask(Task):  # type: ignore[type-arg]
    """Base class: `self.with_retries(body, give_up)`."""

    abstract = True
    max_retries = None  # the budget is counted here, not by Celery

    @property
    def throttled(self) -> int:
        """The free requeues of this request so far (`THROTTLED_HEADER`)."""
        return int(getattr(self.request, THROTTLED_HEADER, None) or 0)

    @property
    def retries_spent(self) -> int:
        """The retries that count against the budget."""
        return int(self.request.retries) - self.throttled

    def with_retries(self, body: Callable[[], T], give_up: Callable[[DispatchqError], T]) -> T:
        try:
            return body()
        except Throttled as err:
            log.info("request.throttled", requeues=self.throttled + 1, reason=str(err))
            jitter = random.uniform(0.5, 2.0)  # noqa: S311  (spreads requeues, not a secret)
            raise self._retry(err, jitter, self.throttled + 1) from err
        except (redis.ConnectionError, redis.TimeoutError) as err:
            countdown = task_policy().delay(self.retries_spent + 1)
            raise self._retry(err, countdown, self.throttled) from err
        except DispatchqError as err:
            if not getattr(err, "retryable", False):
                raise
            policy = task_policy()
            done = self.retries_spent
            if done >= policy.retries:
                return give_up(err)
            raise self._retry(err, policy.delay(done + 1), self.throttled) from err

    def _retry(self, err: Exception, countdown: float, throttled: int) -> Retry:
        """Celery's retry, published now. A retry that cannot be published (Redis away)
        becomes Celery's `Reject(requeue=False)`, which would store a failure and drop the
        message: the message is handed back instead (`Reject(requeue=True)`), or, should
        even that fail, stays in the worker's in-flight list until its channel closes or
        its lease lapses (`dispatchq.broker.fetch`)."""
        try:
            return self.retry(
                exc=err,
                countdown=countdown,
                max_retries=None,
                headers={THROTTLED_HEADER: str(throttled)},
                throw=False,
            )
        except Reject as unpublished:
            log.warning("request.retry_not_published", error=str(unpublished)[:200])
            raise Reject(err, requeue=True) from unpublished
