"""Fault injection, latency, the dispatch record, stats and reset (the /_sim admin API)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import requests

from dispatchq.devstack.nomadsim_process import NomadSimProcess
from tests.nomadsim.conftest import Api, parameterized, unique

FLAGS = ["--fault", "rate_limit:jobs::1", "--fault",
         '{"kind": "error", "route": "evaluations", "count": 1, "message": "boom"}']


@pytest.fixture(scope="module")
def sim() -> Iterator[NomadSimProcess]:
    with NomadSimProcess(args=FLAGS) as process:
        yield process


@pytest.fixture
def fapi(sim: NomadSimProcess) -> Iterator[Api]:
    client = Api(sim.address)
    yield client
    client.ok("DELETE", "/_sim/faults")
    client.close()


def test_faults_from_flags(sim: NomadSimProcess) -> None:
    api = Api(sim.address)
    try:
        limited = api.get("/v1/jobs")
        assert (limited.status_code, limited.text) == (429, "Too Many Requests")
        assert limited.headers["Content-Type"] == "text/plain; charset=utf-8"
        assert api.get("/v1/jobs").status_code == 200
        failed = api.get("/v1/evaluations")
        assert (failed.status_code, failed.text) == (500, "boom")
        assert api.get("/v1/evaluations").status_code == 200
    finally:
        api.close()


def test_error_and_rate_limit_for_the_next_requests(fapi: Api) -> None:
    job_id = unique("faulty")
    fapi.register(parameterized(job_id))
    fapi.ok("POST", "/_sim/faults", json={"kind": "error", "route": "dispatch", "count": 2})
    fapi.ok("POST", "/_sim/faults", json={"kind": "rate_limit", "route": "dispatch", "count": 1})
    responses = [fapi.post(f"/v1/job/{job_id}/dispatch", json={}) for _ in range(4)]
    assert [(r.status_code, r.text if r.status_code != 200 else "") for r in responses] == [
        (500, "No cluster leader"), (500, "No cluster leader"), (429, "Too Many Requests"),
        (200, "")]
    record = fapi.ok("GET", "/_sim/dispatches", params={"parent": job_id})
    assert record["count"] == 1


def test_an_error_rule_answers_its_status(fapi: Api) -> None:
    fapi.ok("POST", "/_sim/faults", json={"kind": "error", "route": "job-allocations",
                                          "status": 503, "message": "try later", "count": 1})
    first = fapi.get("/v1/job/nope/allocations")
    assert (first.status_code, first.text) == (503, "try later")
    assert fapi.get("/v1/job/nope/allocations").status_code == 200  # the count is spent


def test_cut_closes_the_connection_without_a_response(fapi: Api) -> None:
    job_id = unique("cut")
    fapi.register(parameterized(job_id))
    fapi.ok("POST", "/_sim/faults", json={"kind": "cut", "route": "dispatch", "count": 1})
    with pytest.raises(requests.ConnectionError):
        fapi.post(f"/v1/job/{job_id}/dispatch", json={})
    assert fapi.post(f"/v1/job/{job_id}/dispatch", json={}).status_code == 200
    assert fapi.ok("GET", "/_sim/dispatches", params={"parent": job_id})["count"] == 1


def test_route_patterns_methods_and_probability(fapi: Api) -> None:
    job_id = unique("routes")
    fapi.register(parameterized(job_id))
    eval_id = fapi.dispatch(job_id)["EvalID"]
    fapi.ok("PUT", "/_sim/faults", json={"rules": [
        {"kind": "error", "route": "evaluation", "method": "POST"},
        {"kind": "error", "route": "evaluation*", "probability": 0.0},
        {"kind": "rate_limit", "route": "evaluation-allocations", "count": 1},
    ]})
    assert fapi.get(f"/v1/evaluation/{eval_id}").status_code == 200
    assert fapi.get(f"/v1/evaluation/{eval_id}/allocations").status_code == 429
    assert fapi.get(f"/v1/evaluation/{eval_id}/allocations").status_code == 200
    rules = fapi.ok("GET", "/_sim/faults")["rules"]
    assert [r["count"] for r in rules] == [None, None, 0]


def test_slow_and_latency_are_counted(fapi: Api) -> None:
    before = fapi.ok("GET", "/_sim/stats")["faults_injected"].get("slow", 0)
    fapi.ok("POST", "/_sim/faults", json={"kind": "slow", "route": "*", "delay_ms": 20,
                                          "count": 3})
    for _ in range(5):
        assert fapi.get("/v1/jobs").status_code == 200
    assert fapi.ok("GET", "/_sim/stats")["faults_injected"]["slow"] == before + 3
    state = fapi.ok("PUT", "/_sim/faults", json={"latency_ms": 5})
    assert state["latency_ms"] == 5
    assert fapi.get("/v1/status/leader").status_code == 200
    assert fapi.ok("DELETE", "/_sim/faults") == {"latency_ms": 0.0, "rules": []}


@pytest.mark.parametrize(
    "rule",
    [{"kind": "explode"}, {"kind": "error", "probability": 2}, {"kind": "slow"},
     {"kind": "error", "colour": "red"}, {"kind": "error", "status": 429},
     ["not", "an", "object"]],
)
def test_invalid_rules(fapi: Api, rule: object) -> None:
    response = fapi.post("/_sim/faults", json=rule)
    assert response.status_code == 400
    assert response.json()["error"]


def test_stats_and_reset(fapi: Api) -> None:
    job_id = unique("stats")
    fapi.register(parameterized(job_id))
    fapi.dispatch(job_id, idempotency_token="s")
    fapi.dispatch(job_id, idempotency_token="s")
    stats = fapi.ok("GET", "/_sim/stats")
    assert stats["requests_by_route"]["dispatch"] >= 2
    assert stats["idempotent_repeats"] >= 1
    assert stats["responses_by_status"]["200"] >= 3
    assert stats["index"] > 1
    kept = fapi.ok("POST", "/_sim/reset")
    assert kept["requests"] == 0 and kept["dispatches"] >= 1
    cleared = fapi.ok("POST", "/_sim/reset", json={"dispatches": True})
    assert cleared["dispatches"] == 0
    assert fapi.ok("GET", "/_sim/dispatches")["count"] == 0
    assert fapi.get("/_sim/nope").status_code == 404
