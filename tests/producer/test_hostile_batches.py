"""A third party cannot alter a batch: its IDs cannot reach the batch's keys, a clash is
refused whole before anything is written, and a retry never adopts a record it did not
make (real redis-server, the producer's own code; no worker needed)."""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest
import redis

from dispatchq.config.settings import Settings
from dispatchq.devstack.redis_server import RedisServer
from dispatchq.errors import InvalidRequest
from dispatchq.producer.api import Producer
from dispatchq.producer.batch import request_id_for
from dispatchq.producer.batch_input import BatchInputError, BatchItem
from dispatchq.producer.enqueue import CHUNK
from dispatchq.store import keys
from dispatchq.store.retries import BatchRetrier

QUEUE = "hostile-batches"


@pytest.fixture
def producer(redis_server: RedisServer, redis_client: redis.Redis) -> Iterator[Producer]:
    redis_client.flushdb()
    with Producer(Settings(redis_url=redis_server.url, queue=QUEUE)) as p:
        yield p


def _items(count: int) -> list[BatchItem]:
    return [BatchItem(meta={"profile": "hd"}, payload_ref="data:,x") for _ in range(count)]


def test_attempt_ids_are_not_for_producers(producer: Producer) -> None:
    with pytest.raises(InvalidRequest, match="ends in '~' and digits"):
        producer.enqueue("encode", request_id="b-000001~2")
    with pytest.raises(BatchInputError, match="ends in '~' and digits"):
        producer.dispatch_batch("encode", _items(1), batch_id="b~3", preflight=False)
    with pytest.raises(InvalidRequest, match="'mine~7' ends in '~' and digits"):
        items = [BatchItem(meta={"profile": "hd"}, request_id="mine~7")]
        producer.dispatch_batch("encode", items, batch_id="b", preflight=False)
    producer.enqueue("encode", request_id="fine~x")  # '~' alone is any producer's


@pytest.mark.parametrize("count", [3, CHUNK * 2 + 7])
def test_a_clash_refuses_the_whole_batch_naming_its_lines(
    producer: Producer, redis_client: redis.Redis, count: int
) -> None:
    taken = request_id_for("bx", count - 1)  # in the last chunk of a large batch
    producer.enqueue("other-job", request_id=taken)
    before = set(redis_client.keys("*"))
    with pytest.raises(BatchInputError) as raised:
        producer.dispatch_batch("encode", _items(count), batch_id="bx", preflight=False)
    text = str(raised.value)
    assert f"line {count - 1}: request ID '{taken}' already names another request" in text
    assert set(redis_client.keys("*")) == before  # nothing written: no batch, lane, record
    # the same batch resubmitted under another ID is whole
    producer.dispatch_batch("encode", _items(count), batch_id="by", preflight=False)
    status = producer.batch_status("by")
    assert status is not None and status.total == count
    assert redis_client.llen(keys.lane("by")) == count


def test_a_resumed_batch_is_no_clash(producer: Producer, redis_client: redis.Redis) -> None:
    producer.dispatch_batch("encode", _items(4), batch_id="br", preflight=False)
    producer.dispatch_batch("encode", _items(4), batch_id="br", preflight=False)
    assert redis_client.llen(keys.lane("br")) == 4  # enqueued once


def test_batch_ids_that_look_like_another_batchs_keys_are_batches_of_their_own(
    producer: Producer, redis_client: redis.Redis
) -> None:
    for batch_id in ("B:errors", "B:requests", "B:items", "B:attempts", "B"):
        producer.dispatch_batch("encode", _items(2), batch_id=batch_id, preflight=False)
    for batch_id in ("B:errors", "B:requests", "B"):
        assert redis_client.type(keys.batch(batch_id)) == b"hash"
        assert redis_client.type(keys.batch_requests(batch_id)) == b"list"
        assert redis_client.llen(keys.batch_requests(batch_id)) == 2


def test_a_retry_never_adopts_a_record_it_did_not_make(
    producer: Producer, redis_client: redis.Redis
) -> None:
    producer.dispatch_batch("encode", _items(1), batch_id="bt", preflight=False)
    item = request_id_for("bt", 1)
    # the item ran and failed (what done.lua leaves)
    redis_client.hset(keys.request(item), mapping={"state": "done", "exit_code": "2"})
    redis_client.hincrby(keys.batch("bt"), "done", 1)
    redis_client.hincrby(keys.batch("bt"), "exit:2", 1)
    # a record of its next attempt's ID that no retry made (as a message's first take would)
    foreign = {"state": "done", "exit_code": "0", "digest": "someone-else"}
    for field, value in foreign.items():
        redis_client.hset(keys.request(f"{item}~2"), field, value)
    report = BatchRetrier(redis_client, queue=QUEUE, ttl=600).retry_batch("bt")
    assert (report.retried, report.taken) == (0, 1)
    assert redis_client.hgetall(keys.request(f"{item}~2")) == {
        k.encode(): v.encode() for k, v in foreign.items()
    }
    assert redis_client.hget(keys.batch_attempts("bt"), item) is None
    # only a fetch's count there (a refused message): the retry takes the ID afresh
    redis_client.delete(keys.request(f"{item}~2"))
    redis_client.hset(keys.request(f"{item}~2"), "deliveries", 1)
    report = BatchRetrier(redis_client, queue=QUEUE, ttl=600).retry_batch("bt")
    assert report.retried == 1
    record = redis_client.hgetall(keys.request(f"{item}~2"))
    assert record[b"state"] == b"queued" and b"deliveries" not in record
    messages = [json.loads(m) for m in redis_client.lrange(keys.lane("bt"), 0, -1)]
    assert any(m["headers"]["id"] == f"{item}~2" for m in messages)
