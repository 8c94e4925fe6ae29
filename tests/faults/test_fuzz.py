"""Fuzzing: thousands of generated producer inputs and queue messages. Each gets a clear
error (or goes through); nothing crashes, hangs or is silently dropped."""

from __future__ import annotations

import base64
import json
import time
from typing import Any

import pytest
import redis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dispatchq.config.settings import Settings
from dispatchq.core.request import DispatchRequest, InvalidMessage
from dispatchq.producer.api import Producer
from dispatchq.producer.enqueue import InvalidRequest
from dispatchq.store import dlq, keys
from tests.support.faults import FaultStack, drained, wait_until
from tests.support.stack import QUEUE

pytestmark = [pytest.mark.faults, pytest.mark.integration]

FUZZ = settings(
    max_examples=1500,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=12),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=6,
)
hashable = st.none() | st.integers() | st.text(max_size=6) | st.binary(max_size=4)
anything = json_values | st.binary(max_size=32) | st.tuples(st.integers(), st.text(max_size=4))
REQUEST_FIELDS = tuple(DispatchRequest.model_fields)
kwargs_like = st.dictionaries(
    st.sampled_from(REQUEST_FIELDS) | st.text(max_size=8),
    json_values | st.dictionaries(st.text(max_size=6), st.text(max_size=6), max_size=3),
    max_size=8,
)


producer_inputs = st.fixed_dictionaries(
    {"job_id": st.sampled_from(["encode", "plain"]) | anything},
    optional={
        "payload": st.binary(max_size=17_000) | json_values,
        "payload_ref": anything,
        "meta": st.dictionaries(hashable, anything, max_size=3) | json_values,
        "request_id": anything,
        "namespace": anything,
        "detach": anything,
        "id_prefix_template": anything,
        "priority": anything,
    },
)


def test_producer_inputs_get_a_clear_error_or_are_enqueued(redis_client: redis.Redis) -> None:
    """`Producer.enqueue` with generated arguments: a request record, or InvalidRequest."""
    outcomes = {"enqueued": 0, "refused": 0}
    with Producer(Settings(redis_url=_url(redis_client), queue="fuzz")) as producer:

        @given(inputs=producer_inputs)
        @FUZZ
        def enqueue(inputs: dict[str, Any]) -> None:
            try:
                rid = producer.enqueue(**inputs)
            except InvalidRequest as err:
                assert str(err)
                outcomes["refused"] += 1
                return
            assert redis_client.exists(keys.request(rid))
            outcomes["enqueued"] += 1

        enqueue()
    assert outcomes["refused"] > 0 and outcomes["enqueued"] > 0


def _url(client: redis.Redis) -> str:
    kwargs = client.connection_pool.connection_kwargs
    return f"redis://{kwargs['host']}:{kwargs['port']}/0"


@given(args=st.lists(json_values, max_size=2), kwargs=kwargs_like, task_id=anything)
@FUZZ
def test_queued_arguments_are_valid_or_rejected_with_the_reason(
    args: list[Any], kwargs: dict[str, Any], task_id: Any
) -> None:
    try:
        request = DispatchRequest.from_message(tuple(args), kwargs, task_id)
    except InvalidMessage as err:
        assert str(err)
        return
    assert request.request_id == kwargs["request_id"]


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


bodies = st.one_of(
    st.binary(max_size=40),
    json_values.map(lambda v: json.dumps(v).encode()),
    st.tuples(st.lists(json_values, max_size=2), kwargs_like, st.none() | json_values).map(
        lambda t: json.dumps(list(t)).encode()
    ),
)
headers = st.fixed_dictionaries(
    {},
    optional={
        "task": st.sampled_from(["dispatchq.dispatch", "other.task"]) | json_values,
        "id": st.text(max_size=12) | json_values,
        "retries": json_values,
        "eta": json_values,
        "expires": json_values,
        "timelimit": json_values,
        "lang": json_values,
    },
)
envelopes = st.fixed_dictionaries(
    {},
    optional={
        "body": bodies.map(_b64) | json_values,
        "content-type": st.sampled_from(
            ["application/json", "application/x-python-serialize", "application/x-yaml"]
        ) | json_values,
        "content-encoding": st.sampled_from(["utf-8", "binary"]) | json_values,
        "headers": headers | json_values,
        "properties": st.fixed_dictionaries(
            {},
            optional={
                "delivery_tag": st.text(max_size=8) | json_values,
                "body_encoding": st.sampled_from(["base64"]) | json_values,
                "delivery_info": st.just({"exchange": "", "routing_key": QUEUE}) | json_values,
                "priority": json_values,
            },
        ) | json_values,
    },
)  # fmt: skip
queue_items = st.one_of(
    st.binary(max_size=60), json_values.map(json.dumps), envelopes.map(json.dumps)
)


def test_raw_queue_messages_never_stop_the_worker(fault_stack: FaultStack) -> None:
    """Over a thousand generated queue items go to a real worker: each is run or
    dead-lettered, the queue drains, and the same worker process serves a request after."""
    stack = fault_stack
    client = stack.client()
    pushed: list[bytes | str] = []

    @given(item=queue_items)
    @settings(FUZZ, max_examples=1200)
    def push(item: bytes | str) -> None:
        pushed.append(item)
        client.lpush(QUEUE, item)

    with stack.worker("fuzz") as worker, stack.producer() as producer:
        pid = worker.process.pid if worker.process else 0
        started = time.monotonic()
        push()
        wait_until(lambda: drained(client), 60, "every item taken")
        sentinel = producer.enqueue("encode", meta={"profile": "hd"})
        outcome = producer.wait([sentinel], timeout=30)[sentinel].outcome
        assert worker.process is not None and worker.process.poll() is None
        assert worker.process.pid == pid
        elapsed = time.monotonic() - started
    dead = dlq.entries(client)
    client.close()
    output = stack.worker_output()
    stack.report(
        "fuzzed queue messages",
        requests=len(pushed),
        faults=f"{len(pushed)} generated queue items",
        lost=0,
        doubled=0,
        notes=f"{len(dead)} dead-lettered; drained in {elapsed:.1f} s",
    )
    assert outcome is not None and outcome.exit_code == 0
    assert len(dead) >= len(pushed) // 2
    assert "Unrecoverable error" not in output  # the worker stopping
    assert "re-establish the connection" not in output  # kombu dropping one, unrecorded
    assert "raised unexpected" not in output  # a task crashing
