"""Evaluations, allocations and nodes, and their JSON shapes.

State objects are never mutated once stored: an update stores a modified copy (as
Nomad's memdb does), so the event buffer can keep references and render them lazily
with the values they had at their index.
"""

from __future__ import annotations

import base64
from dataclasses import dataclass, field
from typing import Any, TypeVar

import orjson

from dispatchq.nomadsim.jsonshape import dumps, rfc3339

TERMINAL_EVAL = frozenset({"complete", "failed", "canceled"})
TERMINAL_CLIENT = frozenset({"complete", "failed", "lost"})

JsonObj = dict[str, Any]
#: The Alloc fields an update changes; the others are what `Alloc.static_json` encodes.
ALLOC_UPDATES = frozenset({
    "desired_status", "desired_description", "client_status", "client_description",
    "create_index", "modify_index", "modify_time", "task_states", "followup_eval_id",
    "reschedule_tracker", "previous_allocation", "next_allocation", "last_event",
})
NO_TRANSITION = {"Migrate": None, "Reschedule": None, "ForceReschedule": None}
T = TypeVar("T")


def evolve(obj: T, **changes: Any) -> T:
    """A changed copy of a stored Eval or Alloc (much cheaper than dataclasses.replace).

    An alloc's `static_json` goes with the copy unless a field it encodes changed.
    """
    new = object.__new__(type(obj))
    values = obj.__dict__.copy()
    values.update(changes)
    if values.get("static_json") is not None and not changes.keys() <= ALLOC_UPDATES:
        values["static_json"] = None
    new.__dict__ = values
    return new


@dataclass
class Eval:
    id: str
    namespace: str
    priority: int
    type: str
    triggered_by: str
    job_id: str
    job_modify_index: int
    status: str
    create_index: int
    modify_index: int
    create_time: int
    modify_time: int
    status_description: str = ""
    wait_ns: int = 0
    #: WaitUntil (unix ns; 0 = none): a delayed follow-up is not scheduled before it.
    wait_until: int = 0
    node_id: str = ""
    next_eval: str = ""
    previous_eval: str = ""
    blocked_eval: str = ""
    failed_tg_allocs: dict[str, JsonObj] | None = None
    queued_allocations: dict[str, int] | None = None
    class_eligibility: dict[str, bool] | None = None
    snapshot_index: int = 0

    @property
    def terminal(self) -> bool:
        return self.status in TERMINAL_EVAL

    def stub(self) -> JsonObj:
        """EvaluationStub, the shape of RelatedEvals items."""
        return {
            "ID": self.id,
            "Namespace": self.namespace,
            "Priority": self.priority,
            "Type": self.type,
            "TriggeredBy": self.triggered_by,
            "JobID": self.job_id,
            "NodeID": self.node_id,
            "DeploymentID": "",
            "Status": self.status,
            "StatusDescription": self.status_description,
            "WaitUntil": rfc3339(self.wait_until),
            "NextEval": self.next_eval,
            "PreviousEval": self.previous_eval,
            "BlockedEval": self.blocked_eval,
            "CreateIndex": self.create_index,
            "ModifyIndex": self.modify_index,
            "CreateTime": self.create_time,
            "ModifyTime": self.modify_time,
        }

    def render(self, related: list[JsonObj] | None = None) -> JsonObj:
        return {
            "ID": self.id,
            "Namespace": self.namespace,
            "Priority": self.priority,
            "Type": self.type,
            "TriggeredBy": self.triggered_by,
            "JobID": self.job_id,
            "JobModifyIndex": self.job_modify_index,
            "NodeID": self.node_id,
            "NodeModifyIndex": 0,
            "DeploymentID": "",
            "Status": self.status,
            "StatusDescription": self.status_description,
            "Wait": self.wait_ns,
            "WaitUntil": rfc3339(self.wait_until),
            "NextEval": self.next_eval,
            "PreviousEval": self.previous_eval,
            "BlockedEval": self.blocked_eval,
            "RelatedEvals": related,
            "FailedTGAllocs": self.failed_tg_allocs,
            "ClassEligibility": self.class_eligibility,
            "QuotaLimitReached": "",
            "EscapedComputedClass": False,
            "AnnotatePlan": False,
            "QueuedAllocations": self.queued_allocations,
            "LeaderACL": "",
            "SnapshotIndex": self.snapshot_index,
            "CreateIndex": self.create_index,
            "ModifyIndex": self.modify_index,
            "CreateTime": self.create_time,
            "ModifyTime": self.modify_time,
        }


@dataclass(slots=True)
class Node:
    id: str
    name: str
    datacenter: str
    cpu: int
    memory_mb: int
    attributes: dict[str, str]
    used_cpu: int = 0
    used_memory_mb: int = 0
    #: `ready` or `down` (POST /_sim/nodes/<id>/down): a down node takes no allocs.
    status: str = "ready"
    #: SchedulingEligibility: a draining node (drain.py) takes no new allocs.
    eligible: bool = True
    #: The DrainStrategy while the node drains (drain.py), else None.
    drain: JsonObj | None = None
    modify_index: int = 1


@dataclass
class Alloc:
    id: str
    namespace: str
    eval_id: str
    name: str
    node_id: str
    node_name: str
    job_id: str
    job: JsonObj
    task_group: str
    tasks: dict[str, tuple[int, int]]
    desired_status: str
    client_status: str
    create_index: int
    modify_index: int
    create_time: int
    modify_time: int
    metrics: JsonObj
    desired_description: str = ""
    client_description: str = ""
    #: TaskStates as rendered (None until the client first reports); never mutated.
    task_states: JsonObj | None = None
    followup_eval_id: str = ""
    reschedule_tracker: JsonObj | None = None
    previous_allocation: str = ""
    next_allocation: str = ""
    #: Allocation.LastEventTime once terminal on its client: the latest task FinishedAt.
    last_event: int = 0
    #: DesiredTransition.Migrate: an operator stopped it, or its node drains (drain.py).
    migrate: bool = False
    #: `event_json`'s encoding of the fields no update changes (IDs, resources up to
    #: AllocatedResources, and Metrics), made once and shared by the copies `evolve` makes.
    static_json: tuple[bytes, orjson.Fragment] | None = field(
        default=None, repr=False, compare=False
    )

    @property
    def terminal(self) -> bool:
        """Nomad's Allocation.TerminalStatus: desired stop/evict or a terminal client."""
        return self.desired_status in ("stop", "evict") or self.client_status in TERMINAL_CLIENT

    @property
    def cpu(self) -> int:
        return sum(c for c, _ in self.tasks.values())

    @property
    def memory_mb(self) -> int:
        return sum(m for _, m in self.tasks.values())

    def _resources(self) -> JsonObj:
        return {
            "Tasks": {
                task: {
                    "Cpu": {"CpuShares": cpu},
                    "Memory": {"MemoryMB": mem, "MemoryMaxMB": 0},
                    "Networks": None,
                    "Devices": None,
                }
                for task, (cpu, mem) in self.tasks.items()
            },
            "Shared": {"DiskMB": 0, "Networks": None, "Ports": None},
        }

    def _identity(self) -> JsonObj:
        """The fields no update changes, in the order `render` gives them."""
        return {
            "ID": self.id,
            "EvalID": self.eval_id,
            "Name": self.name,
            "Namespace": self.namespace,
            "NodeID": self.node_id,
            "NodeName": self.node_name,
            "JobID": self.job_id,
            "TaskGroup": self.task_group,
            "AllocatedResources": self._resources(),
        }

    def _state(self) -> JsonObj:
        return {
            "DesiredStatus": self.desired_status,
            "DesiredDescription": self.desired_description,
            "ClientStatus": self.client_status,
            "ClientDescription": self.client_description,
            "DesiredTransition": {**NO_TRANSITION, "Migrate": True} if self.migrate
            else dict(NO_TRANSITION),
            "TaskStates": self.task_states,
            "DeploymentStatus": None,
            "FollowupEvalID": self.followup_eval_id,
            "NextAllocation": self.next_allocation,
            "RescheduleTracker": self.reschedule_tracker,
            "PreemptedAllocations": None,
            "PreemptedByAllocation": "",
            "CreateIndex": self.create_index,
            "ModifyIndex": self.modify_index,
            "CreateTime": self.create_time,
            "ModifyTime": self.modify_time,
        }

    def _tail(self, job: JsonObj | None, metrics: object) -> JsonObj:
        """What the full allocation has after the stub's fields."""
        return {
            "Job": job,
            "Resources": None,
            "TaskResources": None,
            "Metrics": metrics,
            "DeploymentID": "",
            "PreviousAllocation": self.previous_allocation,
            "AllocModifyIndex": self.create_index,
        }

    def stub(self) -> JsonObj:
        identity = self._identity()
        group, resources = identity.pop("TaskGroup"), identity.pop("AllocatedResources")
        return {
            **identity,
            "JobType": self.job["Type"],
            "JobVersion": self.job["Version"],
            "TaskGroup": group,
            "AllocatedResources": resources,
            **self._state(),
        }

    def render(self, with_job: bool) -> JsonObj:
        job = render_job(self.job) if with_job else None
        return {**self._identity(), **self._state(), **self._tail(job, self.metrics)}

    def event_json(self) -> bytes:
        """`render(with_job=False)` as compact JSON, the same bytes, for event payloads:
        the fields no update changes are encoded once per alloc (`static_json`), the rest
        without building the whole dict each time."""
        cached = self.static_json
        if cached is None:
            head = dumps(self._identity())
            cached = self.static_json = (head[:-1] + b",", orjson.Fragment(dumps(self.metrics)))
        head, metrics = cached
        return head + orjson.dumps({**self._state(), **self._tail(None, metrics)})[1:]


def render_job(job: JsonObj) -> JsonObj:
    """A stored job as JSON: the payload (kept as bytes) becomes base64 or null."""
    payload = job.get("Payload")
    out = dict(job)
    out["Payload"] = base64.b64encode(payload).decode() if payload else None
    return out


@dataclass(slots=True)
class Summary:
    """The parts of a JobSummary that are not derived from allocations on read."""

    create_index: int
    modify_index: int
    #: QueuedAllocations of the latest eval (replaced, never mutated in place).
    queued: dict[str, int] = field(default_factory=dict)
    #: Children counts, created when the job gets its first child.
    children: dict[str, int] | None = None


@dataclass(slots=True)
class DispatchRecord:
    """One accepted dispatch, kept for the process lifetime (hence compact)."""

    parent: str
    child_id: str
    eval_id: str
    namespace: str
    idempotency_token: str
    meta: dict[str, str] | None
    payload_len: int
    priority: int
    index: int
    repeat: bool
    time_ns: int

    def to_json(self) -> JsonObj:
        return {
            "parent": self.parent,
            "child_id": self.child_id,
            "eval_id": self.eval_id,
            "namespace": self.namespace,
            "idempotency_token": self.idempotency_token,
            "meta": self.meta or {},
            "payload_len": self.payload_len,
            "priority": self.priority,
            "index": self.index,
            "repeat": self.repeat,
            "time": rfc3339(self.time_ns),
            "time_ns": self.time_ns,
        }
