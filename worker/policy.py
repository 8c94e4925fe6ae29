"""The retry policy of every dispatchq task, in one base class.

A task body raises a retryable error (`error.retryable` is true: Nomad unreachable, 429,
a 5xx that is not a validation text, monitoring interrupted); the policy retries it through
Celery with bounded exponential backoff (floor, cap, jitter), which frees the worker slot
while it waits. When the retries are spent, the request ends with an exit-1 outcome that
names the last error, instead of a task failure.

Redis not answering (a restart, a failover) is retried the same way but without a budget:
giving up would store an error outcome for a request that merely waited out an outage, and
the write-ahead record makes every retry safe. While Redis is down even the retry cannot
be published; the message is then rejected for redelivery (or, if even that fails, stays
unacknowledged and comes back after the visibility timeout).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

import redis
from celery import Task
from celery.exceptions import Reject
from kombu.exceptions import OperationalError

from dispatch.errors import DispatchqError
from dispatch.retry import RetryPolicy
from worker.runtime import runtime

T = TypeVar("T")


def task_policy() -> RetryPolicy:
    settings = runtime().settings
    return RetryPolicy(
        attempts=settings.retry_max + 1, floor=settings.retry_floor, cap=settings.retry_cap
    )


class PolicyTask(Task):  # type: ignore[type-arg]
    """Base class: `self.with_retries(body, give_up)`."""

    abstract = True

    def with_retries(self, body: Callable[[], T], give_up: Callable[[DispatchqError], T]) -> T:
        try:
            return body()
        except (redis.ConnectionError, redis.TimeoutError) as err:
            countdown = task_policy().delay(self.request.retries + 1)
            try:
                retry = self.retry(exc=err, countdown=countdown, max_retries=None, throw=False)
            except (redis.RedisError, OperationalError) as publish_err:
                # Redis is still away: hand the message back (or leave it unacknowledged)
                # rather than store a failure.
                raise Reject(err, requeue=True) from publish_err
            raise retry from err
        except DispatchqError as err:
            if not getattr(err, "retryable", False):
                raise
            policy = task_policy()
            done = self.request.retries
            if done >= policy.retries:
                return give_up(err)
            raise self.retry(
                exc=err, countdown=policy.delay(done + 1), max_retries=policy.retries
            ) from err
