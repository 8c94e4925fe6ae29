"""Dispatch over HTTP: validation answers, child IDs, the child job, idempotency tokens."""

from __future__ import annotations

import base64
import re
import time
from urllib.parse import quote

import pytest

from tests.nomadsim.conftest import Api, batch_job, parameterized, unique

CHILD_ID = re.compile(r"(?P<parent>.+)/dispatch-(?P<unix>\d+)-(?P<hex>[0-9a-f]{8})")
TEXT = "text/plain; charset=utf-8"


def dispatch_raw(api: Api, job_id: str, body: object = None, **kwargs: object):  # type: ignore[no-untyped-def]
    path = f"/v1/job/{quote(job_id, safe='')}/dispatch"
    if isinstance(body, bytes | str):
        return api.post(path, data=body, **kwargs)
    return api.post(path, json=body if body is not None else {}, **kwargs)


def expect(response, status: int, body: str) -> None:  # type: ignore[no-untyped-def]
    assert (response.status_code, response.text) == (status, body)
    assert response.headers["Content-Type"] == TEXT


def test_success_shape_and_index_header(api: Api, param_job: str) -> None:
    response = dispatch_raw(api, param_job, {"JobID": param_job, "Meta": {"r": "1"},
                                             "Payload": None, "IdPrefixTemplate": "",
                                             "Priority": 0})
    assert response.status_code == 200, response.text
    body = response.json()
    assert set(body) == {"DispatchedJobID", "EvalID", "EvalCreateIndex", "JobCreateIndex",
                         "Index"}
    assert body["EvalCreateIndex"] == body["JobCreateIndex"] == body["Index"] > 0
    assert response.headers["X-Nomad-Index"] == str(body["Index"])
    assert re.fullmatch(r"[0-9a-f-]{36}", body["EvalID"])


def test_child_id_format(api: Api, param_job: str) -> None:
    before = int(time.time())
    child = api.dispatch(param_job, {"Meta": {"r": "1"}})["DispatchedJobID"]
    match = CHILD_ID.fullmatch(child)
    assert match is not None, child
    assert match["parent"] == param_job
    assert before <= int(match["unix"]) <= int(time.time())


def test_id_prefix_template_is_inserted_verbatim(api: Api, param_job: str) -> None:
    child = api.dispatch(param_job, {"Meta": {"r": "1"}, "IdPrefixTemplate": "a b/c"})
    assert re.fullmatch(
        rf"{param_job}/dispatch-a b/c-\d+-[0-9a-f]{{8}}", child["DispatchedJobID"]
    )


def test_child_fields(api: Api) -> None:
    parent_id = unique("fields")
    api.register(parameterized(parent_id, required=["r"], optional=["k"],
                               Meta={"k": "parent", "p": "kept"}, Priority=70))
    result = api.dispatch(parent_id, {"Meta": {"r": "1", "k": "child"},
                                      "Payload": base64.b64encode(b"hello").decode()},
                          idempotency_token="tok-1")
    child = api.job(result["DispatchedJobID"])
    assert child["ID"] == child["Name"] == result["DispatchedJobID"]
    assert child["ParentID"] == parent_id
    assert child["Dispatched"] is True
    assert child["DispatchIdempotencyToken"] == "tok-1"
    assert child["Priority"] == 70
    assert child["Meta"] == {"k": "child", "p": "kept", "r": "1"}
    assert base64.b64decode(child["Payload"]) == b"hello"
    assert child["Namespace"] == "default"
    assert child["ParameterizedJob"]["MetaRequired"] == ["r"]
    assert child["Status"] in ("pending", "running", "dead")
    assert child["CreateIndex"] == result["JobCreateIndex"]
    ev = api.eval(result["EvalID"])
    assert (ev["Status"], ev["TriggeredBy"], ev["JobID"], ev["Type"]) == (
        ev["Status"], "job-register", child["ID"], "batch")


def test_child_without_payload_shows_null_and_request_priority_wins(api: Api,
                                                                    param_job: str) -> None:
    result = api.dispatch(param_job, {"Meta": {"r": "1"}, "Payload": "", "Priority": 5})
    child = api.job(result["DispatchedJobID"])
    assert child["Payload"] is None
    assert child["Priority"] == 5


# -- validation answers in order ----------------------------------------------------------


def test_row4_empty_job_id(api: Api) -> None:
    expect(api.post("/v1/job//dispatch", json={}), 500, "missing parameterized job ID")


def test_row5_not_found_in_request_namespace(api: Api, param_job: str) -> None:
    expect(dispatch_raw(api, "no-such-job"), 500, "parameterized job not found")
    api.ok("PUT", "/v1/namespace/other-ns")
    expect(dispatch_raw(api, param_job, params={"namespace": "other-ns"}), 500,
           "parameterized job not found")


def test_row6_not_parameterized_and_child(api: Api, param_job: str) -> None:
    plain = unique("plain")
    api.register(batch_job(plain))
    expect(dispatch_raw(api, plain), 500, f'Specified job "{plain}" is not a parameterized job')
    child = api.dispatch(param_job, {"Meta": {"r": "1"}})["DispatchedJobID"]
    expect(dispatch_raw(api, child, {"Meta": {"r": "1"}}), 500,
           f'Specified job "{child}" is not a parameterized job')


def test_row7_stopped_parent(api: Api) -> None:
    job_id = unique("stopped")
    api.register(parameterized(job_id))
    api.ok("DELETE", f"/v1/job/{job_id}")
    expect(dispatch_raw(api, job_id), 500, f'Specified job "{job_id}" is stopped')


def test_row8_payload_required_and_forbidden(api: Api) -> None:
    required, forbidden = unique("req"), unique("forbid")
    api.register(parameterized(required, payload="required"))
    api.register(parameterized(forbidden, payload="forbidden"))
    message = "Payload is not provided but required by parameterized job"
    expect(dispatch_raw(api, required, {"Payload": None}), 500, message)
    expect(dispatch_raw(api, required, {"Payload": ""}), 500, message)
    big = base64.b64encode(b"x" * 20000).decode()
    # row 8 runs before row 9: forbidden plus oversize reports "forbidden"
    expect(dispatch_raw(api, forbidden, {"Payload": big}), 500,
           "Payload provided but forbidden by parameterized job")


def test_row9_payload_size_limit(api: Api, param_job: str) -> None:
    exact = base64.b64encode(b"x" * 16384).decode()
    assert api.dispatch(param_job, {"Payload": exact, "Meta": {"r": "1"}})["EvalID"]
    over = base64.b64encode(b"x" * 16385).decode()
    expect(dispatch_raw(api, param_job, {"Payload": over, "Meta": {"r": "1"}}), 500,
           "Payload exceeds maximum size; 16385 > 16384")


def test_row10_unpermitted_meta_keys(api: Api) -> None:
    job_id = unique("meta")
    api.register(parameterized(job_id, optional=["k"], Meta={"parent": "x"}))
    expect(dispatch_raw(api, job_id, {"Meta": {"parent": "y"}}), 500,
           "Dispatch request included unpermitted metadata keys: [parent]")
    response = dispatch_raw(api, job_id, {"Meta": {"a": "1", "b": "2", "k": "3"}})
    assert response.status_code == 500
    assert response.text in (
        "Dispatch request included unpermitted metadata keys: [a b]",
        "Dispatch request included unpermitted metadata keys: [b a]",
    )


def test_row11_missing_required_meta(api: Api, param_job: str) -> None:
    expect(dispatch_raw(api, param_job, {"Meta": {"k": "1"}}), 500,
           "Dispatch did not provide required meta keys: [r]")
    # row 10 before row 11
    expect(dispatch_raw(api, param_job, {"Meta": {"zz": "1"}}), 500,
           "Dispatch request included unpermitted metadata keys: [zz]")


@pytest.mark.parametrize("priority", [-1, 101])
def test_row12_priority_range(api: Api, param_job: str, priority: int) -> None:
    expect(dispatch_raw(api, param_job, {"Meta": {"r": "1"}, "Priority": priority}), 500,
           "dispatch job priority must be between [1, 100]")


# -- idempotency --------------------------------------------------------------------------


def test_idempotent_repeat_returns_existing_child(api: Api, param_job: str) -> None:
    first = api.dispatch(param_job, {"Meta": {"r": "1"}}, idempotency_token="same")
    repeat = api.dispatch(param_job, {"Meta": {"r": "2"}, "Payload": "aGk="},
                          idempotency_token="same")
    child = api.job(first["DispatchedJobID"])
    assert repeat == {
        "DispatchedJobID": first["DispatchedJobID"],
        "EvalID": "",
        "EvalCreateIndex": 0,
        "JobCreateIndex": child["CreateIndex"],
        "Index": repeat["Index"],
    }
    assert repeat["Index"] >= child["CreateIndex"]
    assert child["Meta"]["r"] == "1"
    assert child["Payload"] is None


def test_idempotency_token_in_body_and_query_wins(api: Api, param_job: str) -> None:
    first = api.dispatch(param_job, {"Meta": {"r": "1"}, "IdempotencyToken": "body-tok"})
    again = api.dispatch(param_job, {"Meta": {"r": "1"}}, idempotency_token="body-tok")
    assert again["DispatchedJobID"] == first["DispatchedJobID"]
    other = api.dispatch(param_job, {"Meta": {"r": "1"}, "IdempotencyToken": "body-tok"},
                         idempotency_token="query-tok")
    assert other["DispatchedJobID"] != first["DispatchedJobID"]


def test_idempotency_checked_after_validation(api: Api, param_job: str) -> None:
    api.dispatch(param_job, {"Meta": {"r": "1"}}, idempotency_token="valid-first")
    expect(dispatch_raw(api, param_job, {"Meta": {"x": "1"}},
                        params={"idempotency_token": "valid-first"}),
           500, "Dispatch request included unpermitted metadata keys: [x]")


def test_idempotency_scoped_to_parent_and_namespace(api: Api) -> None:
    one, two = unique("scope-a"), unique("scope-b")
    api.register(parameterized(one))
    api.register(parameterized(two))
    api.ok("PUT", "/v1/namespace/scoped")
    api.register(parameterized(one), namespace="scoped")
    a = api.dispatch(one, idempotency_token="t")["DispatchedJobID"]
    b = api.dispatch(two, idempotency_token="t")["DispatchedJobID"]
    c = api.dispatch(one, idempotency_token="t", namespace="scoped")["DispatchedJobID"]
    assert len({a, b, c}) == 3
    assert api.dispatch(one, idempotency_token="t", namespace="scoped")["DispatchedJobID"] == c


# -- HTTP layer ---------------------------------------------------------------------------------


def test_percent_encoded_and_raw_slash_reach_the_same_child(api: Api, param_job: str) -> None:
    result = api.dispatch(param_job, {"Meta": {"r": "1"}})
    child = result["DispatchedJobID"]
    encoded = api.ok("GET", f"/v1/job/{quote(child, safe='')}")
    raw = api.ok("GET", f"/v1/job/{child}")
    assert encoded["ID"] == raw["ID"] == child
    for suffix in ("/allocations", "/evaluations"):
        # the allocs move on between reads: compare their IDs
        raw_ids = [a["ID"] for a in api.ok("GET", f"/v1/job/{child}{suffix}")]
        encoded_ids = [a["ID"] for a in api.ok("GET", f"/v1/job/{quote(child, safe='')}{suffix}")]
        assert raw_ids == encoded_ids
    assert api.ok("GET", f"/v1/job/{child}/summary")["JobID"] == child
    evals = api.ok("GET", f"/v1/job/{child}/evaluations")
    assert [e["ID"] for e in evals] == [result["EvalID"]]


def test_job_id_with_slash_dispatches_by_suffix(api: Api) -> None:
    job_id = unique("team") + "/encode"
    api.register(parameterized(job_id))
    child = api.ok("POST", f"/v1/job/{job_id}/dispatch", json={})["DispatchedJobID"]
    assert child.startswith(job_id + "/dispatch-")


def test_body_job_id_must_match_path(api: Api, param_job: str) -> None:
    expect(dispatch_raw(api, param_job, {"JobID": "other"}), 400, "Job ID does not match")


@pytest.mark.parametrize("method", ["GET", "DELETE", "PATCH"])
def test_invalid_method(api: Api, param_job: str, method: str) -> None:
    expect(api.request(method, f"/v1/job/{param_job}/dispatch"), 405, "Invalid method")


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (b"", "Request body is empty"),
        (b"x", "invalid character 'x' looking for beginning of value"),
        (b"{", "unexpected EOF"),
        (b'{"Meta" 1}', "invalid character '1' after object key"),
        (b'{"Payload":"aGVsbG8"}', "illegal base64 data at input byte 4"),
        (b'{"Payload":"!!!!"}', "illegal base64 data at input byte 0"),
        (b'{"Meta":{"k":1}}',
         "json: cannot unmarshal number into Go struct field JobDispatchRequest.Meta of type "
         "string"),
        (b'{"Priority":"1"}',
         "json: cannot unmarshal string into Go struct field JobDispatchRequest.Priority of "
         "type int"),
        (b'{"Priority":1.5}',
         "json: cannot unmarshal number 1.5 into Go struct field JobDispatchRequest.Priority "
         "of type int"),
        (b"[]", "json: cannot unmarshal array into Go value of type structs.JobDispatchRequest"),
        (b"   ", "EOF"),
    ],
)
def test_go_decode_errors(api: Api, param_job: str, body: bytes, message: str) -> None:
    expect(dispatch_raw(api, param_job, body), 400, message)


def test_go_decoding_leniency(api: Api, param_job: str) -> None:
    for body in (b"null", b"{}", b'{"meta":{"r":"1"},"unknown":[1]}', b'{"Meta":{"r":"1"}} junk'):
        response = dispatch_raw(api, param_job, body)
        if body in (b"null", b"{}"):
            assert response.text == "Dispatch did not provide required meta keys: [r]"
        else:
            assert response.status_code == 200, (body, response.text)


def test_raw_payload_endpoint(api: Api, param_job: str) -> None:
    response = api.post(f"/v1/job/{quote(param_job, safe='')}/dispatch/payload", data=b"\x00raw")
    # no meta can be given, so the required meta key is missing
    expect(response, 500, "Dispatch did not provide required meta keys: [r]")
    job_id = unique("rawpayload")
    api.register(parameterized(job_id, payload="required"))
    result = api.ok("PUT", f"/v1/job/{job_id}/dispatch/payload", data=b"\x00raw",
                    params={"idempotency_token": "raw"})
    child = api.job(result["DispatchedJobID"])
    assert base64.b64decode(child["Payload"]) == b"\x00raw"
    assert child["DispatchIdempotencyToken"] == "raw"


def test_region(api: Api, param_job: str) -> None:
    expect(dispatch_raw(api, param_job, {"Meta": {"r": "1"}}, params={"region": "mars"}), 500,
           "No path to region")
    expect(dispatch_raw(api, param_job, {"Meta": {"r": "1"}, "Region": "mars"}), 500,
           "No path to region")
    assert api.dispatch(param_job, {"Meta": {"r": "1"}}, region="global")["EvalID"]


def test_periodic_parent_dispatch_has_no_eval(api: Api) -> None:
    job_id = unique("periodic")
    api.register(parameterized(job_id, Periodic={"Enabled": True, "Spec": "* * * * *"}))
    result = api.dispatch(job_id)
    assert (result["EvalID"], result["EvalCreateIndex"]) == ("", 0)


def test_dispatch_record(api: Api, param_job: str) -> None:
    first = api.dispatch(param_job, {"Meta": {"r": "1"}, "Payload": "aGk="},
                         idempotency_token="rec")
    api.dispatch(param_job, {"Meta": {"r": "1"}}, idempotency_token="rec")
    record = api.ok("GET", "/_sim/dispatches", params={"parent": param_job})
    assert record["count"] == 2
    created, repeat = record["dispatches"]
    assert created["child_id"] == repeat["child_id"] == first["DispatchedJobID"]
    assert (created["repeat"], repeat["repeat"]) == (False, True)
    assert created["payload_len"] == 2
    assert created["meta"] == {"r": "1"}
    assert created["idempotency_token"] == "rec"
    assert created["namespace"] == "default"
    assert created["eval_id"] == first["EvalID"]
    assert created["time"].endswith("Z")
