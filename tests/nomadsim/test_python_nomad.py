"""A third-party client (python-nomad) registers, dispatches and reads the evaluation."""

from __future__ import annotations

import base64
import time
from collections.abc import Iterator
from typing import Any

import nomad
import pytest
import requests

from dispatchq.devstack.nomadsim_process import NomadSimProcess
from tests.nomadsim.conftest import parameterized, unique
from tests.nomadsim.test_tasks import mock_job


@pytest.fixture
def client(nomadsim: NomadSimProcess, monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    for name in ("NOMAD_ADDR", "NOMAD_TOKEN", "NOMAD_NAMESPACE", "NOMAD_REGION"):
        monkeypatch.delenv(name, raising=False)
    with requests.Session() as session:
        yield nomad.Nomad(host="127.0.0.1", port=nomadsim.port, session=session, timeout=10)


def test_register_dispatch_and_read_evaluation(client: Any) -> None:
    job_id = unique("pynomad")
    registered = client.job.register_job(
        job_id, {"Job": parameterized(job_id, payload="required", required=["who"])}
    )
    assert registered["JobModifyIndex"] > 0
    assert client.job.get_job(job_id)["ParameterizedJob"]["Payload"] == "required"
    result = client.job.dispatch_job(
        job_id, payload=base64.b64encode(b"hi").decode(), meta={"who": "me"}
    )
    child = result["DispatchedJobID"]
    assert child.startswith(f"{job_id}/dispatch-")
    evaluation = client.evaluation.get_evaluation(result["EvalID"])
    assert (evaluation["ID"], evaluation["JobID"]) == (result["EvalID"], child)
    assert evaluation["TriggeredBy"] == "job-register"
    assert job_id in [j["ID"] for j in client.jobs.get_jobs(prefix=job_id)]
    allocations = client.evaluation.get_allocations(result["EvalID"])
    assert isinstance(allocations, list)


def test_validation_errors_surface_as_exceptions(client: Any) -> None:
    job_id = unique("pynomad-err")
    client.job.register_job(job_id, {"Job": parameterized(job_id, payload="required")})
    with pytest.raises(nomad.api.exceptions.BaseNomadException) as caught:
        client.job.dispatch_job(job_id)
    assert caught.value.nomad_resp.text == (
        "Payload is not provided but required by parameterized job")


def test_its_alloc_stop_and_node_drain_calls_move_a_running_child(client: Any) -> None:
    """python-nomad's own calls for `nomad alloc stop` and `nomad node drain` (answers as
    Nomad's, the allocation replaced), then the drain cancelled and the node eligible."""
    job_id = unique("pynomad-move")
    job = mock_job(job_id, {"t": {"run_for": "1h"}}, restart={"Attempts": 0})
    client.job.register_job(job_id, {"Job": job})
    child = client.job.dispatch_job(job_id)["DispatchedJobID"]

    def running(count: int) -> Any:
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            allocs = sorted(client.job.get_allocations(child), key=lambda a: a["CreateIndex"])
            if len(allocs) == count and allocs[-1]["ClientStatus"] == "running":
                return allocs[-1]
            time.sleep(0.05)
        raise AssertionError(f"allocation {count} never ran")

    first = running(1)
    stopped = client.allocation.stop_allocation(first["ID"])
    assert set(stopped) == {"EvalID", "Index"}
    second = running(2)
    assert client.allocation.get_allocation(second["ID"])["PreviousAllocation"] == first["ID"]
    node = second["NodeID"]
    drained = client.node.drain_node_with_spec(node, {"Deadline": -1})  # -force
    assert set(drained) >= {"NodeModifyIndex", "EvalIDs", "EvalCreateIndex", "Index"}
    third = running(3)
    assert third["NodeID"] != node
    assert client.node.get_node(node)["SchedulingEligibility"] == "ineligible"
    client.node.drain_node_with_spec(node, None, mark_eligible=True)
    assert client.node.get_node(node)["SchedulingEligibility"] == "eligible"
    client.job.deregister_job(child)
