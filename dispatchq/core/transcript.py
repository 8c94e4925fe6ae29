"""What happens to one dispatch, as data: the dispatch itself and the monitor's findings.

Each event holds full IDs and raw values; `dispatchq.core.render` turns it into the nomad CLI's
lines (8- or 36-character IDs), and `dispatchq.core.outcome` folds a sequence of them into an
Outcome. Events are plain JSON both ways, so a transcript recorded by a worker can be
rendered later by the CLI exactly as if it had been watched live.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, ClassVar


@dataclass(frozen=True)
class Event:
    """Base class; `name` identifies the type in JSON."""

    name: ClassVar[str] = ""

    def to_json(self) -> dict[str, Any]:
        return {"event": self.name, **dataclasses.asdict(self)}

    def to_row(self) -> list[Any]:
        """The compact form stored with outcomes: the name, then the fields in order."""
        return [self.name, *(getattr(self, f.name) for f in dataclasses.fields(self))]


@dataclass(frozen=True)
class Dispatched(Event):
    """The dispatch was accepted. `followed` says whether the evaluation is monitored."""

    name = "dispatched"
    dispatched_job_id: str
    eval_id: str
    followed: bool


@dataclass(frozen=True)
class DispatchFailed(Event):
    """The dispatch was refused or never answered. `text` is the Go client's error text."""

    name = "dispatch_failed"
    kind: str
    status: int | None
    message: str
    text: str


@dataclass(frozen=True)
class MonitorStarted(Event):
    name = "monitor_started"
    eval_id: str


@dataclass(frozen=True)
class TriggeredByNode(Event):
    name = "triggered_by_node"
    node_id: str


@dataclass(frozen=True)
class TriggeredByJob(Event):
    name = "triggered_by_job"
    job_id: str


@dataclass(frozen=True)
class WithinDeployment(Event):
    name = "within_deployment"
    deployment_id: str


@dataclass(frozen=True)
class AllocationPlaced(Event):
    """A new allocation: `modified` when it predates the evaluation (an update in place),
    otherwise created with desired status "run"."""

    name = "allocation_placed"
    alloc_id: str
    node_id: str
    task_group: str
    client_status: str
    modified: bool


@dataclass(frozen=True)
class AllocationStatusChanged(Event):
    name = "allocation_status_changed"
    alloc_id: str
    old: str
    new: str
    description: str


@dataclass(frozen=True)
class EvalStatusChanged(Event):
    name = "eval_status_changed"
    old: str
    new: str


@dataclass(frozen=True)
class EvalFinished(Event):
    """The evaluation reached complete, failed or canceled. When `placement_failed`,
    TaskGroupFailed events (and perhaps BlockedEvalWaiting) follow."""

    name = "eval_finished"
    eval_id: str
    status: str
    placement_failed: bool


@dataclass(frozen=True)
class TaskGroupFailed(Event):
    """`metric` is the AllocMetric subset the CLI prints (see `METRIC_FIELDS`)."""

    name = "task_group_failed"
    task_group: str
    failures: int
    metric: dict[str, Any]


@dataclass(frozen=True)
class BlockedEvalWaiting(Event):
    """A blocked evaluation holds the remainder; it is reported, never followed."""

    name = "blocked_eval_waiting"
    eval_id: str


@dataclass(frozen=True)
class NextEvalScheduled(Event):
    """The evaluation has a NextEval, which is followed with a fresh state; `wait_ns` is
    the finished evaluation's Wait."""

    name = "next_eval_scheduled"
    eval_id: str
    wait_ns: int


@dataclass(frozen=True)
class EvalReadFailed(Event):
    """Reading the evaluation failed (404, 403 or transport): the CLI exits 1."""

    name = "eval_read_failed"
    eval_id: str
    kind: str
    status: int | None
    message: str


@dataclass(frozen=True)
class AllocationsReadFailed(Event):
    """Reading the evaluation's allocations failed; `text` is the Go client's error."""

    name = "allocations_read_failed"
    eval_id: str
    kind: str
    status: int | None
    message: str
    text: str


# AllocMetric fields that the monitor's placement-failure lines are made from.
METRIC_FIELDS = (
    "NodesEvaluated",
    "NodesFiltered",
    "NodesAvailable",
    "ClassFiltered",
    "ConstraintFiltered",
    "NodesExhausted",
    "ClassExhausted",
    "DimensionExhausted",
    "QuotaExhausted",
    "CoalescedFailures",
)

_TYPES: dict[str, type[Event]] = {
    cls.name: cls
    for cls in (
        Dispatched,
        DispatchFailed,
        MonitorStarted,
        TriggeredByNode,
        TriggeredByJob,
        WithinDeployment,
        AllocationPlaced,
        AllocationStatusChanged,
        EvalStatusChanged,
        EvalFinished,
        TaskGroupFailed,
        BlockedEvalWaiting,
        NextEvalScheduled,
        EvalReadFailed,
        AllocationsReadFailed,
    )
}


def event_from_json(data: dict[str, Any]) -> Event:
    """The inverse of `Event.to_json`; raises ValueError for an unknown or bad record."""
    fields = dict(data)
    cls = _TYPES.get(fields.pop("event", ""))
    if cls is None:
        raise ValueError(f"unknown event record: {data!r}")
    try:
        return cls(**fields)
    except TypeError as err:
        raise ValueError(f"bad {cls.name} record: {err}") from err


def event_from_row(row: list[Any]) -> Event:
    """The inverse of `Event.to_row`; raises ValueError for an unknown or bad row."""
    cls = _TYPES.get(row[0]) if row else None
    if cls is None:
        raise ValueError(f"unknown event row: {row!r}")
    try:
        return cls(*row[1:])
    except TypeError as err:
        raise ValueError(f"bad {cls.name} row: {err}") from err
