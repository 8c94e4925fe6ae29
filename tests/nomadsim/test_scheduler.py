"""Placement, failures with AllocMetric, blocked evals, NextEval, GC."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any
from urllib.parse import quote

import pytest

from dispatchq.devstack.nomadsim_process import NomadSimProcess
from tests.nomadsim.conftest import Api, batch_job, parameterized, unique

# Two nodes of 1000 MHz / 1000 MB each.
SMALL = ["--nodes", "2", "--node-cpu", "1000", "--node-memory", "1000", "--run-time", "100ms"]


@pytest.fixture(scope="module")
def small() -> Iterator[Api]:
    with NomadSimProcess(args=SMALL) as sim:
        client = Api(sim.address)
        yield client
        client.close()


def occupy(api: Api, cpu: int, memory: int, count: int = 1) -> str:
    """A service job holding resources until it is stopped."""
    job_id = unique("hog")
    api.register({**batch_job(job_id, count=count, resources={"CPU": cpu, "MemoryMB": memory}),
                  "Type": "service"})
    api.wait_for(lambda: len([a for a in api.ok("GET", f"/v1/job/{job_id}/allocations")
                              if a["ClientStatus"] == "running"]) == count,
                 "the service allocs to run")
    return job_id


def idle(api: Api) -> None:
    """Wait until earlier tests' allocs have released the small cluster."""
    api.wait_for(lambda: all(n["used_cpu"] == 0 for n in api.ok("GET", "/_sim/nodes")),
                 "the cluster to be idle")


def finished(api: Api, eval_id: str) -> Any:
    ev = api.eval(eval_id)
    return ev if ev["Status"] not in ("pending", "blocked") else None


def test_placement_creates_allocs_with_metrics(small: Api) -> None:
    idle(small)
    job_id = unique("place")
    api = small
    api.register(parameterized(job_id, count=2, resources={"CPU": 100, "MemoryMB": 100}))
    result = api.dispatch(job_id)
    ev = api.wait_for(lambda: finished(api, result["EvalID"]), "the eval to finish")
    assert (ev["Status"], ev["FailedTGAllocs"], ev["BlockedEval"]) == ("complete", None, "")
    assert ev["QueuedAllocations"] == {"g": 0}
    allocs = api.ok("GET", f"/v1/evaluation/{result['EvalID']}/allocations")
    assert len(allocs) == 2
    child = result["DispatchedJobID"]
    assert {a["Name"] for a in allocs} == {f"{child}.g[0]", f"{child}.g[1]"}
    for stub in allocs:
        assert stub["EvalID"] == result["EvalID"] and stub["JobID"] == child
        assert stub["DesiredStatus"] == "run"
        assert stub["CreateIndex"] > result["EvalCreateIndex"]
    full = api.ok("GET", f"/v1/allocation/{allocs[0]['ID']}")
    assert full["Job"]["ID"] == child
    assert full["Metrics"]["NodesEvaluated"] == 2
    assert full["Metrics"]["NodesAvailable"] == {"dc1": 2}
    api.wait_for(lambda: all(a["ClientStatus"] == "complete" for a in
                             api.ok("GET", f"/v1/evaluation/{result['EvalID']}/allocations")),
                 "the allocs to complete")
    done = api.ok("GET", f"/v1/allocation/{allocs[0]['ID']}")
    assert done["ClientDescription"] == "All tasks have completed"
    assert done["TaskStates"]["t"]["State"] == "dead"


def test_resource_exhaustion_blocks_and_reevaluates(small: Api) -> None:
    idle(small)
    api = small
    hog = occupy(api, cpu=900, memory=100, count=2)
    job_id = unique("starved")
    api.register(parameterized(job_id, count=3, resources={"CPU": 500, "MemoryMB": 100}))
    result = api.dispatch(job_id)
    ev = api.wait_for(lambda: finished(api, result["EvalID"]), "the eval to finish")
    assert ev["Status"] == "complete"
    metric = ev["FailedTGAllocs"]["g"]
    assert metric["NodesEvaluated"] == 2
    assert metric["NodesFiltered"] == 0
    assert metric["NodesAvailable"] == {"dc1": 2}
    assert metric["NodesExhausted"] == 2
    assert metric["DimensionExhausted"] == {"cpu": 2}
    assert metric["CoalescedFailures"] == 2
    assert ev["QueuedAllocations"] == {"g": 3}
    blocked = api.eval(ev["BlockedEval"])
    assert blocked["Status"] == "blocked"
    assert blocked["TriggeredBy"] == "queued-allocs"
    assert blocked["StatusDescription"] == "created to place remaining allocations"
    assert blocked["PreviousEval"] == result["EvalID"]
    assert blocked["FailedTGAllocs"]["g"]["NodesExhausted"] == 2
    child = api.job(result["DispatchedJobID"])
    assert child["Status"] == "pending"
    related = api.ok("GET", f"/v1/evaluation/{result['EvalID']}", params={"related": "true"})
    assert [e["ID"] for e in related["RelatedEvals"]] == [blocked["ID"]]

    api.ok("DELETE", f"/v1/job/{hog}")
    ev = api.wait_for(lambda: finished(api, blocked["ID"]), "the blocked eval to be re-run")
    assert (ev["Status"], ev["FailedTGAllocs"]) == ("complete", None)
    allocs = api.ok("GET", f"/v1/evaluation/{blocked['ID']}/allocations")
    assert len(allocs) == 3


def test_memory_dimension(small: Api) -> None:
    idle(small)
    api = small
    job_id = unique("mem")
    api.register(parameterized(job_id, resources={"CPU": 10, "MemoryMB": 5000}))
    result = api.dispatch(job_id)
    ev = api.wait_for(lambda: finished(api, result["EvalID"]), "the eval to finish")
    assert ev["FailedTGAllocs"]["g"]["DimensionExhausted"] == {"memory": 2}
    assert ev["FailedTGAllocs"]["g"]["CoalescedFailures"] == 0


def test_constraint_filtered(small: Api) -> None:
    api = small
    job_id = unique("windows")
    api.register(parameterized(job_id, Constraints=[
        {"LTarget": "${attr.kernel.name}", "RTarget": "windows", "Operand": "="}]))
    result = api.dispatch(job_id)
    ev = api.wait_for(lambda: finished(api, result["EvalID"]), "the eval to finish")
    metric = ev["FailedTGAllocs"]["g"]
    assert metric["NodesFiltered"] == 2
    assert metric["ConstraintFiltered"] == {"${attr.kernel.name} = windows": 2}
    assert metric["NodesExhausted"] == 0
    assert api.eval(ev["BlockedEval"])["Status"] == "blocked"


def test_no_nodes_in_datacenter(small: Api) -> None:
    api = small
    job_id = unique("dc2")
    api.register(parameterized(job_id, Datacenters=["dc2"]))
    result = api.dispatch(job_id)
    ev = api.wait_for(lambda: finished(api, result["EvalID"]), "the eval to finish")
    metric = ev["FailedTGAllocs"]["g"]
    assert (metric["NodesEvaluated"], metric["NodesAvailable"]) == (0, {"dc2": 0})


def test_duplicate_blocked_eval_is_canceled(small: Api) -> None:
    api = small
    job_id = unique("dup")
    api.register({**batch_job(job_id, resources={"CPU": 5000, "MemoryMB": 10}),
                  "Type": "service"})
    first = api.ok("GET", f"/v1/job/{job_id}/evaluations")[0]
    ev = api.wait_for(lambda: finished(api, first["ID"]), "the first eval")
    old_blocked = ev["BlockedEval"]
    again = api.ok("POST", f"/v1/job/{job_id}/evaluate", json={})
    ev2 = api.wait_for(lambda: finished(api, again["EvalID"]), "the second eval")
    assert ev2["BlockedEval"] and ev2["BlockedEval"] != old_blocked
    canceled = api.eval(old_blocked)
    assert canceled["Status"] == "canceled"
    assert canceled["StatusDescription"] == f'existing blocked evaluation exists for job "{job_id}"'
    api.ok("DELETE", f"/v1/job/{job_id}")


def test_next_eval_knob(small: Api) -> None:
    api = small
    api.ok("PUT", "/_sim/scheduler", json={"fail_next_evals": 1, "followup_wait_ms": 50})
    job_id = unique("nexteval")
    api.register(parameterized(job_id))
    result = api.dispatch(job_id)
    ev = api.wait_for(lambda: finished(api, result["EvalID"]), "the eval to fail")
    assert ev["Status"] == "failed"
    assert ev["StatusDescription"] == "evaluation reached delivery limit (3)"
    follow = api.eval(ev["NextEval"])
    assert follow["TriggeredBy"] == "failed-follow-up"
    assert follow["PreviousEval"] == ev["ID"]
    assert follow["Wait"] == 50_000_000
    done = api.wait_for(lambda: finished(api, follow["ID"]), "the follow-up to run")
    assert done["Status"] == "complete"
    assert api.ok("GET", "/_sim/scheduler")["fail_next_evals"] == 0


def test_slow_scheduling_keeps_evals_pending(small: Api) -> None:
    api = small
    job_id = unique("slow")
    api.register(parameterized(job_id))
    api.ok("PUT", "/_sim/scheduler", json={"schedule_delay_ms": 1000})
    try:
        results = [api.dispatch(job_id) for _ in range(20)]
        statuses = [api.eval(r["EvalID"])["Status"] for r in results[1:]]
        assert statuses == ["pending"] * 19
        assert api.ok("GET", "/_sim/stats")["evals_queued"] >= 18
        child = api.job(results[-1]["DispatchedJobID"])
        assert child["Status"] == "pending"
    finally:
        api.ok("PUT", "/_sim/scheduler", json={"schedule_delay_ms": 0})
    api.wait_for(lambda: finished(api, results[-1]["EvalID"]), "the queue to drain")


def test_scheduler_knob_errors(small: Api) -> None:
    response = small.put("/_sim/scheduler", json={"nope": 1})
    assert response.status_code == 400
    assert "unknown scheduler knob" in response.json()["error"]


def test_garbage_collection_keeps_the_dispatch_record() -> None:
    with NomadSimProcess(args=["--gc-after", "200ms", "--gc-interval", "50ms",
                               "--run-time", "10ms"]) as sim:
        api = Api(sim.address)
        try:
            job_id = unique("gc")
            api.register(parameterized(job_id))
            first = api.dispatch(job_id, idempotency_token="reuse")
            child = first["DispatchedJobID"]
            path = f"/v1/job/{quote(child, safe='')}"
            api.wait_for(lambda: api.get(path).status_code == 404, "the dead child to be GC'd")
            assert api.get(f"/v1/evaluation/{first['EvalID']}").status_code == 404
            assert api.ok("GET", f"/v1/job/{job_id}/summary")["Children"]["Dead"] == 0
            second = api.dispatch(job_id, idempotency_token="reuse")
            assert second["DispatchedJobID"] != child
            record = api.ok("GET", "/_sim/dispatches")
            assert [d["child_id"] for d in record["dispatches"]] == [
                child, second["DispatchedJobID"]]
            assert api.job(job_id)["Status"] == "running"
            plain = unique("purged")
            eval_id = api.register(batch_job(plain, config={"run_for": "1h"}))["EvalID"]
            purge_eval = api.ok("DELETE", f"/v1/job/{plain}", params={"purge": "true"})["EvalID"]
            assert api.get(f"/v1/evaluation/{eval_id}").status_code == 200
            api.wait_for(lambda: api.get(f"/v1/evaluation/{purge_eval}").status_code == 404,
                         "a purged job's evals to be collected")
            assert api.get(f"/v1/evaluation/{eval_id}").status_code == 404
        finally:
            api.close()
