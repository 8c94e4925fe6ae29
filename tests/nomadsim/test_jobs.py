"""Registration, reads, lists, filters, stop/purge, namespaces, summaries."""

from __future__ import annotations

from urllib.parse import quote

import pytest

from tests.nomadsim.conftest import Api, batch_job, parameterized, unique

TEXT = "text/plain; charset=utf-8"
CLI_FILTER = 'ParentID == "" and ParameterizedJob is not nil'


def test_register_response_and_canonical_job(api: Api) -> None:
    job_id = unique("canon")
    response = api.put("/v1/jobs", json={"Job": parameterized(job_id, payload="")})
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["EvalID"] == "" and body["EvalCreateIndex"] == 0
    assert body["JobModifyIndex"] == body["Index"] == int(response.headers["X-Nomad-Index"])
    assert set(body) >= {"Warnings", "LastContact", "KnownLeader", "NextToken"}
    job = api.job(job_id)
    assert job["ParameterizedJob"] == {"Payload": "optional", "MetaRequired": None,
                                       "MetaOptional": None}
    assert (job["Name"], job["Namespace"], job["Priority"], job["Status"]) == (
        job_id, "default", 50, "running")
    task = job["TaskGroups"][0]["Tasks"][0]
    assert (task["Resources"]["CPU"], task["Resources"]["MemoryMB"]) == (100, 300)
    assert job["Dispatched"] is False and job["Payload"] is None


def test_register_on_job_path_and_non_parameterized_gets_eval(api: Api) -> None:
    job_id = unique("path")
    body = api.ok("POST", f"/v1/job/{job_id}", json={"Job": batch_job(job_id)})
    assert body["EvalID"] and body["EvalCreateIndex"] == body["Index"]
    response = api.post(f"/v1/job/{job_id}", json={"Job": batch_job("other")})
    assert (response.status_code, response.text) == (400, "Job ID does not match name")


@pytest.mark.parametrize(
    ("body", "status", "message"),
    [
        ({}, 400, "Job must be specified"),
        ({"Job": None}, 400, "Job must be specified"),
        ({"Job": {"Type": "batch"}}, 400, "Job ID hasn't been provided"),
    ],
)
def test_register_http_errors(api: Api, body: object, status: int, message: str) -> None:
    response = api.put("/v1/jobs", json=body)
    assert (response.status_code, response.text) == (status, message)
    assert response.headers["Content-Type"] == TEXT


@pytest.mark.parametrize(
    ("job", "fragment"),
    [
        (parameterized("svc", Type="service"),
         'Parameterized job can only be used with "batch" or "sysbatch" scheduler'),
        ({**parameterized("svc2"), "Type": None},
         'Parameterized job can only be used with "batch" or "sysbatch" scheduler'),
        (parameterized("pay", payload="sometimes"), 'Unknown payload requirement: "sometimes"'),
        (parameterized("dup", required=["a", "b"], optional=["b"]),
         "Required and optional meta keys should be disjoint. Following keys exist in both: "
         "[b]"),
        ({**parameterized("withpayload"), "Payload": "aGk="},
         "job can't be submitted with a payload, only dispatched"),
        ({"ID": "nogroups", "Type": "batch"}, "Missing job task groups"),
    ],
)
def test_register_validation_errors(api: Api, job: dict[str, object], fragment: str) -> None:
    response = api.put("/v1/jobs", json={"Job": job})
    assert response.status_code == 500
    assert response.text.startswith("1 error occurred:\n\t* ") or "errors occurred" in response.text
    assert fragment in response.text


def test_register_in_nonexistent_namespace(api: Api) -> None:
    job_id = unique("nsless")
    response = api.put("/v1/jobs", json={"Job": batch_job(job_id)},
                       params={"namespace": "nowhere"})
    assert (response.status_code, response.text) == (
        500, f'job "{job_id}" is in nonexistent namespace "nowhere"')


def test_namespace_precedence(api: Api) -> None:
    api.ok("PUT", "/v1/namespace/prec-a")
    api.ok("POST", "/v1/namespace/prec-b")
    job_id = unique("prec")
    api.register({**batch_job(job_id), "Namespace": "prec-a"})
    assert api.job(job_id, namespace="prec-a")["Namespace"] == "prec-a"
    api.ok("PUT", "/v1/jobs", json={"Job": {**batch_job(job_id), "Namespace": "prec-a"},
                                    "Namespace": "prec-b"})
    assert api.job(job_id, namespace="prec-b")["Namespace"] == "prec-b"
    names = [n["Name"] for n in api.ok("GET", "/v1/namespaces")]
    assert {"default", "prec-a", "prec-b"} <= set(names)


def test_read_missing_job(api: Api) -> None:
    response = api.get("/v1/job/does-not-exist")
    assert (response.status_code, response.text) == (404, "job not found")
    assert {"X-Nomad-Index", "X-Nomad-KnownLeader", "X-Nomad-LastContact"} <= set(
        response.headers)


def test_read_index_header_is_modify_index(api: Api) -> None:
    job_id = unique("idx")
    api.register(batch_job(job_id))
    response = api.get(f"/v1/job/{job_id}")
    assert response.headers["X-Nomad-Index"] == str(response.json()["ModifyIndex"])
    assert response.headers["X-Nomad-KnownLeader"] == "true"


def test_list_stub_prefix_and_cli_filter(api: Api) -> None:
    prefix = unique("lst")
    api.register(parameterized(f"{prefix}-param"))
    api.register(batch_job(f"{prefix}-plain"))
    child = api.dispatch(f"{prefix}-param")["DispatchedJobID"]
    listed = api.ok("GET", "/v1/jobs", params={"prefix": prefix})
    assert [j["ID"] for j in listed] == sorted([f"{prefix}-param", f"{prefix}-plain", child])
    by_id = {j["ID"]: j for j in listed}
    assert by_id[f"{prefix}-param"]["ParameterizedJob"] is True
    assert by_id[child]["ParameterizedJob"] is False
    assert by_id[child]["ParentID"] == f"{prefix}-param"
    for stub in listed:
        assert stub["JobSummary"]["Namespace"] == "default"
    filtered = api.ok("GET", "/v1/jobs",
                      params={"prefix": prefix, "filter": CLI_FILTER, "per_page": "20"})
    assert [j["ID"] for j in filtered] == [f"{prefix}-param"]


@pytest.mark.parametrize(
    ("expression", "expected"),
    [
        ('Type == "batch" and ParentID != ""', {"child"}),
        ("ParameterizedJob is nil", {"plain"}),
        ('not (ParentID == "")', {"child"}),
        ('ParentID == "" or Type == "service"', {"param", "plain"}),
        ('Meta["team"] == "red"', {"plain"}),
        ('"dc1" in Datacenters', {"plain"}),
        ("Meta is empty", {"param", "child"}),
        ('ID matches "-pl.in$"', {"plain"}),
    ],
)
def test_filter_expressions(api: Api, expression: str, expected: set[str]) -> None:
    prefix = unique("flt")
    api.register(parameterized(f"{prefix}-param"))
    api.register(batch_job(f"{prefix}-plain", Meta={"team": "red"}, Datacenters=["dc1"]))
    child = api.dispatch(f"{prefix}-param")["DispatchedJobID"]
    names = {f"{prefix}-param": "param", f"{prefix}-plain": "plain", child: "child"}
    listed = api.ok("GET", "/v1/jobs", params={"prefix": prefix, "filter": expression})
    assert {names[j["ID"]] for j in listed} == expected


@pytest.mark.parametrize("expression", ['ParentID ==', "(Type", 'Bogus == "x"', "and"])
def test_unparseable_filter(api: Api, expression: str) -> None:
    response = api.get("/v1/jobs", params={"filter": expression})
    assert response.status_code == 500
    assert response.text.startswith("failed to create result paginator: ")


def test_pagination(api: Api) -> None:
    prefix = unique("page")
    for n in range(5):
        api.register(batch_job(f"{prefix}-{n}"))
    first = api.get("/v1/jobs", params={"prefix": prefix, "per_page": "2"})
    assert [j["ID"] for j in first.json()] == [f"{prefix}-0", f"{prefix}-1"]
    token = first.headers["X-Nomad-NextToken"]
    second = api.get("/v1/jobs", params={"prefix": prefix, "per_page": "2", "next_token": token})
    assert [j["ID"] for j in second.json()] == [f"{prefix}-2", f"{prefix}-3"]


def test_stop_and_purge(api: Api) -> None:
    job_id = unique("stop")
    api.register(parameterized(job_id))
    stopped = api.ok("DELETE", f"/v1/job/{job_id}")
    assert stopped["EvalID"] == "" and stopped["JobModifyIndex"] == stopped["Index"]
    job = api.job(job_id)
    assert (job["Stop"], job["Status"]) == (True, "dead")
    api.ok("DELETE", f"/v1/job/{job_id}", params={"purge": "true"})
    assert api.get(f"/v1/job/{job_id}").status_code == 404
    assert api.delete(f"/v1/job/{job_id}").status_code == 404


@pytest.mark.parametrize("word", ["True", "t", "1", "TRUE"])
def test_purge_reads_a_boolean_as_nomad_does(api: Api, word: str) -> None:
    """Go's ParseBool: a client sending Python's `True` (python-nomad) purges too."""
    job_id = unique("purgeword")
    api.register(parameterized(job_id))
    api.ok("DELETE", f"/v1/job/{job_id}", params={"purge": word})
    assert api.get(f"/v1/job/{job_id}").status_code == 404


def test_a_purge_that_is_no_boolean_is_refused(api: Api) -> None:
    job_id = unique("purgebad")
    api.register(parameterized(job_id))
    answer = api.delete(f"/v1/job/{job_id}", params={"purge": "yes"})
    assert (answer.status_code, answer.text) == (
        400, "Failed to parse value of 'purge' ('yes') as a bool"
    )  # fmt: skip
    assert api.get(f"/v1/job/{job_id}").status_code == 200  # nothing done


def test_stopping_a_batch_job_creates_a_deregister_eval(api: Api) -> None:
    job_id = unique("dereg")
    api.register(batch_job(job_id, config={"run_for": "1h"}))
    result = api.ok("DELETE", f"/v1/job/{job_id}")
    ev = api.eval(result["EvalID"])
    assert ev["TriggeredBy"] == "job-deregister"
    api.wait_for(lambda: api.job(job_id)["Status"] == "dead", "the stopped job to be dead")
    allocs = api.ok("GET", f"/v1/job/{job_id}/allocations")
    assert allocs and all(a["DesiredStatus"] == "stop" for a in allocs)


def test_unknown_job_sub_resources(api: Api) -> None:
    assert api.ok("GET", "/v1/job/nope/allocations") == []
    assert api.ok("GET", "/v1/job/nope/evaluations") == []
    assert api.get("/v1/job/nope/summary").status_code == 404
    assert api.post("/v1/job/nope/allocations").status_code == 405


def test_parent_children_summary(api: Api) -> None:
    job_id = unique("children")
    api.register(parameterized(job_id, config={"run_for": "1h"}))
    quick = unique("quick")
    api.register(parameterized(quick))
    running = api.dispatch(job_id)["DispatchedJobID"]
    for _ in range(2):
        api.dispatch(quick)

    def children(parent: str) -> dict[str, int]:
        summary: dict[str, int] = api.ok("GET", f"/v1/job/{parent}/summary")["Children"]
        return summary

    api.wait_for(lambda: children(job_id) == {"Pending": 0, "Running": 1, "Dead": 0},
                 "one running child")
    api.wait_for(lambda: children(quick) == {"Pending": 0, "Running": 0, "Dead": 2},
                 "two dead children")
    api.ok("DELETE", f"/v1/job/{quote(running, safe='')}")
    api.wait_for(lambda: children(job_id) == {"Pending": 0, "Running": 0, "Dead": 1},
                 "the stopped child counted dead")
    stub = api.ok("GET", "/v1/jobs", params={"prefix": job_id})[0]
    assert stub["JobSummary"]["Children"]["Dead"] == 1


def test_child_status_transitions(api: Api) -> None:
    job_id = unique("trans")
    api.register(parameterized(job_id, config={"run_for": "1s"}))
    child = api.dispatch(job_id)["DispatchedJobID"]
    seen: list[str] = []

    def progressed() -> bool:
        status: str = api.job(child)["Status"]
        if not seen or seen[-1] != status:
            seen.append(status)
        return status == "dead"

    api.wait_for(progressed, "the child to finish")
    assert seen[-1] == "dead"
    assert "running" in seen
    assert seen == [s for s in ("pending", "running", "dead") if s in seen]
    summary = api.ok("GET", f"/v1/job/{quote(child, safe='')}/summary")
    assert summary["Summary"]["g"]["Complete"] == 1


def test_mock_driver_exit_code_fails_the_alloc(api: Api) -> None:
    job_id = unique("fails")
    job = parameterized(job_id, config={"exit_code": 1})
    job["TaskGroups"][0]["RestartPolicy"] = {"Attempts": 0}
    job["TaskGroups"][0]["ReschedulePolicy"] = {"Attempts": 0}
    api.register(job)
    child = api.dispatch(job_id)["DispatchedJobID"]
    path = f"/v1/job/{quote(child, safe='')}"
    api.wait_for(lambda: api.ok("GET", path)["Status"] == "dead", "the child to die")
    (alloc,) = api.ok("GET", f"{path}/allocations")
    assert (alloc["ClientStatus"], alloc["ClientDescription"]) == ("failed", "Failed tasks")
    assert api.ok("GET", f"{path}/summary")["Summary"]["g"]["Failed"] == 1


def test_evaluate_and_other_methods(api: Api) -> None:
    job_id = unique("evaluate")
    api.register(batch_job(job_id))
    result = api.ok("POST", f"/v1/job/{job_id}/evaluate", json={})
    assert api.eval(result["EvalID"])["TriggeredBy"] == "job-eval"
    assert api.request("PATCH", f"/v1/job/{job_id}").status_code == 405
    assert api.request("PATCH", "/v1/jobs").status_code == 405
    assert api.get(f"/v1/job/{job_id}/plan").status_code == 501


def test_enforce_index(api: Api) -> None:
    job_id = unique("enforce")
    created = api.ok("PUT", "/v1/jobs", json={"Job": batch_job(job_id), "EnforceIndex": True})
    conflict = api.put("/v1/jobs", json={"Job": batch_job(job_id), "EnforceIndex": True,
                                         "JobModifyIndex": created["JobModifyIndex"] + 1000})
    assert conflict.status_code == 500
    assert "job exists with conflicting job modify index" in conflict.text
    again = api.ok("PUT", "/v1/jobs", json={"Job": batch_job(job_id), "EnforceIndex": True,
                                            "JobModifyIndex": created["JobModifyIndex"]})
    assert api.job(job_id)["Version"] == 1
    assert again["JobModifyIndex"] > created["JobModifyIndex"]


def test_pretty_and_namespace_body(api: Api) -> None:
    response = api.get("/v1/status/leader", params={"pretty": ""})
    assert response.json() == "127.0.0.1:4647"
    job_id = unique("pretty")
    api.register(batch_job(job_id))
    assert "\n    " in api.get(f"/v1/job/{job_id}", params={"pretty": "true"}).text
    api.ok("POST", "/v1/namespace", json={"Name": "from-body", "Description": "d"})
    assert api.ok("GET", "/v1/namespace/from-body")["Description"] == "d"


def test_eval_and_alloc_lists(api: Api) -> None:
    job_id = unique("lists")
    api.register(parameterized(job_id))
    result = api.dispatch(job_id)
    child = result["DispatchedJobID"]
    api.wait_for(lambda: api.job(child)["Status"] == "dead", "the child to finish")
    evals = api.ok("GET", "/v1/evaluations", params={"job": child, "status": "complete"})
    assert [e["ID"] for e in evals] == [result["EvalID"]]
    assert api.ok("GET", "/v1/evaluations", params={"job": child, "status": "pending"}) == []
    filtered = api.ok("GET", "/v1/evaluations", params={"filter": f'JobID == "{child}"'})
    assert [e["ID"] for e in filtered] == [result["EvalID"]]
    allocs = api.ok("GET", "/v1/allocations", params={"filter": f'JobID == "{child}"'})
    assert len(allocs) == 1 and allocs[0]["ClientStatus"] == "complete"
    by_prefix = api.ok("GET", "/v1/allocations", params={"prefix": allocs[0]["ID"][:8]})
    assert allocs[0]["ID"] in [a["ID"] for a in by_prefix]
    assert api.get("/v1/allocation/nope").status_code == 404
    assert api.get("/v1/evaluation/nope").text == "eval not found"


def test_misc_endpoints(api: Api) -> None:
    assert api.ok("GET", "/v1/regions") == ["global"]
    assert api.ok("GET", "/v1/status/peers") == ["127.0.0.1:4647"]
    agent = api.ok("GET", "/v1/agent/self")
    assert agent["config"]["Region"] == "global" and agent["config"]["ACL"]["Enabled"] is False
    nodes = api.ok("GET", "/v1/nodes")
    assert {n["Datacenter"] for n in nodes} == {"dc1"} and len(nodes) == 3
    missing = api.get("/v1/nothing-here")
    assert (missing.status_code, missing.text) == (404, "404 page not found\n")
    api.ok("PUT", "/v1/namespace/short-lived")
    api.ok("DELETE", "/v1/namespace/short-lived")
    assert api.get("/v1/namespace/short-lived").status_code == 404
    assert api.delete("/v1/namespace/default").status_code == 500
