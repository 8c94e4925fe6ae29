"""The dispatch task and its retry policy (`dispatchq.worker.tasks`, `dispatchq.worker.policy`),
run in this
process (Celery's `apply`) on a runtime of fakes: no worker, no Nomad."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest
import redis
from celery.canvas import Signature
from celery.exceptions import Reject, TimeLimitExceeded
from kombu.exceptions import OperationalError
from redis.exceptions import NoScriptError

from dispatchq.config.settings import Settings
from dispatchq.core.service import DispatchService
from dispatchq.errors import NotFound, ServerError, Throttled, ValidationError
from dispatchq.store import dlq
from dispatchq.worker import runtime as runtime_module
from dispatchq.worker.policy import THROTTLED_HEADER, PolicyTask
from dispatchq.worker.runtime import Runtime, reset_runtime
from dispatchq.worker.tasks import SUMMARY, dispatch
from tests.support.fakes import FakeNomad, FakePayloads, FakeRecords, dispatched, stored_result
from tests.support.requests import message_body


class Fixture:
    def __init__(self, client: redis.Redis) -> None:
        self.redis = client
        self.nomad = FakeNomad()
        self.records = FakeRecords()
        self.settings = Settings(retry_max=2, retry_floor=0.01, retry_cap=0.01)

    def install(self) -> None:
        service = DispatchService(
            client=self.nomad, resolver=FakePayloads(), records=self.records,
            results=stored_result,
        )  # fmt: skip
        runtime_module._runtime = Runtime(self.settings, self.redis, service)


@pytest.fixture
def rt(redis_client: redis.Redis) -> Iterator[Fixture]:
    fixture = Fixture(redis_client)
    fixture.install()
    yield fixture
    reset_runtime()


def run(rid: str = "r-1", **fields: Any) -> Any:
    kwargs = message_body(rid, "video-encode", **fields)
    return dispatch.apply(kwargs=kwargs, task_id=rid)


def test_a_request_returns_its_summary_and_its_outcome_is_stored_by_the_service(
    rt: Fixture,
) -> None:
    result = run(meta={"profile": "hd"})
    assert result.successful()
    assert set(result.result) <= set(SUMMARY)
    assert (result.result["status"], result.result["exit_code"]) == ("complete", 0)
    assert rt.records.records["r-1"]["state"] == "done"
    assert "r-1" in rt.records.results  # stored with the done state, not by Celery
    assert rt.nomad.sent[0].request.meta == {"profile": "hd"}


def test_an_invalid_message_is_dead_lettered_with_an_exit_1_outcome(rt: Fixture) -> None:
    result: Any = dispatch.apply(kwargs={"request_id": "r-1", "job_id": 7}, task_id="r-1")
    assert result.result["exit_code"] == 1
    assert result.result["error_kind"] == "invalid_request"
    [entry] = dlq.entries(rt.redis)
    assert entry.task_id == "r-1" and entry.kind == "invalid_request"
    assert "job_id" in entry.reason
    assert rt.nomad.sent == []


def test_positional_arguments_are_an_invalid_message(rt: Fixture) -> None:
    result: Any = dispatch.apply(args=("video",), kwargs={}, task_id="r-1")
    assert result.result["exit_code"] == 1
    assert "positional" in json.dumps(result.result)


def test_a_retryable_error_is_retried_with_the_same_token(rt: Fixture) -> None:
    rt.nomad.dispatches = [ServerError("No cluster leader", status=500), dispatched()]
    result = run()
    assert result.result["exit_code"] == 0
    assert [s.idempotency_token for s in rt.nomad.sent] == ["dispatchq-r-1"] * 2


def test_when_the_retries_are_spent_the_request_ends_with_exit_code_1(rt: Fixture) -> None:
    rt.nomad.dispatches = [ServerError("raft timeout", status=500)]
    result = run()
    assert (result.result["status"], result.result["exit_code"]) == ("error", 1)
    assert len(rt.nomad.sent) == rt.settings.retry_max + 1
    assert rt.records.records["r-1"]["exit_code"] == "1"


def test_a_script_lost_in_a_redis_restart_is_retried_not_dead_lettered(
    rt: Fixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Redis restarted between a script's load and its run (its script cache starts empty):
    an outage, retried, not a refusal of this request."""
    real_of = rt.records.of
    failures = [NoScriptError("No matching script. Please use EVAL.")]

    def of(request_id: str, batch_id: str | None = None) -> Any:
        if failures:
            raise failures.pop()
        return real_of(request_id, batch_id)

    monkeypatch.setattr(rt.records, "of", of)
    result = run()
    assert result.result["exit_code"] == 0 and failures == []
    assert dlq.entries(rt.redis) == []


def test_a_permanent_error_is_not_retried(rt: Fixture) -> None:
    rt.nomad.dispatches = [ValidationError("Specified job \"x\" is stopped", status=500)]
    result = run()
    assert (result.result["exit_code"], result.result["error_kind"]) == (1, "validation")
    assert len(rt.nomad.sent) == 1


def test_a_not_found_job_ends_at_once(rt: Fixture) -> None:
    rt.nomad.dispatches = [NotFound("job not found", status=404)]
    assert run().result["error_kind"] == "not_found"


# -- the policy itself, on a task of its own ------------------------------------------


calls: list[int] = []
raised: list[BaseException] = []


@dispatch.app.task(name="test.policy", bind=True, base=PolicyTask)
def policy_task(self: PolicyTask) -> str:
    def body() -> str:
        calls.append(self.retries_spent)
        if raised:
            raise raised.pop(0)
        return "ok"

    return self.with_retries(body, lambda err: f"gave up: {err}")


@pytest.fixture
def policy(rt: Fixture) -> Iterator[Fixture]:
    calls.clear()
    raised.clear()
    yield rt
    raised.clear()


def test_the_policy_retries_a_retryable_error_then_gives_up(policy: Fixture) -> None:
    raised.extend([ServerError("down", status=503)] * 5)
    result = policy_task.apply()
    assert result.result == "gave up: Unexpected response code: 503 (down)"
    assert calls == [0, 1, 2]  # retry_max = 2


def test_the_policy_lets_a_permanent_error_fail_the_task(policy: Fixture) -> None:
    raised.append(ValidationError("bad", status=500))
    result = policy_task.apply()
    assert isinstance(result.result, ValidationError)
    assert calls == [0]


def test_redis_going_away_is_retried_without_a_budget(policy: Fixture) -> None:
    raised.extend([redis.ConnectionError("gone")] * 4)
    assert policy_task.apply().result == "ok"
    assert len(calls) == 5


def test_a_throttled_request_is_requeued_for_free(policy: Fixture) -> None:
    raised.extend([Throttled("waited 30 s at the gate")] * 3)
    assert policy_task.apply().result == "ok"
    assert len(calls) == 4


def test_throttled_requeues_are_taken_off_the_retries_spent(policy: Fixture) -> None:
    # As a worker builds the request: the message's headers become its attributes.
    policy_task.push_request(retries=5, **{THROTTLED_HEADER: "4"})
    try:
        assert (policy_task.throttled, policy_task.retries_spent) == (4, 1)
    finally:
        policy_task.pop_request()


def test_a_retry_that_cannot_be_published_hands_the_message_back(
    policy: Fixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Redis away: Celery turns the failed publish of a retry into Reject(requeue=False),
    which would store a failure and drop the message; the policy requeues it instead."""

    def unpublished(*_: object, **__: object) -> None:
        raise OperationalError("Error 111 connecting to 127.0.0.1:6379. Connection refused.")

    monkeypatch.setattr(Signature, "apply_async", unpublished)
    raised.append(redis.ConnectionError("gone"))
    policy_task.push_request(id="r-unpublished", called_directly=False, retries=0)
    try:
        with pytest.raises(Reject) as err:
            policy_task.run()
    finally:
        policy_task.pop_request()
    rejected: Any = err.value  # Celery's stubs omit its attributes
    assert rejected.requeue is True
    assert isinstance(rejected.reason, redis.ConnectionError)


def test_a_run_celery_ends_in_a_failure_ends_its_request(rt: Fixture) -> None:
    """The hard time limit (Celery stores a FAILURE result and calls on_failure): the
    request ends too, exit 1, so that its batch counts it; a request done already is
    left alone."""
    kwargs = message_body("r-tl", "video-encode", meta={"profile": "hd"})
    dispatch.on_failure(TimeLimitExceeded(6), "r-tl", (), kwargs, None)
    record = rt.records.records["r-tl"]
    assert (record["state"], record["exit_code"]) == ("done", "1")
    stored = str(rt.records.results["r-tl"].value)  # `stored_result`: the outcome's repr
    assert "'error_kind': 'internal'" in stored
    assert "task time limit (6 s" in stored

    assert run("r-ok", meta={"profile": "hd"}).result["exit_code"] == 0
    dispatch.on_failure(RuntimeError("late"), "r-ok", (), message_body("r-ok", "video-encode",
                        meta={"profile": "hd"}), None)  # fmt: skip
    assert rt.records.records["r-ok"]["exit_code"] == "0"
