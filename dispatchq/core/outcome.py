"""The result record of one dispatch, built by folding its events.

`OutcomeRecorder.emit(event)` applies each event as it happens (and forwards it, e.g. to a
renderer); `outcome()` returns the record. The exit code is the seed CLI's: 0 when the
dispatch was accepted and, if followed, its last evaluation placed everything; 2 when the
last evaluation of the NextEval chain finished with placement failures; 1 otherwise.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from dispatchq.core.transcript import (
    AllocationPlaced,
    AllocationsReadFailed,
    AllocationStatusChanged,
    BlockedEvalWaiting,
    Dispatched,
    DispatchFailed,
    EvalFinished,
    EvalReadFailed,
    Event,
    MonitorStarted,
    NextEvalScheduled,
    TaskGroupFailed,
    event_from_json,
    event_from_row,
)
from dispatchq.errors import NomadError, cut

COMPLETE = "complete"  # followed to the end; the last evaluation placed everything
PLACEMENT_FAILED = "placement_failed"  # the last evaluation failed to place some
DISPATCHED = "dispatched"  # accepted and not followed: -detach, or no evaluation
ERROR = "error"  # refused, unreachable, or the evaluation could not be read
# `until` finished (`dispatchq.tracker.decide`): how the child job ended
FINISHED = "finished"  # every chain's last allocation completed, no task failed
FAILED = "failed"  # a task failed (after restarts and reschedules), start error, max_run
UNPLACED = "unplaced"  # still waiting for placement when the wait timeout ran out

EXIT_CODES = {
    COMPLETE: 0, DISPATCHED: 0, PLACEMENT_FAILED: 2, ERROR: 1,
    FINISHED: 0, FAILED: 2, UNPLACED: 2,
}  # fmt: skip
STORED_VERSION = 2  # `to_stored`'s form; `to_json`'s full form has no "v"
OUTCOME_SCHEMA: dict[str, Any] = json.loads(
    (Path(__file__).with_name("outcome.schema.json")).read_text()
)
"""The JSON Schema of what Redis holds at `celery-task-meta-<request id>`, `to_stored`'s
form inside Celery's result meta: the documented format for readers in any language."""


def _rounded(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds, 4)


@dataclass
class PlacementFailure:
    failures: int
    metric: dict[str, Any]


@dataclass
class Allocation:
    id: str
    node_id: str
    task_group: str
    client_status: str


@dataclass
class Timings:
    """`started_at` is Unix time; the durations are None for a phase that did not run."""

    started_at: float
    dispatch_seconds: float | None = None
    monitor_seconds: float | None = None


@dataclass
class Outcome:
    status: str
    job_id: str
    timings: Timings
    dispatched_job_id: str | None = None
    eval_id: str | None = None
    final_eval_id: str | None = None  # the last evaluation of the NextEval chain
    eval_status: str | None = None
    blocked_eval_id: str | None = None
    placement_failures: dict[str, PlacementFailure] = field(default_factory=dict)
    allocations: list[Allocation] = field(default_factory=list)
    error_kind: str | None = None
    error_message: str | None = None  # the server's own text when there was one
    error_status: int | None = None
    events: list[Event] = field(default_factory=list)
    child: dict[str, Any] | None = None
    """How the child job ended (`until` finished): `dispatchq.tracker.decide.child_end`."""

    @property
    def exit_code(self) -> int:
        return EXIT_CODES[self.status]

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["exit_code"] = self.exit_code
        data["events"] = [event.to_json() for event in self.events]
        return data

    @classmethod
    def failed(cls, job_id: str, *, kind: str, message: str, status: int | None = None) -> Outcome:
        """An exit-1 outcome for a dispatch that could not be made; it renders as
        `Failed to dispatch job: <message>`."""
        message = cut(message)
        recorder = OutcomeRecorder(job_id)
        recorder.emit(DispatchFailed(kind, status, message, message))
        return recorder.outcome()

    def to_stored(self) -> dict[str, Any]:
        """The compact form kept in Redis (well under 1 KB for a usual dispatch): the
        summary a reader in any language needs, and the transcript as rows, from which
        `from_stored` rebuilds everything else (allocations, placement failures)."""
        data: dict[str, Any] = {"v": STORED_VERSION, "status": self.status}
        data["exit_code"] = self.exit_code
        for name in ("job_id", "dispatched_job_id", "eval_id", "eval_status", "blocked_eval_id",
                     "error_kind", "error_message"):  # fmt: skip
            value = getattr(self, name)
            if value:
                data[name] = value
        data["timings"] = [
            round(self.timings.started_at, 3),
            _rounded(self.timings.dispatch_seconds),
            _rounded(self.timings.monitor_seconds),
        ]
        events = self.events
        if events and isinstance(events[0], Dispatched):
            events = events[1:]  # rebuilt from the summary by `from_stored`
        data["events"] = [event.to_row() for event in events]
        if self.child is not None:
            data["child"] = self.child
        return data

    def with_end(
        self, status: str, child: dict[str, Any], error_kind: str = "", message: str = ""
    ) -> Outcome:
        """This outcome (the evaluation's) with the child's end: its status decides."""
        self.status, self.child = status, child
        self.error_kind = error_kind or None
        self.error_message = message or None
        self.error_status = None
        return self

    @classmethod
    def from_stored(cls, data: dict[str, Any]) -> Outcome:
        """Rebuild an outcome from `to_stored`'s form by replaying its transcript."""
        recorder = OutcomeRecorder(data.get("job_id", ""))
        if data.get("dispatched_job_id"):
            followed = data["status"] != DISPATCHED
            recorder.emit(Dispatched(data["dispatched_job_id"], data.get("eval_id", ""), followed))
        for row in data.get("events", []):
            recorder.emit(event_from_row(row))
        outcome = recorder.outcome()
        if "child" in data:
            outcome.with_end(
                data["status"], data["child"], data.get("error_kind", ""),
                data.get("error_message", ""),
            )  # fmt: skip
        started, dispatch_seconds, monitor_seconds = data["timings"]
        outcome.timings = Timings(started, dispatch_seconds, monitor_seconds)
        return outcome

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Outcome:
        if data.get("v") == STORED_VERSION:
            return cls.from_stored(data)
        fields = {k: v for k, v in data.items() if k != "exit_code"}
        fields["timings"] = Timings(**data["timings"])
        fields["placement_failures"] = {
            group: PlacementFailure(**failure)
            for group, failure in data.get("placement_failures", {}).items()
        }
        fields["allocations"] = [Allocation(**alloc) for alloc in data.get("allocations", [])]
        fields["events"] = [event_from_json(event) for event in data.get("events", [])]
        return cls(**fields)


class OutcomeRecorder:
    """Folds events into an Outcome and passes each on to `on_event`."""

    def __init__(
        self,
        job_id: str = "",
        *,
        on_event: Callable[[Event], None] | None = None,
        clock: Callable[[], float] = time.monotonic,
        now: Callable[[], float] = time.time,
    ) -> None:
        self._on_event = on_event
        self._clock = clock
        self._start = clock()
        self._monitor_start: float | None = None
        self._allocations: dict[str, Allocation] = {}
        self._outcome = Outcome(status="", job_id=job_id, timings=Timings(started_at=now()))

    def emit(self, event: Event) -> None:
        self._apply(event)
        self._outcome.events.append(event)
        if self._on_event is not None:
            self._on_event(event)

    def dispatch_failed(self, error: NomadError) -> None:
        """Record a refused or unanswered dispatch."""
        self.emit(DispatchFailed(error.kind, error.status, error.message, str(error)))

    def outcome(self) -> Outcome:
        """The record so far; a dispatch not followed to its end counts as an error."""
        result = self._outcome
        result.allocations = list(self._allocations.values())
        if not result.status:
            result.status = ERROR
            result.error_kind = "interrupted"
            result.error_message = "the evaluation was not followed to the end"
        return result

    def _apply(self, event: Event) -> None:
        out = self._outcome
        if isinstance(event, Dispatched):
            out.dispatched_job_id = event.dispatched_job_id
            out.eval_id = event.eval_id or None
            out.timings.dispatch_seconds = self._clock() - self._start
            if not event.followed:
                out.status = DISPATCHED
        elif isinstance(event, DispatchFailed):
            out.timings.dispatch_seconds = self._clock() - self._start
            self._fail(event.kind, event.message, event.status)
        elif isinstance(event, MonitorStarted):
            if self._monitor_start is None:
                self._monitor_start = self._clock()
            out.eval_id = out.eval_id or event.eval_id
            out.final_eval_id = event.eval_id
        elif isinstance(event, AllocationPlaced):
            self._allocations[event.alloc_id] = Allocation(
                event.alloc_id, event.node_id, event.task_group, event.client_status
            )
        elif isinstance(event, AllocationStatusChanged):
            if event.alloc_id in self._allocations:
                self._allocations[event.alloc_id].client_status = event.new
        elif isinstance(event, EvalFinished):
            out.final_eval_id = event.eval_id
            out.eval_status = event.status
            out.placement_failures = {}
            out.blocked_eval_id = None
            out.status = PLACEMENT_FAILED if event.placement_failed else COMPLETE
            self._monitor_done()
        elif isinstance(event, TaskGroupFailed):
            out.placement_failures[event.task_group] = PlacementFailure(
                event.failures, dict(event.metric)
            )
        elif isinstance(event, BlockedEvalWaiting):
            out.blocked_eval_id = event.eval_id
        elif isinstance(event, NextEvalScheduled):
            out.status = ""  # the chain goes on: only its last evaluation decides
        elif isinstance(event, EvalReadFailed | AllocationsReadFailed):
            self._fail(event.kind, event.message, event.status)
            self._monitor_done()

    def _fail(self, kind: str, message: str, status: int | None) -> None:
        out = self._outcome
        out.status = ERROR
        out.error_kind, out.error_message, out.error_status = kind, message, status

    def _monitor_done(self) -> None:
        if self._monitor_start is not None:
            self._outcome.timings.monitor_seconds = self._clock() - self._monitor_start
