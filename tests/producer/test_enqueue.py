from __future__ import annotations

import base64
import json

import pytest
import redis

from dispatchq.core.request import request_digest
from dispatchq.payload.resolve import PayloadPolicy, PayloadResolver, blob_digest
from dispatchq.producer.enqueue import (
    INLINE_PAYLOAD_MAX,
    NEW,
    SKIPPED,
    Enqueuer,
    InvalidRequest,
    NewRequest,
)
from dispatchq.store import keys


@pytest.fixture
def enqueuer(redis_client: redis.Redis) -> Enqueuer:
    return Enqueuer(redis_client, queue="q-test", result_ttl=600, blob_ttl=300)


def _messages(client: redis.Redis) -> list[dict[str, object]]:
    raw = client.lrange("q-test", 0, -1)
    return [json.loads(m) for m in reversed(raw)]


def _body(message: dict[str, object]) -> list[object]:
    body = message["body"]
    assert isinstance(body, str)
    decoded: list[object] = json.loads(base64.b64decode(body))
    return decoded


LARGE = b"hello " * 100  # over INLINE_PAYLOAD_MAX: stored as a blob


def test_a_small_payload_travels_in_its_message_as_a_data_reference(
    enqueuer: Enqueuer, redis_client: redis.Redis
) -> None:
    small = bytes(range(256)) * 2
    assert len(small) == INLINE_PAYLOAD_MAX
    enqueuer.enqueue([NewRequest("video", payload=small, request_id="r-1")])
    assert redis_client.keys("dispatchq:blob:*") == []
    [message] = _messages(redis_client)
    kwargs = _body(message)[1]
    assert isinstance(kwargs, dict)
    ref = kwargs["payload_ref"]
    assert ref.startswith("data:;base64,")
    assert PayloadResolver(PayloadPolicy(), redis_client).resolve(ref) == small  # as a worker


def test_one_request_makes_record_blob_and_message(
    enqueuer: Enqueuer, redis_client: redis.Redis
) -> None:
    [(rid, added)] = enqueuer.enqueue(
        [NewRequest("video", payload=LARGE, meta={"profile": "hd"}, request_id="r-1")]
    )
    assert (rid, added) == ("r-1", NEW)
    record = redis_client.hgetall(keys.request("r-1"))
    assert set(record) == {b"state", b"digest"} and record[b"state"] == b"queued"
    assert 0 < redis_client.ttl(keys.request("r-1")) <= 600
    digest = blob_digest(LARGE)
    assert redis_client.get(keys.blob(digest)) == LARGE
    assert 0 < redis_client.ttl(keys.blob(digest)) <= 300
    [message] = _messages(redis_client)
    headers = message["headers"]
    assert isinstance(headers, dict)
    assert headers["task"] == "dispatchq.dispatch"
    assert headers["id"] == "r-1"
    args, kwargs, _embed = _body(message)
    assert args == []
    assert kwargs == {
        "v": 1,
        "request_id": "r-1",
        "job_id": "video",
        "payload_ref": f"blob:sha256:{digest}",
        "meta": {"profile": "hd"},
    }
    assert record[b"digest"] == request_digest(kwargs).encode()  # what the worker checks


def test_same_request_id_twice_is_enqueued_once(
    enqueuer: Enqueuer, redis_client: redis.Redis
) -> None:
    first = enqueuer.enqueue([NewRequest("video", request_id="dup")])
    second = enqueuer.enqueue([NewRequest("video", request_id="dup")])
    assert first == [("dup", NEW)]
    assert second == [("dup", SKIPPED)]
    assert redis_client.llen("q-test") == 1


def test_many_requests_share_one_blob_and_keep_order(
    enqueuer: Enqueuer, redis_client: redis.Redis
) -> None:
    results = enqueuer.enqueue(NewRequest("video", payload=LARGE) for _ in range(1200))
    assert len(results) == 1200
    assert len({rid for rid, _ in results}) == 1200
    assert all(added == NEW for _, added in results)
    assert redis_client.llen("q-test") == 1200
    assert len(redis_client.keys("dispatchq:blob:*")) == 1
    first_kwargs = _body(_messages(redis_client)[0])[1]
    assert isinstance(first_kwargs, dict)
    assert first_kwargs["request_id"] == results[0][0]


def test_an_error_answer_raises_and_leaves_no_half_read_connection(
    enqueuer: Enqueuer, redis_client: redis.Redis
) -> None:
    redis_client.set("q-test", "not a list")  # the script's LPUSH fails: WRONGTYPE
    with pytest.raises(redis.ResponseError, match="WRONGTYPE"):
        enqueuer.enqueue(NewRequest("video") for _ in range(1200))  # 3 chunks sent
    redis_client.delete("q-test")
    results = enqueuer.enqueue([NewRequest("video", request_id="after")])
    assert results == [("after", NEW)]
    # (the chunks sent after the refused one may run after the DELETE above, on the
    # closed connection's last bytes: requests the caller enqueues again are skipped)
    newest = _body(_messages(redis_client)[-1])[1]
    assert isinstance(newest, dict) and newest["request_id"] == "after"


@pytest.mark.parametrize(
    ("request_", "message"),
    [
        (NewRequest(""), "job ID must be a non-empty string"),
        (NewRequest("v", payload=b"x" * 16385), "Payload exceeds maximum size; 16385 > 16384"),
        (NewRequest("v", payload=b"x", payload_ref="data:,x"), "either payload or payload_ref"),
        (NewRequest("v", meta={"k": 1}), "meta value for 'k' must be a string, not int"),
        (NewRequest("v", meta={"": "x"}), "meta keys must be non-empty strings"),
        (NewRequest("v", priority=101), "priority must be an integer from 0"),
        (NewRequest("v", request_id="x" * 201), "request_id must be a string of 1 to 200"),
    ],
)
def test_bad_requests_are_rejected_before_anything_is_written(
    enqueuer: Enqueuer, redis_client: redis.Redis, request_: NewRequest, message: str
) -> None:
    with pytest.raises(InvalidRequest, match=message.replace("(", r"\(")):
        enqueuer.enqueue([NewRequest("ok-first"), request_])
    assert redis_client.dbsize() == 0


def test_exactly_16384_bytes_is_accepted(enqueuer: Enqueuer) -> None:
    [(_, added)] = enqueuer.enqueue([NewRequest("v", payload=b"x" * 16384)])
    assert added
