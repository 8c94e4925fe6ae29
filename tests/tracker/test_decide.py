"""`dispatchq.tracker.decide`: how a child ended, from Nomad's JSON (pure)."""

from __future__ import annotations

from typing import Any

import pytest

from dispatchq.tracker.decide import chain_ends, child_end, decide, unix_time
from dispatchq.tracker.progress import changes


def _task(state: str = "dead", *, failed: bool = False, code: int | None = 0,
          restarts: int = 0, events: list[Any] | None = None) -> dict[str, Any]:  # fmt: skip
    evs = list(events or [])
    if code is not None:
        evs.append({"Type": "Terminated", "Details": {"exit_code": str(code), "signal": "0"}})
    return {
        "State": state, "Failed": failed, "Restarts": restarts, "Events": evs,
        "StartedAt": "2026-12-06T10:00:00.123456789Z",
        "FinishedAt": "2026-12-06T10:00:05.5Z" if state == "dead" else "0001-01-01T00:00:00Z",
    }  # fmt: skip


def _alloc(aid: str, client: str = "complete", *, desired: str = "run", index: int = 1,
           prev: str = "", nxt: str = "", description: str = "", reschedules: int = 0,
           tasks: dict[str, Any] | None = None, why: str = "") -> dict[str, Any]:  # fmt: skip
    return {
        "ID": aid, "TaskGroup": "encode", "ClientStatus": client, "DesiredStatus": desired,
        "ClientDescription": description, "DesiredDescription": why, "CreateIndex": index,
        "PreviousAllocation": prev,
        "NextAllocation": nxt, "FollowupEvalID": "",
        "RescheduleTracker": {"Events": [{}] * reschedules} if reschedules else None,
        "TaskStates": tasks if tasks is not None else {"ffmpeg": _task()},
    }  # fmt: skip


def _job(status: str = "dead", stop: bool = False) -> dict[str, Any]:
    return {"ID": "enc/dispatch-1", "Status": status, "Stop": stop}


def test_every_chain_completed_without_a_failed_task_is_exit_0() -> None:
    verdict = decide(_job(), [_alloc("a1")])
    assert (verdict.ended, verdict.status, verdict.exit_code) == (True, "finished", 0)
    [alloc] = verdict.child["allocations"]
    task = alloc["tasks"]["ffmpeg"]
    assert task == {"state": "dead", "failed": False, "restarts": 0, "exit_code": 0,
                    "started_at": 1796551200.123, "finished_at": 1796551205.5}  # fmt: skip
    assert verdict.child["status"] == "dead" and alloc["reschedules"] == 0


def test_a_failure_then_a_successful_reschedule_is_exit_0() -> None:
    """Nomad 2.0.1's -wait counts this as failed; the last allocation of the chain decides."""
    first = _alloc("a1", "failed", desired="stop", nxt="a2",
                   tasks={"ffmpeg": _task(failed=True, code=1, restarts=3)})  # fmt: skip
    second = _alloc("a2", index=2, prev="a1", reschedules=1)
    verdict = decide(_job(), [second, first])
    assert (verdict.status, verdict.exit_code) == ("finished", 0)
    [alloc] = verdict.child["allocations"]
    assert (alloc["id"], alloc["reschedules"]) == ("a2", 1)


def test_the_progress_view_shows_how_a_replaced_allocation_ended() -> None:
    """`-wait` prints the first allocation's last exit though a reschedule replaced it."""
    running = _alloc("a1", "running", tasks={"ffmpeg": _task("running", code=7, restarts=3)})
    first = _alloc("a1", "failed", desired="stop", nxt="a2", description="Failed tasks",
                   tasks={"ffmpeg": _task(failed=True, code=7, restarts=3)})  # fmt: skip
    second = _alloc("a2", "running", index=2, prev="a1", reschedules=1,
                    tasks={"ffmpeg": _task("running", code=None)})  # fmt: skip
    before = child_end(_job("running"), [running], every=True)
    after = child_end(_job("running"), [second, first], every=True)
    assert changes(before, after) == [
        'Allocation "a1" failed: Failed tasks',
        'Task "ffmpeg" exited with code 7 (failed)',
        'Allocation "a2" placed: rescheduled (attempt 1)',
        'Allocation "a2" running',
        'Task "ffmpeg" started',
    ]
    assert [a["id"] for a in child_end(_job("running"), [second, first])["allocations"]] == ["a2"]


def test_a_task_that_failed_after_its_restarts_and_reschedules_is_exit_2() -> None:
    tasks = {"ffmpeg": _task(failed=True, code=3, restarts=3)}
    verdict = decide(_job(), [_alloc("a1", "failed", tasks=tasks, reschedules=1)])
    assert (verdict.status, verdict.exit_code) == ("failed", 2)
    assert "task ffmpeg exited with code 3" in verdict.message
    task = verdict.child["allocations"][0]["tasks"]["ffmpeg"]
    assert (task["failed"], task["exit_code"], task["restarts"]) == (True, 3, 3)


def test_a_start_error_is_exit_2_with_the_drivers_words() -> None:
    events = [{"Type": "Driver Failure", "Details": {"driver_error": "exec: not found"}}]
    tasks = {"ffmpeg": _task(failed=True, code=None, events=events)}
    verdict = decide(_job(), [_alloc("a1", "failed", tasks=tasks)])
    assert (verdict.status, verdict.exit_code) == ("failed", 2)
    assert verdict.child["allocations"][0]["tasks"]["ffmpeg"]["message"] == "exec: not found"
    assert "exit_code" not in verdict.child["allocations"][0]["tasks"]["ffmpeg"]


def test_max_run_duration_is_exit_2_though_the_alloc_is_complete() -> None:
    alloc = _alloc("a1", description="allocation exceeded max_run_duration")
    verdict = decide(_job(), [alloc])
    assert (verdict.status, verdict.exit_code) == ("failed", 2)


def test_lost_without_a_replacement_is_exit_1_in_nomads_words() -> None:
    """The server's reason (DesiredDescription), not the client's last word, which a lost
    node's allocation keeps from before: `Tasks are running`."""
    alloc = _alloc("a1", "lost", desired="stop", description="Tasks are running",
                   why="alloc is lost since its node is down")  # fmt: skip
    verdict = decide(_job(), [alloc])
    assert (verdict.status, verdict.exit_code, verdict.error_kind) == ("error", 1, "lost")
    assert verdict.message == (
        'allocation a1 (group "encode") was lost without a replacement '
        "(alloc is lost since its node is down)")  # fmt: skip


def test_the_progress_view_says_why_the_server_stopped_or_lost_an_allocation() -> None:
    running = _alloc("a1", "running", description="Tasks are running",
                     tasks={"ffmpeg": _task("running", code=None)})  # fmt: skip
    moving = _alloc("a1", "running", desired="stop", description="Tasks are running",
                    why="alloc is being migrated", tasks={"ffmpeg": _task("running", code=None)})
    lost = _alloc("a1", "lost", desired="stop", description="Tasks are running",
                  why="alloc is lost since its node is down",
                  tasks={"ffmpeg": _task("running", code=None)})  # fmt: skip
    before = child_end(_job("running"), [running], every=True)
    assert changes(before, child_end(_job("running"), [moving], every=True)) == [
        'Allocation "a1" stopped: alloc is being migrated']
    assert changes(before, child_end(_job("running"), [lost], every=True)) == [
        'Allocation "a1" lost: alloc is lost since its node is down']


def test_lost_then_replaced_and_completed_is_exit_0() -> None:
    old = _alloc("a1", "lost", desired="stop", nxt="a2")
    new = _alloc("a2", index=2, prev="a1")
    assert chain_ends([old, new]) == [new]
    assert decide(_job(), [old, new]).exit_code == 0


def test_stopped_by_someone_else_is_exit_1() -> None:
    tasks = {"ffmpeg": _task(code=0, events=[{"Type": "Killing"}])}
    alloc = _alloc("a1", desired="stop", tasks=tasks)
    verdict = decide(_job(stop=True), [alloc])
    assert (verdict.exit_code, verdict.error_kind) == (1, "stopped")


def test_a_stopped_job_whose_children_all_completed_is_still_exit_0() -> None:
    assert decide(_job(stop=True), [_alloc("a1")]).exit_code == 0


def test_collected_before_its_end_was_seen_is_exit_1() -> None:
    verdict = decide(None, [])
    assert (verdict.ended, verdict.exit_code, verdict.error_kind) == (True, 1, "collected")


@pytest.mark.parametrize(
    ("job", "allocs", "stage"),
    [
        (_job("pending"), [], "scheduled"),  # blocked: waits for capacity
        (_job("running"), [_alloc("a1", "running", tasks={"ffmpeg": _task("running")})],
         "running"),
        (_job("running"), [_alloc("a1", "pending")], "scheduled"),
        # failed, its reschedule pending: the job is not dead yet
        (_job("pending"), [_alloc("a1", "failed")], "scheduled"),
        # dead, but an alloc not terminal yet (the client still reports)
        (_job("dead"), [_alloc("a1", "running")], "running"),
    ],
)  # fmt: skip
def test_not_ended_yet(job: dict[str, Any], allocs: list[dict[str, Any]], stage: str) -> None:
    verdict = decide(job, allocs, now=100.0, deadline=None)
    assert (verdict.ended, verdict.stage) == (False, stage)


def test_the_wait_timeout_while_waiting_for_placement_is_exit_2() -> None:
    verdict = decide(_job("pending"), [], now=100.0, deadline=100.0)
    assert (verdict.ended, verdict.status, verdict.exit_code) == (True, "unplaced", 2)


def test_the_wait_timeout_while_running_is_exit_1() -> None:
    allocs = [_alloc("a1", "running", tasks={"ffmpeg": _task("running")})]
    verdict = decide(_job("running"), allocs, now=101.0, deadline=100.0)
    assert (verdict.exit_code, verdict.error_kind) == (1, "wait_timeout")
    assert not decide(_job("running"), allocs, now=99.0, deadline=100.0).ended


def test_a_failed_chain_beside_a_completed_one_is_exit_2() -> None:
    failed = _alloc("b1", "failed", index=2, tasks={"ffmpeg": _task(failed=True, code=9)})
    verdict = decide(_job(), [_alloc("a1"), failed])
    assert verdict.exit_code == 2 and len(verdict.child["allocations"]) == 2


def test_no_allocation_at_all_and_dead_is_exit_1() -> None:
    assert decide(_job(), []).exit_code == 1


def test_times() -> None:
    assert unix_time("0001-01-01T00:00:00Z") is None
    assert unix_time("not a time") is None
    assert unix_time(None) is None
    assert unix_time("1970-01-01T00:00:01.000999999Z") == 1.001
