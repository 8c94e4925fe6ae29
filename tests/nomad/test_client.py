"""NomadClient against a scripted local HTTP server: what goes on the wire, what comes back."""

from __future__ import annotations

import base64
import threading
from collections.abc import Iterator

import pytest

from dispatchq.core.request import PAYLOAD_LIMIT
from dispatchq.core.retry import RetryPolicy
from dispatchq.errors import (
    BadRequest,
    NomadError,
    NotFound,
    PermissionDenied,
    RateLimited,
    ServerError,
    TransportError,
    ValidationError,
)
from dispatchq.nomad.client import NomadClient, NomadConfig
from tests.support.requests import request
from tests.support.stub_server import Reply, Seen, StubServer, ok, unused_port

DISPATCHED = {
    "DispatchedJobID": "video/dispatch-1485379325-cb38d00d",
    "EvalID": "31199841-aaaa-bbbb-cccc-000000000001",
    "EvalCreateIndex": 13,
    "JobCreateIndex": 12,
    "Index": 13,
}
RETRY = RetryPolicy(attempts=3, floor=0.01, cap=0.01)


@pytest.fixture
def stub() -> Iterator[StubServer]:
    with StubServer() as server:
        yield server


def client_for(stub: StubServer, **settings: object) -> NomadClient:
    config = NomadConfig(address=stub.address).with_overrides(**settings)
    return NomadClient(config, retry=RETRY, sleep=lambda _: None)


def test_dispatch_request_on_the_wire(stub: StubServer) -> None:
    stub.script(ok(DISPATCHED, index=13))
    with client_for(stub, token="s3cret-token", region="eu", namespace="media") as client:
        response = client.dispatch(
            request("video/encode x", meta={"k": "v"}, id_prefix_template="tmpl", priority=70),
            b"hello",
            idempotency_token="tok-1",
        )
    assert response.dispatched_job_id == DISPATCHED["DispatchedJobID"]
    assert response.eval_id == DISPATCHED["EvalID"]
    assert (response.eval_create_index, response.job_create_index, response.index) == (13, 12, 13)
    [seen] = stub.seen
    assert seen.method == "PUT"
    assert seen.raw_path.startswith("/v1/job/video%2Fencode%20x/dispatch?")
    assert seen.query == {"idempotency_token": "tok-1", "region": "eu", "namespace": "media"}
    assert seen.headers["x-nomad-token"] == "s3cret-token"
    assert seen.json() == {
        "JobID": "video/encode x",
        "Payload": base64.b64encode(b"hello").decode(),
        "Meta": {"k": "v"},
        "IdPrefixTemplate": "tmpl",
        "Priority": 70,
    }


def test_dispatch_without_payload_or_meta_sends_nulls_and_no_token(stub: StubServer) -> None:
    stub.script(ok({**DISPATCHED, "EvalID": "", "EvalCreateIndex": 0}))
    with client_for(stub) as client:
        response = client.dispatch(request("video", namespace="other"))
    assert response.eval_id == ""
    [seen] = stub.seen
    assert seen.json()["Payload"] is None
    assert seen.json()["Meta"] is None
    assert seen.query == {"namespace": "other"}
    assert "x-nomad-token" not in seen.headers


def test_oversize_payload_is_refused_before_sending(stub: StubServer) -> None:
    stub.script(ok(DISPATCHED))
    with client_for(stub) as client:
        client.dispatch(request("video"), b"x" * PAYLOAD_LIMIT)  # the limit itself is fine
        with pytest.raises(ValidationError) as caught:
            client.dispatch(request("video"), b"x" * (PAYLOAD_LIMIT + 1))
    assert str(caught.value) == "Payload exceeds maximum size; 16385 > 16384"
    assert len(stub.seen) == 1


def test_blocking_read_sends_index_and_wait_and_returns_the_index(stub: StubServer) -> None:
    stub.script(ok({"ID": "e1", "Status": "complete"}, index=42))
    with client_for(stub) as client:
        evaluation, index = client.read_evaluation("e1", index=41, wait=2.5)
        _, alloc_index = client.evaluation_allocations("e1")
    assert (evaluation["Status"], index) == ("complete", 42)
    first, second = stub.seen
    assert first.path == "/v1/evaluation/e1"
    assert first.query == {"index": "41", "wait": "2500ms"}
    assert second.path == "/v1/evaluation/e1/allocations"
    assert second.query == {}
    assert alloc_index == 42


def test_connections_are_pooled(stub: StubServer) -> None:
    stub.script(ok({"ID": "e1"}, index=1))
    with client_for(stub) as client:
        for _ in range(5):
            client.read_evaluation("e1")
    assert len({seen.peer for seen in stub.seen}) == 1


@pytest.mark.parametrize(
    ("status", "body", "error_type", "retryable"),
    [
        (403, "Permission denied", PermissionDenied, False),
        (403, "ACL token not found", PermissionDenied, False),
        (404, "job not found", NotFound, False),
        (400, "Job ID does not match", BadRequest, False),
        (429, "Too many requests", RateLimited, True),
        (500, "parameterized job not found", NotFound, False),
        (500, 'Specified job "web" is not a parameterized job', ValidationError, False),
        (500, "Dispatch did not provide required meta keys: [a b]", ValidationError, False),
        (500, "rpc error: Payload exceeds maximum size; 20000 > 16384", ValidationError, False),
        (500, "No cluster leader", ServerError, True),
        (503, "upstream unavailable", ServerError, True),
    ],
)
def test_errors_are_classified_and_keep_the_message(
    stub: StubServer, status: int, body: str, error_type: type[NomadError], retryable: bool
) -> None:
    stub.script(Reply(status, body))
    with client_for(stub) as client, pytest.raises(error_type) as caught:
        client.read_job("web")
    assert caught.value.status == status
    assert caught.value.message == body
    assert caught.value.retryable is retryable
    assert str(caught.value) == f"Unexpected response code: {status} ({body})"
    assert len(stub.seen) == (RETRY.attempts if retryable else 1)


def test_reads_retry_transient_errors_until_success(stub: StubServer) -> None:
    stub.script(Reply(503, "busy"), Reply(429, "slow down"), ok({"ID": "video"}, index=7))
    with client_for(stub) as client:
        job, index = client.read_job("video")
    assert (job["ID"], index) == ("video", 7)
    assert len(stub.seen) == 3


def test_every_429_reaches_the_rate_limited_hook(stub: StubServer) -> None:
    stub.script(Reply(429, "slow down"), Reply(503, "busy"), Reply(429, "slow down"))
    calls: list[int] = []
    with client_for(stub) as client:
        client.on_rate_limited = lambda: calls.append(1)
        with pytest.raises(RateLimited):
            client.read_job("video")  # three attempts: 429, 503, 429
    assert len(calls) == 2


def test_validation_error_is_never_retried_even_with_a_token(stub: StubServer) -> None:
    stub.script(Reply(500, "Payload is not provided but required by parameterized job"))
    with client_for(stub) as client, pytest.raises(ValidationError):
        client.dispatch(request("video"), idempotency_token="tok")
    assert len(stub.seen) == 1


def test_dispatch_without_token_retries_only_what_was_not_applied(stub: StubServer) -> None:
    stub.script(Reply(500, "No cluster leader"), Reply(429, "slow"), ok(DISPATCHED))
    with client_for(stub) as client:
        assert client.dispatch(request("video")).eval_id == DISPATCHED["EvalID"]
    assert len(stub.seen) == 3

    stub.seen.clear()
    stub.script(Reply(500, "raft apply failed: timed out"), ok(DISPATCHED))
    with client_for(stub) as client, pytest.raises(ServerError) as caught:
        client.dispatch(request("video"))
    assert caught.value.maybe_applied
    assert len(stub.seen) == 1


def test_dispatch_with_token_retries_a_possibly_applied_error(stub: StubServer) -> None:
    stub.script(Reply(500, "raft apply failed: timed out"), ok(DISPATCHED))
    with client_for(stub) as client:
        client.dispatch(request("video"), idempotency_token="tok")
    assert len(stub.seen) == 2
    assert all(seen.query["idempotency_token"] == "tok" for seen in stub.seen)


def test_read_timeout_after_sending_is_not_replayed_without_token(stub: StubServer) -> None:
    release = threading.Event()
    stub.script(Reply(200, DISPATCHED, hang=release))
    config = NomadConfig(address=stub.address)
    try:
        client = NomadClient(config, timeout=0.2, retry=RETRY, sleep=lambda _: None)
        with client, pytest.raises(TransportError) as caught:
            client.dispatch(request("video"))
    finally:
        release.set()
    assert caught.value.maybe_applied
    assert caught.value.retryable
    assert "Client.Timeout exceeded" in str(caught.value)
    assert len(stub.seen) == 1


def test_connection_refused_is_retried_and_reads_like_go() -> None:
    port = unused_port()
    slept: list[float] = []
    config = NomadConfig(address=f"http://127.0.0.1:{port}")
    client = NomadClient(config, retry=RETRY, sleep=slept.append)
    with client, pytest.raises(TransportError) as caught:
        client.dispatch(request("video"))
    assert str(caught.value) == (
        f'Put "http://127.0.0.1:{port}/v1/job/video/dispatch": '
        f"dial tcp 127.0.0.1:{port}: connect: connection refused"
    )
    assert caught.value.status is None
    assert not caught.value.maybe_applied
    assert len(slept) == RETRY.attempts - 1


def test_empty_200_body_is_a_server_error(stub: StubServer) -> None:
    stub.script(Reply(200, b""))
    with client_for(stub, tls_skip_verify=True) as client, pytest.raises(ServerError):
        client.read_job("video")


def test_basic_auth_from_http_auth(stub: StubServer) -> None:
    stub.script(ok({"ID": "video"}))
    with client_for(stub, http_auth="alice:pw") as client:
        client.read_job("video")
    expected = "Basic " + base64.b64encode(b"alice:pw").decode()
    assert stub.seen[0].headers["authorization"] == expected


def test_requests_carry_what_the_go_client_sends(stub: StubServer) -> None:
    """Every request carries the user agent, the token, basic auth and gzip; a dispatch its
    JSON content type. No cookie jar, as in Nomad's Go client: a cookie set is not sent back."""
    stub.script(
        Reply(200, {"ID": "video"}, {"X-Nomad-Index": "3", "Set-Cookie": "lb=node-2; Path=/"}),
        ok(DISPATCHED, index=13),
    )
    with client_for(stub, token="t0k", http_auth="alice:pw") as client:
        client.read_job("video")
        client.dispatch(request("video", meta={"k": "v"}), idempotency_token="tok-1")
    first, second = stub.seen
    for seen in (first, second):
        assert seen.headers["user-agent"] == "dispatchq"
        assert seen.headers["x-nomad-token"] == "t0k"
        assert seen.headers["authorization"].startswith("Basic ")
        assert seen.headers["accept"] == "*/*"
        assert "gzip" in seen.headers["accept-encoding"]
    assert "cookie" not in first.headers
    assert "cookie" not in second.headers
    assert second.headers["content-type"] == "application/json"
    assert second.raw_path == "/v1/job/video/dispatch?idempotency_token=tok-1"


def test_stop_register_and_evaluations(stub: StubServer) -> None:
    def respond(seen: Seen) -> Reply:
        if seen.method == "DELETE":
            return ok({"EvalID": "stop-eval"}, index=20)
        if seen.path.endswith("/evaluations"):
            return ok([{"ID": "e1", "TriggeredBy": "job-register"}], index=20)
        return ok({"EvalID": "", "JobModifyIndex": 19}, index=19)

    stub.respond = respond
    with client_for(stub) as client:
        assert client.register_job({"ID": "video", "Type": "batch"}) == ("", 19)
        assert client.stop_job("video/dispatch-1-abc", purge=True) == "stop-eval"
        assert client.job_evaluations("video")[0]["ID"] == "e1"
    register, stop, evaluations = stub.seen
    assert (register.method, register.path) == ("PUT", "/v1/jobs")
    assert register.json() == {"Job": {"ID": "video", "Type": "batch"}}
    assert stop.raw_path == "/v1/job/video%2Fdispatch-1-abc?purge=true"
    assert evaluations.path == "/v1/job/video/evaluations"
