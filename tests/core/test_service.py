"""`DispatchService` on fakes: the path of one request, its record and its outcome."""

from __future__ import annotations

import time

import pytest

from dispatchq.core.request import DispatchRequest
from dispatchq.core.service import DispatchService
from dispatchq.errors import MonitoringInterrupted, ServerError, TransportError, ValidationError
from dispatchq.store.records import RequestState
from tests.support.fakes import (
    CHILD,
    EVAL,
    FakeNomad,
    FakePayloads,
    FakeRecords,
    allocation,
    dispatched,
    evaluation,
    stored_result,
)
from tests.support.requests import request


def service(nomad: FakeNomad | None = None, records: FakeRecords | None = None) -> DispatchService:
    return DispatchService(
        client=nomad or FakeNomad(),
        resolver=FakePayloads(),
        records=records or FakeRecords(),
        results=stored_result,
    )


def states(records: FakeRecords, request_id: str = "r-test") -> list[str]:
    return [state for rid, state in records.states if rid == request_id]


def test_a_request_is_dispatched_with_its_token_recorded_followed_and_stored() -> None:
    nomad, records = FakeNomad(), FakeRecords()
    records.enqueue("r-test")
    req = request("video-encode", meta={"profile": "hd"}, payload_ref="data:,{}", priority=5)
    outcome = service(nomad, records).run(req)
    assert (outcome.status, outcome.exit_code) == ("complete", 0)
    assert (outcome.dispatched_job_id, outcome.eval_id) == (CHILD, EVAL)
    [sent] = nomad.sent
    assert sent.request is req
    assert (sent.payload, sent.idempotency_token) == (b"{}", "dispatchq-r-test")
    assert states(records) == ["queued", "dispatching", "monitoring", "done"]
    record = records.of("r-test").load()
    assert record is not None
    assert (record.dispatched_job_id, record.eval_id, record.exit_code) == (CHILD, EVAL, 0)
    assert record.started_at is not None and record.started_at > 0
    assert records.results["r-test"].key == "celery-task-meta-r-test"


def test_a_redelivered_request_that_was_dispatched_resumes_and_never_dispatches_again() -> None:
    nomad, records = FakeNomad(), FakeRecords()
    records.records["r-test"] = {
        "state": "monitoring", "dispatched_job_id": CHILD, "eval_id": EVAL
    }  # fmt: skip
    outcome = service(nomad, records).run(request("video-encode"))
    assert nomad.sent == []
    assert outcome.exit_code == 0 and outcome.dispatched_job_id == CHILD
    assert ("eval", EVAL) in nomad.reads


def test_a_permanent_nomad_error_ends_the_request_with_exit_code_1() -> None:
    text = "Dispatch did not provide required meta keys: [profile]"
    nomad, records = FakeNomad(dispatches=[ValidationError(text, status=500)]), FakeRecords()
    outcome = service(nomad, records).run(request("video-encode"))
    assert (outcome.exit_code, outcome.error_kind, outcome.error_message) == (1, "validation", text)
    assert states(records) == ["dispatching", "done"]
    record = records.of("r-test").load()
    assert record is not None and record.exit_code == 1 and not record.dispatched


def test_a_retryable_nomad_error_is_raised_for_the_retry_policy() -> None:
    records = FakeRecords()
    with pytest.raises(ServerError):
        service(FakeNomad(dispatches=[ServerError("No cluster leader", status=500)]), records).run(
            request("video-encode")
        )
    record = records.of("r-test").load()
    assert record is not None and record.state is RequestState.DISPATCHING


def test_nomad_going_away_while_following_interrupts_monitoring_not_the_outcome() -> None:
    lost = TransportError("connection refused", sent=False)
    nomad, records = FakeNomad(evals={EVAL: [lost]}), FakeRecords()
    with pytest.raises(MonitoringInterrupted):
        service(nomad, records).run(request("video-encode"))
    record = records.of("r-test").load()
    assert record is not None and record.state is RequestState.MONITORING and record.dispatched


def test_a_detached_request_is_not_followed() -> None:
    nomad = FakeNomad()
    outcome = service(nomad).run(request("video-encode", detach=True))
    assert (outcome.status, outcome.exit_code) == ("dispatched", 0)
    assert nomad.reads == []


def test_a_cancelled_batch_is_not_dispatched() -> None:
    nomad, records = FakeNomad(), FakeRecords(cancelled={"b-1"})
    outcome = service(nomad, records).run(request("video-encode", batch_id="b-1"))
    assert nomad.sent == []
    assert (outcome.exit_code, outcome.error_kind) == (1, "cancelled")
    assert records.batches["b-1"] == {"done": 1, "exit:1": 1}


def test_a_payload_that_cannot_be_read_is_an_exit_1_outcome() -> None:
    nomad = FakeNomad()
    outcome = service(nomad).run(request("video-encode", payload_ref="blob:sha256:" + "0" * 64))
    assert nomad.sent == []
    assert (outcome.exit_code, outcome.error_kind) == (1, "payload")


def test_a_blob_is_read_with_the_record_and_sent() -> None:
    nomad, records = FakeNomad(), FakeRecords(blobs={"sha256:ab": b"blob bytes"})
    service(nomad, records).run(request("video-encode", payload_ref="blob:sha256:ab"))
    assert nomad.sent[0].payload == b"blob bytes"


def test_an_idempotent_repeat_without_an_evaluation_follows_the_childs_register_eval() -> None:
    register = {"ID": EVAL, "TriggeredBy": "job-register", "CreateIndex": 13}
    nomad = FakeNomad(dispatches=[dispatched(eval_id="")], job_evals=[register])
    outcome = service(nomad).run(request("video-encode"))
    assert outcome.eval_id == EVAL and outcome.exit_code == 0
    assert ("job_evals", CHILD) in nomad.reads


def test_a_placement_failure_exits_2() -> None:
    failed = evaluation(FailedTGAllocs={"encode": {"NodesEvaluated": 3}}, BlockedEval="b-eval")
    nomad = FakeNomad(evals={EVAL: [failed]}, allocs={EVAL: [[]]})
    outcome = service(nomad).run(request("video-encode"))
    assert outcome.exit_code == 2


def test_giving_up_after_the_dispatch_keeps_the_child_in_the_outcome() -> None:
    nomad, records = FakeNomad(evals={EVAL: [evaluation(status="pending")]}), FakeRecords()
    records.records["r-test"] = {
        "state": "monitoring", "dispatched_job_id": CHILD, "eval_id": EVAL
    }  # fmt: skip
    cause = MonitoringInterrupted(ServerError("rpc error", status=500))
    outcome = service(nomad, records).give_up(request("video-encode"), cause, 3)
    assert outcome.exit_code == 1 and outcome.dispatched_job_id == CHILD
    assert "gave up after 3 retries: " in (outcome.error_message or "")
    assert records.records["r-test"]["state"] == "done"


def test_giving_up_before_the_dispatch_names_the_last_error() -> None:
    outcome = service().give_up(request("video-encode"), ServerError("down", status=503), 5)
    assert outcome.exit_code == 1
    assert outcome.error_message == "gave up after 5 retries: down"


def test_a_request_finished_twice_keeps_its_first_outcome() -> None:
    records = FakeRecords()
    svc = service(FakeNomad(), records)
    svc.run(request("video-encode"))
    first = records.results["r-test"]
    records.records["r-test"]["dispatched_job_id"] = ""  # a duplicate run from the start
    records.records["r-test"]["state"] = "done"
    svc.give_up(request("video-encode"), ServerError("down", status=503), 5)
    assert records.results["r-test"] is first


def test_the_model_carries_every_field_the_client_sends() -> None:
    req = DispatchRequest(
        request_id="r-1", job_id="j", meta={"k": "v"}, namespace="ns",
        id_prefix_template="t", priority=70,
    )  # fmt: skip
    nomad = FakeNomad(dispatches=[dispatched()], evals={EVAL: [evaluation()]},
                      allocs={EVAL: [[allocation("running")]]})  # fmt: skip
    service(nomad).run(req)
    assert nomad.sent[0].request == req


def test_until_finished_hands_off_to_the_tracker_instead_of_storing_an_outcome() -> None:
    nomad, records = FakeNomad(), FakeRecords()
    records.enqueue("r-test")
    outcome = service(nomad, records).run(
        request("video-encode", until="finished", wait_timeout=60.0)
    )
    assert outcome.status == "complete"  # the evaluation's, kept as the outcome so far
    assert states(records) == ["queued", "dispatching", "monitoring", "scheduled"]
    assert records.followed == {"r-test"} and "r-test" not in records.results
    record = records.of("r-test").load()
    assert record is not None and record.started_at is not None
    assert record.deadline == record.started_at + 60.0  # from when a worker first took it
    assert records.partials["r-test"]["dispatched_job_id"] == CHILD


def test_until_finished_with_a_refused_dispatch_ends_at_once() -> None:
    nomad = FakeNomad(dispatches=[ValidationError("bad meta", status=400)])
    records = FakeRecords()
    outcome = service(nomad, records).run(request("video-encode", until="finished"))
    assert outcome.exit_code == 1 and not records.followed
    assert states(records)[-1] == "done"


def test_a_retryable_error_past_the_wait_timeout_ends_the_request() -> None:
    """Nomad failing for longer than wait_timeout since a worker first took the request:
    it ends now (exit 1, wait_timeout) instead of being retried."""
    records = FakeRecords()
    records.enqueue("r-test")
    records.records["r-test"]["started_at"] = repr(time.time() - 10)  # first taken 10 s ago
    nomad = FakeNomad(dispatches=[ServerError("No cluster leader", status=500)])
    req = request("video-encode", until="finished", wait_timeout=3.0)
    outcome = service(nomad, records).run(req)
    assert (outcome.exit_code, outcome.error_kind) == (1, "wait_timeout")
    assert "ran out while Nomad failed" in (outcome.error_message or "")
    assert "r-test" in records.results
    # Within the timeout, the error is left to the retry policy.
    records.enqueue("r-2")
    nomad = FakeNomad(dispatches=[ServerError("No cluster leader", status=500)])
    with pytest.raises(ServerError):
        service(nomad, records).run(request("video-encode", until="finished", wait_timeout=60.0,
                                            request_id="r-2"))  # fmt: skip
