"""One dispatch request, start to finish, as a worker runs it (no Celery here).

The path: load the request record; if it already names a dispatched job (a redelivery after
a crash), resume monitoring; otherwise resolve the payload, dispatch with the request's
idempotency token, write the job and eval IDs to the record at once, then follow the
evaluation. With a gate (`dispatchq.core.backpressure`) the dispatch first waits its turn under
the shared rate and the per-job cap, and exhausted resources slow the rate down (so does
a 429, through the client's hook). Permanent errors become an outcome with exit code 1.
Retryable errors (Nomad unreachable, 429, 5xx) are raised as they are, for the task's
retry policy; since the record and the token survive, a retry never dispatches a second
child.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

import structlog

from dispatchq.core.backpressure import DispatchGate, resources_exhausted
from dispatchq.core.evalfeed import EvaluationFeed, FeedReader
from dispatchq.core.monitor import DEFAULT_WAIT, Dispatcher, EvaluationReader, follow
from dispatchq.core.outcome import COMPLETE, DISPATCHED, PLACEMENT_FAILED, Outcome, OutcomeRecorder
from dispatchq.core.request import UNREADABLE, DispatchRequest, is_request_id, request_digest
from dispatchq.core.transcript import Dispatched, DispatchFailed, EvalReadFailed, Event
from dispatchq.errors import (
    BatchCancelled,
    DispatchqError,
    MonitoringInterrupted,
    NomadError,
    RequestRefused,
    WaitTimedOut,
)
from dispatchq.nomad.config import NomadConfig
from dispatchq.store.records import Begun, Ending, RequestRecord, RequestState, StoredResult

log = structlog.get_logger(__name__)

HANDED_OFF = frozenset({COMPLETE, PLACEMENT_FAILED, DISPATCHED})
"""The evaluation's ends after which a request that follows its child (`until` finished)
goes to the tracker: placed, blocked (it waits for capacity), or not followed (-detach)."""


# The service's parts, as it uses them: `NomadClient`, `PayloadResolver` and `RecordStore`
# in a worker; fakes in the tests (tests/support/fakes.py).


class Nomad(Dispatcher, Protocol):
    config: NomadConfig

    def job_evaluations(
        self, job_id: str, *, namespace: str | None = None
    ) -> list[dict[str, Any]]: ...

    def close(self) -> None: ...


class Payloads(Protocol):
    def blob_key(self, ref: str | None) -> str | None: ...

    def resolve(self, ref: str | None, blob: bytes | None = None) -> bytes | None: ...

    def close(self) -> None: ...


class RecordOf(Protocol):
    """One request's record (`dispatchq.store.records.RecordHandle`; a fake in the tests)."""

    def begin(self, job_id: str, *, read: str | None = None, digest: str = "") -> Begun: ...

    def dispatched(self, dispatched_job_id: str, eval_id: str) -> None: ...

    def hand_off(
        self,
        namespace: str,
        partial: dict[str, Any],
        deadline: float | None,
        notify_url: str | None = None,
    ) -> bool: ...

    def done(self, ending: Ending) -> bool: ...

    def load(self) -> RequestRecord | None: ...


class Records(Protocol):
    """The request records (`dispatchq.store.records.RecordStore`)."""

    def of(self, request_id: str, batch_id: str | None = None) -> RecordOf: ...

    def batch_cancelled(self, batch_id: str) -> bool: ...


class _ResumableReader:
    """The monitor's reads, with retryable failures raised past the monitor, not folded
    into the outcome: a passing outage must not end a request with exit code 1."""

    def __init__(self, client: EvaluationReader) -> None:
        self._client = client

    def read_evaluation(
        self, eval_id: str, *, index: int = 0, wait: float | None = None
    ) -> tuple[dict[str, Any], int]:
        try:
            return self._client.read_evaluation(eval_id, index=index, wait=wait)
        except NomadError as err:
            if err.retryable:
                raise MonitoringInterrupted(err) from err
            raise

    def evaluation_allocations(
        self, eval_id: str, *, index: int = 0, wait: float | None = None
    ) -> tuple[list[dict[str, Any]], int]:
        try:
            return self._client.evaluation_allocations(eval_id, index=index, wait=wait)
        except NomadError as err:
            if err.retryable:
                raise MonitoringInterrupted(err) from err
            raise


def _emit_error(recorder: OutcomeRecorder, error: DispatchqError, note: str = "") -> None:
    if isinstance(error, NomadError):
        kind, status, message, text = error.kind, error.status, error.message, str(error)
    else:
        kind, status, message = getattr(error, "kind", "error"), None, str(error)
        text = message
    recorder.emit(DispatchFailed(kind, status, note + message, note + text))


def failed_outcome(job_id: str, error: DispatchqError) -> Outcome:
    """The exit-1 outcome of a request refused before or by the dispatch."""
    recorder = OutcomeRecorder(job_id)
    _emit_error(recorder, error)
    return recorder.outcome()


def fail_message(
    records: Records,
    results: Callable[[str, dict[str, Any]], StoredResult] | None,
    request_id: str,
    *,
    kind: str,
    reason: str,
    kwargs: Mapping[str, Any] | None,
) -> bool:
    """Give the request `request_id` the exit-1 outcome of a message of it that cannot run
    (dead-lettered: malformed, invalid, past the delivery cap...), unless it is done
    already, or the record says the message is not that request (its digest differs:
    another message reusing the ID). Its job and batch come from its record where a worker
    took it before, else from the message's arguments, and a batch only for a request
    enqueued in it. Returns whether the outcome was stored."""
    if not is_request_id(request_id):
        return False  # not a request ID of ours (nor a key name to write): the dead letter says why
    record = records.of(request_id).load()
    if record is not None and record.state == RequestState.DONE:
        return False
    given = {
        name: value if isinstance(value, str) else ""
        for name, value in ((n, (kwargs or {}).get(n)) for n in ("job_id", "batch_id"))
    }
    job_id = (record.job_id if record is not None else "") or given["job_id"]
    batch_id = (record.batch_id or given["batch_id"]) if record is not None else ""
    outcome = Outcome.failed(job_id, kind=kind, message=reason)
    summary = outcome.to_stored()
    stored = results(request_id, summary) if results is not None else None
    digest = UNREADABLE if kwargs is None else request_digest(kwargs)
    url = (kwargs or {}).get("notify_url")
    ending = Ending(outcome.exit_code, reason, stored, summary,
                    url if isinstance(url, str) else None, digest)  # fmt: skip
    return records.of(request_id, batch_id or None).done(ending)


@dataclass
class DispatchService:
    """What one worker process needs to run requests. Thread-safe if its parts are."""

    client: Nomad
    resolver: Payloads
    records: Records
    feed: EvaluationFeed | None = None
    gate: DispatchGate | None = None
    monitor_wait: float = DEFAULT_WAIT
    results: Callable[[str, dict[str, Any]], StoredResult] | None = None
    """How the result backend stores an outcome (request ID, `Outcome.to_stored()`): given,
    the outcome is stored in the same step as the request is marked done."""

    def run(
        self,
        request: DispatchRequest,
        on_event: Callable[[Event], None] | None = None,
        digest: str = "",
    ) -> Outcome:
        """The outcome of `request`. Raises only retryable errors, and `RequestRefused` for
        a message whose `digest` (`request_digest` of its arguments) says it is not the
        request its ID names."""
        # Named on every line, not bound: binding builds a logger per request.
        recorder = OutcomeRecorder(request.job_id, on_event=on_event)  # times the dispatch
        blob_key = self.resolver.blob_key(request.payload_ref)
        record = self.records.of(request.request_id, request.batch_id)
        begun = record.begin(request.job_id, read=blob_key, digest=digest)
        if begun.refused:
            raise RequestRefused(begun.refused)
        deadline = None
        if request.wait_timeout is not None:
            deadline = (begun.taken_at or time.time()) + request.wait_timeout
        try:
            return self._run(request, recorder, begun, deadline)
        except DispatchqError as err:
            if not getattr(err, "retryable", False) or deadline is None or time.time() < deadline:
                raise
            # Nomad failing past the request's wait_timeout: it ends now, not after retries.
            return self._timed_out(request, err)

    def _run(
        self, request: DispatchRequest, recorder: OutcomeRecorder, begun: Begun,
        deadline: float | None,
    ) -> Outcome:  # fmt: skip
        ids = {"request_id": request.request_id, "job_id": request.job_id}
        if begun.dispatched_job_id:
            log.info(
                "request.resumed",
                **ids,
                dispatched_job_id=begun.dispatched_job_id,
                eval_id=begun.eval_id,
            )
            child, eval_id = begun.dispatched_job_id, begun.eval_id
            return self._follow(request, recorder, child, eval_id, 0, deadline=deadline)
        if begun.cancelled or self._waited_until_cancelled(request):
            error = BatchCancelled(f"batch {request.batch_id} was cancelled before this dispatch")
            _emit_error(recorder, error)
            return self._finish(request, recorder.outcome())
        try:
            payload = self.resolver.resolve(request.payload_ref, begun.value)
            response = self.client.dispatch(
                request, payload, idempotency_token=request.idempotency_token
            )
        except DispatchqError as err:
            if getattr(err, "retryable", False):
                raise
            log.warning(
                "request.refused", **ids, error_kind=getattr(err, "kind", "error"), error=str(err)
            )
            _emit_error(recorder, err)
            return self._finish(request, recorder.outcome())
        eval_id = response.eval_id or self._existing_eval(request, response.dispatched_job_id)
        self.records.of(request.request_id, request.batch_id).dispatched(
            response.dispatched_job_id, eval_id
        )
        log.info(
            "request.dispatched",
            **ids,
            dispatched_job_id=response.dispatched_job_id,
            eval_id=eval_id,
        )
        created = response.eval_create_index if eval_id == response.eval_id else 0
        child = response.dispatched_job_id
        return self._follow(request, recorder, child, eval_id, created, deadline=deadline)

    def _timed_out(self, request: DispatchRequest, error: DispatchqError) -> Outcome:
        """The exit-1 outcome of a request whose wait_timeout ran out while Nomad failed."""
        timeout = request.wait_timeout or 0.0
        text = f"the wait timeout ({timeout:g}s) ran out while Nomad failed: {error}"
        return self.give_up(request, WaitTimedOut(text), 0, note="")

    def give_up(
        self,
        request: DispatchRequest,
        error: DispatchqError,
        retries: int,
        note: str | None = None,
    ) -> Outcome:
        """The exit-1 outcome once the retry policy is spent on a retryable error."""
        note = f"gave up after {retries} retries: " if note is None else note
        recorder = OutcomeRecorder(request.job_id)
        record = self.records.of(request.request_id).load()
        if record is not None and record.dispatched:
            recorder.emit(Dispatched(record.dispatched_job_id, record.eval_id, True))
            cause = error.cause if isinstance(error, MonitoringInterrupted) else error
            kind = getattr(cause, "kind", "error")
            status = getattr(cause, "status", None)
            message = getattr(cause, "message", str(cause))
            recorder.emit(EvalReadFailed(record.eval_id, kind, status, note + message))
        else:
            _emit_error(recorder, error, note)
        return self._finish(request, recorder.outcome())

    def _waited_until_cancelled(self, request: DispatchRequest) -> bool:
        """Wait at the gate, if there is one; True if the batch was cancelled meanwhile."""
        if self.gate is None:
            return False
        namespace = request.namespace or self.client.config.namespace or "default"
        if not self.gate.admit(request.job_id, namespace) or not request.batch_id:
            return False
        return self.records.batch_cancelled(request.batch_id)

    def _existing_eval(self, request: DispatchRequest, child_id: str) -> str:
        """The register evaluation of a child that an idempotent repeat returned with no
        EvalID: this request dispatched it before a crash, so it is still ours to follow."""
        try:
            evaluations = self.client.job_evaluations(child_id, namespace=request.namespace)
        except NomadError as err:
            if err.retryable:
                raise
            return ""
        registered = [e for e in evaluations if e.get("TriggeredBy") == "job-register"]
        registered.sort(key=lambda e: int(e.get("CreateIndex") or 0))
        return str(registered[0]["ID"]) if registered else ""

    def _reader(self, eval_id: str, created: int) -> EvaluationReader:
        """The shared event feed where there is one, else blocking queries per request."""
        if self.feed is None or self.feed.refused:
            return self.client
        reader = FeedReader(self.feed, self.client)
        reader.expect(eval_id, created)
        return reader

    def _follow(
        self,
        request: DispatchRequest,
        recorder: OutcomeRecorder,
        child_id: str,
        eval_id: str,
        created: int,
        *,
        deadline: float | None,
    ) -> Outcome:
        followed = bool(eval_id) and not request.detach
        recorder.emit(Dispatched(child_id, eval_id, followed))
        if followed:
            structlog.contextvars.bind_contextvars(eval_id=eval_id, dispatched_job_id=child_id)
            follow(
                _ResumableReader(self._reader(eval_id, created)),
                eval_id,
                recorder=recorder,
                wait=self.monitor_wait,
            )
        outcome = recorder.outcome()
        if self.gate is not None and resources_exhausted(outcome):
            self.gate.overloaded("resources exhausted")
        if request.follows_child and outcome.status in HANDED_OFF:
            return self._hand_off(request, outcome, child_id, deadline)
        return self._finish(request, outcome)

    def _hand_off(
        self, request: DispatchRequest, outcome: Outcome, child_id: str, deadline: float | None
    ) -> Outcome:
        """`until` finished: the evaluation is done (placed, or blocked: the child waits for
        capacity), so the request goes to the tracker's follow set with the outcome so far,
        and this worker's slot is free; its `deadline` is `wait_timeout` after a worker
        first took it. The outcome returned is not stored."""
        namespace = request.namespace or self.client.config.namespace or ""
        self.records.of(request.request_id, request.batch_id).hand_off(
            namespace, outcome.to_stored(), deadline, request.notify_url
        )
        log.info(
            "request.handed_off",
            request_id=request.request_id,
            job_id=request.job_id,
            dispatched_job_id=child_id,
            status=outcome.status,
        )
        return outcome

    def _finish(self, request: DispatchRequest, outcome: Outcome) -> Outcome:
        error = outcome.error_message or "" if outcome.exit_code == 1 else ""
        summary = outcome.to_stored()
        stored = self.results(request.request_id, summary) if self.results else None
        ending = Ending(outcome.exit_code, error, stored, summary, request.notify_url)
        self.records.of(request.request_id, request.batch_id).done(ending)
        log.info(
            "request.done",
            request_id=request.request_id,
            job_id=request.job_id,
            status=outcome.status,
            exit_code=outcome.exit_code,
        )
        return outcome
