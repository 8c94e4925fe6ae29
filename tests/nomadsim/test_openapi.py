"""Responses validate against Nomad's OpenAPI schemas (fixtures/nomad-openapi.yaml).

Types are checked for every field (null allowed: Go renders nil as null, and the spec
never says `nullable`), and the spec's fields must be present except those listed here
as not modelled by nomadsim.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import quote

from tests.nomadsim.conftest import Api, OpenApi, parameterized, unique

NOT_MODELLED: dict[str, set[str]] = {
    # Enterprise or features outside the dispatch path.
    "Job": {"Affinities", "Spreads", "Update", "Multiregion", "Reschedule", "Migrate",
            "ConsulToken", "ConsulNamespace", "VaultToken", "VaultNamespace", "NomadTokenID"},
    "JobListStub": set(),
    "JobDispatchResponse": {"LastIndex", "RequestTime"},
    "JobRegisterResponse": {"LastIndex", "RequestTime"},
    "JobDeregisterResponse": {"LastIndex", "RequestTime"},
    "Evaluation": set(),
    "AllocationListStub": set(),
    "Allocation": {"Services"},
    "AllocationMetric": set(),
    "JobSummary": set(),
    "Namespace": set(),
}


def check(openapi: OpenApi, instance: Any, schema: str) -> None:
    openapi.validate(instance, schema)
    if isinstance(instance, dict) and schema in NOT_MODELLED:
        assert openapi.missing(instance, schema) <= NOT_MODELLED[schema], schema


def test_job_lifecycle_responses(api: Api, openapi: OpenApi) -> None:
    job_id = unique("schema")
    registered = api.register(parameterized(job_id, required=["r"]))
    check(openapi, registered, "JobRegisterResponse")
    check(openapi, api.job(job_id), "Job")
    result = api.dispatch(job_id, {"Meta": {"r": "1"}, "Payload": "aGk="})
    check(openapi, result, "JobDispatchResponse")
    child = quote(result["DispatchedJobID"], safe="")
    api.wait_for(lambda: api.ok("GET", f"/v1/job/{child}")["Status"] == "dead", "the child")
    check(openapi, api.ok("GET", f"/v1/job/{child}"), "Job")
    for stub in api.ok("GET", "/v1/jobs", params={"prefix": job_id}):
        check(openapi, stub, "JobListStub")
        check(openapi, stub["JobSummary"], "JobSummary")
    check(openapi, api.ok("GET", f"/v1/job/{job_id}/summary"), "JobSummary")
    ev = api.ok("GET", f"/v1/evaluation/{result['EvalID']}", params={"related": "true"})
    check(openapi, ev, "Evaluation")
    for listed in api.ok("GET", f"/v1/job/{child}/evaluations"):
        check(openapi, listed, "Evaluation")
    allocs = api.ok("GET", f"/v1/evaluation/{result['EvalID']}/allocations")
    assert allocs
    for stub in allocs + api.ok("GET", f"/v1/job/{child}/allocations"):
        check(openapi, stub, "AllocationListStub")
    full = api.ok("GET", f"/v1/allocation/{allocs[0]['ID']}")
    check(openapi, full, "Allocation")
    check(openapi, full["Metrics"], "AllocationMetric")
    stopped = api.ok("DELETE", f"/v1/job/{job_id}")
    check(openapi, stopped, "JobDeregisterResponse")
    for namespace in api.ok("GET", "/v1/namespaces"):
        check(openapi, namespace, "Namespace")


def test_placement_failure_responses(api: Api, openapi: OpenApi) -> None:
    job_id = unique("schemafail")
    api.register(parameterized(job_id, resources={"CPU": 10**7, "MemoryMB": 10}))
    result = api.dispatch(job_id)
    ev = api.wait_for(
        lambda: (e := api.eval(result["EvalID"]))["Status"] == "complete" and e, "the eval")
    check(openapi, ev, "Evaluation")
    check(openapi, ev["FailedTGAllocs"]["g"], "AllocationMetric")
    blocked = api.ok("GET", f"/v1/evaluation/{ev['BlockedEval']}", params={"related": "true"})
    check(openapi, blocked, "Evaluation")
    for related in blocked["RelatedEvals"]:
        check(openapi, related, "EvaluationStub")
    for listed in api.ok("GET", "/v1/evaluations", params={"prefix": ev["ID"][:8]}):
        check(openapi, listed, "Evaluation")
