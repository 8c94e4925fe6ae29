"""Rescheduling, stopping, lost nodes, max_run_duration, GC, and what the event stream and
blocking queries show of them (with `--time-scale 0.001`)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from dispatchq.devstack.nomadsim_process import NomadSimProcess
from tests.nomadsim.conftest import Api, unique
from tests.nomadsim.test_events import Stream
from tests.nomadsim.test_tasks import FAST, MS, child_path, final_alloc, mock_job, types

SECOND = 1_000_000_000


@pytest.fixture(scope="module")
def sim() -> Iterator[NomadSimProcess]:
    with NomadSimProcess(args=[*FAST, "--nodes", "2"]) as process:
        yield process


@pytest.fixture
def api(sim: NomadSimProcess) -> Iterator[Api]:
    client = Api(sim.address)
    yield client
    client.close()


def chain(api: Api, child: str) -> list[Any]:
    """The child's allocations, oldest first, in full."""
    stubs = api.ok("GET", f"{child_path(child)}/allocations")
    full = [api.ok("GET", f"/v1/allocation/{s['ID']}") for s in stubs]
    return sorted(full, key=lambda a: a["CreateIndex"])


def test_failed_alloc_is_rescheduled_after_a_delay(api: Api) -> None:
    """scheduler/reconciler/reconcile_cluster.go (createRescheduleLaterEvals), generic_sched.go
    (UpdateRescheduleTracker), nomad/node_endpoint.go (alloc-failure eval), alloc.go
    (NextDelay); batch default reschedule policy: 1 attempt in 24h after 5s."""
    job_id = unique("resched")
    api.register(mock_job(job_id, {"t": {"run_for": "1ms", "exit_code": 1}},
                          restart={"Attempts": 0},
                          reschedule={"Delay": 300 * SECOND}))  # 300 ms scaled
    policy = api.job(job_id)["TaskGroups"][0]["ReschedulePolicy"]
    assert policy == {"Attempts": 1, "Interval": 86_400 * SECOND, "Delay": 300 * SECOND,
                      "DelayFunction": "constant", "MaxDelay": 0, "Unlimited": False}
    child = api.dispatch(job_id)["DispatchedJobID"]
    first = api.wait_for(lambda: next((a for a in chain(api, child) if a["FollowupEvalID"]),
                                      None), "a follow-up evaluation")
    assert first["ClientStatus"] == "failed"
    follow = api.eval(first["FollowupEvalID"])
    assert (follow["TriggeredBy"], follow["StatusDescription"]) == (
        "alloc-failure", "created for delayed rescheduling")
    assert follow["WaitUntil"] != "0001-01-01T00:00:00Z"
    assert api.job(child)["Status"] == "pending"  # a non-terminal eval, no live alloc
    children = api.ok("GET", f"/v1/job/{job_id}/summary")["Children"]
    assert children == {"Pending": 1, "Running": 0, "Dead": 0}
    evals = api.ok("GET", f"{child_path(child)}/evaluations")
    assert {e["TriggeredBy"] for e in evals} == {"job-register", "alloc-failure"}
    api.wait_for(lambda: len(chain(api, child)) == 2 and api.job(child)["Status"] == "dead",
                 "the replacement to fail too")
    old, new = chain(api, child)
    assert new["PreviousAllocation"] == old["ID"] and old["NextAllocation"] == new["ID"]
    assert new["Name"] == old["Name"]
    assert (old["DesiredStatus"], old["DesiredDescription"]) == (
        "stop", "alloc was rescheduled because it failed")
    tracker = new["RescheduleTracker"]
    assert tracker["LastReschedule"] == "ok"
    (event,) = tracker["Events"]
    assert (event["PrevAllocID"], event["PrevNodeID"]) == (old["ID"], old["NodeID"])
    assert event["Delay"] == 300 * MS  # the scaled delay actually waited
    assert event["RescheduleTime"] - old["TaskStates"]["t"]["Events"][-1]["Time"] >= 290 * MS
    assert new["ClientStatus"] == "failed" and new["FollowupEvalID"] == ""
    summary = api.ok("GET", f"{child_path(child)}/summary")["Summary"]["g"]
    assert (summary["Failed"], summary["Complete"]) == (2, 0)


def delays(api: Api, reschedule: dict[str, Any], count: int) -> list[int]:
    job_id = unique("delays")
    api.register(mock_job(job_id, {"t": {"run_for": "1ms", "exit_code": 1}},
                          restart={"Attempts": 0}, reschedule=reschedule))
    child = api.dispatch(job_id)["DispatchedJobID"]
    api.wait_for(lambda: len(chain(api, child)) == count + 1
                 and api.job(child)["Status"] == "dead", "the reschedules")
    last = chain(api, child)[-1]
    return [e["Delay"] // MS for e in last["RescheduleTracker"]["Events"]]


def test_delay_functions(api: Api) -> None:
    """nomad/structs/alloc.go NextDelay: exponential doubles up to MaxDelay, fibonacci adds
    the two previous delays, constant keeps Delay; Attempts bounds the chain."""
    base = {"Attempts": 4, "Delay": 10 * SECOND, "MaxDelay": 50 * SECOND}
    assert delays(api, {**base, "DelayFunction": "exponential"}, 4) == [10, 20, 40, 50]
    assert delays(api, {**base, "DelayFunction": "fibonacci"}, 4) == [10, 10, 20, 30]
    assert delays(api, {**base, "Attempts": 2}, 2) == [10, 10]


def test_unlimited_reschedules_until_stopped(api: Api) -> None:
    """ReschedulePolicy.Unlimited: RescheduleEligible is always true."""
    job_id = unique("unlimited")
    api.register(mock_job(job_id, {"t": {"run_for": "1ms", "exit_code": 1}},
                          restart={"Attempts": 0},
                          reschedule={"Unlimited": True, "Attempts": 0, "Interval": 0,
                                      "Delay": 5 * SECOND}))
    child = api.dispatch(job_id)["DispatchedJobID"]
    api.wait_for(lambda: len(chain(api, child)) >= 4, "several reschedules")
    api.ok("DELETE", child_path(child))
    api.wait_for(lambda: api.job(child)["Status"] == "dead", "the stopped child")


def test_stop_kills_running_tasks(api: Api) -> None:
    """DELETE /v1/job/:id: DesiredStatus stop; the client kills the task (Killing, then,
    after the mock driver's kill_after, Terminated and Killed); the alloc is complete."""
    job_id = unique("stop")
    api.register(mock_job(job_id, {"t": {"run_for": "1h", "kill_after": "100s"}},
                          restart={"Attempts": 0}))
    child = api.dispatch(job_id)["DispatchedJobID"]
    alloc_id = api.wait_for(lambda: next((a["ID"] for a in chain(api, child)
                                          if a["ClientStatus"] == "running"), None), "running")
    assert api.job(child)["Status"] == "running"
    api.ok("DELETE", child_path(child))
    alloc = api.wait_for(lambda: (a := api.ok("GET", f"/v1/allocation/{alloc_id}"))[
        "ClientStatus"] == "complete" and a, "the client to stop the alloc")
    assert (alloc["DesiredStatus"], alloc["DesiredDescription"]) == (
        "stop", "alloc not needed due to job update")
    state = alloc["TaskStates"]["t"]
    assert types(state) == ["Received", "Task Setup", "Started", "Killing", "Terminated",
                            "Killed"]
    assert state["Events"][-1]["Time"] - state["Events"][3]["Time"] >= 90 * MS
    assert (state["State"], state["Failed"]) == ("dead", False)
    assert api.job(child)["Status"] == "dead"
    assert api.job(child)["Stop"] is True


def test_max_run_duration(api: Api) -> None:
    """client/allocrunner/max_run_duration_hook.go and alloc_runner.go (Nomad 2.0.3): over
    the group's max_run_duration (from the alloc's CreateTime) the tasks are killed and
    the alloc is `complete` with `allocation exceeded max_run_duration`."""
    job_id = unique("mrd")
    api.register(mock_job(job_id, {"t": {"run_for": "1h"}}, restart={"Attempts": 0},
                          MaxRunDuration=100 * SECOND))
    child = api.dispatch(job_id)["DispatchedJobID"]
    alloc = final_alloc(api, child)
    assert (alloc["ClientStatus"], alloc["ClientDescription"]) == (
        "complete", "allocation exceeded max_run_duration")
    alloc = api.wait_for(lambda: (a := api.ok("GET", f"/v1/allocation/{alloc['ID']}"))[
        "TaskStates"]["t"]["State"] == "dead" and a, "the task to be killed")
    state = alloc["TaskStates"]["t"]
    killing = next(e for e in state["Events"] if e["Type"] == "Killing")
    assert killing["DisplayMessage"] == "allocation exceeded max_run_duration"
    assert types(state)[-3:] == ["Killing", "Terminated", "Killed"]
    created = alloc["CreateTime"]
    assert killing["Time"] - created >= 95 * MS
    summary = api.ok("GET", f"{child_path(child)}/summary")["Summary"]["g"]
    assert summary["Complete"] == 1


def test_node_down_makes_allocs_lost(api: Api) -> None:
    """A node going down (nomad/node_endpoint.go, reconcile_cluster.go): a `node-update`
    eval; its allocs are lost (DesiredStatus stop, `alloc is lost since its node is
    down`) and replaced on another node with PreviousAllocation."""
    job_id = unique("lost")
    api.register(mock_job(job_id, {"t": {"run_for": "1h"}}, restart={"Attempts": 0}))
    child = api.dispatch(job_id)["DispatchedJobID"]
    first = api.wait_for(lambda: next((a for a in chain(api, child)
                                       if a["ClientStatus"] == "running"), None), "running")
    down = api.ok("POST", f"/_sim/nodes/{first['NodeID']}/down")
    try:
        assert api.eval(down["evals"][0])["TriggeredBy"] == "node-update"
        api.wait_for(lambda: len(chain(api, child)) == 2
                     and chain(api, child)[1]["ClientStatus"] == "running", "a replacement")
        old, new = chain(api, child)
        assert (old["ClientStatus"], old["DesiredStatus"], old["DesiredDescription"]) == (
            "lost", "stop", "alloc is lost since its node is down")
        assert new["PreviousAllocation"] == old["ID"] and old["NextAllocation"] == new["ID"]
        assert new["NodeID"] != old["NodeID"] and new["RescheduleTracker"] is None
        summary = api.ok("GET", f"{child_path(child)}/summary")["Summary"]["g"]
        assert (summary["Lost"], summary["Running"]) == (1, 1)
        nodes = {n["ID"]: n["Status"] for n in api.ok("GET", "/v1/nodes")}
        assert nodes[old["NodeID"]] == "down"
    finally:
        api.ok("POST", f"/_sim/nodes/{first['NodeID']}/up")
        api.ok("DELETE", child_path(child))


def _fail_knob_job(job_id: str, meta: dict[str, str]) -> dict[str, Any]:
    job = mock_job(job_id, {"t": {"run_for": "1ms", "exit_code": 0}}, restart={"Attempts": 1},
                   reschedule={"Attempts": 1, "Delay": 5 * SECOND})
    job["Meta"] = meta
    return job


def test_nomadsim_fail_attempts_fails_a_chains_first_allocations(api: Api) -> None:
    """The nomadsim-only knob (meta `nomadsim_fail_attempts`): a real Nomad cannot make a
    replacement behave differently from the allocation it replaces (client/taskenv gives a
    task no reschedule count, and the mock driver keeps no state between starts), so a
    failure then a successful reschedule needs this. The first allocation fails with the
    knob's exit code after its restarts, the replacement runs the config and completes."""
    job_id = unique("knob")
    api.register(_fail_knob_job(job_id, {"nomadsim_fail_attempts": "1",
                                         "nomadsim_fail_exit_code": "7"}))
    child = api.dispatch(job_id)["DispatchedJobID"]
    api.wait_for(lambda: api.job(child)["Status"] == "dead", f"{child} to be dead")
    first, second = chain(api, child)
    assert (first["ClientStatus"], first["NextAllocation"]) == ("failed", second["ID"])
    codes = [e["Details"]["exit_code"] for e in first["TaskStates"]["t"]["Events"]
             if e["Type"] == "Terminated"]
    assert codes == ["7", "7"]  # the first run and its one restart
    assert second["PreviousAllocation"] == first["ID"]
    assert len(second["RescheduleTracker"]["Events"]) == 1
    assert second["ClientStatus"] == "complete"
    assert [e["Details"]["exit_code"] for e in second["TaskStates"]["t"]["Events"]
            if e["Type"] == "Terminated"] == ["0"]
    summary = api.ok("GET", f"{child_path(child)}/summary")["Summary"]
    assert (summary["g"]["Failed"], summary["g"]["Complete"]) == (1, 1)

    more = unique("knob2")  # more failing attempts than reschedules: the chain fails
    api.register(_fail_knob_job(more, {"nomadsim_fail_attempts": "2"}))
    child = api.dispatch(more)["DispatchedJobID"]
    api.wait_for(lambda: api.job(child)["Status"] == "dead", f"{child} to be dead")
    assert [a["ClientStatus"] for a in chain(api, child)] == ["failed", "failed"]

    bad = unique("knob3")
    api.register(_fail_knob_job(bad, {"nomadsim_fail_attempts": "once"}))
    child = api.dispatch(bad)["DispatchedJobID"]
    alloc = final_alloc(api, child)
    [event] = [e for e in alloc["TaskStates"]["t"]["Events"] if e["Type"] == "Failed Validation"]
    assert "nomadsim_fail_attempts must be a whole number" in event["Details"]["validation_error"]


def test_event_stream_follows_a_child(sim: NomadSimProcess, api: Api) -> None:
    """nomad/stream and state events: an `Allocation` event with the whole alloc (its
    TaskStates) at every task-state change, filterable by job ID; `Job` events when the
    child's status changes."""
    job_id = unique("stream")
    api.register(mock_job(job_id, {"t": {"run_for": "50s", "exit_code": 4}},
                          restart={"Attempts": 1, "Delay": 10 * SECOND}))
    index = api.ok("GET", "/_sim/stats")["index"]
    child_id = f"{job_id}/dispatch-"
    stream = Stream(sim.port, f"topic=Allocation:*&topic=Job:*&index={index}")
    try:
        child = api.dispatch(job_id)["DispatchedJobID"]
        assert child.startswith(child_id)
        events = stream.events_until(lambda evs: any(
            e["Topic"] == "Job" and e["Key"] == child and e["Payload"]["Job"]["Status"] == "dead"
            for e in evs))
    finally:
        stream.close()
    mine = [e for e in events if e["Topic"] == "Allocation"
            and e["Payload"]["Allocation"]["JobID"] == child]
    states = [(e["Type"], e["Payload"]["Allocation"]["ClientStatus"],
               [ev["Type"] for ev in (e["Payload"]["Allocation"]["TaskStates"] or {"t": {
                   "Events": []}})["t"]["Events"]][-1:]) for e in mine]
    assert states[0] == ("PlanResult", "pending", [])
    assert ("AllocationUpdated", "running", ["Started"]) in states
    assert ("AllocationUpdated", "pending", ["Restarting"]) in states
    assert states[-1] == ("AllocationUpdated", "failed", ["Not Restarting"])
    assert len(states) == 5  # placed, running, restarting, running again, failed
    jobs = [e["Payload"]["Job"]["Status"] for e in events
            if e["Topic"] == "Job" and e["Key"] == child]
    assert jobs == ["pending", "running", "dead"]
    filtered = Stream(sim.port, f"topic=Allocation:{child}&index={index}")
    try:
        replay = filtered.events_until(lambda evs: len(evs) >= 5)
    finally:
        filtered.close()
    assert {e["Payload"]["Allocation"]["JobID"] for e in replay} == {child}


def test_blocking_query_wakes_on_task_state_change(api: Api) -> None:
    """A blocking query on the child's allocations returns at each task-state change."""
    job_id = unique("block")
    api.register(mock_job(job_id, {"t": {"run_for": "300s"}}, restart={"Attempts": 0}))
    child = api.dispatch(job_id)["DispatchedJobID"]
    path = f"{child_path(child)}/allocations"
    seen = []
    index = 1
    for _ in range(10):
        response = api.get(path, params={"index": str(index), "wait": "5s"})
        index = int(response.headers["X-Nomad-Index"])
        allocs = response.json()
        if allocs:
            seen.append(allocs[0]["ClientStatus"])
        if seen and seen[-1] == "complete":
            break
    # each answer is a new state (a pending alloc may already run at the first answer)
    assert seen[-2:] == ["running", "complete"]
    assert seen in (["pending", "running", "complete"], ["running", "complete"])


def test_gc_collects_a_dead_rescheduled_child() -> None:
    """Dead children are collected after the threshold (nomad/core_sched.go job GC):
    404, and the idempotency token no longer matches."""
    with NomadSimProcess(args=[*FAST, "--gc-after", "300ms", "--gc-interval", "50ms"]) as s:
        api = Api(s.address)
        try:
            job_id = unique("gc")
            api.register(mock_job(job_id, {"t": {"run_for": "1ms", "exit_code": 1}},
                                  restart={"Attempts": 0}, reschedule={"Attempts": 1}))
            first = api.dispatch(job_id, {}, idempotency_token="once")
            child = first["DispatchedJobID"]
            api.wait_for(lambda: len(chain(api, child)) == 2, "the reschedule")
            api.wait_for(lambda: api.get(child_path(child)).status_code == 404, "the GC")
            assert api.get(f"{child_path(child)}/allocations").json() == []
            again = api.dispatch(job_id, {}, idempotency_token="once")
            assert again["DispatchedJobID"] != child
        finally:
            api.close()


def _running(api: Api, child: str, count: int = 1) -> Any:
    """The child's newest allocation once `count` are in its chain and it runs."""
    def newest() -> Any:
        allocs = chain(api, child)
        if len(allocs) == count and allocs[-1]["ClientStatus"] == "running":
            return allocs[-1]
        return None

    return api.wait_for(newest, f"allocation {count} running")


def test_an_allocation_failed_on_purpose_restarts_then_runs_its_config(api: Api) -> None:
    """`POST /_sim/allocations/<id>/fail`: the task ends as a driver reports an OOM kill
    (exit 137, signal 9), then the restart policy runs as for any exit."""
    job_id = unique("oom")
    api.register(mock_job(job_id, {"t": {"run_for": "1h"}},
                          restart={"Attempts": 1, "Delay": 10 * SECOND, "Mode": "fail"}))
    child = api.dispatch(job_id)["DispatchedJobID"]
    alloc = _running(api, child)
    answer = api.ok("POST", f"/_sim/allocations/{alloc['ID']}/fail",
                    json={"exit_code": 137, "signal": 9, "oom_killed": True})
    assert answer["task"] == "t"
    again = api.wait_for(lambda: (a := api.ok("GET", f"/v1/allocation/{alloc['ID']}"))
                         ["TaskStates"]["t"]["Restarts"] == 1 and a, "a restart")
    events = again["TaskStates"]["t"]["Events"]
    terminated = next(e for e in events if e["Type"] == "Terminated")
    assert terminated["Details"]["oom_killed"] == "true"
    assert terminated["DisplayMessage"] == "Exit Code: 137, Signal: 9"
    assert "Restarting" in types(again["TaskStates"]["t"])
    missing = api.request("POST", "/_sim/allocations/nope/fail", json={})
    assert missing.status_code == 404
    api.ok("DELETE", child_path(child))


def test_an_allocation_stopped_by_an_operator_is_replaced(api: Api) -> None:
    """nomad/alloc_endpoint.go Stop: DesiredTransition.Migrate and an `alloc-stop` eval;
    the reconciler stops it (`alloc is being migrated`) and places a replacement."""
    job_id = unique("astop")
    api.register(mock_job(job_id, {"t": {"run_for": "1h"}}, restart={"Attempts": 0}))
    child = api.dispatch(job_id)["DispatchedJobID"]
    first = _running(api, child)
    answer = api.ok("POST", f"/v1/allocation/{first['ID']}/stop")
    assert api.eval(answer["EvalID"])["TriggeredBy"] == "alloc-stop" and answer["Index"] > 0
    new = _running(api, child, 2)
    old = api.ok("GET", f"/v1/allocation/{first['ID']}")
    assert (old["DesiredStatus"], old["DesiredDescription"]) == ("stop", "alloc is being migrated")
    assert old["DesiredTransition"]["Migrate"] is True and old["NextAllocation"] == new["ID"]
    assert new["PreviousAllocation"] == old["ID"] and new["RescheduleTracker"] is None
    api.wait_for(lambda: api.ok("GET", f"/v1/allocation/{first['ID']}")["ClientStatus"]
                 == "complete", "the old one killed")  # fmt: skip
    assert api.request("POST", "/v1/allocation/nope/stop").status_code == 404
    api.ok("DELETE", child_path(child))


def test_a_drained_nodes_batch_allocation_is_moved_at_the_deadline(api: Api) -> None:
    """nomad/drainer: the node is ineligible at once; a batch allocation runs on until the
    deadline, then is migrated (`node-drain`) to another node."""
    job_id = unique("drain")
    api.register(mock_job(job_id, {"t": {"run_for": "1h"}}, restart={"Attempts": 0}))
    child = api.dispatch(job_id)["DispatchedJobID"]
    first = _running(api, child)
    node = first["NodeID"]
    answer = api.ok("POST", f"/v1/node/{node}/drain",
                    json={"DrainSpec": {"Deadline": 500_000_000}, "Meta": {"why": "kernel"}})
    assert answer["EvalIDs"] == [] and answer["NodeModifyIndex"] > 0  # batch: not yet
    shown = api.ok("GET", f"/v1/node/{node}")
    assert (shown["SchedulingEligibility"], shown["Drain"]) == ("ineligible", True)
    assert api.ok("GET", f"/v1/allocation/{first['ID']}")["DesiredStatus"] == "run"
    try:
        new = _running(api, child, 2)
        old = api.ok("GET", f"/v1/allocation/{first['ID']}")
        assert old["DesiredDescription"] == "alloc is being migrated"
        assert new["NodeID"] != node and new["PreviousAllocation"] == old["ID"]
        evals = api.ok("GET", f"{child_path(child)}/evaluations")
        assert "node-drain" in {e["TriggeredBy"] for e in evals}
        assert api.ok("GET", f"/v1/node/{node}")["Drain"] is False  # done: nothing left
    finally:
        api.ok("POST", f"/v1/node/{node}/drain",
               json={"DrainSpec": None, "MarkEligible": True})
        api.ok("DELETE", child_path(child))
    assert api.ok("GET", f"/v1/node/{node}")["SchedulingEligibility"] == "eligible"
    assert api.request("GET", "/v1/node/nope").status_code == 404
