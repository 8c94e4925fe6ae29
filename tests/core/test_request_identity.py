"""A request is what its producer enqueued: a second message reusing its ID with other
content, or a message claiming a batch it was not enqueued in, is refused by the record's
scripts without writing anything (issue 15, items 9 and 10). On a real redis-server."""

from __future__ import annotations

import base64
import json
from typing import Any

import redis

from dispatchq.core.request import UNREADABLE, DispatchRequest, request_digest
from dispatchq.producer.enqueue import CONFLICT, NEW, SKIPPED, Enqueuer, NewRequest
from dispatchq.store import keys
from dispatchq.store.records import RecordStore, RequestState, StoredResult

QUEUE = "identity-test"


def _enqueue(client: redis.Redis, **fields: Any) -> DispatchRequest:
    enqueuer = Enqueuer(client, queue=QUEUE, result_ttl=60, blob_ttl=60)
    [(rid, _flag)] = enqueuer.enqueue([NewRequest(**fields)])
    batch_id = fields.get("batch_id")
    # A batch's message waits in its batch's lane (fair queueing, `dispatchq.broker.fetch`).
    [raw] = client.lrange(keys.lane(str(batch_id)) if batch_id else QUEUE, 0, 0)
    body = json.loads(base64.b64decode(json.loads(raw)["body"]))
    request = DispatchRequest.from_message((), body[1], rid)
    assert request.request_id == rid
    return request


def test_the_digest_is_what_the_message_says_whatever_the_key_order() -> None:
    a = {"request_id": "r", "job_id": "j", "meta": {"a": "1", "b": "2"}}
    b = {"meta": {"b": "2", "a": "1"}, "job_id": "j", "request_id": "r"}
    assert request_digest(a) == request_digest(b)
    assert request_digest(a) != request_digest({**a, "meta": {"a": "1", "b": "3"}})
    assert request_digest(a) != request_digest({**a, "batch_id": "x"})
    assert request_digest({"x": object()}) == UNREADABLE


def test_the_producer_keeps_the_digest_the_worker_computes(redis_client: redis.Redis) -> None:
    request = _enqueue(redis_client, job_id="video", meta={"profile": "hd"}, batch_id="b-1")
    kept = redis_client.hget(keys.request(request.request_id), "digest")
    assert kept == request_digest(request.to_message()).encode()


def test_a_second_message_with_the_same_id_is_refused(redis_client: redis.Redis) -> None:
    store = RecordStore(redis_client, 60)
    request = _enqueue(redis_client, job_id="video", meta={"profile": "hd"})
    rid, digest = request.request_id, request_digest(request.to_message())
    forged = request_digest({**request.to_message(), "meta": {"profile": "evil"}})
    before = redis_client.hgetall(keys.request(rid))
    refused = store.begin(rid, "video", None, digest=forged)
    assert "another request already has this ID" in refused.refused
    assert redis_client.hgetall(keys.request(rid)) == before  # nothing written
    assert store.begin(rid, "video", None, digest=digest).refused == ""
    assert store.begin(rid, "video", None, digest=digest).refused == ""  # a redelivery
    record = store.load(rid)
    assert record is not None and record.state is RequestState.DISPATCHING


def test_a_foreign_request_is_claimed_by_its_first_message(redis_client: redis.Redis) -> None:
    store = RecordStore(redis_client, 60)
    assert store.begin("f-1", "video", None, digest="aaa").refused == ""
    assert store.begin("f-1", "video", None, digest="aaa").refused == ""
    assert store.begin("f-1", "video", None, digest="bbb").refused


def test_a_batch_claimed_without_an_enqueued_record_is_refused(
    redis_client: redis.Redis,
) -> None:
    store = RecordStore(redis_client, 60)
    refused = store.begin("x-1", "video", "b-1", digest="aaa")
    assert refused.refused == "the message claims batch b-1 but was not enqueued in it: refused"
    assert not redis_client.exists(keys.request("x-1"))
    # A refused message's outcome (dead letter path) cannot count in the batch either.
    member = _enqueue(redis_client, job_id="video", batch_id="b-1")
    forged = request_digest({**member.to_message(), "meta": {"k": "v"}})
    result = StoredResult(keys.celery_result(member.request_id), "{}", 60)
    assert not RecordStore(redis_client, 60).mark_done(
        member.request_id, 1, "b-1", "bad", result, digest=forged
    )
    assert redis_client.hgetall(keys.batch("b-1")) == {}
    assert not redis_client.exists(result.key)
    assert RecordStore(redis_client, 60).mark_done(
        member.request_id, 1, "b-1", "bad", result, digest=request_digest(member.to_message())
    )
    assert redis_client.hget(keys.batch("b-1"), "done") == b"1"


def test_enqueueing_an_id_that_names_another_request_is_refused(
    redis_client: redis.Redis,
) -> None:
    enqueuer = Enqueuer(redis_client, queue=QUEUE, result_ttl=60, blob_ttl=60)
    first = NewRequest("video", meta={"profile": "hd"}, request_id="mine")
    again = NewRequest("video", meta={"profile": "hd"}, request_id="mine")
    other = NewRequest("video", meta={"profile": "evil"}, request_id="mine")
    assert enqueuer.enqueue([first]) == [("mine", NEW)]
    assert enqueuer.enqueue([again]) == [("mine", SKIPPED)]
    assert enqueuer.enqueue([other]) == [("mine", CONFLICT)]
    assert redis_client.llen(QUEUE) == 1
