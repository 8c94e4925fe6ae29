"""The outcome record: folding events, exit codes, JSON both ways."""

from __future__ import annotations

import itertools
import json

from dispatchq.core.outcome import Outcome, OutcomeRecorder
from dispatchq.core.transcript import (
    AllocationPlaced,
    AllocationStatusChanged,
    BlockedEvalWaiting,
    Dispatched,
    EvalFinished,
    MonitorStarted,
    NextEvalScheduled,
    TaskGroupFailed,
    event_from_json,
)
from dispatchq.errors import PermissionDenied

CHILD = "video/dispatch-1700000000-0a1b2c3d"


def recorder() -> OutcomeRecorder:
    ticks = itertools.count()
    return OutcomeRecorder("video", clock=lambda: float(next(ticks)), now=lambda: 1.7e9)


def placement_failure_outcome() -> Outcome:
    rec = recorder()
    for event in (
        Dispatched(CHILD, "e1", followed=True),
        MonitorStarted("e1"),
        AllocationPlaced("a1", "n1", "cache", "pending", modified=False),
        AllocationStatusChanged("a1", "pending", "running", ""),
        EvalFinished("e1", "complete", placement_failed=True),
        TaskGroupFailed("cache", 2, {"NodesEvaluated": 3, "NodesExhausted": 3}),
        BlockedEvalWaiting("b1"),
    ):
        rec.emit(event)
    return rec.outcome()


def test_fold_of_a_placement_failure() -> None:
    outcome = placement_failure_outcome()
    assert (outcome.status, outcome.exit_code) == ("placement_failed", 2)
    assert (outcome.dispatched_job_id, outcome.eval_id, outcome.final_eval_id) == (
        CHILD,
        "e1",
        "e1",
    )
    assert outcome.blocked_eval_id == "b1"
    assert outcome.placement_failures["cache"].failures == 2
    assert [(a.id, a.client_status) for a in outcome.allocations] == [("a1", "running")]
    assert outcome.timings.started_at == 1.7e9
    assert outcome.timings.dispatch_seconds == 1.0
    assert outcome.timings.monitor_seconds == 1.0


def test_json_round_trip_is_plain_json() -> None:
    outcome = placement_failure_outcome()
    data = json.loads(json.dumps(outcome.to_json()))
    assert data["exit_code"] == 2
    assert data["placement_failures"] == {
        "cache": {"failures": 2, "metric": {"NodesEvaluated": 3, "NodesExhausted": 3}}
    }
    assert data["events"][0] == {
        "event": "dispatched",
        "dispatched_job_id": CHILD,
        "eval_id": "e1",
        "followed": True,
    }
    assert Outcome.from_json(data) == outcome


def test_next_eval_resets_the_placement_failure() -> None:
    rec = recorder()
    rec.emit(EvalFinished("e1", "failed", placement_failed=True))
    rec.emit(TaskGroupFailed("cache", 1, {}))
    rec.emit(NextEvalScheduled("e2", 0))
    assert rec.outcome().status == "error"  # not followed to its end
    rec = recorder()
    for event in (
        EvalFinished("e1", "failed", placement_failed=True),
        TaskGroupFailed("cache", 1, {}),
        NextEvalScheduled("e2", 0),
        MonitorStarted("e2"),
        EvalFinished("e2", "complete", placement_failed=False),
    ):
        rec.emit(event)
    outcome = rec.outcome()
    assert (outcome.exit_code, outcome.placement_failures, outcome.final_eval_id) == (0, {}, "e2")


def test_dispatch_failure_and_failed() -> None:
    rec = recorder()
    rec.dispatch_failed(PermissionDenied("Permission denied", status=403))
    outcome = rec.outcome()
    assert (outcome.status, outcome.exit_code, outcome.error_kind) == ("error", 1, "permission")
    assert (outcome.error_message, outcome.error_status) == ("Permission denied", 403)
    assert outcome.dispatched_job_id is None
    made = Outcome.failed("video", kind="internal", message="worker lost")
    assert (made.exit_code, made.error_kind, made.error_message) == (1, "internal", "worker lost")
    assert event_from_json(made.events[0].to_json()) == made.events[0]


def test_interrupted_outcome_is_an_error() -> None:
    rec = recorder()
    rec.emit(Dispatched(CHILD, "e1", followed=True))
    rec.emit(MonitorStarted("e1"))
    outcome = rec.outcome()
    assert (outcome.status, outcome.exit_code, outcome.error_kind) == ("error", 1, "interrupted")


def test_stored_form_rebuilds_the_same_outcome() -> None:
    """What the worker keeps in Redis: compact, plain JSON, and the same outcome once read."""
    original = placement_failure_outcome()
    stored = json.loads(json.dumps(original.to_stored()))
    assert stored["v"] == 2
    assert stored["exit_code"] == 2
    assert stored["blocked_eval_id"] == "b1"
    assert "allocations" not in stored
    assert all(isinstance(row, list) for row in stored["events"])
    rebuilt = Outcome.from_json(stored)
    assert rebuilt.to_json() == json.loads(json.dumps(original.to_json()))


def test_stored_form_of_a_refused_dispatch() -> None:
    rec = recorder()
    rec.dispatch_failed(PermissionDenied("Permission denied", status=403))
    stored = rec.outcome().to_stored()
    assert stored["error_kind"] == "permission"
    rebuilt = Outcome.from_json(json.loads(json.dumps(stored)))
    assert rebuilt.exit_code == 1
    assert rebuilt.error_status == 403
    assert rebuilt.error_message == "Permission denied"
