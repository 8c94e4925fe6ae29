"""A request belongs to the producer that enqueued it (issue 15, items 9 and 10), against a
real worker: a raw message reusing a request's ID with other content cannot change what was
dispatched or stored for it, and messages claiming a batch they were not enqueued in cannot
change its counts. Each refused message is dead-lettered with its reason."""

from __future__ import annotations

import base64
import json
import time
import uuid
from typing import Any

import pytest
import redis

from dispatchq.producer.api import Producer
from dispatchq.producer.batch import request_id_for
from dispatchq.producer.enqueue import InvalidRequest
from dispatchq.store import dlq, keys
from tests.support.nomad_jobs import sim_dispatches
from tests.support.stack import QUEUE, Stack

pytestmark = [pytest.mark.faults, pytest.mark.integration]

WAIT = 60


def _raw(request_id: str, **request: Any) -> str:
    kwargs = {"request_id": request_id, "job_id": "encode", **request}
    return json.dumps({
        "body": base64.b64encode(json.dumps([[], kwargs, None]).encode()).decode(),
        "content-encoding": "utf-8",
        "content-type": "application/json",
        "headers": {"task": "dispatchq.dispatch", "id": request_id},
        "properties": {"delivery_tag": str(uuid.uuid4()), "body_encoding": "base64",
                       "delivery_info": {"exchange": "", "routing_key": QUEUE}},
    })  # fmt: skip


def _dead_letters(client: redis.Redis, count: int) -> list[dlq.DeadLetter]:
    deadline = time.monotonic() + WAIT
    while len(found := dlq.entries(client)) < count:
        assert time.monotonic() < deadline, [e.reason for e in found]
        time.sleep(0.1)
    return found


def test_a_message_reusing_an_id_cannot_replace_the_request(
    running: Stack, producer: Producer, redis_client: redis.Redis
) -> None:
    rid = producer.enqueue("encode", meta={"profile": "hd"})
    outcome = producer.wait([rid], timeout=WAIT)[rid].outcome
    assert outcome is not None and outcome.exit_code == 0
    stored = redis_client.get(keys.celery_result(rid))

    redis_client.lpush(QUEUE, _raw(rid, meta={"profile": "evil"}))
    [entry] = _dead_letters(redis_client, 1)
    assert (entry.task_id, entry.kind) == (rid, "conflict")
    assert "another request already has this ID" in entry.reason
    assert redis_client.get(keys.celery_result(rid)) == stored
    token = f"dispatchq-{rid}"
    assert [d.get("meta") for d in sim_dispatches(running.sim.address)
            if d.get("idempotency_token") == token] == [{"profile": "hd"}]  # fmt: skip

    # A foreign message that claimed an ID first keeps it: our producer is told.
    foreign = f"foreign-{uuid.uuid4()}"
    redis_client.lpush(QUEUE, _raw(foreign, meta={"profile": "hd"}))
    assert producer.wait([foreign], timeout=WAIT)[foreign].done
    with pytest.raises(InvalidRequest, match="already names another request"):
        producer.enqueue("encode", meta={"profile": "sd"}, request_id=foreign)


def test_messages_outside_a_batch_cannot_change_its_counts(
    running: Stack, producer: Producer, redis_client: redis.Redis
) -> None:
    items = [{"meta": {"profile": "hd"}}, {"meta": {"profile": "sd"}}]
    batch = producer.dispatch_batch("encode", items, preflight=False)
    members = [request_id_for(batch, 1), request_id_for(batch, 2)]
    assert all(s.done for s in producer.wait(members, timeout=WAIT).values())
    before = producer.batch_status(batch)
    assert before is not None and (before.done, before.exit_codes) == (2, {0: 2})

    for _ in range(3):  # new IDs claiming the batch
        redis_client.lpush(QUEUE, _raw(str(uuid.uuid4()), batch_id=batch,
                                       meta={"profile": "hd"}))  # fmt: skip
    # a member's ID, other content; and a member's own message again (a plain redelivery)
    redis_client.lpush(QUEUE, _raw(members[0], batch_id=batch, meta={"profile": "evil"}))
    entries = _dead_letters(redis_client, 4)
    reasons = sorted(e.reason for e in entries)
    assert sum("was not enqueued in it" in r for r in reasons) == 3, reasons
    assert sum("another request already has this ID" in r for r in reasons) == 1, reasons
    after = producer.batch_status(batch)
    assert after is not None and (after.done, after.exit_codes) == (2, {0: 2})
