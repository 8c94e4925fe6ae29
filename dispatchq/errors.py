"""The project's error hierarchy, and the classification of Nomad's answers.

Nomad answers most dispatch validation failures with HTTP 500 and a plain-text body, so a
500 is only retryable when its text is not one of those validation messages (the job is
not parameterized or is stopped, the payload or meta breaks the job's rules: listed in
`_VALIDATION_TEXTS`). Every error keeps the server's message verbatim; `str(error)` is
the text the Go API client would produce, which the CLI prints after its own prefix.
"""

from __future__ import annotations

import re
from typing import ClassVar


class DispatchqError(Exception):
    """The root of every error this project raises on purpose.

    `kind` names the class of problem in outcomes and logs; `retryable` says whether
    trying again later can succeed.
    """

    kind: ClassVar[str] = "error"
    retryable: bool = False


class ConfigError(DispatchqError):
    """The connection settings cannot be turned into a client (bad address, TLS file)."""

    kind = "config"


ERROR_TEXT_MAX = 2_048
"""Characters of an error text (Nomad's, or a reason) that an outcome, its completion event
and a webhook body keep: a longer one is cut, and says so (`cut`)."""


def cut(text: str, limit: int = ERROR_TEXT_MAX) -> str:
    """`text`, or its first `limit` characters and how many more there were."""
    if len(text) <= limit:
        return text
    return f"{text[:limit]}... [{len(text) - limit} more characters cut]"


class NomadError(DispatchqError):
    """A request to Nomad failed.

    `status` is the HTTP status, or None when no HTTP answer was received (or the check
    was made locally). `maybe_applied` says whether the server may have acted on the
    request anyway; only then is replaying a write without an idempotency token unsafe.
    """

    kind = "nomad"

    def __init__(self, message: str, *, status: int | None = None) -> None:
        message = cut(message)
        super().__init__(message)
        self.message = message
        self.status = status
        self.maybe_applied = False

    def __str__(self) -> str:
        if self.status is None:
            return self.message
        return f"Unexpected response code: {self.status} ({self.message})"

    def __repr__(self) -> str:
        return f"{type(self).__name__}(status={self.status!r}, message={self.message!r})"


class PermissionDenied(NomadError):
    """403: the token does not authenticate or lacks the capability."""

    kind = "permission"


class ValidationError(NomadError):
    """The request can never succeed as sent (section 3 texts, or a local check)."""

    kind = "validation"


class BadRequest(NomadError):
    """Another 4xx (400 decode errors, 405): the request itself is malformed."""

    kind = "request"


class NotFound(NomadError):
    """404: the job, evaluation or route does not exist; also Nomad's 500 "parameterized
    job not found" for a dispatch of a job that does not exist (one kind for one cause)."""

    kind = "not_found"


class RateLimited(NomadError):
    """429: nothing was done; try again later."""

    kind = "rate_limited"
    retryable = True


class ServerError(NomadError):
    """A 5xx that is not a validation text (no leader, raft timeout, proxy errors)."""

    kind = "server"
    retryable = True


class TransportError(NomadError):
    """No HTTP answer: connection refused or reset, timeout, TLS failure."""

    kind = "transport"
    retryable = True

    def __init__(self, message: str, *, sent: bool, retryable: bool = True) -> None:
        super().__init__(message)
        self.maybe_applied = sent
        self.retryable = retryable


# -- errors of the request's path (raised outside the Nomad client) ---------------------


class WaitTimedOut(DispatchqError):
    """A request's `wait_timeout` ran out while Nomad failed (before the tracker had it)."""

    kind = "wait_timeout"


class InvalidRequest(DispatchqError, ValueError):
    """A request rejected by the producer before anything was enqueued; the message says
    why (`dispatchq.core.request`'s rules)."""

    kind = "invalid_request"


class InvalidMessage(DispatchqError):
    """A queue message that is not a valid dispatch request. Permanent."""

    kind = "invalid_request"
    retryable = False


class PayloadError(DispatchqError):
    """A payload reference that cannot be turned into bytes. Permanent."""

    kind = "payload"
    retryable = False


class Throttled(DispatchqError):
    """The request waited `max_wait` at the gate. Retryable, and free: it is requeued
    without using up one of its retries."""

    kind = "throttled"
    retryable = True


class MonitoringInterrupted(DispatchqError):
    """Nomad stopped answering while an evaluation was followed. Retryable: the retry
    resumes from the write-ahead record."""

    kind = "monitoring_interrupted"
    retryable = True

    def __init__(self, cause: NomadError) -> None:
        super().__init__(str(cause))
        self.cause = cause


class BatchCancelled(DispatchqError):
    """The request's batch was cancelled before it was dispatched. Permanent."""

    kind = "cancelled"
    retryable = False


class DeliveryCapExceeded(DispatchqError):
    """A request whose messages were delivered too many times. Permanent."""

    kind = "delivery_cap"


class NotReplicated(DispatchqError):
    """Requests are on the Redis primary, but fewer replicas than `redis_min_replicas`
    confirmed them in time: a failover now could lose them. Enqueueing them again with the
    same request IDs is safe (nothing is doubled) and waits for the replicas again.
    Raised to the producer only: never the error of an outcome."""

    kind = "store"  # Redis did not keep the write as asked


class RequestRefused(Exception):
    """A message that is not the request its ID names (another message already made that
    request, or it claims a batch it was not enqueued in): dead-lettered, and the request's
    record and outcome left alone. Outside `DispatchqError` on purpose: it never becomes
    the outcome of the request whose ID it borrowed."""


# The plain-text bodies Nomad's dispatch endpoint answers with a 500 when the request breaks
# the parameterized job's rules (its Job.Dispatch RPC). Matched anywhere in the body, as
# RPC forwarding may prefix the text (for example "rpc error: ").
_VALIDATION_TEXTS = re.compile(
    "|".join(
        (
            r"missing parameterized job ID",
            r"Specified job \".*\" is not a parameterized job",
            r"Specified job \".*\" is stopped",
            r"Payload is not provided but required by parameterized job",
            r"Payload provided but forbidden by parameterized job",
            r"Payload exceeds maximum size; \d+ > \d+",
            r"Dispatch request included unpermitted metadata keys: \[",
            r"Dispatch did not provide required meta keys: \[",
            r"dispatch job priority must be between \[",
        )
    )
)

# Section 3's text for a dispatch of a job that does not exist: permanent, like the others,
# but a missing job rather than an invalid request.
_JOB_NOT_FOUND = "parameterized job not found"

# 5xx texts produced before anything is written, so a replay cannot double a dispatch.
_NOT_APPLIED_TEXTS = ("No cluster leader", "No path to region")


def classify_http(status: int, body: str) -> NomadError:
    """The error for a non-2xx answer with this status and plain-text body."""
    error: NomadError
    if status == 403:
        error = PermissionDenied(body, status=status)
    elif status == 404:
        error = NotFound(body, status=status)
    elif status == 429:
        error = RateLimited(body, status=status)
    elif status < 500:
        error = BadRequest(body, status=status)
    elif _JOB_NOT_FOUND in body:
        error = NotFound(body, status=status)
    elif _VALIDATION_TEXTS.search(body):
        error = ValidationError(body, status=status)
    else:
        error = ServerError(body, status=status)
        error.maybe_applied = not any(text in body for text in _NOT_APPLIED_TEXTS)
    return error
