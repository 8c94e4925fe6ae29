"""Follow an evaluation the way `nomad job dispatch` does (its evaluation monitor).

`watch()` yields events: after each read of the evaluation and its allocations, the
differences from the previous read, as the CLI prints them; then the finish with its
placement failures and blocked evaluation; then, if there is a NextEval, the same again
for it with a fresh state. A blocked evaluation is reported and never followed.

Where the CLI sleeps one second between polls, this uses a blocking query on the
evaluation (`?index=<last>&wait=`), which returns as soon as the evaluation changes.
The allocations are read (without blocking) each time it does: the scheduler writes them
before it marks the evaluation complete, and the loop ends there. Where the CLI sleeps for
a NextEval's `Wait`, this goes straight on with blocking queries on the next evaluation,
which stays pending during that time.
"""

from __future__ import annotations

from collections.abc import Callable, Generator, Iterator
from dataclasses import dataclass, field
from typing import Any, Protocol

from dispatchq.core.outcome import Outcome, OutcomeRecorder
from dispatchq.core.request import DispatchRequest
from dispatchq.core.transcript import (
    METRIC_FIELDS,
    AllocationPlaced,
    AllocationsReadFailed,
    AllocationStatusChanged,
    BlockedEvalWaiting,
    Dispatched,
    EvalFinished,
    EvalReadFailed,
    EvalStatusChanged,
    Event,
    MonitorStarted,
    NextEvalScheduled,
    TaskGroupFailed,
    TriggeredByJob,
    TriggeredByNode,
    WithinDeployment,
)
from dispatchq.errors import NomadError
from dispatchq.nomad.client import DispatchResponse

# The statuses that end the loop; v0.8.3 spells the last one with one "l".
TERMINAL_STATUSES = frozenset({"complete", "failed", "canceled"})
# Seconds each blocking query may wait on the server before it answers unchanged.
DEFAULT_WAIT = 60.0

JSONObject = dict[str, Any]


class EvaluationReader(Protocol):
    """What the monitor needs from a client (NomadClient satisfies it)."""

    def read_evaluation(
        self, eval_id: str, *, index: int = 0, wait: float | None = None
    ) -> tuple[JSONObject, int]: ...

    def evaluation_allocations(
        self, eval_id: str, *, index: int = 0, wait: float | None = None
    ) -> tuple[list[JSONObject], int]: ...


class Dispatcher(EvaluationReader, Protocol):
    def dispatch(
        self,
        request: DispatchRequest,
        payload: bytes | None = None,
        *,
        idempotency_token: str | None = None,
    ) -> DispatchResponse: ...


@dataclass
class _Alloc:
    node: str
    group: str
    desired: str
    client: str
    client_desc: str
    create_index: int


@dataclass
class _EvalState:
    """The CLI's evalState: what one read showed. A fresh state is pending, no allocs."""

    status: str = "pending"
    node: str = ""
    job: str = ""
    deployment: str = ""
    create_index: int = 0
    allocs: dict[str, _Alloc] = field(default_factory=dict)

    @classmethod
    def read(cls, evaluation: JSONObject, allocs: list[JSONObject]) -> _EvalState:
        state = cls(
            status=evaluation.get("Status") or "",
            node=evaluation.get("NodeID") or "",
            job=evaluation.get("JobID") or "",
            deployment=evaluation.get("DeploymentID") or "",
            create_index=int(evaluation.get("CreateIndex") or 0),
        )
        for alloc in sorted(allocs, key=lambda a: (a.get("CreateIndex") or 0, a.get("ID"))):
            state.allocs[alloc["ID"]] = _Alloc(
                node=alloc.get("NodeID") or "",
                group=alloc.get("TaskGroup") or "",
                desired=alloc.get("DesiredStatus") or "",
                client=alloc.get("ClientStatus") or "",
                client_desc=alloc.get("ClientDescription") or "",
                create_index=int(alloc.get("CreateIndex") or 0),
            )
        return state


def _changes(old: _EvalState, new: _EvalState) -> Iterator[Event]:
    """The CLI's `update`: the lines between two reads, in its order."""
    if not old.node and new.node:
        yield TriggeredByNode(new.node)
    if not old.job and new.job:
        yield TriggeredByJob(new.job)
    if not old.deployment and new.deployment:
        yield WithinDeployment(new.deployment)
    for alloc_id, alloc in new.allocs.items():
        before = old.allocs.get(alloc_id)
        if before is None:
            modified = alloc.create_index < new.create_index
            if modified or alloc.desired == "run":
                yield AllocationPlaced(alloc_id, alloc.node, alloc.group, alloc.client, modified)
        elif before.client != alloc.client:
            yield AllocationStatusChanged(alloc_id, before.client, alloc.client, alloc.client_desc)
    # A change *to* pending is never reported.
    if old.status and new.status not in ("pending", old.status):
        yield EvalStatusChanged(old.status, new.status)


def _finish(evaluation: JSONObject) -> Iterator[Event]:
    eval_id = evaluation.get("ID") or ""
    failed: JSONObject = evaluation.get("FailedTGAllocs") or {}
    yield EvalFinished(eval_id, evaluation.get("Status") or "", bool(failed))
    for group in sorted(failed):
        metric = failed[group] or {}
        subset = {name: metric[name] for name in METRIC_FIELDS if name in metric}
        yield TaskGroupFailed(group, int(metric.get("CoalescedFailures") or 0) + 1, subset)
    if failed and evaluation.get("BlockedEval"):
        yield BlockedEvalWaiting(evaluation["BlockedEval"])


def _watch_one(
    client: EvaluationReader, eval_id: str, wait: float
) -> Generator[Event, None, str | None]:
    """Follow one evaluation to its end; returns the NextEval to follow, if any."""
    state = _EvalState()
    index = 0
    started = False
    while True:
        try:
            evaluation, index = client.read_evaluation(eval_id, index=index, wait=wait)
        except NomadError as err:
            yield EvalReadFailed(eval_id, err.kind, err.status, err.message)
            return None
        if not started:
            yield MonitorStarted(evaluation.get("ID") or eval_id)
            started = True
        try:
            allocs, _ = client.evaluation_allocations(eval_id)
        except NomadError as err:
            yield AllocationsReadFailed(eval_id, err.kind, err.status, err.message, str(err))
            return None
        current = _EvalState.read(evaluation, allocs)
        yield from _changes(state, current)
        state = current
        if state.status not in TERMINAL_STATUSES:
            continue
        yield from _finish(evaluation)
        next_eval: str = evaluation.get("NextEval") or ""
        if next_eval:
            yield NextEvalScheduled(next_eval, int(evaluation.get("Wait") or 0))
            return next_eval
        return None


def watch(client: EvaluationReader, eval_id: str, *, wait: float = DEFAULT_WAIT) -> Iterator[Event]:
    """The monitor's events for `eval_id` and its NextEval chain, until the end."""
    following: str | None = eval_id
    while following:
        following = yield from _watch_one(client, following, wait)


def follow(
    client: EvaluationReader,
    eval_id: str,
    *,
    on_event: Callable[[Event], None] | None = None,
    recorder: OutcomeRecorder | None = None,
    wait: float = DEFAULT_WAIT,
) -> Outcome:
    """Watch `eval_id` to the end and return the Outcome.

    Pass a `recorder` that already holds the dispatch (for example one that saw a
    Dispatched event replayed from a write-ahead record) to get a complete Outcome;
    otherwise a new one is made with `on_event`.
    """
    recorder = recorder or OutcomeRecorder(on_event=on_event)
    for event in watch(client, eval_id, wait=wait):
        recorder.emit(event)
    return recorder.outcome()


def dispatch_and_follow(
    client: Dispatcher,
    request: DispatchRequest,
    payload: bytes | None = None,
    *,
    idempotency_token: str | None = None,
    on_event: Callable[[Event], None] | None = None,
    on_dispatched: Callable[[DispatchResponse], None] | None = None,
    wait: float = DEFAULT_WAIT,
) -> Outcome:
    """Dispatch, then follow the evaluation unless the request is detached or there is none.

    A NomadError from the dispatch becomes an outcome (a DispatchFailed event), as do
    errors while monitoring. `on_dispatched` runs between the two, e.g. to record the
    dispatched job and eval IDs before monitoring starts.
    """
    recorder = OutcomeRecorder(request.job_id, on_event=on_event)
    try:
        response = client.dispatch(request, payload, idempotency_token=idempotency_token)
    except NomadError as err:
        recorder.dispatch_failed(err)
        return recorder.outcome()
    if on_dispatched is not None:
        on_dispatched(response)
    followed = bool(response.eval_id) and not request.detach
    recorder.emit(Dispatched(response.dispatched_job_id, response.eval_id, followed))
    if followed:
        follow(client, response.eval_id, recorder=recorder, wait=wait)
    return recorder.outcome()
