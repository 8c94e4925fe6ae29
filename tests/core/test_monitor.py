"""The monitor against scripted evaluation and allocation reads: events, lines, outcome."""

from __future__ import annotations

from typing import Any

import pytest

from dispatchq.core.monitor import DEFAULT_WAIT, dispatch_and_follow, follow, watch
from dispatchq.core.render import render
from dispatchq.core.request import DispatchRequest
from dispatchq.core.transcript import Event
from dispatchq.errors import NomadError, NotFound, ServerError
from dispatchq.nomad.client import DispatchResponse
from tests.support.requests import request

EVAL = "31199841-1111-2222-3333-444444444444"
NEXT = "5e2a0c1d-1111-2222-3333-444444444444"
BLOCKED = "b10cced0-1111-2222-3333-444444444444"
CHILD = "video-encode/dispatch-1485379325-cb38d00d"
ALLOC = "8254b85f-1111-2222-3333-444444444444"
NODE = "82ff9c50-1111-2222-3333-444444444444"

Answer = dict[str, Any] | list[dict[str, Any]] | NomadError


def evaluation(eval_id: str = EVAL, status: str = "pending", index: int = 13, **extra: Any) -> Any:
    return {
        "ID": eval_id,
        "JobID": CHILD,
        "Status": status,
        "CreateIndex": 13,
        "ModifyIndex": index,
        **extra,
    }


def alloc(alloc_id: str = ALLOC, client: str = "pending", **extra: Any) -> dict[str, Any]:
    return {
        "ID": alloc_id,
        "NodeID": NODE,
        "TaskGroup": "cache",
        "DesiredStatus": "run",
        "ClientStatus": client,
        "ClientDescription": "",
        "CreateIndex": 14,
        **extra,
    }


class Script:
    """Answers reads in order per evaluation (the last answer repeats) and records them."""

    def __init__(self, evals: dict[str, list[Answer]], allocs: dict[str, list[Answer]]) -> None:
        self.evals = evals
        self.allocs = allocs
        self.reads: list[tuple[str, str, int, float | None]] = []

    @staticmethod
    def _next(answers: list[Answer]) -> Answer:
        return answers.pop(0) if len(answers) > 1 else answers[0]

    def read_evaluation(
        self, eval_id: str, *, index: int = 0, wait: float | None = None
    ) -> tuple[dict[str, Any], int]:
        self.reads.append(("eval", eval_id, index, wait))
        answer = self._next(self.evals[eval_id])
        if isinstance(answer, NomadError):
            raise answer
        assert isinstance(answer, dict)
        return answer, int(answer["ModifyIndex"])

    def evaluation_allocations(
        self, eval_id: str, *, index: int = 0, wait: float | None = None
    ) -> tuple[list[dict[str, Any]], int]:
        self.reads.append(("allocs", eval_id, index, wait))
        answer = self._next(self.allocs.get(eval_id, [[]]))
        if isinstance(answer, NomadError):
            raise answer
        assert isinstance(answer, list)
        return answer, 14

    def dispatch(
        self,
        request: DispatchRequest,
        payload: bytes | None = None,
        *,
        idempotency_token: str | None = None,
    ) -> DispatchResponse:
        return DispatchResponse(CHILD, EVAL, 13, 13, 13)


def lines(events: list[Event], verbose: bool = False) -> list[str]:
    return [
        ("ERR " if line.stderr else "") + line.text
        for event in events
        for line in render(event, verbose=verbose)
    ]


def test_the_seed_example() -> None:
    script = Script(
        {EVAL: [evaluation(), evaluation(status="complete", index=15)]},
        {EVAL: [[], [alloc()]]},
    )
    events = list(watch(script, EVAL))
    assert lines(events) == [
        '==> Monitoring evaluation "31199841"',
        f'    Evaluation triggered by job "{CHILD}"',
        '    Allocation "8254b85f" created: node "82ff9c50", group "cache"',
        '    Evaluation status changed: "pending" -> "complete"',
        '==> Evaluation "31199841" finished with status "complete"',
    ]
    # The first read does not block; the next blocks on the index the first returned.
    eval_reads = [read for read in script.reads if read[0] == "eval"]
    assert eval_reads == [("eval", EVAL, 0, DEFAULT_WAIT), ("eval", EVAL, 13, DEFAULT_WAIT)]


def test_verbose_prints_full_ids() -> None:
    script = Script({EVAL: [evaluation(status="complete")]}, {EVAL: [[alloc()]]})
    text = lines(list(watch(script, EVAL)), verbose=True)
    assert text[0] == f'==> Monitoring evaluation "{EVAL}"'
    assert text[2] == f'    Allocation "{ALLOC}" created: node "{NODE}", group "cache"'


def test_allocation_changes_and_node_trigger() -> None:
    old = alloc("0ld0a110-c", CreateIndex=5)  # predates the eval: modified
    stopped = alloc("570pped0-c", DesiredStatus="stop")  # new, not run: nothing
    script = Script(
        {EVAL: [evaluation(NodeID=NODE), evaluation(NodeID=NODE, status="complete", index=16)]},
        {
            EVAL: [
                [old, stopped],
                [
                    {**old, "ClientStatus": "failed", "ClientDescription": "oom"},
                    {**stopped, "ClientStatus": "complete"},
                ],
            ]
        },
    )
    assert lines(list(watch(script, EVAL)))[1:-1] == [
        '    Evaluation triggered by node "82ff9c50"',
        f'    Evaluation triggered by job "{CHILD}"',
        '    Allocation "0ld0a110" modified: node "82ff9c50", group "cache"',
        '    Allocation "0ld0a110" status changed: "pending" -> "failed" (oom)',
        '    Allocation "570pped0" status changed: "pending" -> "complete"',
        '    Evaluation status changed: "pending" -> "complete"',
    ]


def test_a_change_to_pending_is_not_printed() -> None:
    script = Script(
        {
            EVAL: [
                evaluation(status="blocked"),
                evaluation(index=14),
                evaluation(status="complete", index=15),
            ]
        },
        {},
    )
    changes = [text for text in lines(list(watch(script, EVAL))) if "status changed" in text]
    assert changes == [
        '    Evaluation status changed: "pending" -> "blocked"',
        '    Evaluation status changed: "pending" -> "complete"',
    ]


FAILED_TG = {
    "cache": {
        "NodesEvaluated": 3,
        "NodesAvailable": {"dc1": 3, "dc2": 0},
        "ConstraintFiltered": {"${attr.kernel.name} = windows": 1},
        "NodesExhausted": 2,
        "DimensionExhausted": {"memory": 2},
        "CoalescedFailures": 2,
        "Scores": {"ignored": 1.0},
    },
    "api": {"NodesEvaluated": 0, "CoalescedFailures": 0},
}


def test_placement_failure_reports_and_does_not_follow_the_blocked_eval() -> None:
    finished = evaluation(status="complete", FailedTGAllocs=FAILED_TG, BlockedEval=BLOCKED)
    script = Script({EVAL: [finished]}, {})
    outcome = follow(script, EVAL)
    assert lines(outcome.events)[-9:] == [
        '==> Evaluation "31199841" finished with status "complete" but failed to place all '
        "allocations:",
        '    Task Group "api" (failed to place 1 allocation):',
        "      * No nodes were eligible for evaluation",
        '    Task Group "cache" (failed to place 3 allocations):',
        '      * No nodes are available in datacenter "dc2"',
        '      * Constraint "${attr.kernel.name} = windows" filtered 1 nodes',
        "      * Resources exhausted on 2 nodes",
        '      * Dimension "memory" exhausted on 2 nodes',
        '    Evaluation "b10cced0" waiting for additional capacity to place remainder',
    ]
    assert {read[1] for read in script.reads} == {EVAL}
    assert outcome.exit_code == 2
    assert outcome.status == "placement_failed"
    assert outcome.blocked_eval_id == BLOCKED
    assert outcome.placement_failures["cache"].failures == 3
    assert "Scores" not in outcome.placement_failures["cache"].metric


def test_next_eval_chain_follows_and_only_the_last_decides() -> None:
    first = evaluation(
        status="failed",
        NextEval=NEXT,
        Wait=60_000_000_000,
        FailedTGAllocs={"cache": {"NodesEvaluated": 0}},
    )
    second = evaluation(NEXT, status="complete", index=20)
    script = Script({EVAL: [first], NEXT: [evaluation(NEXT, index=19), second]}, {})
    outcome = follow(script, EVAL)
    text = lines(outcome.events)
    assert '==> Monitoring next evaluation "5e2a0c1d" in 1m0s' in text
    assert text[-4:] == [
        '==> Monitoring evaluation "5e2a0c1d"',
        f'    Evaluation triggered by job "{CHILD}"',
        '    Evaluation status changed: "pending" -> "complete"',
        '==> Evaluation "5e2a0c1d" finished with status "complete"',
    ]
    assert outcome.exit_code == 0
    assert (outcome.eval_id, outcome.final_eval_id, outcome.eval_status) == (EVAL, NEXT, "complete")
    assert outcome.placement_failures == {}


def test_next_eval_without_wait_prints_no_wait_line() -> None:
    script = Script(
        {
            EVAL: [evaluation(status="failed", NextEval=NEXT)],
            NEXT: [evaluation(NEXT, status="complete")],
        },
        {},
    )
    text = lines(list(watch(script, EVAL)))
    assert not any("Monitoring next evaluation" in t for t in text)
    assert text[-1] == '==> Evaluation "5e2a0c1d" finished with status "complete"'


@pytest.mark.parametrize("status", ["failed", "canceled"])
def test_failed_or_canceled_without_failures_exits_0(status: str) -> None:
    outcome = follow(Script({EVAL: [evaluation(status=status)]}, {}), EVAL)
    assert (outcome.exit_code, outcome.eval_status) == (0, status)


def test_evaluation_missing_from_the_start() -> None:
    outcome = follow(Script({EVAL: [NotFound("eval not found", status=404)]}, {}), EVAL)
    assert lines(outcome.events) == [f'ERR ==> No evaluation with id "{EVAL}" found']
    assert outcome.exit_code == 1
    assert (outcome.error_kind, outcome.error_message, outcome.error_status) == (
        "not_found",
        "eval not found",
        404,
    )


def test_evaluation_disappearing_while_followed() -> None:
    script = Script({EVAL: [evaluation(), NotFound("eval not found", status=404)]}, {})
    outcome = follow(script, EVAL)
    assert lines(outcome.events)[-1] == f'ERR ==> No evaluation with id "{EVAL}" found'
    assert outcome.exit_code == 1


def test_allocation_read_error() -> None:
    script = Script({EVAL: [evaluation()]}, {EVAL: [ServerError("boom", status=500)]})
    outcome = follow(script, EVAL)
    assert lines(outcome.events)[-1] == (
        "ERR ==> Error reading allocations: Unexpected response code: 500 (boom)"
    )
    assert outcome.exit_code == 1


def test_dispatch_and_follow_forwards_events_and_reports_the_dispatch() -> None:
    script = Script({EVAL: [evaluation(status="complete")]}, {EVAL: [[alloc()]]})
    seen: list[Event] = []
    dispatched: list[DispatchResponse] = []
    outcome = dispatch_and_follow(
        script, request("video-encode"), on_event=seen.append, on_dispatched=dispatched.append
    )
    assert seen == outcome.events
    assert lines(seen)[:3] == [
        f"Dispatched Job ID = {CHILD}",
        "Evaluation ID     = 31199841",
        "",
    ]
    assert dispatched[0].eval_id == EVAL
    assert (outcome.job_id, outcome.dispatched_job_id, outcome.exit_code) == (
        "video-encode",
        CHILD,
        0,
    )
    assert [a.id for a in outcome.allocations] == [ALLOC]


def test_detach_does_not_monitor() -> None:
    script = Script({}, {})
    outcome = dispatch_and_follow(script, request("video-encode", detach=True))
    assert lines(outcome.events) == [f"Dispatched Job ID = {CHILD}", "Evaluation ID     = 31199841"]
    assert script.reads == []
    assert (outcome.status, outcome.exit_code) == ("dispatched", 0)
