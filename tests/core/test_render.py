"""Line rendering: Go formatting helpers and the CLI's texts for each event."""

from __future__ import annotations

import pytest

from dispatchq.core.durations import go_duration
from dispatchq.core.render import Line, go_quote, metric_lines, render
from dispatchq.core.transcript import (
    AllocationsReadFailed,
    Dispatched,
    DispatchFailed,
    EvalFinished,
    NextEvalScheduled,
    TaskGroupFailed,
    WithinDeployment,
)

ID = "31199841-1111-2222-3333-444444444444"


@pytest.mark.parametrize(
    ("nanoseconds", "text"),
    [
        (0, "0s"),
        (1, "1ns"),
        (999, "999ns"),
        (1_500, "1.5µs"),
        (300_000_000, "300ms"),
        (1_000_000_000, "1s"),
        (1_500_000_000, "1.5s"),
        (30_000_000_000, "30s"),
        (60_000_000_000, "1m0s"),
        (90_000_000_000, "1m30s"),
        (360_000_000_000, "6m0s"),
        (3_600_000_000_000, "1h0m0s"),
        (3_723_000_000_001, "1h2m3.000000001s"),
        (-1_500_000_000, "-1.5s"),
    ],
)
def test_go_duration(nanoseconds: int, text: str) -> None:
    assert go_duration(nanoseconds) == text


def test_go_quote() -> None:
    assert go_quote("plain") == '"plain"'
    assert go_quote('a "b" \\ c') == '"a \\"b\\" \\\\ c"'
    assert go_quote("tab\tnl\n\x01é\u00a0") == '"tab\\tnl\\n\\x01é\\u00a0"'


def test_dispatch_header_alignment_and_short_ids() -> None:
    event = Dispatched("video/dispatch-1-abcdef12", ID, followed=True)
    assert render(event) == [
        Line("Dispatched Job ID = video/dispatch-1-abcdef12"),
        Line("Evaluation ID     = 31199841"),
        Line(""),
    ]
    assert render(event, verbose=True)[1] == Line(f"Evaluation ID     = {ID}")
    # No evaluation (periodic parent, idempotent repeat): one line, no monitoring.
    assert render(Dispatched("video/dispatch-1-abcdef12", "", followed=False)) == [
        Line("Dispatched Job ID = video/dispatch-1-abcdef12")
    ]


def test_errors_go_to_stderr() -> None:
    failed = DispatchFailed(
        "validation",
        500,
        "parameterized job not found",
        "Unexpected response code: 500 (parameterized job not found)",
    )
    assert render(failed) == [
        Line(
            "Failed to dispatch job: Unexpected response code: 500 (parameterized job not found)",
            stderr=True,
        )
    ]
    allocs = AllocationsReadFailed(ID, "transport", None, "x", 'Get "u": reset')
    assert render(allocs) == [Line('==> Error reading allocations: Get "u": reset', stderr=True)]


def test_next_eval_line_only_with_a_wait() -> None:
    assert render(NextEvalScheduled(ID, 0)) == []
    assert render(NextEvalScheduled(ID, 1_500_000_000)) == [
        Line('==> Monitoring next evaluation "31199841" in 1.5s')
    ]


def test_finish_and_deployment_lines() -> None:
    assert render(EvalFinished(ID, "canceled", placement_failed=False)) == [
        Line('==> Evaluation "31199841" finished with status "canceled"')
    ]
    assert render(WithinDeployment(ID)) == [Line('    Evaluation within deployment: "31199841"')]


def test_metric_lines_in_the_cli_order() -> None:
    metric = {
        "NodesEvaluated": 4,
        "NodesAvailable": {"dc1": 2, "dc0": 0},
        "ClassFiltered": {"gpu": 1},
        "ConstraintFiltered": {"${node.class} = x": 2},
        "NodesExhausted": 3,
        "ClassExhausted": {"large": 3},
        "DimensionExhausted": {"cpu": 1, "memory": 2},
        "QuotaExhausted": ["cpu: 100 > 50"],
    }
    assert metric_lines(metric) == [
        '* No nodes are available in datacenter "dc0"',
        '* Class "gpu" filtered 1 nodes',
        '* Constraint "${node.class} = x" filtered 2 nodes',
        "* Resources exhausted on 3 nodes",
        '* Class "large" exhausted on 3 nodes',
        '* Dimension "cpu" exhausted on 1 nodes',
        '* Dimension "memory" exhausted on 2 nodes',
        '* Quota limit hit "cpu: 100 > 50"',
    ]


def test_task_group_with_no_metric_lines_prints_an_empty_line() -> None:
    event = TaskGroupFailed("cache", 2, {"NodesEvaluated": 1})
    assert render(event) == [
        Line('    Task Group "cache" (failed to place 2 allocations):'),
        Line(""),
    ]
